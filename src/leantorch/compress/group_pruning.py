"""Pruning one dependency group: statistics of every consumer, one kept-unit set, least-squares re-fits.

A group (:class:`~leantorch.compress.pruning_groups.PruningGroup`) is kept or cut unit by unit. The units to
keep minimise the **summed** reconstruction error of all its consumers: each consumer's
``G_cd = ⟨Z_c, Z_d⟩`` (:func:`~leantorch.compress.channel_pruning.channel_contribution`) is mapped from its
input channels onto the group's units (a unit read through several channels, e.g. after a flatten, adds
up), divided by the consumer's output energy ``‖Y‖² = Σ G`` when there are several consumers (so that a
shortcut conv with small activations counts as much as a 3×3 conv with large ones: the error summed is the
relative one), and summed; ThiNet's greedy removal (:func:`~leantorch.compress.channel_pruning.greedy_keep`)
runs on the sum. With one consumer whose channels are the units this is exactly
:func:`~leantorch.compress.channel_pruning.select_channels`. Every consumer is then re-fitted by least
squares on its kept channels, and the producers, BatchNorms and depthwise convs lose the dropped units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..batches import run_batch
from ..graph import as_tuple
from .channel_pruning import GramAccumulator, channel_contribution, greedy_keep, reconstruct
from .kept_inputs import KeptInputs
from .pruning_groups import PruningGroup

__all__ = [
    "add_layer_inputs",
    "layer_grams",
    "sample_group_grams",
    "select_units",
    "units_for_ratio",
    "refit",
    "group_replacements",
    "reading_kept",
    "prune_groups",
]


def add_layer_inputs(
    grams: GramAccumulator,
    layer: nn.Module,
    current: torch.Tensor,
    original: torch.Tensor,
    samples_per_image: int,
    generator: torch.Generator,
) -> None:
    """Add one batch of ``layer``'s inputs: a conv's patches at random positions, a linear's rows.

    Example:
        >>> grams = GramAccumulator()
        >>> x = torch.randn(5, 3)
        >>> add_layer_inputs(grams, nn.Linear(3, 2), x, x, 16, torch.Generator())
        >>> grams.count, torch.allclose(grams.current, (x.t() @ x).double())
        (5, True)
    """
    if isinstance(layer, nn.Linear):
        grams.add(current, original)
    else:
        grams.add_inputs(layer, current, original, samples_per_image, generator)  # type: ignore[arg-type]


def layer_grams(
    layer: nn.Module, current: Sequence[tuple], original: Sequence[tuple], samples_per_image: int
) -> GramAccumulator:
    """Gram matrices of ``layer``'s inputs from per-batch argument tuples (a fresh seed-0 generator, as
    :func:`~leantorch.compress.channel_pruning.sample_grams`: the same positions for every layer).

    Example:
        >>> x = torch.randn(2, 4, 6, 6)
        >>> layer_grams(nn.Conv2d(4, 2, 3), [(x,)], [(x,)], samples_per_image=5).count
        10
    """
    grams, gen = GramAccumulator(), torch.Generator().manual_seed(0)
    for now, before in zip(current, original):
        add_layer_inputs(grams, layer, now[0], before[0], samples_per_image, gen)
    return grams


def sample_group_grams(
    model: nn.Module, original: nn.Module, group: PruningGroup, data: Iterable[Any], samples_per_image: int = 16
) -> dict[str, GramAccumulator]:
    """Gram matrices of every consumer of ``group`` in ``model`` and ``original`` (one run of each per batch).

    Example:
        >>> from leantorch import prepare
        >>> from leantorch.compress.pruning_groups import find_groups
        >>> gm = prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), torch.randn(1, 3, 8, 8))
        >>> group = find_groups(gm, ["0", "2"]).groups["2"]
        >>> sample_group_grams(gm, gm, group, [torch.randn(2, 3, 8, 8)])["2"].current.shape
        torch.Size([8, 8])
    """
    names = list(group.consumers)
    grams = {n: GramAccumulator() for n in names}
    gens = {n: torch.Generator().manual_seed(0) for n in names}
    captured: dict[tuple[str, str], torch.Tensor] = {}

    def grab(key: tuple[str, str]):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, args: tuple) -> None:
            captured[key] = args[0].detach()

        return hook

    handles = [
        net.get_submodule(n).register_forward_pre_hook(grab((n, which)))
        for n in names
        for net, which in ((model, "current"), (original, "original"))
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for index, batch in enumerate(data):
                inputs = tuple(x.to(device) for x in as_tuple(batch))
                run_batch(model, inputs, index)
                run_batch(original, inputs, index)
                for n in names:
                    layer = model.get_submodule(n)
                    now, before = captured[(n, "current")], captured[(n, "original")]
                    add_layer_inputs(grams[n], layer, now, before, samples_per_image, gens[n])
    finally:
        for h in handles:
            h.remove()
    return grams


def select_units(group: PruningGroup, weights: dict[str, torch.Tensor], grams: dict[str, torch.Tensor], keep: int):
    """Indices (sorted) of the ``keep`` units of ``group`` to keep, by greedy removal on the summed (relative,
    when several consumers) output error; ``weights``/``grams``: each consumer's weight and input Gram.

    Example:
        >>> g = PruningGroup("a", 3, {"a": torch.arange(3), "b": torch.arange(3)})
        >>> w = torch.ones(2, 3, 1, 1); w[:, 1] = 0.01
        >>> select_units(g, {"a": w, "b": w}, {"a": torch.eye(3), "b": torch.eye(3)}, keep=2).tolist()
        [0, 2]
    """
    device = next(iter(grams.values())).device
    total = torch.zeros(group.units, group.units, dtype=torch.float64, device=device)
    for name, units in group.consumers.items():
        contribution = channel_contribution(weights[name], grams[name])
        if len(group.consumers) > 1:
            energy = float(contribution.sum())
            contribution = contribution / energy if energy > 0 else contribution
        units = units.to(device)
        rows = torch.zeros(group.units, contribution.shape[1], dtype=torch.float64, device=device)
        rows.index_add_(0, units, contribution)
        total.index_add_(1, units, rows)
    return greedy_keep(total, keep)


def units_for_ratio(units: int, ratio: float, multiple: int = 1) -> int:
    """Units to keep for about ``ratio`` of the MACs of the consumers (they scale linearly), rounded up to
    ``multiple``, within ``[1, units]``.

    Example:
        >>> units_for_ratio(64, 0.3, multiple=8)
        24
    """
    keep = max(1, math.floor(ratio * units))
    if multiple > 1:
        keep = math.ceil(keep / multiple) * multiple
    return min(keep, units)


def refit(
    group: PruningGroup, name: str, layer: nn.Module, grams: GramAccumulator, kept_units: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consumer ``name``'s kept input channels and its least-squares weight over them.

    Example:
        >>> layer, x = nn.Linear(3, 2), torch.randn(50, 3)
        >>> grams = GramAccumulator(); grams.add(x, x)
        >>> group = PruningGroup("fc", 3, {"fc": torch.arange(3)})
        >>> local, weight = refit(group, "fc", layer, grams, torch.tensor([0, 1, 2]))
        >>> local.tolist(), torch.allclose(weight, layer.weight, atol=1e-4)
        ([0, 1, 2], True)
    """
    local = group.kept(group.consumers[name], kept_units)
    return local, reconstruct(layer.weight, grams, local)


def _small(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    small = copy.deepcopy(layer)
    small.weight = nn.Parameter(weight.contiguous())
    if isinstance(small, nn.Linear):
        small.in_features = weight.shape[1]
    else:
        small.in_channels = weight.shape[1]
    return small


def group_replacements(
    gm: fx.GraphModule, group: PruningGroup, grams: dict[str, GramAccumulator], keep: int
) -> dict[str, nn.Module]:
    """What each consumer of ``group`` becomes when ``keep`` units are kept, run on the unpruned model's
    activations (:class:`KeptInputs`: reads the kept channels, applies the re-fitted layer); exactly the
    pruned model, since every path out of the group's tensors goes through a consumer.

    Example:
        >>> from leantorch import prepare
        >>> from leantorch.compress.pruning_groups import find_groups
        >>> gm = prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), torch.randn(1, 3, 8, 8))
        >>> group = find_groups(gm, ["0", "2"]).groups["2"]
        >>> grams = sample_group_grams(gm, gm, group, [torch.randn(2, 3, 8, 8)])
        >>> new = group_replacements(gm, group, grams, keep=5)
        >>> new["2"].conv.in_channels, len(new["2"].kept)
        (5, 5)
    """
    layers = {n: gm.get_submodule(n) for n in group.consumers}
    currents = {n: g.current for n, g in grams.items() if g.current is not None}
    kept = select_units(group, {n: m.weight for n, m in layers.items()}, currents, keep)
    out: dict[str, nn.Module] = {}
    for name, layer in layers.items():
        local, weight = refit(group, name, layer, grams[name], kept)
        out[name] = KeptInputs(local.to(weight.device), _small(layer, weight))
    return out


def reading_kept(layer: nn.Module, local: torch.Tensor, weight: torch.Tensor):
    """A forward for ``layer`` that reads only the ``local`` channels of its full-width input with ``weight``.

    Example:
        >>> conv = nn.Conv2d(3, 2, 1)
        >>> x = torch.randn(1, 3, 2, 2)
        >>> f = reading_kept(conv, torch.tensor([0, 2]), conv.weight[:, [0, 2]])
        >>> torch.allclose(f(x), conv(x * torch.tensor([1.0, 0.0, 1.0])[:, None, None]), atol=1e-6)
        True
    """
    local = local.to(weight.device)
    if isinstance(layer, nn.Linear):
        return lambda x: F.linear(x.index_select(1, local), weight, layer.bias)
    return lambda x: layer._conv_forward(x.index_select(1, local), weight, layer.bias)  # type: ignore[operator]


def prune_groups(gm: nn.Module, jobs: Sequence[tuple[PruningGroup, torch.Tensor, dict[str, torch.Tensor]]]) -> None:
    """Prune ``gm`` in place: per job ``(group, kept units, consumer weights over their kept channels)``,
    every consumer gets its new weight, every producer/BatchNorm/depthwise conv loses the dropped units.

    Input sides are set before output sides are cut, so a layer that reads one group and writes another
    (or the same) ends with both. All tensors are computed before anything is assigned: an error leaves
    ``gm`` as it was.

    Example:
        >>> from leantorch import prepare
        >>> from leantorch.compress.pruning_groups import find_groups
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        >>> gm = prepare(net, torch.randn(1, 3, 8, 8))
        >>> group = find_groups(gm, ["0", "2"]).groups["2"]
        >>> kept = torch.tensor([0, 3, 5])
        >>> prune_groups(gm, [(group, kept, {"2": gm.get_submodule("2").weight.detach()[:, kept]})])
        >>> gm.get_submodule("0").out_channels, gm.get_submodule("1").num_features, gm.get_submodule("2").in_channels
        (3, 3, 3)
    """
    fields: dict[str, dict[str, Any]] = {}
    for _group, _kept, weights in jobs:
        for name, weight in weights.items():
            size = "in_features" if isinstance(gm.get_submodule(name), nn.Linear) else "in_channels"
            fields.setdefault(name, {}).update({"weight": weight.detach(), size: weight.shape[1]})
    for group, kept, _weights in jobs:
        for name, units in group.producers.items():
            module, own = gm.get_submodule(name), fields.setdefault(name, {})
            rows = group.kept(units, kept).to(module.weight.device)
            own["weight"] = own.get("weight", module.weight.detach())[rows]
            if module.bias is not None:
                own["bias"] = module.bias.detach()[rows]
            own["out_features" if isinstance(module, nn.Linear) else "out_channels"] = len(rows)
        for name, units in group.channelwise.items():
            module, own = gm.get_submodule(name), fields.setdefault(name, {})
            rows = group.kept(units, kept).to(next(iter(module.buffers()), module.weight).device)
            if isinstance(module, nn.BatchNorm2d):
                own["num_features"] = len(rows)
                for attr in ("running_mean", "running_var", "weight", "bias"):
                    if getattr(module, attr) is not None:
                        own[attr] = getattr(module, attr).detach()[rows]
            else:  # depthwise conv: one filter per channel
                own.update({"weight": module.weight.detach()[rows], "in_channels": len(rows)})
                own.update({"out_channels": len(rows), "groups": len(rows)})
                if module.bias is not None:
                    own["bias"] = module.bias.detach()[rows]
    for name, values in fields.items():
        module = gm.get_submodule(name)
        for attr, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.clone().contiguous()
                value = nn.Parameter(value) if attr in ("weight", "bias") else value
            setattr(module, attr, value)
