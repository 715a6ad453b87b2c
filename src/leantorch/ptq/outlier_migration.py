"""Outlier migration (SmoothQuant-style): move activation outliers of a LayerNorm's output into the weights of the
Linear layers it feeds, exactly in float.

A transformer's LayerNorm outputs carry a few channels tens of times larger than the rest; one per-tensor 8-bit
grid over that range leaves the other channels a handful of steps. For each LayerNorm whose output feeds only
Linear layers (a pre-LN block's q/k/v projections, its MLP's first layer), channel ``j`` is divided by

    s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)

(``max|x_j|`` over the calibration data, ``max|W[:, j]|`` over the Linear layers it feeds) by scaling the
LayerNorm's weight and bias by ``1 / s``, and the Linear layers' weight columns are multiplied by ``s``: the
float function is unchanged, the activation range is flatter, and the weights (quantized per output channel)
take part of the spread. ``alpha`` sets the split: 0.5 (SmoothQuant's default) leaves each channel's activation
maximum equal to its weight columns' maximum, 1 makes the activation maxima all equal, 0 the weight columns'.

A LayerNorm whose output also goes elsewhere (the residual of a post-LN block such as BERT's) is left alone: the
scaling could not be undone there. Tied weights (an LM head sharing the embedding) are untied first, and a Linear
called at several places is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn

from ..batches import check_iterable, model_inputs, run_batch
from ..errors import CalibrationDataError
from ..graph import call_counts, example_inputs, op_type, prepare, untie_parameters
from ..options import check_count, check_fraction, with_overrides

__all__ = ["OutlierMigrationConfig", "migrate_outliers", "migration_pairs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutlierMigrationConfig:
    """Options of :func:`migrate_outliers`.

    Example:
        >>> OutlierMigrationConfig(alpha=0.8).alpha
        0.8
    """

    #: Migration strength in [0, 1]: the share of each channel's range (log scale) moved into the weights; 0.5
    #: balances activation and weight maxima per channel.
    alpha: float = 0.5
    #: How many calibration batches to gather the activation maxima from (None: all of them).
    num_batches: int | None = None

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha)
        if self.num_batches is not None:
            check_count("num_batches", self.num_batches)


def migrate_outliers(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    options: OutlierMigrationConfig | None = None,
    **overrides: Any,
) -> fx.GraphModule:
    """Return a traced copy of ``model`` whose LayerNorm→Linear pairs have their activation outliers moved into
    the Linear weights (see the module docstring); the float outputs are unchanged (to rounding).

    Args:
        model: the float model (not modified).
        example_input: a tensor or a tuple of tensors the model accepts.
        calibration: iterable of batches (as for ``QuantSim.compute_encodings``) for the activation maxima.
        options: an :class:`OutlierMigrationConfig`; ``overrides``: its fields as keywords (``alpha=0.8``).

    Raises:
        InvalidOptionError: ``alpha`` outside [0, 1], ``num_batches < 1``, or an unknown option.
        CalibrationDataError: no calibration batch, a batch that is not the model's inputs, or NaN/Inf in one.
        TraceError: the model cannot be traced (:func:`leantorch.prepare`).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4)).eval()
        >>> with torch.no_grad():
        ...     net[0].weight[3] = 40.0  # an outlier channel
        >>> data = [torch.randn(16, 8) for _ in range(2)]
        >>> smoothed = migrate_outliers(net, data[0], data)
        >>> bool((smoothed(data[0]) - net(data[0])).abs().max() < 1e-4)
        True
        >>> float(smoothed.get_submodule("0").weight.detach().abs().max()) < 40.0
        True
    """
    cfg = with_overrides(OutlierMigrationConfig, options, overrides, "migrate_outliers")
    check_iterable(calibration)
    num_inputs = len(example_inputs(example_input))
    gm = prepare(model, example_input)
    pairs = migration_pairs(gm)
    if not pairs:
        log.info("migrate_outliers: no LayerNorm feeding only Linear layers; the model is returned as traced")
        return gm
    maxima = _activation_maxima(gm, list(pairs), calibration, num_inputs, cfg.num_batches)
    with torch.no_grad():
        for norm_name, linear_names in pairs.items():
            norm = gm.get_submodule(norm_name)
            linears = [cast(nn.Linear, gm.get_submodule(n)) for n in linear_names]
            for layer in (norm, *linears):  # a tied weight (LM head = embedding) must change here only
                untie_parameters(gm, layer, names=("weight", "bias"))
            scales = _scales(maxima[norm_name], linears, cfg.alpha)
            cast(torch.Tensor, norm.weight).div_(scales)
            bias = getattr(norm, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.div_(scales)
            for linear in linears:
                linear.weight.mul_(scales)  # column j multiplies input channel j
    log.info("migrate_outliers: %d LayerNorm output(s) smoothed (alpha=%g)", len(pairs), cfg.alpha)
    return gm


def migration_pairs(gm: fx.GraphModule) -> dict[str, list[str]]:
    """``{layernorm: [linear, ...]}`` for every affine LayerNorm of ``gm`` whose output goes only into the input
    of Linear layers, each called from that one place.

    Example:
        >>> net = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
        >>> migration_pairs(prepare(net, torch.randn(3, 4)))
        {'0': ['1']}
    """
    counts = call_counts(gm)
    pairs: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or counts[str(node.target)] != 1:
            continue
        norm = gm.get_submodule(str(node.target))
        weight = getattr(norm, "weight", None)
        if op_type(norm) != "LayerNorm" or not isinstance(weight, nn.Parameter) or weight.dim() != 1:
            continue
        linears: list[str] = []
        for user in node.users:
            target = str(user.target) if user.op == "call_module" else ""
            layer = gm.get_submodule(target) if target else None
            if (
                not isinstance(layer, nn.Linear)
                or counts[target] != 1
                or len(user.all_input_nodes) != 1
                or user.args[0] is not node
                or layer.in_features != weight.numel()
            ):
                linears = []
                break
            linears.append(target)
        if linears:
            pairs[str(node.target)] = linears
    return pairs


def _activation_maxima(
    gm: fx.GraphModule, names: list[str], calibration: Iterable[Any], num_inputs: int, num_batches: int | None
) -> dict[str, torch.Tensor]:
    """Per-channel (last axis) max |output| of each named module over the calibration batches."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str, output: torch.Tensor) -> None:
        channel_max = output.detach().abs().reshape(-1, output.shape[-1]).amax(0).double()
        maxima[name] = torch.maximum(maxima[name], channel_max) if name in maxima else channel_max

    handles = [gm.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: hook(n, out)) for n in names]
    seen = 0
    try:
        with torch.no_grad():
            for index, batch in enumerate(calibration):
                if num_batches is not None and index >= num_batches:
                    break
                run_batch(gm, model_inputs(batch, num_inputs, index), index)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise CalibrationDataError("migrate_outliers needs calibration data: got no batch")
    return maxima


def _scales(act_max: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W[:, j]|^(1-alpha)``; 1 where a channel or its weights are all zero."""
    weight_max = torch.stack([layer.weight.detach().abs().amax(0).double() for layer in linears]).amax(0)
    live = (act_max > 0) & (weight_max > 0)
    scales = act_max.clamp_min(1e-30).pow(alpha) / weight_max.clamp_min(1e-30).pow(1.0 - alpha)
    scales = torch.where(live, scales, torch.ones_like(scales))
    return scales.to(linears[0].weight.dtype)
