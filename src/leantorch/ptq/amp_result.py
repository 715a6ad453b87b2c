"""What :func:`~leantorch.ptq.mixed_precision.mixed_precision` returns: the Pareto list, the phase-1 table, the
chosen point, and their plot and HTML section.

Example:
    >>> ParetoPoint(cost=64.0, weight_bytes=8.0, estimated_score=1.0, config={"fc": "W8A8"}).score is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import plots
from ..analysis.html import details, document, images, table
from ..paths import check_file, writing
from ..quant.sim import QuantSim
from .amp_groups import Candidate, CostKind, LayerGroup
from .amp_phase1 import Assembler

__all__ = ["ParetoPoint", "MixedPrecisionResult"]


@dataclass
class ParetoPoint:
    """One point of the Pareto list: a candidate per group, its cost, estimated and (if evaluated) real score."""

    cost: float
    weight_bytes: float
    estimated_score: float
    config: dict[str, str]
    score: float | None = None


@dataclass
class MixedPrecisionResult:
    """What :func:`mixed_precision` found; ``sim`` is configured with the chosen point."""

    sim: QuantSim
    groups: list[LayerGroup]
    candidates: tuple[Candidate, ...]
    cost_kind: CostKind
    fp32_score: float
    reference_score: float
    allowed_drop: float
    sensitivity: dict[str, dict[str, float]]
    front: list[ParetoPoint]
    chosen: ParetoPoint
    met: bool
    evaluations: int = 0
    score_name: str = "score"
    #: False when phase 1 used a ``sensitivity_fn``: estimates are then in its units, not the score's
    estimate_is_score: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: how the weights of candidates below 16 bits were rounded (``"nearest"``, ``"adaround"`` or ``"gptq"``)
    rounding: str = "nearest"
    #: the budget the search was limited to (a fraction of the all-highest point's cost), None without one
    max_cost: float | None = None
    #: puts ``sim`` on any mix of the candidates (``assembler.set_all({group: candidate})``), e.g. to score others
    assembler: Assembler | None = None
    #: the score of the chosen mix re-rounded (``reround``), None where it was not re-rounded
    reround_score: float | None = None
    #: whether ``sim`` holds the re-rounded mix (it scored at least the chosen mix), not the chosen one
    rerounded: bool = False

    @property
    def final_score(self) -> float | None:
        """The score of what ``sim`` holds: the re-rounded mix's where it was kept, else the chosen point's."""
        return self.reround_score if self.rerounded else self.chosen.score

    @property
    def baseline(self) -> ParetoPoint:
        """The all-highest point (first of the list)."""
        return self.front[0]

    def bitwidths(self) -> dict[str, int]:
        """The chosen bitwidth of every tuned quantizer, by qualified quantizer name.

        Example:
            >>> amp.bitwidths()["fc.weight"]  # doctest: +SKIP
            4
        """
        by_name = {c.name: c for c in self.candidates}
        found: dict[str, int] = {}
        for g in self.groups:
            cand = by_name[self.chosen.config[g.name]]
            found.update(dict.fromkeys(g.param_names, cand.param_bw))
            found.update(dict.fromkeys(g.activation_names, cand.act_bw))
        return found

    def sensitivity_rows(self) -> list[dict[str, Any]]:
        """Phase 1 as table rows: per group, its MACs, parameters, score at each candidate and the choice."""
        return [
            {"group": g.name, "MACs": g.macs, "params": g.params, **self.sensitivity[g.name], "chosen": c}
            for g in self.groups
            for c in [self.chosen.config[g.name]]
        ]

    def front_rows(self) -> list[dict[str, Any]]:
        """The Pareto list as table rows (cost relative to the all-highest point; real score where evaluated)."""
        top = self.baseline.cost or 1.0
        return [
            {
                "step": i,
                f"relative {self.cost_kind}": p.cost / top,
                "weight bytes": p.weight_bytes,
                "estimated score": p.estimated_score,
                "score": "" if p.score is None else p.score,
            }
            for i, p in enumerate(self.front)
        ]

    def plot(self, label: str | None = None) -> bytes:
        """The Pareto curve as PNG bytes (estimated and evaluated scores, the target line, the budget, the chosen
        point)."""
        return plots.pareto_plot(
            {label or "AMP": self.curve()},
            {label or "AMP": self.chosen_xy()},
            self.cost_label,
            self.target,
            self.max_cost,
        )

    @property
    def target(self) -> float:
        """The score the chosen point must reach: ``reference_score - allowed_drop`` (the reference is the FP32
        score or the all-highest one, per the ``baseline`` option)."""
        return self.reference_score - self.allowed_drop

    @property
    def cost_label(self) -> str:
        """The x axis of the curve."""
        return "bit-operations relative to all-highest" if self.cost_kind == "bitops" else "weight bytes relative"

    def curve(self) -> list[tuple[float, float | None, float | None]]:
        """``(relative cost, estimated score, real score)`` of every point; None where not evaluated, and for every
        estimate made in a ``sensitivity_fn``'s units (not comparable with the score)."""
        top = self.baseline.cost or 1.0
        keep = self.estimate_is_score
        return [(p.cost / top, p.estimated_score if keep else None, p.score) for p in self.front]

    def chosen_xy(self) -> tuple[float, float]:
        """(relative cost, score) of the chosen point."""
        return (self.chosen.cost / (self.baseline.cost or 1.0), self.chosen.score or 0.0)

    def save_plot(self, path: str | Path) -> Path:
        """Write :meth:`plot` as a PNG file.

        Example:
            >>> amp.save_plot("out/amp_pareto.png")  # doctest: +SKIP
        """
        out = check_file(path, "path")
        png = self.plot()
        with writing(out):
            out.write_bytes(png)
        return out

    def html_parts(self) -> list[str]:
        """The report section (heading, note, plot, tables) as HTML fragments."""
        summary = [
            {
                "FP32 score": self.fp32_score,
                "reference": self.reference_score,
                "target": self.target,
                "chosen score": self.chosen.score,
                "re-rounded score": "" if self.reround_score is None else self.reround_score,
                "re-rounded mix kept": self.rerounded,
                f"relative {self.cost_kind}": self.chosen_xy()[0],
                "budget": "none" if self.max_cost is None else self.max_cost,
                "met": self.met,
                "evaluations": self.evaluations,
            }
        ]
        return [
            "<h2>Automatic mixed precision</h2>",
            f"<p class='note'>Candidates {', '.join(c.name for c in self.candidates)}; score: {self.score_name}. "
            "Phase 1 lowers one group at a time; the greedy list lowers the group losing least per cost saved; "
            "dots are real evaluations, the red ring the chosen point.</p>",
            table(summary),
            images([("amp_pareto", self.plot())], wide=True),
            details("Sensitivity per group and candidate", self.sensitivity_rows()),
            details("Pareto list", self.front_rows()),
        ]

    def to_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML page with the AMP section.

        Example:
            >>> amp.to_html("out/amp.html")  # doctest: +SKIP
        """
        out = check_file(path, "path")
        text = document("Automatic mixed precision", self.html_parts())
        with writing(out):
            out.write_text(text, encoding="utf-8")
        return out
