"""Compression report: one self-contained HTML page (MACs, chosen ratios, sensitivity curves) and PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis import plots
from ..analysis.html import details, document, images, table
from .compressor import CompressionInfo

__all__ = ["sensitivity_figures", "write_report"]


def _stages(info: CompressionInfo) -> list[CompressionInfo]:
    return info.stages or [info]


def sensitivity_figures(info: CompressionInfo) -> list[tuple[str, bytes]]:
    """``(file stem, PNG)`` of the per-layer score-vs-ratio curves of every stage that built a table."""
    return [
        (f"sensitivity_{stage.scheme}", plots.compression_curves_plot(stage.scheme, stage.table.scores, stage.ratios))
        for stage in _stages(info)
        if stage.table is not None
    ]


def write_report(
    info: CompressionInfo,
    path: str | Path,
    plots_dir: str | Path | None = None,
    latency: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the compression report as one HTML file (and the curves as PNG files into ``plots_dir``).

    ``latency``: rows of :func:`~leantorch.compress.latency.compare_latency` (ONNX Runtime timings of the original
    and compressed models), shown next to the MAC ratio.

    Example:
        >>> write_report(info, "out/compression_report.html")  # doctest: +SKIP
    """
    figures = sensitivity_figures(info)
    summary = [
        {
            "stage": s.scheme,
            "target MAC ratio": s.target_mac_ratio,
            "achieved MAC ratio": s.mac_ratio,
            "MACs before": s.macs_before,
            "MACs after": s.macs_after,
            "params after": s.params_after,
            "score before": s.baseline_score,
            "score after": s.score,
            "table (s)": s.seconds.get("table", 0.0),
            "selection (s)": s.seconds.get("selection", 0.0),
        }
        for s in _stages(info)
    ]
    body = ["<h2>Summary</h2>", table(summary)]
    if latency:
        body += [
            "<h2>Measured latency (ONNX Runtime)</h2>",
            f"<p class='note'>Median times, ratios to the original model; the MAC ratio is "
            f"{info.mac_ratio:.3f}. A latency ratio well above the MAC ratio means the runtime does not turn the "
            "saved MACs into time (try rounding channel counts to a multiple of 8).</p>",
            table(latency),
        ]
    if figures:
        body += [
            "<h2>Per-layer sensitivity</h2>",
            "<p class='note'>Each line is one layer: the score with only that layer compressed, at each "
            "candidate ratio (the eval-score table). Flat lines are layers that compress for free.</p>",
            images(figures, wide=True),
        ]
    for stage in _stages(info):
        body.append(details(f"{stage.scheme}: compressed layers", stage.rows()))
        body.append(
            details(f"{stage.scheme}: skipped layers", [{"layer": n, "reason": r} for n, r in stage.skipped.items()])
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document(f"Compression — {info.scheme}, target {info.target_mac_ratio:g}", body), encoding="utf-8")
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        for stem, png in figures:
            (Path(plots_dir) / f"{stem}.png").write_bytes(png)
    return out
