"""Rounded weight candidates for automatic mixed precision: AdaRound or asymmetric GPTQ once per low-bit candidate.

With ``MixedPrecisionConfig(rounding="adaround")`` every candidate whose weights have fewer than 16 bits is
rounded once for the whole model by :func:`~leantorch.ptq.adaround.adaround` (the float model, the candidate's
``param_bw`` and ``act_bw``, per-channel as the sim, the AMP calibration batches); with ``rounding="gptq"``
by :func:`~leantorch.ptq.gptq.gptq` with ``asymmetric=True`` (each layer fitted to the float model's outputs).
Per weight, the rounded tensor and its frozen encoding are kept (:class:`RoundedWeights`); a group set to that
candidate takes both (the encoding frozen, so recalibration keeps it), a group set to a round-to-nearest candidate
gets its float weight back.

For a QuantSim input the float model is the sim's own graph with every wrapper replaced by the layer it wraps
(:func:`float_copy`), so the rounded weights carry the sim's parameter names.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sim = QuantSim(net, torch.randn(1, 4))
    >>> sorted(dict(float_copy(sim).named_parameters()))[:2]
    ['0.bias', '0.weight']
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
from torch import fx, nn

from ..errors import InvalidOptionError
from ..quant.config import OpRule, QuantSimConfig, load_config, merged_rule
from ..quant.encoding import Encoding
from ..quant.encodings_file import read_encodings
from ..quant.encodings_matching import encoding_targets, match_encodings
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from ..quant.wrapper import QuantWrapper
from .adaround import AdaroundConfig, adaround
from .amp_groups import Candidate
from .gptq import GptqConfig, gptq

__all__ = [
    "Rounding",
    "ROUNDINGS",
    "GPTQ_DEFAULTS",
    "RoundedWeights",
    "check_rounding_options",
    "float_copy",
    "round_candidates",
    "round_once",
    "mix_config",
]

Rounding = Literal["nearest", "adaround", "gptq"]
ROUNDINGS: tuple[str, ...] = ("nearest", "adaround", "gptq")
#: what ``rounding="gptq"`` runs when given no options: asymmetric, on AdaRound's (MSE) grids
GPTQ_DEFAULTS = GptqConfig(asymmetric=True, param_scheme="mse", progress=False)


@dataclass
class RoundedWeights:
    """One candidate's rounded weights and their frozen encodings, by parameter name (``"conv1.weight"``)."""

    weights: dict[str, torch.Tensor]
    encodings: dict[str, Encoding]


def check_rounding_options(options: Any, rounding: str = "adaround") -> AdaroundConfig | GptqConfig:
    """``rounding_options`` as the config of ``rounding``: an :class:`AdaroundConfig` for ``"adaround"``, a
    :class:`GptqConfig` for ``"gptq"`` (None: :data:`GPTQ_DEFAULTS`); either for ``"nearest"``, where it is unused.

    Raises:
        InvalidOptionError: anything else, or a GptqConfig with ``correct_bias`` (AMP carries weights, not biases).

    Example:
        >>> check_rounding_options(None).iterations
        500
        >>> check_rounding_options(None, "gptq").asymmetric
        True
    """
    wanted: tuple[type, ...] = {"adaround": (AdaroundConfig,), "gptq": (GptqConfig,)}.get(
        rounding, (AdaroundConfig, GptqConfig)
    )
    if options is None:
        return GPTQ_DEFAULTS if rounding == "gptq" else AdaroundConfig(progress=False)
    if not isinstance(options, wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise InvalidOptionError(f"rounding_options={options!r}: pass a {names} (or None for its defaults)")
    if isinstance(options, GptqConfig) and options.correct_bias:
        # AMP swaps each group's weights between candidates; a bias re-fitted for one candidate would not follow
        raise InvalidOptionError("rounding_options: AMP keeps the float biases, so GPTQ's correct_bias must be False")
    return cast(AdaroundConfig | GptqConfig, options)


def float_copy(sim: QuantSim) -> fx.GraphModule:
    """A float copy of ``sim.model``: each wrapper replaced by the layer it wraps, the input quantizers by Identity.

    Example:
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 2)), torch.randn(1, 4))
        >>> type(float_copy(sim).get_submodule("0")).__name__
        'Linear'
    """
    gm = copy.deepcopy(sim.model)
    wrappers = [(n, m) for n, m in gm.named_modules() if isinstance(m, QuantWrapper)]
    for name, wrapper in wrappers:
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, wrapper.module)
    for name, module in list(gm.named_modules()):
        if isinstance(module, Quantizer):
            parent, _, leaf = name.rpartition(".")
            holder = gm.get_submodule(parent) if parent else gm
            if isinstance(holder, nn.ModuleList):
                holder[int(leaf)] = nn.Identity()
            else:
                setattr(holder, leaf, nn.Identity())
    gm.recompile()
    return gm


def mix_config(base: Any, mix: dict[str, Candidate]) -> QuantSimConfig:
    """``base`` (a QuantSim config name, path, dict or config) with a layer rule per group of ``mix``: its
    candidate's weight and activation bitwidths and its weight blocks, if any (16-bit weights kept float: AMP
    leaves them round-to-nearest, so there is nothing to round).

    Example:
        >>> from leantorch.ptq.amp_groups import Candidate
        >>> mix_config({"layers": {"fc": {"per_channel": True}}}, {"fc": Candidate(16, 16)}).layers["fc"]
        OpRule(input_quantized=None, output_quantized=None, params_quantized=None, per_channel=True, act_bw=16, \
param_bw=32, param_block_size=None, decompressed_bw=None, float_format=None)
    """
    cfg = load_config(base)
    for layer, cand in mix.items():
        param_bw = 32 if cand.param_bw >= 16 else cand.param_bw
        rule = OpRule(param_bw=param_bw, act_bw=cand.act_bw, param_block_size=cand.block_size or None)
        cfg.layers[layer] = merged_rule(cfg.layers.get(layer, OpRule()), rule)
    return cfg.validate()


def round_candidates(
    model: nn.Module,
    example_input: Any,
    calib: list[Any],
    candidates: tuple[Candidate, ...],
    sim: QuantSim,
    groups: list[str],
    options: AdaroundConfig | GptqConfig,
    progress: bool,
) -> dict[Candidate, RoundedWeights]:
    """AdaRound (or GPTQ, for a :class:`GptqConfig`) ``model`` once per candidate below 16-bit weights, with every
    layer group (``groups``: their names) at it; the rounded weights and encodings of ``sim``'s enabled weight
    quantizers (the model is not modified). The rounding runs on ``sim``'s config (per-channel, symmetry, blocks,
    layer rules: :func:`mix_config`), so its encodings fit the sim's quantizers.

    Example:
        >>> found = round_candidates(net, x[:1], batches, cands, sim, ["0", "2"], GptqConfig(), False)  # doctest: +SKIP
    """
    found: dict[Candidate, RoundedWeights] = {}
    for cand in candidates:
        if cand.param_bw >= 16:
            continue
        cfg = replace(
            options,
            param_bw=cand.param_bw,
            act_bw=cand.act_bw,
            per_channel=sim.config.per_channel,
            config=mix_config(sim.config, dict.fromkeys(groups, cand)),
            num_batches=len(calib),
            filename_prefix=f"amp_{cand.name}",
            progress=progress,
        )
        found[cand] = round_once(model, example_input, calib, sim, cfg)
    return found


def round_once(
    model: nn.Module, example_input: Any, calib: list[Any], sim: QuantSim, options: AdaroundConfig | GptqConfig
) -> RoundedWeights:
    """One AdaRound or GPTQ pass over ``model`` with ``options`` (its ``path`` replaced by a temporary folder); the
    rounded weights and frozen encodings of ``sim``'s enabled weight quantizers that it rounded.

    Example:
        >>> found = round_once(net, x[:1], batches, sim, GptqConfig(param_bw=4, progress=False))  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(options, path=tmp)
        if isinstance(cfg, GptqConfig):
            rounded, path = gptq(model, example_input, calib, cfg)
        else:
            rounded, path = adaround(model, example_input, calib, cfg)
        targets = encoding_targets(sim.layers(), sim.quantizers())
        plan = match_encodings(read_encodings(path), targets, str(path))
    state = rounded.state_dict()
    encodings = {t.key: enc for t, enc in plan if t.is_param and t.quantizer.is_active and t.key in state}
    weights = {name: state[name].detach().clone() for name in encodings}
    return RoundedWeights(weights, encodings)
