"""Re-rounding AMP's chosen mix: one sequential AdaRound or GPTQ pass over the bitwidths it chose per group.

AMP's rounded candidates (:mod:`.amp_rounding`) are each rounded for a model whose layers are *all* at that
candidate: a layer at W4 in the mix was fitted to inputs from W4 layers upstream, though upstream it now finds W8
and W3 layers. GPTQ and AdaRound fit each layer to the inputs the partially quantized model gives it (asymmetric GPTQ
also undoes their error), so one more pass with each layer at its chosen bitwidth fits every layer to the inputs it
really gets. On EfficientNet-Lite0 with W8A16/W4A16/W3A16 under 0.49× the weight bytes of W8 (asymmetric GPTQ): top-1
agreement with FP32 on held-out crops 0.810 as chosen, 0.874 re-rounded (64 calibration crops, 0.479×); 0.822 and
0.898 (256 crops, 0.473×; ``benchmarks/weights_budget.py --only amp_budget``).

Example:
    >>> from leantorch.ptq.amp_groups import LayerGroup, parse_candidates
    >>> w8, w4 = parse_candidates("W8A16,W4A16")
    >>> cfg = mix_config("default", {"fc1": w8, "fc2": w4})
    >>> cfg.layers["fc2"].param_bw, cfg.layers["fc2"].act_bw
    (4, 16)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import nn

from ..quant.sim import QuantSim
from .adaround import AdaroundConfig
from .amp_groups import Candidate
from .amp_phase1 import Assembler
from .amp_rounding import RoundedWeights, mix_config, round_once
from .auto import call_eval_fn
from .gptq import GptqConfig

__all__ = ["mix_config", "needs_reround", "reround_mix", "reround_chosen", "REROUND_KEEPS"]

log = logging.getLogger(__name__)

REROUND_KEEPS: tuple[str, ...] = ("if_better", "always")  # MixedPrecisionConfig.reround_keep


def needs_reround(mix: dict[str, Candidate]) -> bool:
    """Whether re-rounding can change anything: two or more candidates, one of them below 16-bit weights (with a
    single candidate, its rounding already had every layer at the chosen bitwidth).

    Example:
        >>> from leantorch.ptq.amp_groups import Candidate
        >>> needs_reround({"a": Candidate(8, 8), "b": Candidate(8, 8)}), needs_reround({"a": Candidate(8, 8),
        ...                                                                              "b": Candidate(4, 8)})
        (False, True)
    """
    return len(set(mix.values())) > 1 and any(c.param_bw < 16 for c in mix.values())


def reround_mix(
    model: nn.Module,
    example_input: Any,
    calib: list[Any],
    sim: QuantSim,
    mix: dict[str, Candidate],
    options: AdaroundConfig | GptqConfig,
    progress: bool,
) -> RoundedWeights:
    """Round the float ``model`` once with every group at its candidate in ``mix`` (group name -> candidate); the
    rounded weights and frozen encodings of ``sim``'s weight quantizers, as :func:`~.amp_rounding.round_once`.

    Layers outside the groups take the highest bitwidths of ``mix``; the config (per-channel, symmetry, blocks) is
    the sim's, so the rounded encodings fit its quantizers.

    Example:
        >>> found = reround_mix(net, x[:1], batches, amp.sim, mix, GptqConfig(asymmetric=True), False)  # doctest: +SKIP
    """
    top = max(mix.values())  # layers outside the groups stay at the highest candidate, as AMP leaves them
    cfg = replace(
        options,
        param_bw=top.param_bw,
        act_bw=top.act_bw,
        per_channel=sim.config.per_channel,
        config=mix_config(sim.config, mix),
        num_batches=len(calib),
        filename_prefix="amp_reround",
        progress=progress,
    )
    return round_once(model, example_input, calib, sim, cfg)


def reround_chosen(
    assembler: Assembler,
    model: nn.Module,
    example_input: Any,
    calib: list[Any],
    mix: dict[str, Candidate],
    options: AdaroundConfig | GptqConfig,
    eval_fn: Callable[[nn.Module], float],
    chosen_score: float,
    progress: bool,
    always: bool = False,
) -> tuple[float, bool]:
    """Re-round ``mix`` (:func:`reround_mix`), put the assembler's sim on it, recalibrate the activations for the new
    weights and score it; kept if it scores at least ``chosen_score`` (the mix as chosen) or ``always``, else the sim
    goes back to the chosen mix. Returns (the re-rounded score, kept).

    Example:
        >>> score, kept = reround_chosen(amp.assembler, net, x[:1], batches, mix, GptqConfig(), score_fn, 0.9, False)
        ... # doctest: +SKIP
    """
    found = reround_mix(model, example_input, calib, assembler.sim, mix, options, progress)
    assembler.install(found)
    assembler.sim.compute_encodings(calib, progress=False)  # the re-rounded weights' encodings are frozen: kept
    score = call_eval_fn(eval_fn, assembler.sim.model, "the re-rounded mix")
    kept = always or score >= chosen_score
    if not kept:
        log.info("the re-rounded mix scores %g < %g as chosen: keeping the chosen mix", score, chosen_score)
        assembler.set_all(mix)
    return score, kept
