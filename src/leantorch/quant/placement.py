"""Where quantizers go: wrap every layer of a prepared graph, then switch quantizers on per the config.

Rules, in order:

1. Each layer's outputs, inputs and weights (``weight``, or its op type's ``weight_params``) follow its op
   type's rule in the config, with the layer's own rule (``layers``) on top (other parameters per
   ``quantize_bias``); weights of ops with a ``weight_axis`` are per-channel where the rule says so;
   activation quantizers take the rule's ``act_bw`` and weights its ``param_bw`` if it has one.
   Quantizers inside an op module (an RNN's gates and states)
   follow its output rule.
2. Supergroups: inside a matched chain (Conv→BN→ReLU...) only the last output is quantized.
3. Model inputs get their own quantizers (``input_quantizers.N``) when ``model_input_quantized``.
4. Gaps are closed: a layer input that does not come from a quantized tensor (through data-movement ops
   such as reshape, permute, pad or max-pool) gets an input quantizer, unless it is an edge inside a
   supergroup. So every tensor that feeds arithmetic is on a grid, as in an integer runtime.
"""

from __future__ import annotations

import logging
import operator
import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn

from ..errors import InvalidOptionError, UnknownLayerError
from ..graph import PASSTHROUGH_TYPES, call_sites, find_chains, op_type
from ..ops import weight_names
from ..options import unknown_layers_message
from .blocks import block_axis_for, blocks_fit
from .config import PER_CHANNEL_AXIS, QuantSimConfig, ResolvedRule
from .estimators import QuantScheme
from .quantizer import Quantizer
from .wrapper import QuantWrapper

__all__ = ["QuantSettings", "wrap_layers", "insert_model_input_quantizers", "apply_config", "blockwise_fallbacks"]

log = logging.getLogger(__name__)

# call_method / call_function targets that only move data: their output is on the input's grid.
_DATA_MOVEMENT = {
    "view",
    "reshape",
    "permute",
    "transpose",
    "contiguous",
    "flatten",
    "squeeze",
    "unsqueeze",
    "expand",
    "chunk",
    "split",
    "unbind",
    "repeat",
    "t",
    "narrow",
    "select",
    "clone",
    "detach",
    "to",
    "float",
    operator.getitem,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.flatten,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    torch.unbind,
}


@dataclass(frozen=True)
class QuantSettings:
    """Bitwidths and schemes QuantSim was created with."""

    param_bw: int
    act_bw: int
    scheme: QuantScheme
    param_scheme: QuantScheme


def wrap_layers(gm: fx.GraphModule) -> dict[str, QuantWrapper]:
    """Replace every called leaf module by a :class:`QuantWrapper` (quantizers disabled).

    A layer with parameters called at several places gets one wrapper per call: the first under the layer's
    name, the later ones as ``<name>_call<k>``, sharing the layer and its weight quantizers but each with its own
    activation quantizers (the calls see different inputs and outputs, so they get their own ranges).
    """
    wrappers: dict[str, QuantWrapper] = {}
    first: dict[str, QuantWrapper] = {}
    calls: dict[str, int] = {}
    for node, module in list(call_sites(gm)):
        target = _target(node)
        positions = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node)]
        primary = first.get(target)
        wrapper = QuantWrapper(
            module,
            op_type(module),
            len(positions),
            _count_tensor_outputs(node),
            repeat_of=primary,
            repeat_name=target,
            input_positions=positions,
        )
        if primary is None:
            first[target] = wrapper
            name = target
        else:
            calls[target] = calls.get(target, 0) + 1
            name = _free_name(gm, f"{target}_call{calls[target]}")
            node.target = name
        _set_submodule(gm, name, wrapper)
        wrappers[name] = wrapper
    gm.recompile()
    return wrappers


def _free_name(gm: fx.GraphModule, name: str) -> str:
    taken = {n for n, _ in gm.named_modules(remove_duplicate=False)}
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _count_tensor_outputs(node: fx.Node) -> int:
    value = node.meta.get("lt_value")
    if isinstance(value, tuple):
        return sum(1 for v in value if isinstance(v, torch.Tensor))
    return 1 if isinstance(value, torch.Tensor) else 0


def _target(node: fx.Node) -> str:
    """The qualified name a ``call_module`` node calls (fx types targets as ``str | Callable``)."""
    assert isinstance(node.target, str)
    return node.target


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent_name) if parent_name else gm, leaf, module)


def insert_model_input_quantizers(gm: fx.GraphModule) -> list[Quantizer]:
    """Add a quantizer after each tensor placeholder (``input_quantizers.N``)."""
    input_quantizers = nn.ModuleList()
    gm.add_module("input_quantizers", input_quantizers)
    quantizers: list[Quantizer] = []
    for node in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        value = node.meta.get("lt_value")
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        q = Quantizer(enabled=False)
        input_quantizers.append(q)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(f"input_quantizers.{len(quantizers)}", args=(node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        new.meta.update(node.meta)
        quantizers.append(q)
    gm.recompile()
    return quantizers


def apply_config(gm: fx.GraphModule, config: QuantSimConfig, settings: QuantSettings) -> None:
    """Configure every quantizer of ``gm`` (rules 1–4 of the module docstring)."""
    wrappers = {str(n.target): m for n, m in call_sites(gm) if isinstance(m, QuantWrapper)}
    unknown = [name for name in config.layers if name not in wrappers]
    if unknown:  # a misspelt name would otherwise leave that layer at the default bitwidth without a word
        raise UnknownLayerError(f"config 'layers': {unknown_layers_message(unknown, list(wrappers))}")
    for name, wrapper in wrappers.items():
        _configure_layer(name, wrapper, config.rule(wrapper.op_type, name), config, settings)
    internal_edges = _apply_supergroups(gm, config)
    for q in cast(nn.ModuleList, gm.input_quantizers):
        _configure_activation(cast(Quantizer, q), config, settings, enabled=config.model_input_quantized)
    _close_gaps(gm, config, settings, internal_edges)
    for name, module in gm.named_modules():
        if isinstance(module, Quantizer):
            module.name = name
    fallbacks = blockwise_fallbacks(gm)
    if fallbacks:
        warnings.warn(
            f"weights kept per channel (their input channels make no whole blocks): {fallbacks}", stacklevel=3
        )


def _configure_layer(
    layer: str, wrapper: QuantWrapper, rule: ResolvedRule, config: QuantSimConfig, settings: QuantSettings
) -> None:
    bw = rule.act_bw
    for q in wrapper.output_quantizers:
        _configure_activation(cast(Quantizer, q), config, settings, rule.output_quantized, bw)
    for q in wrapper.input_quantizers:
        _configure_activation(cast(Quantizer, q), config, settings, rule.input_quantized, bw)
    # An op module's own quantizers (an RNN's gate and state quantizers) quantize activations inside the op,
    # so they follow its output rule.
    for q in wrapper.inner_quantizers():
        _configure_activation(q, config, settings, rule.output_quantized, bw)
    weights = weight_names(wrapper.module)
    for name, module in wrapper.param_quantizers.items():
        q = cast(Quantizer, module)
        q.bitwidth, q.scheme = rule.param_bw or settings.param_bw, settings.param_scheme
        q.symmetric, q.unsigned_symmetric = config.param_symmetric, False
        if name in weights:
            q.enabled = rule.params_quantized
            q.axis = PER_CHANNEL_AXIS.get(wrapper.op_type) if rule.per_channel else None
            _configure_blocks(layer, q, getattr(wrapper.module, name), wrapper.op_type, rule, config)
        else:
            q.enabled = config.quantize_bias and rule.params_quantized
    if rule.float_format is not None:
        for q in _all_quantizers(wrapper):
            q.set_float_format(rule.float_format)


def _all_quantizers(wrapper: QuantWrapper) -> list[Quantizer]:
    return [m for m in wrapper.modules() if isinstance(m, Quantizer)]


def _configure_blocks(
    layer: str, q: Quantizer, weight: Any, op_type: str, rule: ResolvedRule, config: QuantSimConfig
) -> None:
    """Blockwise (and LPBQ) settings of a weight quantizer; a weight whose input channels do not split into
    blocks keeps per-channel quantization (:func:`blockwise_fallbacks` lists them).

    Raises:
        InvalidOptionError: LPBQ asked for a weight that cannot have it (named, with the rule that fixes it):
            no blocks, asymmetric weights, or weights of ``decompressed_bw`` bits or more (say a layer kept at 8
            bits on a sim with ``decompressed_bw=8``): refused here, not at export after calibration."""
    q.block_size = q.block_axis = q.decompressed_bw = q.block_fallback = None
    block_size, lpbq = rule.param_block_size, rule.decompressed_bw
    if lpbq is not None:
        _check_lpbq(layer, q.bitwidth, block_size, lpbq, config)
    axis = PER_CHANNEL_AXIS.get(op_type)
    if block_size is None or axis is None or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return
    q.axis = axis  # blocks are per output channel
    block_axis = block_axis_for(axis)
    if not blocks_fit(weight.shape, block_axis, block_size):
        q.block_fallback = f"{weight.shape[block_axis]} input channels, blocks of {block_size}"
        return
    q.block_size, q.block_axis, q.decompressed_bw = block_size, block_axis, lpbq


def _check_lpbq(
    layer: str, bitwidth: int, block_size: int | None, decompressed_bw: int, config: QuantSimConfig
) -> None:
    """LPBQ's preconditions for one layer's weight (:mod:`~leantorch.quant.encodings_blocks`)."""
    if bitwidth >= decompressed_bw:
        raise InvalidOptionError(
            f"{layer}: {bitwidth}-bit weights with LPBQ decompressed_bw={decompressed_bw}: LPBQ stores fewer bits "
            f'than it decompresses to; keep this layer out of LPBQ with its config rule (layers {{"{layer}": '
            f'{{"param_bw": {bitwidth}, "decompressed_bw": 0}}}} for float block scales, or "param_block_size": 0, '
            '"per_channel": true for per channel), or lower its param_bw'
        )
    if not block_size:
        raise InvalidOptionError(
            f"{layer}: decompressed_bw={decompressed_bw} (LPBQ) needs blockwise weights: set param_block_size "
            "(e.g. 32) for it"
        )
    if not config.param_symmetric:
        raise InvalidOptionError(
            f"{layer}: decompressed_bw={decompressed_bw} (LPBQ) needs symmetric weights (param_symmetric=true)"
        )


def blockwise_fallbacks(gm: nn.Module) -> dict[str, str]:
    """Weight quantizers asked to be blockwise that stay per channel, with why (name → reason).

    Example:
        >>> blockwise_fallbacks(nn.Sequential())
        {}
    """
    return {
        name: m.block_fallback
        for name, m in gm.named_modules()
        if isinstance(m, Quantizer) and m.enabled and m.block_fallback and not m.is_blockwise
    }


def _configure_activation(
    q: Quantizer, config: QuantSimConfig, settings: QuantSettings, enabled: bool, bitwidth: int | None = None
) -> None:
    """``bitwidth``: the op rule's ``act_bw``; None: QuantSim's ``act_bw``."""
    q.bitwidth, q.scheme, q.enabled = bitwidth or settings.act_bw, settings.scheme, enabled
    q.symmetric, q.unsigned_symmetric = config.activation_symmetric, config.unsigned_symmetric


def _apply_supergroups(gm: fx.GraphModule, config: QuantSimConfig) -> set[tuple[fx.Node, fx.Node]]:
    """Disable outputs inside supergroup chains; return the chains' internal edges."""
    edges: set[tuple[fx.Node, fx.Node]] = set()
    # Longest patterns first so Conv+BN+ReLU wins over Conv+BN.
    for pattern in sorted(config.supergroups, key=len, reverse=True):
        for chain in find_chains(gm, pattern):
            for producer, consumer in zip(chain, chain[1:]):
                for q in cast(QuantWrapper, gm.get_submodule(_target(producer))).output_quantizers:
                    cast(Quantizer, q).enabled = False
                edges.add((producer, consumer))
    return edges


def _close_gaps(
    gm: fx.GraphModule, config: QuantSimConfig, settings: QuantSettings, internal_edges: set[tuple[fx.Node, fx.Node]]
) -> None:
    for node, wrapper in call_sites(gm):
        if not isinstance(wrapper, QuantWrapper) or wrapper.op_type in PASSTHROUGH_TYPES:
            continue
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        for arg, q in zip(tensor_args, wrapper.input_quantizers):
            if q.enabled or not _is_float_tensor(arg):
                continue
            source = _grid_source(gm, arg)
            if (source, node) in internal_edges:
                continue
            # A model input is governed by `model_input_quantized` alone.
            if source is not None and (
                isinstance(gm.get_submodule(_target(source)), Quantizer) or _output_is_quantized(gm, source)
            ):
                continue
            bw = config.rule(wrapper.op_type, _target(node)).act_bw
            _configure_activation(cast(Quantizer, q), config, settings, enabled=True, bitwidth=bw)
            log.debug("input %s of %s is not on a grid; quantizing it", arg.name, node.target)


def _is_float_tensor(node: fx.Node) -> bool:
    value = node.meta.get("lt_value")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _grid_source(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """Follow data-movement ops back to the node that computed the values of ``node``."""
    while True:
        if node.op in ("call_method", "call_function") and node.target in _DATA_MOVEMENT:
            arg = node.args[0]
        elif node.op == "call_module":
            module = gm.get_submodule(_target(node))
            if isinstance(module, QuantWrapper) and module.op_type in PASSTHROUGH_TYPES:
                arg = node.args[0]
            else:
                return node
        else:
            return node if node.op == "call_module" else None
        if not isinstance(arg, fx.Node):
            return None
        node = arg


def _output_is_quantized(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = gm.get_submodule(_target(node))
    return isinstance(module, QuantWrapper) and any(q.enabled for q in module.output_quantizers)
