"""Figures of the analysis report, rendered to PNG bytes with matplotlib's object API (no pyplot state).

Each function takes plain data (lists of floats) and returns the PNG; the report embeds them in HTML
or writes them to files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "sensitivity_plot",
    "sqnr_plot",
    "weight_ranges_plot",
    "histogram_plot",
    "equalization_plot",
    "compression_curves_plot",
    "pareto_plot",
]

# One palette for every figure: quantized (orange) against float (blue), encodings in red.
FLOAT_COLOR, QUANT_COLOR, ENCODING_COLOR, GREY = "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"
DPI = 90


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _layer_axis(ax: Any, names: Sequence[str]) -> None:
    """Layer names as x tick labels; thinned out so that at most ~60 are written."""
    step = max(1, math.ceil(len(names) / 60))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)


def sensitivity_plot(rows: list[dict[str, Any]], scores: dict[str, float]) -> bytes:
    """Score per layer with only that layer quantized / all but that layer quantized, with references."""
    names = [r["layer"] for r in rows]
    fig = Figure(figsize=(max(7.0, 0.16 * len(names) + 2.5), 4.2))
    ax = fig.subplots()
    x = range(len(names))
    ax.plot(
        x,
        [r["only this layer quantized"] for r in rows],
        "o-",
        ms=3,
        color=QUANT_COLOR,
        label="only this layer quantized",
    )
    ax.plot(
        x,
        [r["all but this layer quantized"] for r in rows],
        "s-",
        ms=3,
        color=FLOAT_COLOR,
        label="all but this layer quantized",
    )
    ax.axhline(scores["fp32"], color=GREY, ls="--", lw=1, label=f"FP32 ({scores['fp32']:.4g})")
    ax.axhline(
        scores["quantized"], color=ENCODING_COLOR, ls=":", lw=1, label=f"all quantized ({scores['quantized']:.4g})"
    )
    _layer_axis(ax, names)
    ax.set_ylabel("score (eval_fn)")
    ax.set_title("Per-layer quantization sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def sqnr_plot(layer_sqnr: dict[str, float]) -> bytes:
    """Output SQNR of each layer of the quantized model against FP32 (dB; higher is better)."""
    names = list(layer_sqnr)
    values = [min(layer_sqnr[n], 120.0) for n in names]  # exact layers (inf) drawn at the top
    fig = Figure(figsize=(max(7.0, 0.16 * len(names) + 2.5), 4.0))
    ax = fig.subplots()
    ax.bar(range(len(names)), values, color=QUANT_COLOR)
    _layer_axis(ax, names)
    ax.set_ylabel("output SQNR vs FP32 (dB)")
    ax.set_title("Per-layer output SQNR on the calibration data")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def weight_ranges_plot(
    name: str, low: Sequence[float], high: Sequence[float], mean: Sequence[float], ax: Any = None
) -> bytes | None:
    """Min–max bar and mean of each output channel's weights (on ``ax`` when given, else a new figure)."""
    own = ax is None
    fig = Figure(figsize=(4.6, 2.6)) if own else None
    if own:
        ax = fig.subplots()
    x = range(len(low))
    ax.vlines(x, low, high, color=FLOAT_COLOR, lw=max(0.5, min(3.0, 300 / max(len(low), 1))))
    ax.plot(x, mean, ".", ms=2, color=ENCODING_COLOR, label="mean")
    ax.axhline(0.0, color=GREY, lw=0.5)
    ax.set_xlabel("output channel", fontsize=8)
    ax.set_ylabel("weight", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
    return _png(fig) if own else None


def histogram_plot(
    name: str, counts: Sequence[float], edges: Sequence[float], encoding_min: float, encoding_max: float, bitwidth: int
) -> bytes:
    """Histogram (log counts) of what a quantizer sees, with its encoding range marked."""
    fig = Figure(figsize=(4.6, 2.6))
    ax = fig.subplots()
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], [c if c > 0 else 0.0 for c in counts], width=widths, align="edge", color=FLOAT_COLOR)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axvspan(encoding_min, encoding_max, color=QUANT_COLOR, alpha=0.15, lw=0)
    for value in (encoding_min, encoding_max):
        ax.axvline(value, color=ENCODING_COLOR, lw=1)
    ax.set_title(f"{name}  [{encoding_min:.3g}, {encoding_max:.3g}] {bitwidth}-bit", fontsize=8)
    ax.set_xlabel("value", fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def equalization_plot(name: str, before: tuple[Sequence[float], ...], after: tuple[Sequence[float], ...]) -> bytes:
    """Per-channel weight ranges before (left) and after (right) cross-layer equalization, shared y axis
    (the figure of the DFQ paper): equalization evens out the channels' ranges."""
    fig = Figure(figsize=(8.0, 2.8))
    left, right = fig.subplots(1, 2, sharey=True)
    weight_ranges_plot(f"{name}: before equalization", *before, ax=left)
    weight_ranges_plot(f"{name}: after equalization", *after, ax=right)
    right.set_ylabel("")
    return _png(fig)


def compression_curves_plot(title: str, scores: dict[str, dict[float, float]], chosen: dict[str, float]) -> bytes:
    """Score against compression ratio for every layer (the eval-score table), chosen ratios circled."""
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.subplots()
    colors = matplotlib.colormaps["viridis"]
    for index, (layer, row) in enumerate(scores.items()):
        ratios = sorted(row)
        color = colors(index / max(len(scores) - 1, 1))
        ax.plot(ratios, [row[r] for r in ratios], "-", lw=1, color=color, alpha=0.8, label=layer)
        if layer in chosen and chosen[layer] in row:
            ax.plot([chosen[layer]], [row[chosen[layer]]], "o", ms=6, mfc="none", mec=ENCODING_COLOR)
    ax.set_xlabel("compression ratio (layer MACs after / before)")
    ax.set_ylabel("score with only this layer compressed")
    ax.set_title(f"{title}: per-layer sensitivity ({len(scores)} layers; red circles: chosen)")
    ax.grid(alpha=0.3)
    if len(scores) <= 16:  # beyond that a legend hides the curves; the tables name the layers
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def pareto_plot(
    curves: dict[str, list[tuple[float, float | None, float | None]]],
    chosen: dict[str, tuple[float, float]],
    cost_label: str,
    target: float | None = None,
    budget: float | None = None,
) -> bytes:
    """Mixed-precision Pareto curves: score against relative cost, one line per candidate set.

    ``curves[label]``: ``(relative cost, estimated score, real score)`` per point of the greedy list (None: not known);
    the estimate is a thin line, real evaluations are dots; ``chosen[label]`` is ringed in red; ``target`` is
    the score the choice had to reach (dashed); ``budget`` the relative cost the choice had to stay within (dotted).
    """
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for index, (label, points) in enumerate(curves.items()):
        color = colors(index % 10)
        estimate = [(p[0], p[1]) for p in points if p[1] is not None]
        ax.plot([x for x, _ in estimate], [y for _, y in estimate], "-", lw=1, color=color, alpha=0.5)
        real = [(p[0], p[2]) for p in points if p[2] is not None]
        ax.plot([x for x, _ in real], [y for _, y in real], "o-", ms=4, color=color, label=f"{label} (evaluated)")
        if label in chosen:
            ax.plot(*chosen[label], "o", ms=11, mfc="none", mec=ENCODING_COLOR, mew=2)
    if target is not None:
        ax.axhline(target, color=GREY, ls="--", lw=1, label="target (FP32 − allowed drop)")
    if budget is not None:
        ax.axvline(budget, color=GREY, ls=":", lw=1.5, label="budget (max_cost)")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("score")
    ax.set_title("Mixed precision: greedy Pareto list (thin lines: phase-1 estimate; red ring: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
