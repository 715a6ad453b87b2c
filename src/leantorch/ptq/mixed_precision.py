"""Automatic mixed precision (AMP, as in AIMET): a precision per layer group that meets an allowed score drop.

1. Layer groups (:mod:`.amp_groups`): a weighted layer's weights with the activations that belong to it.
   Each candidate (``"W4A8"``, ``"W8A8"``, ``"W8A16"``...) is calibrated once for the whole model; any mix is
   then assembled from those encodings without recalibrating.
2. Phase 1: for every group and lower candidate, the score with only that group lowered (the others at the
   highest candidate): the sensitivity table.
3. Phase 2 and 3 (:mod:`.amp_search`): the greedy Pareto list of cost (bit-operations or weight bytes) against
   score, its points verified with real evaluations, and the cheapest verified point whose score is within
   ``allowed_drop`` of the FP32 score; with ``max_cost`` (a budget), only the points within it are searched.

The chosen bitwidths are the quantizers' own, so ``result.sim.export(...)`` writes them into the encodings file
and the ONNX QDQ graph (weights below 8 bits as int8 containers with a clip, 16-bit activations as int16).

Example:
    >>> net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> data = [torch.randn(32, 16) for _ in range(2)]
    >>> amp = mixed_precision(net, data[0][:1], data, candidates=("W4A8", "W8A8"), allowed_drop=0.05, progress=False)
    >>> set(amp.chosen.config.values()) <= {"W4A8", "W8A8"}, amp.chosen.score >= amp.fp32_score - 0.05
    (True, True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..batches import check_iterable
from ..errors import CalibrationDataError, InvalidOptionError
from ..evaluation import agreement_score, model_outputs, sqnr_score
from ..options import check_choice, check_count, check_flag, check_positive, with_overrides
from ..quant.sim import QuantSim
from .adaround import AdaroundConfig
from .amp_groups import Candidate, CostKind, LayerGroup, find_groups, measure_macs, parse_candidates
from .amp_phase1 import Assembler, phase1
from .amp_reround import REROUND_KEEPS, needs_reround, reround_chosen
from .amp_result import MixedPrecisionResult, ParetoPoint
from .amp_rounding import ROUNDINGS, Rounding, check_rounding_options, float_copy, round_candidates
from .amp_search import check_budget, first_within, greedy_steps, search_front
from .auto import call_eval_fn
from .gptq import GptqConfig

__all__ = ["MixedPrecisionConfig", "ParetoPoint", "MixedPrecisionResult", "mixed_precision", "Candidate"]

log = logging.getLogger(__name__)

ScoreKind = Literal["auto", "agreement", "sqnr"]


@dataclass(frozen=True)
class MixedPrecisionConfig:
    """Options of :func:`mixed_precision`.

    Attributes:
        candidates: precisions a group may take, ``"W<bits>A<bits>"`` strings or :class:`Candidate`\\ s;
            ``"W3A16B64"``: blockwise weights, one scale per 64 input channels where a weight makes whole blocks
            (``cost="memory"`` counts the block scales: a float32 each, plus a zero point for asymmetric weights).
        allowed_drop: the chosen point's score may be at most this far below the FP32 score (score units).
        cost: ``"bitops"`` (MACs × weight bits × activation bits) or ``"memory"`` (weight bytes).
        max_cost: a budget, as a fraction of the all-highest point's cost (e.g. 0.25 with ``cost="memory"`` and
            W16 as the highest candidate: less than half the weight bytes of W8). Only points of the greedy list
            within it are searched: the cheapest of them that meets ``allowed_drop``, else the first (costliest,
            best estimated score) of them, with ``met`` False. None: no budget (AIMET's behaviour).
        score: without ``eval_fn``: ``"agreement"`` (top-1 agreement with the float model's outputs),
            ``"sqnr"`` (output SQNR in dB, capped at 200) or ``"auto"`` (agreement for ``[N, classes]`` outputs).
        baseline: what ``allowed_drop`` is measured from: ``"fp32"`` (the float model's score, as AIMET),
            ``"highest"`` (every group at the highest candidate) or ``"auto"`` (``"highest"`` for the default
            SQNR score, whose float value is only its cap; ``"fp32"`` otherwise).
        front_evals: evenly spaced points of the Pareto list scored for real (beside the binary search).
        per_channel, scheme, config: the QuantSim built for a model input (ignored for a QuantSim input).
        rounding: ``"nearest"`` (round-to-nearest weights), ``"adaround"`` or ``"gptq"``: each candidate below
            16-bit weights is rounded once by :func:`~leantorch.adaround` or by asymmetric :func:`~leantorch.gptq`
            (:mod:`.amp_rounding`); a group at that candidate takes its rounded weights and their frozen encodings,
            also in the export.
        reround: with ``rounding`` AdaRound or GPTQ, round the chosen mix once more with every group at its chosen
            bitwidths (:mod:`.amp_reround`; each candidate was rounded with *all* layers at it), then recalibrate
            the activations; kept if it scores at least the chosen mix. EfficientNet-Lite0 at 0.473× W8 weight bytes
            (256 calibration crops): held-out top-1 agreement 0.822 → 0.898.
        reround_keep: ``"if_better"``: keep the re-rounded mix only if ``eval_fn`` scores it at least the chosen one;
            ``"always"``: keep it regardless, for when ``eval_fn``'s data is too small to tell them apart (on
            256 crops, top-1 agreement moves by ±0.017 from noise alone: EfficientNet-Lite0 at 0.496× W8 bytes
            rejected a re-rounding worth +0.044 held-out agreement).
        rounding_options: an :class:`~leantorch.ptq.adaround.AdaroundConfig` for ``"adaround"``, a
            :class:`~leantorch.ptq.gptq.GptqConfig` for ``"gptq"`` (their bitwidths, per-channel setting, batches
            and path are set per candidate, and their QuantSim config is the sim's, with every group at the
            candidate); None: the defaults (for GPTQ: asymmetric, MSE grids).
        reround_options: the same for the re-rounding of the chosen mix (None: ``rounding_options``). Why a
            second one: phase 1 scores each group at a candidate with every other group at the highest one, so
            candidates rounded each for its own layer's float inputs (``GptqConfig(asymmetric=False,
            use_quantized_inputs=False)``) are what it means to measure, while asymmetric GPTQ, which also undoes
            the quantization upstream, suits the final mix.
        progress: progress bars.

    Example:
        >>> MixedPrecisionConfig(allowed_drop=0.02).cost
        'bitops'
    """

    candidates: tuple[str | Candidate, ...] = ("W4A8", "W8A8", "W8A16")
    allowed_drop: float = 0.01
    cost: CostKind = "bitops"
    max_cost: float | None = None
    score: ScoreKind = "auto"
    baseline: Literal["auto", "fp32", "highest"] = "auto"
    front_evals: int = 16
    per_channel: bool | None = True
    scheme: str = "tf_enhanced"
    config: Any = "default"
    progress: bool = True
    rounding: Rounding = "nearest"
    rounding_options: AdaroundConfig | GptqConfig | None = None
    reround: bool = True
    reround_options: AdaroundConfig | GptqConfig | None = None
    reround_keep: Literal["if_better", "always"] = "if_better"

    def __post_init__(self) -> None:
        parse_candidates(self.candidates)
        check_positive("allowed_drop", self.allowed_drop, allow_zero=True, hint=" (in the score's units)")
        check_choice("cost", self.cost, ("bitops", "memory"))
        if self.max_cost is not None:
            check_positive("max_cost", self.max_cost, hint=" (a fraction of the all-highest point's cost, e.g. 0.5)")
        check_choice("score", self.score, ("auto", "agreement", "sqnr"))
        check_choice("baseline", self.baseline, ("auto", "fp32", "highest"))
        check_count("front_evals", self.front_evals)
        check_flag("per_channel", self.per_channel, allow_none=True)
        check_flag("progress", self.progress)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_rounding_options(self.rounding_options, self.rounding)
        check_flag("reround", self.reround)
        check_choice("reround_keep", self.reround_keep, REROUND_KEEPS)
        if self.reround_options is not None:
            check_rounding_options(self.reround_options, self.rounding)


@contextmanager
def _float_mode(sim: QuantSim) -> Iterator[None]:
    """Every quantizer off (the float model as traced), restored afterwards."""
    quantizers = list(sim.quantizers().values())
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, was in zip(quantizers, saved):
            q.enabled = was


def _batches(data: Any, name: str) -> list[Any]:
    """``data`` as a non-empty list of batches (checked)."""
    check_iterable(data)
    found = list(data)
    if not found:
        raise CalibrationDataError(f"{name} is empty: pass at least one batch")
    return found


def _default_eval(sim: QuantSim, data: list[Any], kind: ScoreKind) -> tuple[Callable[[nn.Module], float], str]:
    probe = [b if isinstance(b, torch.Tensor) else b[0] for b in data]
    with _float_mode(sim):
        outputs = model_outputs(sim.model, probe[:1], progress=False)
        if kind == "auto":
            kind = "agreement" if outputs.dim() == 2 and outputs.shape[1] > 1 else "sqnr"
        score = agreement_score(sim.model, probe) if kind == "agreement" else sqnr_score(sim.model, probe)
    return score, score.name


def mixed_precision(
    sim_or_model: QuantSim | nn.Module,
    example_input: Any = None,
    calibration: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    options: MixedPrecisionConfig | None = None,
    *,
    eval_data: Any = None,
    reround_data: Any = None,
    sensitivity_fn: Callable[[nn.Module], float] | None = None,
    **overrides: Any,
) -> MixedPrecisionResult:
    """Choose a precision per layer group (AIMET's AMP); ``result.sim`` is the configured QuantSim.

    Args:
        sim_or_model: a float model (not modified: a QuantSim of a copy is built at the highest candidate), or a
            QuantSim (configured in place; its frozen and float-format quantizers keep their precision).
        example_input: the model's example input (for a model).
        calibration: batches (re-iterable) or ``callable(model)``: every candidate is calibrated on it.
        eval_fn: ``eval_fn(model) -> float``, higher is better. Default: the ``score`` option on ``eval_data``.
        options: a :class:`MixedPrecisionConfig`; keyword options override its fields.
        eval_data: batches for the default score (default: the calibration batches).
        reround_data: batches for the re-rounding of the chosen mix and the activations' recalibration after it
            (``reround``; default: the calibration batches). The search rounds once per candidate, the re-rounding
            once: it can afford more data (EfficientNet-Lite0, the 0.473× W8-bytes mix chosen on 256 crops,
            re-rounded on 256 / 512 / 768 / 1,024 crops: held-out top-1 agreement 0.898 / 0.912 / 0.922 / 0.932).
        sensitivity_fn: scores phase 1 (the order of the greedy list) instead of ``eval_fn``, e.g. output SQNR
            where a few samples' agreement ties; the choice is still verified with ``eval_fn``.

    Raises:
        InvalidOptionError: an unknown candidate or option, ``allowed_drop`` < 0, no group to tune, a ``max_cost``
            below what every group at the lowest candidate costs (checked before any calibration or rounding),
            blockwise candidates or weights of ``decompressed_bw`` bits or more on a sim with LPBQ weights.
        CalibrationDataError: no or empty calibration data (or ``reround_data``).
        EvalFunctionError: a score that is not a finite number (NaN outputs, an empty evaluation set).

    Example:
        >>> amp = mixed_precision(model, x[:1], batches, candidates="W4A8,W8A8", allowed_drop=0.01)  # doctest: +SKIP
        >>> amp.sim.export("out", "model")                                                           # doctest: +SKIP
    """
    cfg = with_overrides(MixedPrecisionConfig, options, overrides, "mixed_precision")
    candidates = parse_candidates(cfg.candidates)
    if calibration is None:
        raise CalibrationDataError("mixed_precision needs calibration data: pass calibration=[batch, ...]")
    check_iterable(calibration, allow_callable=True)
    calib = calibration if callable(calibration) else list(calibration)
    if not callable(calib) and not calib:
        raise CalibrationDataError("calibration data is empty: pass at least one batch")
    if cfg.rounding != "nearest" and callable(calib):
        raise InvalidOptionError(f"rounding={cfg.rounding!r} needs calibration batches, not a callable")
    final_calib = calib if reround_data is None else _batches(reround_data, "reround_data")
    top = candidates[0]
    if isinstance(sim_or_model, QuantSim):
        sim = sim_or_model
    else:
        if example_input is None:
            raise InvalidOptionError("mixed_precision(model, ...) needs example_input (or pass a QuantSim)")
        sim = QuantSim(
            sim_or_model,
            example_input,
            param_bw=top.param_bw,
            act_bw=top.act_bw,
            scheme=cfg.scheme,
            per_channel=cfg.per_channel,
            config=cfg.config,
        )
    groups, orphans = find_groups(sim)
    if not groups:
        raise InvalidOptionError("mixed_precision: the QuantSim has no enabled, unfrozen integer weight quantizer")
    lpbq = max((w.decompressed_bw for g in groups for w in g.weight_blocks), default=0)  # the sim's LPBQ, if any
    if lpbq and top.param_bw >= lpbq:
        raise InvalidOptionError(
            f"mixed_precision: candidate {top.name} on a QuantSim with LPBQ weights "
            f"(decompressed_bw={lpbq}): LPBQ stores fewer bits than it decompresses to; keep the candidates' weights "
            f"below {lpbq} bits"
        )
    if any(c.block_size for c in candidates) and lpbq:
        raise InvalidOptionError(
            "mixed_precision: blockwise candidates (" + ", ".join(c.name for c in candidates if c.block_size) + ") "
            "on a QuantSim with LPBQ weights (decompressed_bw): candidate blocks have float scales; build the sim "
            "without decompressed_bw, or drop the B<size> candidates to mix bitwidths on its LPBQ blocks"
        )
    if orphans:
        log.info("activation quantizers outside every layer group stay at %s: %s", top.name, ", ".join(orphans))
    with _float_mode(sim):  # MACs before calibration: the budget is checked before any long work
        measure_macs(sim, groups, sim.example_input)
    if cfg.max_cost is not None:
        check_budget(groups, candidates, cfg.cost, cfg.max_cost)
    default = eval_fn is None
    if eval_fn is None:
        if callable(calib) and eval_data is None:
            raise InvalidOptionError("with calibration as a callable, pass eval_fn or eval_data for the score")
        eval_fn, score_name = _default_eval(sim, list(eval_data) if eval_data is not None else calib, cfg.score)
    else:
        score_name = getattr(eval_fn, "name", "eval_fn")
    with _float_mode(sim):
        fp32 = call_eval_fn(eval_fn, sim.model, "the float model")
    rounded, source = None, None
    example = sim.example_input if example_input is None else example_input
    rounder = check_rounding_options(cfg.rounding_options, cfg.rounding)
    rerounder = rounder if cfg.reround_options is None else check_rounding_options(cfg.reround_options, cfg.rounding)
    if cfg.rounding != "nearest":
        source = float_copy(sim) if isinstance(sim_or_model, QuantSim) else sim_or_model
        names = [g.name for g in groups]
        rounded = round_candidates(source, example, calib, candidates, sim, names, rounder, cfg.progress)
    assembler = Assembler(sim, groups, candidates, calib, rounded)
    sensitive = sensitivity_fn or eval_fn
    sensitivity, evaluations = phase1(assembler, candidates, sensitive, cfg.progress)
    front = _pareto_list(groups, candidates, sensitivity, cfg.cost)
    by_name = {c.name: c for c in candidates}
    scored: dict[int, float] = {}

    def score_at(index: int) -> float:
        if index not in scored:
            assembler.set_all({g: by_name[c] for g, c in front[index].config.items()})
            scored[index] = front[index].score = call_eval_fn(eval_fn, sim.model, f"Pareto point {index}")
        return scored[index]

    # An SQNR's float value is only its cap: the default SQNR score measures the drop from all-highest.
    highest = cfg.baseline == "highest" or (cfg.baseline == "auto" and default and score_name.startswith("output SQNR"))
    reference = score_at(0) if highest else fp32
    first = first_within(front, cfg.max_cost)
    chosen, met = search_front(
        len(front) - first, lambda i: score_at(first + i), reference - cfg.allowed_drop, cfg.front_evals
    )
    chosen += first
    if not met:
        where, fallback = (
            ("within max_cost ", "the costliest within it") if cfg.max_cost else ("", f"all at {top.name}")
        )
        log.warning(
            "no candidate mix %sis within allowed_drop=%g of the reference score: chose point %d (%s)",
            where,
            cfg.allowed_drop,
            chosen,
            fallback,
        )
    chosen_score = score_at(chosen)  # the search scored it; this only reads the cache
    mix = {g: by_name[c] for g, c in front[chosen].config.items()}
    assembler.set_all(mix)
    reround_score, kept = None, False
    if source is not None and cfg.reround and needs_reround(mix):
        reround_score, kept = reround_chosen(
            assembler, source, example, final_calib, mix, rerounder, eval_fn, chosen_score, cfg.progress,
            always=cfg.reround_keep == "always",
        )  # fmt: skip
        met = met or (kept and reround_score >= reference - cfg.allowed_drop)
    return MixedPrecisionResult(
        sim=sim,
        groups=groups,
        candidates=candidates,
        cost_kind=cfg.cost,
        fp32_score=fp32,
        reference_score=reference,
        allowed_drop=cfg.allowed_drop,
        max_cost=cfg.max_cost,
        sensitivity=sensitivity,
        front=front,
        chosen=front[chosen],
        met=met,
        score_name=score_name,
        estimate_is_score=sensitivity_fn is None,
        rounding=cfg.rounding,
        assembler=assembler,
        reround_score=reround_score,
        rerounded=kept,
        evaluations=evaluations + len(scored) + (reround_score is not None),
    )


def _pareto_list(
    groups: list[LayerGroup],
    candidates: tuple[Candidate, ...],
    sensitivity: dict[str, dict[str, float]],
    kind: CostKind,
) -> list[ParetoPoint]:
    """Phase 2: the greedy list from all-highest, each point with its cost and estimated score."""
    names = [c.name for c in candidates]
    base = sensitivity[groups[0].name][names[0]]
    drops = {g.name: {n: base - sensitivity[g.name][n] for n in names} for g in groups}
    costs = {g.name: {c.name: g.cost(c, kind) for c in candidates} for g in groups}
    weights = {g.name: {c.name: g.cost(c, "memory") for c in candidates} for g in groups}
    config = dict.fromkeys((g.name for g in groups), names[0])

    def point(estimated: float) -> ParetoPoint:
        cost = sum(costs[g][c] for g, c in config.items())
        size = sum(weights[g][c] for g, c in config.items())
        return ParetoPoint(cost, size, estimated, dict(config))

    front = [point(base)]
    for (group, cand), drop in greedy_steps(drops, costs, names):
        config[group] = cand
        front.append(point(base - drop))
    return front
