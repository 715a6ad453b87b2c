"""``lt.compress``: reduce MACs to a target ratio by weight SVD, spatial SVD or channel pruning.

One stage: trace a copy → cost per layer → compressible layers (reasons for the skipped ones) → per-layer
ratios (given, or greedy over the eval-score table) → compress layer by layer (a fine-tune callback after
each) → measure. Several schemes run as successive stages (e.g. the SSVD → channel pruning flow of the
AIMET guide), each with its own target; the targets multiply to the overall one.
"""

from __future__ import annotations

import copy
import itertools
import logging
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, UnknownLayerError
from ..evaluation import OutputScore
from ..graph import example_inputs, prepare
from ..options import name_list, with_overrides
from ..paths import check_directory
from ..ptq.auto import call_eval_fn
from .config import CompressConfig
from .cost import cost
from .pruning_pass import prune_in_one_pass
from .ratio_selection import (
    CompressionError,
    EvalScoreTable,
    build_table_by_layers,
    default_candidates,
    fingerprint,
    greedy_select,
)
from .schemes import scheme_for, scheme_names
from .stage import Stage
from .suffix_table import layer_nodes, rows_fn, suffix_work

__all__ = ["Scheme", "SCHEMES", "CompressionInfo", "compress"]

log = logging.getLogger(__name__)

Scheme = str  # a registered scheme's name (leantorch.compress.schemes): weight_svd, spatial_svd, channel_pruning, ...
SCHEMES = scheme_names()  # the built-ins, at import; scheme_names() also lists schemes registered later


@dataclass
class CompressionInfo:
    """What one compression stage (or the whole multi-stage run, in ``stages``) did."""

    scheme: str
    target_mac_ratio: float
    ratios: dict[str, float]
    sizes: dict[str, int]  # rank (SVD) or kept input channels (channel pruning) per compressed layer
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    baseline_score: float
    score: float
    table: EvalScoreTable | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stages: list[CompressionInfo] = field(default_factory=list)

    @property
    def mac_ratio(self) -> float:
        """Achieved MACs after / before."""
        return self.macs_after / self.macs_before

    def rows(self) -> list[dict[str, Any]]:
        """Per compressed layer: ratio and rank/kept channels."""
        return [{"layer": n, "ratio": r, "rank or channels": self.sizes.get(n, "")} for n, r in self.ratios.items()]


def compress(
    model: nn.Module,
    example_input: Any,
    eval_fn: Callable[[nn.Module], float],
    scheme: Scheme | Sequence[Scheme] | None = None,
    target_mac_ratio: float | None = None,
    calibration: Iterable[Any] | None = None,
    options: CompressConfig | None = None,
    **overrides: Any,
) -> tuple[nn.Module, CompressionInfo]:
    """Compress ``model`` to about ``target_mac_ratio`` of its MACs; returns ``(new model, info)``.

    The options are those of :class:`~leantorch.compress.config.CompressConfig`: pass one as ``options``, or its
    fields as keywords (applied on top); ``scheme`` and ``target_mac_ratio`` may also come positionally.

    Args:
        eval_fn: ``eval_fn(model) -> float`` (higher is better); scores the eval-score table and the result.
        calibration: batches for channel pruning's activation sampling (required for that scheme).
        scheme: ``"weight_svd"``, ``"spatial_svd"`` (default), ``"channel_pruning"``, or a sequence of them run
            as stages (e.g. ``["spatial_svd", "channel_pruning"]``).
        target_mac_ratio: overall MACs after / before, in (0, 1) (default 0.5).
        ratios: manual per-layer ratios ``{layer: ratio}`` (single stage; no eval-score table). Channel
            pruning prunes dependency groups (channels tied by adds, concatenations, fan-out): a ratio given
            for any layer reading a group is the group's, and ``info.ratios``/``info.sizes`` are keyed by
            the group's first consumer.
        stage_targets: per-stage targets; their product must equal ``target_mac_ratio`` (default: the
            remaining target split evenly over the remaining stages).
        candidates: number of evenly spaced candidate ratios (default 10) or the ratios themselves.
        rank_multiple: round ranks / kept channels up to a multiple of this (hardware-friendly sizes), ≥ 1.
        skip_layers: a layer name or names (as in ``lt.compress.cost(lt.prepare(model, x), x)``) to leave alone; an
            unknown name raises :class:`~leantorch.UnknownLayerError`, as does one in ``ratios``.
        cache_dir: where eval-score tables are saved (``eval_scores_<scheme>.json``) and reused; checked
            before any work (created if needed).
        layer_callback: ``callback(model, layer)`` after each layer is compressed, e.g. a short fine-tune.
        num_batches: calibration batches used per channel-pruning sampling.
        workers: ``None``/``1``: the eval-score table is computed in this process. ``N`` > 1: its layers are split
            into ``N`` contiguous chunks run on Ray workers (:func:`leantorch.parallel.run_chunks`; needs the
            ``ray`` extra). Each worker advances its own copy of the model over its chunk.
        ray_address: run the table's chunks on an existing Ray cluster (``"auto"``, ``"ray://host:10001"``).

    Speed: with an :class:`~leantorch.evaluation.OutputScore` eval_fn (e.g. :func:`~leantorch.evaluation.sqnr_score`,
    :func:`~leantorch.evaluation.agreement_score`) each table entry runs only the part of the model after
    its layer, and channel pruning's statistics are gathered once per layer; the scores are the same as with
    full runs. Applying channel pruning advances the calibration batches once through the model (no
    ``layer_callback``) instead of re-running the prefix of every pruned layer.

    Raises:
        CompressionError: target outside (0, 1), nothing compressible, unreachable target, bad manual ratios.
        InvalidOptionError: ``candidates`` gives no ratio below 1; ``rank_multiple``, ``num_batches``,
            ``samples_per_image`` or ``workers`` is not a whole number ≥ 1; ``ray_address`` is not a string.
        OutputPathError: ``cache_dir`` is a file or cannot be created or written.
        UnknownLayerError: a name in ``skip_layers`` or ``ratios`` is not a layer of the model (lists them).
        CalibrationDataError: channel pruning without calibration batches, or a batch that is not a tensor or
            a tuple/list of the model's inputs (then labels), or NaN/Inf in one (checked before anything is
            compressed).
        EvalFunctionError: ``eval_fn`` raised or returned something that is not a finite number.

    The input model is never modified.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        >>> x = torch.randn(2, 8, 16, 16)
        >>> score = lambda m: -float((m(x) - model(x)).pow(2).mean())
        >>> small, info = compress(model, x[:1], score, "spatial_svd", 0.6, candidates=5, progress=False)
        >>> info.mac_ratio <= 0.6
        True
    """
    given = {"scheme": scheme, "target_mac_ratio": target_mac_ratio}
    cfg = with_overrides(
        CompressConfig, options, {**{k: v for k, v in given.items() if v is not None}, **overrides}, "compress"
    )
    schemes, target_mac_ratio, cache_dir = list(cfg.schemes), cfg.target_mac_ratio, cfg.cache_dir
    stage_targets, ratios = cfg.stage_targets, cfg.ratios
    if cache_dir is not None:
        check_directory(cache_dir, "cache_dir")  # before the eval-score table, which can take hours
    sampling = [s for s in schemes if scheme_for(s).needs_data]
    data = (
        _calibration_batches(calibration, cfg.num_batches, len(example_inputs(example_input)), sampling[0])
        if sampling
        else None
    )
    stages: list[CompressionInfo] = []
    current: nn.Module = model
    achieved = 1.0
    for index, name in enumerate(schemes):
        # Without explicit stage targets, what is left of the overall target is split evenly over the
        # remaining stages, so a stage that lands below its share (rank granularity) leaves more room.
        target = (
            stage_targets[index]
            if stage_targets
            else min(1.0, target_mac_ratio / achieved) ** (1 / (len(schemes) - index))
        )
        current, info = _compress_stage(
            current, example_input, eval_fn, name, target, ratios, data, cfg, check_skip=index == 0
        )
        stages.append(info)
        achieved *= info.mac_ratio
    if len(stages) == 1:
        return current, stages[0]
    first, last = stages[0], stages[-1]
    overall = CompressionInfo(
        "+".join(schemes),
        target_mac_ratio,
        {f"{s.scheme}:{n}": r for s in stages for n, r in s.ratios.items()},
        {f"{s.scheme}:{n}": k for s in stages for n, k in s.sizes.items()},
        first.macs_before,
        last.macs_after,
        first.params_before,
        last.params_after,
        first.baseline_score,
        last.score,
        seconds={k: sum(s.seconds.get(k, 0.0) for s in stages) for k in ("table", "selection", "apply")},
        stages=stages,
    )
    return current, overall


def _calibration_batches(
    calibration: Iterable[Any] | None, num_batches: int, num_inputs: int, scheme: str
) -> list[tuple[torch.Tensor, ...]]:
    """The model inputs of the first ``num_batches`` batches (labels dropped as QuantSim's calibration does,
    :func:`leantorch.batches.model_inputs`), checked now: NaN/Inf would reach the least-squares fits and show
    up only later, as a NaN score blamed on eval_fn."""
    if calibration is None:
        raise CalibrationDataError(
            f"{scheme} samples activations but got calibration=None: pass "
            "calibration=<a list or DataLoader of input batches like the example input>"
        )
    check_iterable(calibration)
    data = list(itertools.islice(calibration, num_batches))
    if not data:
        raise CalibrationDataError(
            f"{scheme} samples activations but got no batch (num_batches="
            f"{num_batches}): pass a non-empty list or DataLoader of input batches"
        )
    return [model_inputs(batch, num_inputs, index) for index, batch in enumerate(data)]


def _compress_stage(
    model: nn.Module,
    example_input: Any,
    eval_fn: Callable[[nn.Module], float],
    scheme: str,
    target: float,
    ratios: dict[str, float] | None,
    data: list[Any] | None,
    run: CompressConfig,
    check_skip: bool = False,
) -> tuple[fx.GraphModule, CompressionInfo]:
    gm = prepare(model, example_input)
    gm.eval()
    costs = cost(gm, example_input)
    unknown = [n for n in run.skip_layers if n not in costs.layers]
    if unknown and check_skip:  # later stages see renamed layers (an SVD pair is "<name>.0", "<name>.1")
        raise UnknownLayerError(
            f"skip_layers={unknown}: not a conv/linear layer of the model; valid names "
            f"({len(costs.layers)}): {name_list(list(costs.layers))}"
        )
    stage = Stage(gm, scheme, costs, run.skip_layers, data, run.rank_multiple, run.samples_per_image)
    if not stage.layers:
        raise CompressionError(
            f"no layer can be compressed by {scheme}: "
            + "; ".join(f"{n}: {r}" for n, r in list(stage.skipped.items())[:5])
        )
    seconds: dict[str, float] = {}
    baseline = call_eval_fn(eval_fn, gm, "the uncompressed model")
    table = None
    start = time.perf_counter()
    if ratios is not None:
        chosen = _manual_ratios(ratios, stage)
    else:
        table = _eval_score_table(stage, eval_fn, baseline, run)
        seconds["table"] = time.perf_counter() - start
        start = time.perf_counter()
        chosen, threshold = greedy_select(table, stage.estimate_macs, target * costs.total_macs)
        log.info(
            "%s: score threshold %.4g selects %d layer(s)", scheme, threshold, sum(r < 1.0 for r in chosen.values())
        )
    seconds["selection"] = time.perf_counter() - start
    start = time.perf_counter()
    if stage.method.prunes_in_one_pass and run.layer_callback is None:
        sizes = prune_in_one_pass(stage, {n: chosen.get(n, 1.0) for n in stage.layers}, run.progress)
    else:  # SVD needs no data; a fine-tune callback may change any weight, so each layer re-runs its prefix
        sizes = {}
        todo = [n for n in stage.layers if chosen.get(n, 1.0) < 1.0]
        for name in tqdm(todo, desc=f"compressing ({scheme})", unit="layer", disable=not run.progress, leave=False):
            size = stage.apply(gm, name, chosen[name])
            if size is not None:
                sizes[name] = size
                if run.layer_callback is not None:
                    run.layer_callback(gm, name)
    sizes = {n: sizes[n] for n in stage.layers if n in sizes}  # the table's layer order, as before
    seconds["apply"] = time.perf_counter() - start
    gm.eval()
    after = cost(gm, example_input)
    info = CompressionInfo(
        scheme,
        target,
        {n: chosen[n] for n in sizes},
        sizes,
        costs.total_macs,
        after.total_macs,
        costs.total_params,
        after.total_params,
        baseline,
        call_eval_fn(eval_fn, gm, f"the {scheme}-compressed model"),
        table,
        stage.skipped,
        seconds,
    )
    return gm, info


def _eval_score_table(
    stage: Stage, eval_fn: Callable[[nn.Module], float], baseline: float, run: CompressConfig
) -> EvalScoreTable:
    """Score every (layer, candidate ratio). An :class:`~leantorch.evaluation.OutputScore` runs only the part of
    the model after each layer (:mod:`.suffix_table`); any other eval_fn scores a compressed deep copy."""
    gm, scheme = stage.gm, stage.scheme
    grid = (
        default_candidates(int(run.candidates))
        if isinstance(run.candidates, numbers.Integral)
        else sorted({*run.candidates, 1.0})
    )
    # Graph order, so that the contiguous chunks of a parallel back end each walk one stretch of the model.
    layers = sorted(stage.layers, key=layer_nodes(gm, stage.layers).__getitem__)
    if isinstance(eval_fn, OutputScore):
        rows = rows_fn(stage, eval_fn, grid, baseline, run.progress and run.serial)
    else:

        def rows(chunk: list[str]) -> list[dict[float, float]]:
            jobs = [(layer, r) for layer in chunk for r in grid if r < 1.0]
            out: dict[str, dict[float, float]] = {layer: {} for layer in chunk}
            for layer, ratio in tqdm(
                jobs,
                desc=f"eval-score table ({scheme})",
                unit="eval",
                disable=not (run.progress and run.serial),
                leave=False,
            ):
                trial = copy.deepcopy(gm)
                out[layer][ratio] = (
                    baseline
                    if stage.apply(trial, layer, ratio) is None
                    else call_eval_fn(eval_fn, trial, f"the model with layer {layer} compressed to ratio {ratio}")
                )
            return [out[layer] for layer in chunk]

    def chunked(chunk: list[str]) -> list[dict[float, float]]:
        if run.serial:
            return rows(chunk)
        from ..parallel import gpu_share, run_chunks  # Ray is an optional extra: imported only when asked for

        work = suffix_work(stage, chunk)
        device = next((p.device for p in gm.parameters()), "cpu")
        return run_chunks(
            rows,
            chunk,
            workers=run.workers,
            ray_address=run.ray_address,
            progress=run.progress,
            desc=f"eval-score table ({scheme})",
            weights=[work[n] for n in chunk],
            gpus_per_worker=gpu_share(device, run.workers),
        )

    path = Path(run.cache_dir) / f"eval_scores_{scheme}.json" if run.cache_dir is not None else None
    table = build_table_by_layers(
        layers, grid, chunked, baseline, scheme, fingerprint(gm, stage.layers, scheme, grid, run.rank_multiple), path
    )
    table.scores = {n: table.scores[n] for n in stage.layers}  # the cost report's order, as before
    return table


def _manual_ratios(ratios: dict[str, float], stage: Stage) -> dict[str, float]:
    # Channel pruning chooses one ratio per dependency group: any consumer of a group names it.
    grouped: dict[str, float] = {}
    for name, ratio in ratios.items():
        unit = stage.group_of.get(name, name)
        if grouped.get(unit, ratio) != ratio:
            raise CompressionError(
                f"cannot use manual ratios {ratios}: {name} is pruned together with the group {unit}, which "
                f"already has ratio {grouped[unit]}; give the group one ratio"
            )
        grouped[unit] = ratio
    ratios = grouped
    unknown = [n for n in ratios if n not in stage.costs.layers]
    if unknown:
        raise UnknownLayerError(
            f"ratios={unknown}: not a conv/linear layer of the model; valid names "
            f"({len(stage.costs.layers)}): {name_list(list(stage.costs.layers))}"
        )
    bad = {n: r for n, r in ratios.items() if n not in stage.layers or not (0.0 < r <= 1.0)}
    if bad:
        reasons = {
            n: stage.skipped.get(
                n, "not a layer of the model" if n not in stage.costs.layers else "ratio must be in (0, 1]"
            )
            for n in bad
        }
        raise CompressionError(f"cannot use manual ratios {bad}: {reasons}")
    return dict(ratios)
