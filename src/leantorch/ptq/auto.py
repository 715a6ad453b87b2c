"""AutoQuant: BN folding → CLE → AdaRound, stage by stage, until the quantized score is good enough."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, InvalidOptionError, LeanTorchError
from ..graph import example_inputs
from ..options import check_positive
from ..paths import check_directory, check_file_name
from ..quant.estimators import QuantScheme
from ..quant.sim import QuantSim
from .adaround import adaround
from .adaround import check_options as check_adaround_options
from .bn_fold import fold_batch_norms
from .cle import equalize

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
) -> AutoQuantResult:
    """Apply BN fold, then CLE, then AdaRound, evaluating the quantized model after each; stop at the first
    stage whose score is within ``allowed_drop`` of the float score, else return the best stage.

    ``eval_fn(model) -> float`` scores a model (higher is better); it is called with the float model
    and with each stage's ``sim.model``. Returns the model, its QuantSim and a table of stage scores.

    Raises:
        CalibrationDataError: no calibration batch, a batch that is not a tensor or a tuple of the model's
            inputs (then labels), or NaN/Inf in one (checked before ``eval_fn`` first runs).
        InvalidOptionError: ``allowed_drop`` is negative or not finite; ``adaround_kwargs`` names an option
            adaround does not take or one auto_quant sets itself (``path``, ``param_bw``, ``per_channel`` …), or
            a value adaround would refuse (checked with adaround's own rules before ``eval_fn`` first runs).
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
    adaround_kwargs = _check_adaround_kwargs(adaround_kwargs, per_channel)
    float_score = call_eval_fn(eval_fn, model, "the float model")
    target = float_score - allowed_drop
    stages: list[dict[str, Any]] = [{"stage": "float", "score": float_score, "seconds": 0.0}]
    best: tuple[float, nn.Module, QuantSim] | None = None

    def make_sim(candidate: nn.Module) -> QuantSim:
        sim = QuantSim(
            candidate,
            example_input,
            param_bw=param_bw,
            act_bw=act_bw,
            scheme=scheme,
            per_channel=per_channel,
            config=config,
        )
        return sim

    equalized: list[nn.Module] = []  # the CLE stage's model, which the AdaRound stage starts from

    def build(name: str) -> tuple[nn.Module, QuantSim]:
        if name == "bn_fold":
            candidate = fold_batch_norms(model, example_input)[0]
            return candidate, make_sim(candidate)
        if name == "cle":
            equalized.append(equalize(model, example_input))
            return equalized[0], make_sim(equalized[0])
        # The stages run in order, so CLE ran already: reuse its model (adaround does not modify its input)
        # instead of equalizing a second time.
        base = equalized[0]
        candidate, encodings = adaround(
            base,
            example_input,
            calibration,
            param_bw=param_bw,
            act_bw=act_bw,
            per_channel=per_channel,
            scheme=scheme,
            config=config,
            path=path,
            progress=progress,
            **adaround_kwargs,
        )
        sim = make_sim(candidate)
        sim.set_and_freeze_param_encodings(encodings)
        return candidate, sim

    for name in ("bn_fold", "cle", "adaround"):
        start = time.perf_counter()
        candidate, sim = build(name)
        sim.compute_encodings(calibration, progress=progress)
        score = call_eval_fn(eval_fn, sim.model, f"the quantized model after {name}")
        stages.append({"stage": name, "score": score, "seconds": time.perf_counter() - start})
        log.info("auto_quant %s: %.4f (target %.4f)", name, score, target)
        if best is None or score > best[0]:
            best = (score, candidate, sim)
        if score >= target:
            break
    assert best is not None
    return AutoQuantResult(best[1], best[2], stages)


#: adaround arguments that auto_quant passes itself (from its own arguments), so not in ``adaround_kwargs``.
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


def _check_adaround_kwargs(adaround_kwargs: Any, per_channel: Any) -> dict[str, Any]:
    """``adaround_kwargs`` checked like adaround checks its own options, before the first ``eval_fn`` call: a
    typo or a bad value would otherwise surface only after the float, BN-fold and CLE stages were scored."""
    if adaround_kwargs is None:
        return {}
    if not isinstance(adaround_kwargs, dict) or not all(isinstance(k, str) for k in adaround_kwargs):
        raise InvalidOptionError(
            f"adaround_kwargs={adaround_kwargs!r}: pass a dict of adaround options, e.g. {{'iterations': 1000}}"
        )
    parameters = inspect.signature(adaround).parameters
    accepted = [name for name in parameters if name not in _SET_BY_AUTO_QUANT]
    for key in adaround_kwargs:
        if key in _SET_BY_AUTO_QUANT:
            raise InvalidOptionError(
                f"adaround_kwargs: {key!r} is set by auto_quant itself (pass it to "
                f"auto_quant directly, if it is one of its arguments); adaround_kwargs "
                f"takes {', '.join(accepted)}"
            )
        if key not in parameters:
            raise InvalidOptionError(f"adaround_kwargs: no adaround option {key!r}; choose from {', '.join(accepted)}")
    options = {name: p.default for name, p in parameters.items() if name in accepted}
    options.update(adaround_kwargs, per_channel=per_channel)
    # adaround's own check with the defaults merged: the same rules and messages as a direct call. Its
    # arguments are matched by name, so a check that gains or loses an option still gets the right values.
    names = inspect.signature(check_adaround_options).parameters
    check_adaround_options(**{name: options[name] for name in names})
    check_file_name(options["filename_prefix"])
    QuantScheme.parse(options["param_scheme"])
    return dict(adaround_kwargs)
