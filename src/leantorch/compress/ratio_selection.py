"""Per-layer compression ratios: the eval-score table and greedy selection for a target MAC ratio.

The **eval-score table** holds, for every compressible layer and every candidate ratio, the score of the
model with only that layer compressed to that ratio. It is the expensive part (layers × candidates
evaluations), so it is saved as JSON and reused when the model, scheme and candidates match.

**Greedy selection** (AIMET's greedy comp-ratio selection): for a score threshold ``t``, every layer takes
the smallest candidate ratio whose score is at least ``t`` (1.0 if none is). A higher ``t`` compresses
less. A binary search over the scores in the table finds the highest ``t`` whose estimated total MACs
reach the target; layers therefore give up MACs in order of how little their score suffers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LeanTorchError
from ..paths import check_file, writing
from ..staging import staged_outputs

__all__ = [
    "CompressionError",
    "default_candidates",
    "EvalScoreTable",
    "fingerprint",
    "build_table",
    "build_table_by_layers",
    "ratios_for_threshold",
    "greedy_select",
    "spend_slack",
]

log = logging.getLogger(__name__)


class CompressionError(LeanTorchError, ValueError):
    """Compression cannot be done as asked (bad target ratio, nothing compressible, unreachable target)."""


def default_candidates(count: int = 10) -> list[float]:
    """``count`` evenly spaced ratios in (0, 1], ending at 1.0 (uncompressed).

    Example:
        >>> default_candidates(4)
        [0.25, 0.5, 0.75, 1.0]
    """
    return [round((i + 1) / count, 6) for i in range(count)]


@dataclass
class EvalScoreTable:
    """``scores[layer][ratio]``: score with only ``layer`` compressed to ``ratio`` (1.0 = the baseline)."""

    scheme: str
    candidates: list[float]
    baseline: float
    scores: dict[str, dict[float, float]] = field(default_factory=dict)
    fingerprint: str = ""
    seconds: float = 0.0

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (reload with :meth:`load`)."""
        data = {
            "scheme": self.scheme,
            "candidates": self.candidates,
            "baseline": self.baseline,
            "fingerprint": self.fingerprint,
            "seconds": self.seconds,
            "scores": {layer: {str(r): s for r, s in row.items()} for layer, row in self.scores.items()},
        }
        out = check_file(path, "eval-score table path")
        text = json.dumps(data, indent=1)
        with writing(out), staged_outputs() as staging:  # a half-written cache would fail the next run
            staging.file(out, option="eval-score table path").write_text(text)
        return out

    @classmethod
    def load(cls, path: str | Path) -> EvalScoreTable:
        """Read a table written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
            scores = {layer: {float(r): float(s) for r, s in row.items()} for layer, row in data["scores"].items()}
            return cls(
                data["scheme"],
                [float(c) for c in data["candidates"]],
                float(data["baseline"]),
                scores,
                data.get("fingerprint", ""),
                float(data.get("seconds", 0.0)),
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise CompressionError(f"cannot read eval-score table {path}: {exc}") from exc


def fingerprint(model: nn.Module, layers: list[str], scheme: str, candidates: list[float], multiple: int) -> str:
    """What a saved table depends on: layer names, weight shapes and values, scheme, candidates, rank multiple.

    The values are hashed so that a retrained or fine-tuned model of the same architecture does not reuse
    the scores of its predecessor.
    """
    digest = hashlib.sha256()
    shapes = []
    for name in layers:
        weight = model.get_submodule(name).weight.detach()
        shapes.append(f"{name}:{tuple(weight.shape)}")
        digest.update(weight.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return json.dumps([scheme, candidates, multiple, shapes, digest.hexdigest()])


def build_table(
    layers: list[str],
    candidates: list[float],
    score_with: Callable[[str, float], float],
    baseline: float,
    scheme: str,
    fingerprint_text: str,
    path: str | Path | None = None,
    progress: bool = True,
) -> EvalScoreTable:
    """Evaluate ``score_with(layer, ratio)`` for every layer and candidate below 1.0 (reusing ``path``
    when it holds a table with the same fingerprint; writing it there otherwise).

    Example:
        >>> build_table(["a"], [0.5, 1.0], lambda layer, r: r, 1.0, "weight_svd", "", progress=False).scores
        {'a': {1.0: 1.0, 0.5: 0.5}}
    """

    def score_layers(chunk: list[str]) -> list[dict[float, float]]:
        jobs = [(layer, r) for layer in chunk for r in candidates if r < 1.0]
        rows: dict[str, dict[float, float]] = {layer: {} for layer in chunk}
        for layer, ratio in tqdm(
            jobs, desc=f"eval-score table ({scheme})", unit="eval", disable=not progress, leave=False
        ):
            rows[layer][ratio] = score_with(layer, ratio)
        return [rows[layer] for layer in chunk]

    return build_table_by_layers(layers, candidates, score_layers, baseline, scheme, fingerprint_text, path)


def build_table_by_layers(
    layers: list[str],
    candidates: list[float],
    score_layers: Callable[[list[str]], list[dict[float, float]]],
    baseline: float,
    scheme: str,
    fingerprint_text: str,
    path: str | Path | None = None,
) -> EvalScoreTable:
    """The table from ``score_layers(layers)``, one ``{ratio: score}`` row per layer for the candidates below
    1.0 (a function of a list of layers, so that a back end can run contiguous chunks of them in parallel);
    reuses ``path`` when it holds a table with the same fingerprint and baseline, writes it there otherwise.

    Example:
        >>> rows = lambda chunk: [{0.5: 0.9} for _ in chunk]
        >>> build_table_by_layers(["a", "b"], [0.5, 1.0], rows, 1.0, "weight_svd", "").scores["b"]
        {1.0: 1.0, 0.5: 0.9}
    """
    if path is not None and Path(path).exists():
        cached = EvalScoreTable.load(path)
        # The baseline is the eval_fn's score of the same model: if it changed, so did the data or the
        # metric, and the cached scores would rank layers by a different yardstick.
        if cached.fingerprint == fingerprint_text and cached.baseline == baseline:
            return cached
        log.info("eval-score table %s was made for another model, eval_fn or data; recomputing it", path)
    table = EvalScoreTable(scheme, candidates, baseline, fingerprint=fingerprint_text)
    start = time.perf_counter()
    rows = score_layers(list(layers))
    if len(rows) != len(layers):
        raise CompressionError(f"the table function returned {len(rows)} rows for {len(layers)} layers")
    for layer, row in zip(layers, rows):
        table.scores[layer] = {1.0: baseline, **{float(r): float(v) for r, v in row.items() if r < 1.0}}
    table.seconds = time.perf_counter() - start
    if path is not None:
        table.save(path)
    return table


def ratios_for_threshold(table: EvalScoreTable, threshold: float) -> dict[str, float]:
    """Per layer, the smallest candidate ratio whose score reaches ``threshold`` (1.0 if none)."""
    chosen = {}
    for layer, row in table.scores.items():
        good = [r for r, s in row.items() if s >= threshold]
        chosen[layer] = min(good) if good else 1.0
    return chosen


def greedy_select(
    table: EvalScoreTable, estimate_macs: Callable[[dict[str, float]], float], target_macs: float
) -> tuple[dict[str, float], float]:
    """Ratios reaching ``target_macs`` with the highest score threshold; returns the ratios and the threshold.

    ``estimate_macs(ratios)`` gives the model's total MACs after compressing with ``ratios`` (it accounts
    for rank rounding and for channels removed upstream); it must not grow as ratios shrink.

    Raises:
        CompressionError: even the smallest candidates everywhere stay above the target.

    Example:
        >>> t = EvalScoreTable("weight_svd", [0.5, 1.0], 1.0, {"a": {0.5: 0.9, 1.0: 1.0}, "b": {0.5: 0.5, 1.0: 1.0}})
        >>> greedy_select(t, lambda ratios: 100 * sum(ratios.values()), target_macs=150)
        ({'a': 0.5, 'b': 1.0}, 0.9)
    """
    thresholds = sorted({s for row in table.scores.values() for s in row.values()} | {-math.inf})
    lowest = estimate_macs(ratios_for_threshold(table, -math.inf))
    if lowest > target_macs:
        raise CompressionError(
            f"the target ({target_macs:.4g} MACs) cannot be reached: the smallest candidate "
            f"ratios on every compressible layer give {lowest:.4g}; add smaller "
            "candidates, compress more layers, or raise the target ratio"
        )
    lo, hi = 0, len(thresholds) - 1  # the estimate at thresholds[lo] meets the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_macs(ratios_for_threshold(table, thresholds[mid])) <= target_macs:
            lo = mid
        else:
            hi = mid - 1
    chosen = ratios_for_threshold(table, thresholds[lo])
    return spend_slack(table, chosen, estimate_macs, target_macs), thresholds[lo]


def spend_slack(
    table: EvalScoreTable,
    ratios: dict[str, float],
    estimate_macs: Callable[[dict[str, float]], float],
    target_macs: float,
) -> dict[str, float]:
    """Give MACs back where the threshold compressed more than the target needs.

    Scores often tie (an accuracy on a few hundred samples), so the threshold can compress far below the
    target. Step by step, the layer whose next larger candidate ratio gains the most score (then costs the
    fewest MACs) takes that step, as long as the estimate stays within the target.

    Example:
        >>> t = EvalScoreTable("weight_svd", [0.5, 1.0], 1.0, {"a": {0.5: 1.0, 1.0: 1.0}, "b": {0.5: 1.0, 1.0: 1.0}})
        >>> spend_slack(t, {"a": 0.5, "b": 0.5}, lambda r: 100 * sum(r.values()), target_macs=150)
        {'a': 1.0, 'b': 0.5}
    """
    ratios = dict(ratios)
    while True:
        steps = []
        for layer, ratio in ratios.items():
            row = table.scores[layer]
            larger = sorted(r for r in row if r > ratio)
            if not larger:
                continue
            trial = {**ratios, layer: larger[0]}
            macs = estimate_macs(trial)
            if macs <= target_macs:
                steps.append((-(row[larger[0]] - row[ratio]), macs, layer, larger[0]))
        if not steps:
            return ratios
        _, _, layer, ratio = min(steps)
        ratios[layer] = ratio
