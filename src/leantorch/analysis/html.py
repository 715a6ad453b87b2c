"""HTML rendering of an :class:`~leantorch.analysis.report.AnalysisReport` (inline CSS, no script)."""

from __future__ import annotations

import base64
import html
import math
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import AnalysisReport

__all__ = ["data_uri", "escape", "document", "render", "table", "details", "images", "png_size"]


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.note { color: #555; max-width: 60em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 0.8em; }
.grid figure { margin: 0; border: 1px solid #eee; padding: 0.3em; }
.wide { overflow-x: auto; }
details summary { cursor: pointer; color: #1f77b4; margin: 0.5em 0; }
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def escape(value: Any) -> str:
    """HTML-escaped text of a table cell; floats with 4 significant digits."""
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return html.escape(str(value))


def document(title: str, body: list[str]) -> str:
    """A complete HTML page: inline style, no script, ``body`` parts in order."""
    head = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>"
    )
    return "\n".join([head, f"<h1>{escape(title)}</h1>", *body, "</body></html>\n"])


def render(report: AnalysisReport, figures: dict[str, list[tuple[str, bytes]]]) -> str:
    """The complete HTML document."""
    parts = [
        "<p class='note'>Scores come from your <code>eval_fn</code> (higher is better). Every number below "
        "is measured with the encodings of the analysed QuantSim.</p>",
        _summary(report),
    ]
    if "sensitivity" in figures:
        parts += [
            "<h2>Per-layer sensitivity</h2>",
            "<p class='note'>Orange: score with only this layer's quantizers enabled (how much this layer "
            "alone loses). Blue: score with every quantizer but this layer's (how much is recovered by "
            "keeping it in float).</p>",
            images(figures["sensitivity"], wide=True),
            details("Sensitivity table", report.sensitivity),
        ]
    if "sqnr" in figures:
        rows = [{"layer": n, "output SQNR (dB)": v} for n, v in report.layer_sqnr.items()]
        parts += [
            "<h2>Per-layer output SQNR</h2>",
            "<p class='note'>Signal-to-noise ratio of each layer's output in the fully quantized model "
            "against the FP32 model, on the calibration data. Noise accumulates with depth; a sudden "
            "drop points at the layer that adds it.</p>",
            images(figures["sqnr"], wide=True),
            details("SQNR table", rows),
        ]
    if "equalization" in figures:
        parts += [
            "<h2>Cross-layer equalization: per-channel weight ranges</h2>",
            "<p class='note'>Weight range of each output channel before and after <code>lt.equalize</code>: "
            "equalization evens the channels out so that one per-tensor grid serves all of them.</p>",
            images(figures["equalization"]),
        ]
    if report.mixed_precision is not None:
        parts += report.mixed_precision.html_parts()
    parts += [
        "<h2>Weight ranges per output channel</h2>",
        "<p class='note'>Min–max bar and mean (red) of each output channel's weights. Channels with "
        "very different ranges quantize badly per tensor: use per-channel weights or equalization.</p>",
        images(figures["weights"], grid=True),
    ]
    rows = [
        {
            "quantizer": a.name,
            "min": a.min,
            "max": a.max,
            "encoding min": a.encoding_min,
            "encoding max": a.encoding_max,
            "clipped fraction": a.clipped_fraction,
        }
        for a in report.activations.values()
    ]
    parts += [
        "<h2>Activation ranges and histograms</h2>",
        "<p class='note'>What each activation quantizer sees on the calibration data (log counts); the "
        "shaded band between the red lines is its encoding range. Mass outside the band is clipped.</p>",
        details("Activation range table", rows),
        images(figures["activations"], grid=True),
    ]
    return document(f"Quantization analysis — {report.title}", parts)


def _summary(report: AnalysisReport) -> str:
    parts = ["<h2>Summary</h2>", table(report.summary_rows())]
    if report.sensitivity:
        parts += ["<p>Most sensitive layers (lowest score when quantized alone):</p>", table(report.most_sensitive())]
    if report.layer_sqnr:
        parts += [
            "<p>Lowest per-layer output SQNR:</p>",
            table([{"layer": n, "output SQNR (dB)": v} for n, v in report.worst_sqnr()]),
        ]
    return "\n".join(parts)


def table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of dict rows (keys of the first row as header)."""
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def details(label: str, rows: list[dict[str, Any]]) -> str:
    """A collapsed table."""
    return f"<details><summary>{escape(label)} ({len(rows)} rows)</summary>{table(rows)}</details>"


def images(figures: list[tuple[str, bytes]], grid: bool = False, wide: bool = False) -> str:
    """``<img>`` tags with the PNGs embedded as data URIs (with their pixel sizes)."""
    tags = []
    for stem, png in figures:
        width, height = png_size(png)
        tags.append(
            f"<figure><img src='{data_uri(png)}' alt='{escape(stem)}' width='{width}' height='{height}'></figure>"
        )
    css = "grid" if grid else "wide" if wide else ""
    return f"<div class='{css}'>" + "".join(tags) + "</div>"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk.

    Example:
        >>> png_size(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00\\x00\\x00\\rIHDR"
        ...          + (3).to_bytes(4, "big") + (2).to_bytes(4, "big"))
        (3, 2)
    """
    return struct.unpack(">II", png[16:24])
