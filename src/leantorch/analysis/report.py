"""The analysis report: data, one self-contained HTML file (plots embedded as PNG), and PNG files.

The HTML needs no server, no script and no network: images are ``data:`` URIs and the style is inline,
so the file opens offline in any browser and can be attached to a ticket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UnknownLayerError
from ..options import as_names, name_list
from ..paths import check_directory, check_file, writing
from ..staging import staged_outputs
from . import plots
from .html import render
from .weight_ranges import WeightRanges, weight_ranges

if TYPE_CHECKING:  # the result type only: ptq imports analysis (plots, html), not the other way round
    from ..ptq.mixed_precision import MixedPrecisionResult

__all__ = ["ActivationStats", "AnalysisReport"]


@dataclass
class ActivationStats:
    """What one activation quantizer saw on the calibration data, and its encoding range."""

    name: str
    min: float
    max: float
    encoding_min: float
    encoding_max: float
    bitwidth: int
    counts: list[float]
    edges: list[float]

    @property
    def clipped_fraction(self) -> float:
        """Fraction of histogram mass outside the encoding range (clipping)."""
        total = sum(self.counts)
        outside = sum(
            c
            for c, lo, hi in zip(self.counts, self.edges[:-1], self.edges[1:])
            if hi <= self.encoding_min or lo >= self.encoding_max
        )
        return outside / total if total else 0.0


@dataclass
class AnalysisReport:
    """Result of :func:`leantorch.analyze`; ``to_html(path)`` and ``save_plots(dir)`` render it."""

    title: str
    scores: dict[str, float]
    sensitivity: list[dict[str, Any]]
    layer_sqnr: dict[str, float]
    activations: dict[str, ActivationStats]
    weight_ranges: dict[str, WeightRanges]
    equalization: list[tuple[WeightRanges, WeightRanges]] = field(default_factory=list)
    mixed_precision: MixedPrecisionResult | None = None

    def add_mixed_precision(self, result: MixedPrecisionResult) -> None:
        """Add the automatic mixed precision section: its Pareto curve, chosen point and tables.

        Example:
            >>> report.add_mixed_precision(lt.mixed_precision(model, x[:1], batches))  # doctest: +SKIP
        """
        self.mixed_precision = result

    def add_equalization(self, before: Any, after: Any, layers: list[str] | None = None, max_layers: int = 4) -> None:
        """Add the CLE view: per-channel weight ranges of ``layers`` in ``before`` and ``after`` side by side.

        ``before`` is typically the BN-folded model and ``after`` ``lt.equalize(model, x)``. Without
        ``layers``, the ``max_layers`` layers whose channel-range spread shrank most are shown.

        Raises:
            UnknownLayerError: a name in ``layers`` is not in both models (lists the valid ones).

        Example:
            >>> report.add_equalization(folded, lt.equalize(model, x))  # doctest: +SKIP
        """
        old, new = weight_ranges(before), weight_ranges(after)
        common = [n for n in old if n in new and len(old[n].min) == len(new[n].min)]
        layers = None if layers is None else as_names("layers", layers)  # a string is one name
        if layers is None:
            gain = {n: old[n].spread / new[n].spread if new[n].spread > 0 else 0.0 for n in common}
            layers = sorted(common, key=lambda n: -gain[n])[:max_layers]
        missing = [n for n in layers if n not in common]
        if missing:
            raise UnknownLayerError(
                f"layers={missing}: not a conv/linear layer with the same channel count in both "
                f"models; valid names ({len(common)}): {name_list(common)}"
            )
        self.equalization = [(old[n], new[n]) for n in layers]

    # ------------------------------------------------------------------ figures
    def figures(self) -> dict[str, list[tuple[str, bytes]]]:
        """Every plot as PNG bytes, by report section: ``[(file stem, png), ...]``."""
        sections: dict[str, list[tuple[str, bytes]]] = {}
        if self.sensitivity:
            sections["sensitivity"] = [("sensitivity", plots.sensitivity_plot(self.sensitivity, self.scores))]
        if self.layer_sqnr:
            sections["sqnr"] = [("layer_sqnr", plots.sqnr_plot(self.layer_sqnr))]
        if self.equalization:
            sections["equalization"] = [
                (
                    f"equalization_{_stem(a.name)}",
                    plots.equalization_plot(a.name, (a.min, a.max, a.mean), (b.min, b.max, b.mean)),
                )
                for a, b in self.equalization
            ]
        if self.mixed_precision is not None:
            sections["mixed_precision"] = [("amp_pareto", self.mixed_precision.plot())]
        sections["weights"] = [
            (f"weights_{_stem(n)}", plots.weight_ranges_plot(n, w.min, w.max, w.mean))
            for n, w in self.weight_ranges.items()
        ]
        sections["activations"] = [
            (
                f"activation_{_stem(n)}",
                plots.histogram_plot(n, a.counts, a.edges, a.encoding_min, a.encoding_max, a.bitwidth),
            )
            for n, a in self.activations.items()
        ]
        return sections

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write every plot as a PNG file into ``directory`` (created if needed); returns the paths.

        Raises:
            OutputPathError: ``directory`` is a file or cannot be created or written (checked before rendering).

        Example:
            >>> paths = report.save_plots("plots")  # doctest: +SKIP
        """
        out = check_directory(directory, "directory")
        figures = [(out / f"{stem}.png", png) for section in self.figures().values() for stem, png in section]
        with writing(f"the plots in {out}"), staged_outputs() as staging:
            for path, png in figures:
                staging.file(path, option="directory").write_bytes(png)
        return [path for path, _ in figures]

    def to_html(self, path: str | Path) -> Path:
        """Write the report as ONE self-contained HTML file (its directory created if needed); returns its path.

        Raises:
            OutputPathError: ``path`` is a directory, lies under a file, or cannot be written (checked before
                rendering; a failed write leaves no partial file).

        Example:
            >>> report.to_html("report.html")  # doctest: +SKIP
        """
        out = check_file(path, "path")
        text = render(self, self.figures())
        with writing(out), staged_outputs() as staging:
            staging.file(out, option="path").write_text(text, encoding="utf-8")
        return out

    # ------------------------------------------------------------------ tables
    def summary_rows(self) -> list[dict[str, Any]]:
        """FP32 / quantized / weights-only / activations-only scores and the drop from FP32."""
        fp32 = self.scores["fp32"]
        return [{"configuration": k, "score": v, "drop from FP32": fp32 - v} for k, v in self.scores.items()]

    def most_sensitive(self, count: int = 5) -> list[dict[str, Any]]:
        """Layers whose quantization alone costs the most (lowest "only this layer quantized" score)."""
        return sorted(self.sensitivity, key=lambda r: r["only this layer quantized"])[:count]

    def worst_sqnr(self, count: int = 5) -> list[tuple[str, float]]:
        """Layers with the lowest output SQNR against FP32."""
        return sorted(self.layer_sqnr.items(), key=lambda kv: kv[1])[:count]


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "model"
