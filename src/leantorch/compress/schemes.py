"""Compression schemes: what each one does to one layer, behind one interface and a registry.

:class:`~leantorch.compress.stage.Stage` (the eval-score table, the selection's MAC estimates and the final
pass) asks the stage's scheme five questions about a layer: why it is skipped, what size (rank, kept
channels) a ratio means, what that does to the MAC counts, what the layer becomes (without touching the
model), and how to apply it to a model. A new scheme is one :class:`CompressionScheme` subclass registered
with :func:`register_scheme`; ``lt.compress(scheme=...)`` and the CLI's ``--scheme`` choices take it from
the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from ..registry import Registry
from .channel_pruning import GramAccumulator
from .group_pruning import group_replacements, prune_groups, refit, sample_group_grams, select_units, units_for_ratio
from .pruning_groups import find_groups
from .svd import decomposable, macs_per_rank, rank_for_ratio, spatial_svd, weight_svd

if TYPE_CHECKING:
    from .stage import Stage

__all__ = [
    "CompressionScheme",
    "LowRankScheme",
    "ChannelPruningScheme",
    "register_scheme",
    "unregister_scheme",
    "scheme_for",
    "scheme_names",
]


class CompressionScheme(ABC):
    """How one compression scheme treats a layer (``module`` is layer ``name`` of ``stage.gm``).

    Attributes:
        name: the scheme's name in ``lt.compress(scheme=...)`` and ``--scheme``.
        needs_data: the scheme samples layer inputs from ``compress(calibration=...)``; the stage then keeps
            an untouched copy of the model (``stage.reference``) for least-squares targets.
        prunes_in_one_pass: the final pass can run as one sweep over the data
            (:func:`~leantorch.compress.pruning_pass.prune_in_one_pass`) instead of layer by layer.
    """

    name: str = ""
    needs_data: bool = False
    prunes_in_one_pass: bool = False

    @abstractmethod
    def skip_reason(self, stage: Stage, name: str, module: nn.Module) -> str:
        """Why the layer cannot be compressed ("" when it can)."""

    @abstractmethod
    def size_for(self, stage: Stage, name: str, module: nn.Module, ratio: float) -> int | None:
        """The rank or kept channels ``ratio`` of the layer's MACs means; None if that saves nothing."""

    @abstractmethod
    def scale_macs(self, stage: Stage, name: str, module: nn.Module, size: int, macs: dict[str, float]) -> None:
        """Update the per-layer MAC counts ``macs`` for compressing this layer to ``size``."""

    @abstractmethod
    def replacement(
        self, stage: Stage, name: str, module: nn.Module, size: int, grams: GramAccumulator | None
    ) -> nn.Module:
        """What the layer becomes at ``size``, run in its place on the unchanged model's activations."""

    @abstractmethod
    def apply(self, stage: Stage, model: fx.GraphModule, name: str, size: int, grams: GramAccumulator | None) -> None:
        """Compress layer ``name`` of ``model`` (in place) to ``size``."""

    def units(self, stage: Stage, skip: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
        """The units the ratios are chosen for and the skipped layers with reasons, when they are not the
        layers one by one (channel pruning: dependency groups); None: per layer, from :meth:`skip_reason`."""
        return None

    def replacements(self, stage: Stage, name: str, size: int, stats: Any) -> dict[str, nn.Module]:
        """Every layer unit ``name`` changes at ``size``, and what each becomes (default: the layer alone)."""
        return {name: self.replacement(stage, name, stage.gm.get_submodule(name), size, stats)}


class LowRankScheme(CompressionScheme):
    """Weight SVD (``W ≈ U V``: two layers of rank r) or spatial SVD (a k×1 then a 1×k conv of rank r)."""

    def __init__(self, kind: str, name: str | None = None) -> None:
        assert kind in ("weight_svd", "spatial_svd")
        self.kind, self.name = kind, name or kind

    def skip_reason(self, stage: Stage, name: str, module: nn.Module) -> str:
        if not decomposable(module, self.kind):
            return f"{type(module).__name__} cannot be decomposed by {self.kind}"
        if macs_per_rank(module, self.kind, stage.costs.layers[name]) >= stage.costs.layers[name].macs:
            return "a rank-1 decomposition would not save MACs"
        return ""

    def size_for(self, stage: Stage, name: str, module: nn.Module, ratio: float) -> int | None:
        layer_cost = stage.costs.layers[name]
        rank = rank_for_ratio(module, self.kind, layer_cost, ratio, stage.multiple)
        return rank if rank * macs_per_rank(module, self.kind, layer_cost) < layer_cost.macs else None

    def scale_macs(self, stage: Stage, name: str, module: nn.Module, size: int, macs: dict[str, float]) -> None:
        macs[name] = size * macs_per_rank(module, self.kind, stage.costs.layers[name])

    def replacement(
        self, stage: Stage, name: str, module: nn.Module, size: int, grams: GramAccumulator | None
    ) -> nn.Module:
        return weight_svd(module, size) if self.kind == "weight_svd" else spatial_svd(module, size)

    def apply(self, stage: Stage, model: fx.GraphModule, name: str, size: int, grams: GramAccumulator | None) -> None:
        pair = self.replacement(stage, name, model.get_submodule(name), size, grams)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, pair)


class ChannelPruningScheme(CompressionScheme):
    """Dependency groups pruned as units (:mod:`~leantorch.compress.pruning_groups`): one kept-channel set per
    group from the summed error of its consumers, each consumer re-fitted by least squares, the producers,
    BatchNorms and depthwise convs losing the dropped channels (:mod:`~leantorch.compress.group_pruning`).
    A group is named by its first consumer; the stage's ``layers`` are the group names."""

    name = "channel_pruning"
    needs_data = True
    prunes_in_one_pass = True

    def units(self, stage: Stage, skip: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        found = find_groups(stage.gm, list(stage.costs.layers))
        skipped = dict(found.skipped)
        for name, group in found.groups.items():
            asked = [c for c in group.consumers if c in skip]
            for consumer in group.consumers if asked else ():
                skipped[consumer] = f"its input channels are tied to those of {asked[0]}, skipped by request"
            if not asked:
                stage.groups[name] = group
        skipped.update({n: "skipped by request" for n in skip if n in stage.costs.layers})
        stage.group_of = {c: g.name for g in stage.groups.values() for c in g.consumers}
        order = list(stage.costs.layers)
        return [n for n in order if n in stage.groups], {n: skipped[n] for n in order if n in skipped}

    def skip_reason(self, stage: Stage, name: str, module: nn.Module) -> str:
        return "" if name in stage.groups else stage.skipped.get(name, "not the first consumer of a group")

    def size_for(self, stage: Stage, name: str, module: nn.Module, ratio: float) -> int | None:
        units = stage.groups[name].units
        keep = units_for_ratio(units, ratio, stage.multiple)
        return keep if keep < units else None

    def scale_macs(self, stage: Stage, name: str, module: nn.Module, size: int, macs: dict[str, float]) -> None:
        group = stage.groups[name]
        kept = size / group.units
        # A layer both reading and writing the group loses on both sides: its MACs scale twice.
        for touched in [*group.consumers, *group.producers, *group.channelwise]:
            if touched in macs:
                macs[touched] *= kept

    def replacement(
        self, stage: Stage, name: str, module: nn.Module, size: int, grams: GramAccumulator | None
    ) -> nn.Module:
        assert grams is not None, "channel pruning needs the layer's input statistics"
        return self.replacements(stage, name, size, {name: grams})[name]

    def replacements(self, stage: Stage, name: str, size: int, stats: Any) -> dict[str, nn.Module]:
        assert isinstance(stats, dict), "channel pruning needs every consumer's input statistics"
        return group_replacements(stage.gm, stage.groups[name], stats, size)

    def apply(self, stage: Stage, model: fx.GraphModule, name: str, size: int, grams: Any) -> None:
        assert stage.reference is not None and stage.data is not None
        group = stage.groups[name]
        if not isinstance(grams, dict):
            grams = sample_group_grams(model, stage.reference, group, stage.data, stage.samples_per_image)
        layers = {n: model.get_submodule(n) for n in group.consumers}
        currents = {n: g.current for n, g in grams.items()}
        kept = select_units(group, {n: m.weight for n, m in layers.items()}, currents, size)
        weights = {n: refit(group, n, layer, grams[n], kept)[1] for n, layer in layers.items()}
        prune_groups(model, [(group, kept, weights)])


_SCHEMES: Registry[CompressionScheme] = Registry("scheme", "compression scheme")


def register_scheme(scheme: CompressionScheme) -> CompressionScheme:
    """Make ``scheme`` selectable by its name; returns it.

    Raises:
        ConfigError (a ValueError): the name is empty or taken.
    """
    return _SCHEMES.add(scheme.name, scheme)


def unregister_scheme(name: str) -> None:
    """Remove a registered scheme (tests register toy schemes and take them away again)."""
    _SCHEMES.remove(name)


def scheme_for(name: str) -> CompressionScheme:
    """The registered scheme called ``name`` (:class:`InvalidOptionError` listing them if none)."""
    return _SCHEMES.get(name)


def scheme_names() -> Sequence[str]:
    """The registered schemes' names, built-ins first.

    Example:
        >>> scheme_names()[:3]
        ('weight_svd', 'spatial_svd', 'channel_pruning')
    """
    return _SCHEMES.names()


for _builtin in (LowRankScheme("weight_svd"), LowRankScheme("spatial_svd"), ChannelPruningScheme()):
    register_scheme(_builtin)
