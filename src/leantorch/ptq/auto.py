"""AutoQuant: BN folding → CLE → AdaRound (→ block reconstruction, on request): the stages of :mod:`.auto_stages`,
stage by stage, until the quantized score is good enough."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, InvalidOptionError, LeanTorchError
from ..graph import example_inputs
from ..options import as_names, check_positive, with_overrides
from ..paths import check_directory, check_file_name
from ..quant.estimators import QuantScheme
from ..quant.sim import QuantSim
from .adaround import AdaroundConfig, adaround
from .auto_stages import (
    AutoQuantStage,
    StageContext,
    default_stage_names,
    get_stage,
    register_stage,
    stage_names,
)
from .block_reconstruction import BlockReconstructionConfig, reconstruct
from .bn_fold import fold_batch_norms
from .cle import equalize
from .downstream_ranges import downstream_ranges
from .gptq import GptqConfig, gptq

__all__ = ["EvalFunctionError", "call_eval_fn", "AutoQuantResult", "auto_quant"]

log = logging.getLogger(__name__)


class EvalFunctionError(LeanTorchError):
    """The user's eval_fn raised or returned something that is not a finite number."""


def call_eval_fn(eval_fn: Callable[[nn.Module], float], model: nn.Module, what: str = "the model") -> float:
    """``eval_fn(model)`` as a float; a clear error naming eval_fn and ``what`` was scored otherwise.

    Example:
        >>> call_eval_fn(lambda m: 0.5, nn.Identity())
        0.5
    """
    try:
        value = eval_fn(model)
    except Exception as exc:
        raise EvalFunctionError(f"eval_fn raised {type(exc).__name__} on {what}: {exc}") from exc
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EvalFunctionError(
            f"eval_fn must return a finite number (higher is better), got {value!r} "
            f"({type(value).__name__}) on {what}: return e.g. float(accuracy)"
        )
    if not math.isfinite(float(value)):
        raise EvalFunctionError(
            f"eval_fn must return a finite number (higher is better), got {value!r} on {what}. A NaN score "
            "usually comes from NaN model outputs (check the evaluation data for NaN/Inf) or an empty "
            "evaluation set (0/0); an Inf one from a loss that overflowed."
        )
    return float(value)


@dataclass
class AutoQuantResult:
    """The chosen model, its calibrated QuantSim and the score of every stage that ran."""

    model: nn.Module
    sim: QuantSim
    stages: list[dict[str, Any]] = field(default_factory=list)


def _bn_fold(model: nn.Module, context: StageContext) -> tuple[nn.Module, Path | None]:
    return fold_batch_norms(model, context.example_input)[0], None


def _cle(model: nn.Module, context: StageContext) -> tuple[nn.Module, Path | None]:
    return equalize(model, context.example_input), None


def _adaround(model: nn.Module, context: StageContext) -> tuple[nn.Module, Path | None]:
    # adaround does not modify its input, so the CLE stage's candidate is reused rather than equalized again.
    options = {f.name: getattr(context.adaround, f.name) for f in fields(context.adaround)}
    return adaround(model, context.example_input, context.calibration, **options)


def _gptq(model: nn.Module, context: StageContext) -> tuple[nn.Module, Path | None]:
    return gptq(model, context.example_input, context.calibration, context.gptq)


def _reconstruct(model: nn.Module, context: StageContext) -> tuple[nn.Module, Path | None]:
    return reconstruct(model, context.example_input, context.calibration, context.reconstruct)


register_stage(AutoQuantStage("bn_fold", _bn_fold))
register_stage(AutoQuantStage("cle", _cle))
register_stage(AutoQuantStage("adaround", _adaround, starts_from="cle"))
# Opt-in, after AdaRound: on CNNs it is the better one (EfficientNet-Lite0 W4A8 per channel: 0.82 against AdaRound's
# 0.80; W8A8 per-tensor 0.87), but on transformers it loses (MiniLM), and by default it would add minutes to every
# `quantize --auto` whose AdaRound stage misses the target.
register_stage(AutoQuantStage("gptq", _gptq, starts_from="cle", default=False))
# Opt-in: on EfficientNet-Lite0 it takes minutes per configuration on a CPU where AdaRound takes one or two.
register_stage(AutoQuantStage("reconstruct", _reconstruct, starts_from="cle", default=False, activation_encodings=True))


def auto_quant(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    eval_fn: Callable[[nn.Module], float],
    allowed_drop: float = 0.01,
    param_bw: int = 8,
    act_bw: int = 8,
    scheme: str = "tf_enhanced",
    per_channel: bool | None = None,
    config: Any = "default",
    adaround_kwargs: dict[str, Any] | None = None,
    path: str | Path = ".",
    progress: bool = True,
    stages: Sequence[str] | None = None,
    reconstruct_kwargs: dict[str, Any] | None = None,
    downstream: bool = True,
) -> AutoQuantResult:
    """Apply BN fold, then CLE, then AdaRound, evaluating the quantized model after each; stop at the first
    stage whose score is within ``allowed_drop`` of the float score, else return the best stage.

    ``eval_fn(model) -> float`` scores a model (higher is better); it is called with the float model
    and with each stage's ``sim.model``. Returns the model, its QuantSim and a table of stage scores.
    ``stages`` picks and orders the stages (names from :func:`~leantorch.ptq.auto_stages.stage_names`;
    default: the default ones, :func:`~leantorch.ptq.auto_stages.default_stage_names`, in registration order).
    Asymmetric GPTQ (stage ``gptq``: each layer fitted to the float model's outputs from the quantized model's inputs,
    from the CLE model) and block reconstruction are opt-in
    (``stages=["bn_fold", "cle", "adaround", "gptq", "reconstruct"]``); reconstruction runs after
    AdaRound, from the CLE model, with ``reconstruct_kwargs`` (options of
    :func:`~leantorch.ptq.block_reconstruction.reconstruct`, e.g. ``{"iterations": 500}``), and its sim keeps
    the activation step sizes it learned; the table shows both and the better one is returned.
    With ``downstream`` (default), when no stage reaches the target, the best stage's activation ranges are
    re-chosen by their error at the next weighted layers (:func:`~leantorch.ptq.downstream_ranges.downstream_ranges`,
    on two calibration batches) and kept if that scores better (a row ``<stage> + downstream ranges``).

    Raises:
        CalibrationDataError: no calibration batch, a batch that is not a tensor or a tuple of the model's
            inputs (then labels), or NaN/Inf in one (checked before ``eval_fn`` first runs).
        InvalidOptionError: ``allowed_drop`` is negative or not finite; ``adaround_kwargs`` (or
            ``reconstruct_kwargs``) names an option adaround (reconstruct) does not take or one auto_quant sets
            itself (``path``, ``param_bw``, ``per_channel`` …), or a value it would refuse (checked with its own
            rules before ``eval_fn`` first runs); an unknown or repeated stage name.
        OutputPathError: ``path`` (where AdaRound writes its encodings) cannot be a directory.
        EvalFunctionError: ``eval_fn`` raised or returned something that is not a finite number.

    Example:
        >>> result = auto_quant(model, x[:1], calib, eval_fn, allowed_drop=0.01)  # doctest: +SKIP
        >>> result.stages[-1]["stage"]                                            # doctest: +SKIP
        'cle'
    """
    check_positive(
        "allowed_drop",
        allowed_drop,
        allow_zero=True,
        hint=" (the score drop you accept, e.g. 0.01 for one point of accuracy)",
    )
    chosen = _check_stages(stages)
    calibration = [] if calibration is None or isinstance(calibration, torch.Tensor) else calibration
    check_iterable(calibration)
    calibration = list(calibration)
    if not calibration:
        raise CalibrationDataError(
            "auto_quant needs calibration data: pass a list or DataLoader of input "
            "batches like the example input (a single tensor: wrap it as [tensor])"
        )
    for index, batch in enumerate(calibration):  # structure and NaN/Inf, before the first evaluation
        model_inputs(batch, len(example_inputs(example_input)), index)
    check_directory(path, "path")  # AdaRound, the last stage, writes its encodings there
    own = {"param_bw": param_bw, "act_bw": act_bw, "per_channel": per_channel, "scheme": scheme, "config": config}
    settings = {**own, "path": path, "progress": progress}
    context = StageContext(
        example_input,
        calibration,
        _stage_options(AdaroundConfig, "adaround", adaround_kwargs, settings),
        _stage_options(BlockReconstructionConfig, "reconstruct", reconstruct_kwargs, settings),
        _gptq_options(settings, adaround_kwargs),
    )
    float_score = call_eval_fn(eval_fn, model, "the float model")
    target = float_score - allowed_drop
    table: list[dict[str, Any]] = [{"stage": "float", "score": float_score, "seconds": 0.0}]
    best: tuple[float, nn.Module, QuantSim] | None = None
    candidates: dict[str, nn.Module] = {"float": model}
    for stage in chosen:
        start = time.perf_counter()
        candidate, encodings = stage.build(candidates.get(stage.starts_from, model), context)
        candidates[stage.name] = candidate
        sim = QuantSim(candidate, example_input, **own)
        if encodings is not None and stage.activation_encodings:
            sim.load_encodings(encodings, freeze=True)  # learned step sizes stay; nothing left to calibrate
        elif encodings is not None:
            sim.set_and_freeze_param_encodings(encodings)
        sim.compute_encodings(calibration, progress=progress)
        score = call_eval_fn(eval_fn, sim.model, f"the quantized model after {stage.name}")
        table.append({"stage": stage.name, "score": score, "seconds": time.perf_counter() - start})
        log.info("auto_quant %s: %.4f (target %.4f)", stage.name, score, target)
        if best is None or score > best[0]:
            best = (score, candidate, sim)
        if score >= target:
            break
    assert best is not None
    if downstream and best[0] < target and scheme != "downstream":
        best = _try_downstream_ranges(best, table, calibration, eval_fn, progress)
    return AutoQuantResult(best[1], best[2], table)


def _try_downstream_ranges(
    best: tuple[float, nn.Module, QuantSim],
    table: list[dict[str, Any]],
    calibration: list[Any],
    eval_fn: Callable[[nn.Module], float],
    progress: bool,
) -> tuple[float, nn.Module, QuantSim]:
    """The best stage with its activation ranges re-chosen by their downstream error, if that scores better."""
    score, candidate, sim = best
    stage = max((row for row in table[1:]), key=lambda row: row["score"])["stage"]
    start = time.perf_counter()
    quantizers = sim.quantizers()
    saved = {name: q.encoding for name, q in quantizers.items()}
    changed = downstream_ranges(sim, calibration, num_batches=2, progress=progress)
    new_score = call_eval_fn(eval_fn, sim.model, f"the quantized model after {stage} with downstream ranges")
    table.append({"stage": f"{stage} + downstream ranges", "score": new_score, "seconds": time.perf_counter() - start})
    log.info("auto_quant %s + downstream ranges: %.4f (%d ranges changed)", stage, new_score, len(changed))
    if new_score > score:
        return new_score, candidate, sim
    for row in changed:  # not better: the stage's own ranges back
        quantizers[row.quantizer].set_encoding(saved[row.quantizer])
    return best


def _check_stages(stages: Sequence[str] | None) -> list[AutoQuantStage]:
    if stages is None:
        return [get_stage(name) for name in default_stage_names()]
    names = as_names("stages", stages)
    if not names or len(set(names)) != len(names):
        raise InvalidOptionError(f"stages={stages!r}: pass distinct stage names from {', '.join(stage_names())}")
    return [get_stage(name) for name in names]


#: adaround options that auto_quant passes itself (from its own arguments), so not in ``adaround_kwargs``.
_SET_BY_AUTO_QUANT = (
    "model",
    "example_input",
    "calibration",
    "param_bw",
    "act_bw",
    "per_channel",
    "scheme",
    "config",
    "path",
    "progress",
)


def _stage_options(cls: type[Any], what: str, kwargs: Any, own: dict[str, Any]) -> Any:
    """``<what>_kwargs`` with auto_quant's own settings, checked like ``what`` checks its options, before the
    first ``eval_fn`` call: a typo or a bad value would otherwise surface only after the float, BN-fold and CLE
    stages were scored."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidOptionError(
            f"{what}_kwargs={kwargs!r}: pass a dict of {what} options, e.g. {{'iterations': 1000}}"
        )
    accepted = [f.name for f in fields(cls) if f.name not in _SET_BY_AUTO_QUANT]
    for key in kwargs:
        if key in _SET_BY_AUTO_QUANT:
            raise InvalidOptionError(
                f"{what}_kwargs: {key!r} is set by auto_quant itself (pass it to "
                f"auto_quant directly, if it is one of its arguments); {what}_kwargs "
                f"takes {', '.join(accepted)}"
            )
        if key not in accepted:
            raise InvalidOptionError(f"{what}_kwargs: no {what} option {key!r}; choose from {', '.join(accepted)}")
    options = with_overrides(cls, None, {**kwargs, **own}, f"{what}_kwargs")
    check_file_name(options.filename_prefix)
    QuantScheme.parse(options.param_scheme)
    return options


def _gptq_options(settings: dict[str, Any], adaround_kwargs: dict[str, Any] | None) -> GptqConfig:
    """The ``gptq`` stage's options: asymmetric (without bias re-fitting: it lost in every paired trial), auto_quant's
    settings, and AdaRound's calibration batch count and weight scheme where ``adaround_kwargs`` set them (the two
    stages see the same data). The grids default to AdaRound's MSE ones (GPTQ's own default, minmax, is for
    transformers)."""
    shared: dict[str, Any] = {"param_scheme": "mse"}
    shared.update({k: v for k, v in (adaround_kwargs or {}).items() if k in ("num_batches", "param_scheme")})
    return GptqConfig(asymmetric=True, **shared, **settings)
