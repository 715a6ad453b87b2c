"""Batch-norm folding: ``BN(conv(x))`` becomes ``conv'(x)`` with rescaled weights and a new bias.

For a BN with statistics ``(μ, σ² + ε)`` and affine ``(γ, β)`` after a layer ``y = W x + b``::

    W' = W · γ/σ   (per output channel)      b' = (b − μ) · γ/σ + β

which is exact in eval mode (BN uses running statistics). Runtimes fold BN the same way, so quantizing the
folded weights is what the deployed model sees.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import ops
from ..graph import call_counts, find_chains, prepare, untie_parameters
from ..model_state import model_state, set_model_state
from ..quant.exact_batch_norm import batch_norm_affine

__all__ = ["fold_batch_norms"]

log = logging.getLogger(__name__)


def _patterns(after: bool) -> list[list[str]]:
    """``[layer, BatchNorm]`` (``after``) or ``[BatchNorm, layer]`` chains of the op types that fold BNs."""
    if after:
        return [[s.name, "BatchNorm"] for s in ops.specs() if s.folds_bn_after]
    return [["BatchNorm", s.name] for s in ops.specs() if s.folds_bn_before]


def fold_batch_norms(
    model: nn.Module, example_input: Any, inplace: bool = False
) -> tuple[fx.GraphModule, list[tuple[str, str]]]:
    """Fold every BatchNorm that directly follows a Conv/Linear/ConvTranspose into that layer.

    Returns the folded model (a traced copy; the input model is untouched unless ``inplace``, which
    only skips the copy of an already prepared GraphModule) and the ``(layer, bn)`` pairs folded. The
    BN statistics stay available as ``lt.model_state(model).output_stats[layer] = (mean, std)``: the distribution of the
    folded layer's output per channel (``β`` and ``|γ|``), used by high-bias absorption and analytical
    bias correction; transforms that rescale a layer update it, and :func:`leantorch.prepare` carries it
    over. A warning names BNs that could not be folded.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> folded, pairs = fold_batch_norms(net, torch.randn(1, 3, 8, 8))
        >>> pairs
        [('0', '1')]
    """
    if inplace and isinstance(model, fx.GraphModule):
        gm = model
    else:
        gm = prepare(model, example_input)
    was_training = gm.training
    gm.eval()
    state = model_state(gm)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(state.output_stats)
    pairs = []
    calls = call_counts(gm)
    for pattern in _patterns(after=True):
        for layer_node, bn_node in find_chains(gm, pattern):
            layer, bn = gm.get_submodule(_name(layer_node)), cast(_BatchNorm, gm.get_submodule(_name(bn_node)))
            if not _foldable(layer, bn) or not _same_channels(layer, bn_node):
                continue
            if calls[_name(layer_node)] > 1:
                # A layer called at several places: rescaling it for this BN would change its other calls.
                log.warning(
                    "%s is called at %d places: the BN after one call is not folded into it",
                    _name(layer_node),
                    calls[_name(layer_node)],
                )
                continue
            untie_parameters(gm, layer)
            _fold_into(layer, bn)
            stats[str(layer_node.target)] = _bn_output_stats(bn)
            bn_node.replace_all_uses_with(layer_node)
            gm.graph.erase_node(bn_node)
            pairs.append((str(layer_node.target), str(bn_node.target)))
    pairs += _fold_into_following(gm)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    set_model_state(gm, replace(state, output_stats=stats))
    left = [
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.modules.batchnorm._BatchNorm)
    ]
    log.info("folded %d batch norm(s)", len(pairs))
    if left:
        log.warning(
            "%d batch norm(s) could not be folded (no conv/linear on their channels right before or after): %s",
            len(left),
            ", ".join(map(str, left)),
        )
    gm.train(was_training)
    return gm, pairs


def _fold_into_following(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Fold a remaining BN into the Conv/Linear right after it, where that is exact.

    ``conv(a·x + b) = conv_{W·a}(x) + Σ W·b`` holds only if the conv pads nothing (a padded zero would
    have become ``b``) and mixes all channels of one group (``groups == 1``).
    """
    pairs = []
    calls = call_counts(gm)
    for pattern in _patterns(after=False):
        for bn_node, layer_node in find_chains(gm, pattern):
            bn, layer = cast(_BatchNorm, gm.get_submodule(_name(bn_node))), gm.get_submodule(_name(layer_node))
            if not bn.track_running_stats or bn.running_mean is None or not _same_channels(layer, bn_node):
                continue
            if isinstance(layer, nn.modules.conv._ConvNd):
                padding = layer.padding if not isinstance(layer.padding, str) else (1,)
                if layer.groups != 1 or any(p != 0 for p in padding):
                    continue
            if calls[_name(layer_node)] > 1 or calls[_name(bn_node)] > 1:
                continue  # the layer's (or BN's) other calls would see the change
            untie_parameters(gm, layer)
            _fold_before(layer, bn)
            layer_node.replace_input_with(bn_node, cast(fx.Node, bn_node.args[0]))  # the BN's input node
            gm.graph.erase_node(bn_node)
            pairs.append((str(layer_node.target), str(bn_node.target)))
    return pairs


def _same_channels(layer: nn.Module, bn_node: fx.Node) -> bool:
    """Whether the BN's channels (dim 1) are the layer's output (or input) channels.

    A conv's are on dim 1 too. A Linear's features are the last dim, which is dim 1 only for 2-D values:
    ``BatchNorm1d`` on a ``(N, C, L)`` Linear output normalises ``C`` while the Linear mixes ``L``.
    """
    if isinstance(layer, nn.modules.conv._ConvNd):
        return True
    shape = bn_node.meta.get("lt_shape")
    return shape is not None and len(shape) == 2


def _name(node: fx.Node) -> str:
    """The qualified name a ``call_module`` node calls (fx types targets as ``str | Callable``)."""
    return cast(str, node.target)


def _weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Conv/Linear/ConvTranspose layer's weight and bias (nn.Module types attributes as Tensor | Module)."""
    return cast(torch.Tensor, layer.weight), cast("torch.Tensor | None", layer.bias)


@torch.no_grad()
def _set_bias(layer: nn.Module, value: torch.Tensor) -> None:
    weight, bias = _weight_and_bias(layer)
    if bias is None:
        layer.bias = nn.Parameter(value.to(weight.dtype))
    else:
        bias.copy_(value.to(bias.dtype))


@torch.no_grad()
def _fold_before(layer: nn.Module, bn: _BatchNorm) -> None:
    a, b = batch_norm_affine(bn)
    layer_weight, layer_bias = _weight_and_bias(layer)
    weight = layer_weight.double()
    shape = [1] * weight.dim()
    shape[1] = -1
    dims = [d for d in range(weight.dim()) if d != 0]
    extra = (weight * b.reshape(shape)).sum(dim=dims)
    layer_weight.copy_((weight * a.reshape(shape)).to(layer_weight.dtype))
    _set_bias(layer, (layer_bias.double() if layer_bias is not None else torch.zeros_like(extra)) + extra)


def _bn_output_stats(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of a BN's output: its affine shift and scale."""
    n = bn.num_features
    beta = bn.bias.detach().clone() if bn.bias is not None else torch.zeros(n)
    gamma = bn.weight.detach().abs().clone() if bn.weight is not None else torch.ones(n)
    return beta.double(), gamma.double()


def _foldable(layer: nn.Module, bn: _BatchNorm) -> bool:
    if not bn.track_running_stats or bn.running_mean is None:
        return False
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return layer.groups == 1  # output channels sit on dim 1 only without groups
    return True


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    a, b = batch_norm_affine(bn)
    layer_weight, layer_bias = _weight_and_bias(layer)
    weight = layer_weight.double()
    out_axis = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    shape = [1] * weight.dim()
    shape[out_axis] = -1
    layer_weight.copy_((weight * a.reshape(shape)).to(layer_weight.dtype))
    bias = layer_bias.double() if layer_bias is not None else torch.zeros_like(a)
    _set_bias(layer, bias * a + b)
