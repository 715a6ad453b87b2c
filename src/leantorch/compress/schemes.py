"""Compression schemes: what each one does to one layer, behind one interface and a registry.

:class:`~leantorch.compress.stage.Stage` (the eval-score table, the selection's MAC estimates and the final
pass) asks the stage's scheme five questions about a layer: why it is skipped, what size (rank, kept
channels) a ratio means, what that does to the MAC counts, what the layer becomes (without touching the
model), and how to apply it to a model. A new scheme is one :class:`CompressionScheme` subclass registered
with :func:`register_scheme`; ``lt.compress(scheme=...)`` and the CLI's ``--scheme`` choices take it from
the registry.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import fx, nn

from ..registry import Registry
from .channel_pruning import (
    GramAccumulator,
    PruningPath,
    channels_for_ratio,
    prunable_layer,
    prune_channels,
    pruning_path,
    reconstruct,
    sample_grams,
    select_channels,
)
from .kept_inputs import KeptInputs
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
    """Input channels chosen from sampled activations, the producer's output channels removed along the
    path, and the layer re-fitted by least squares (:mod:`~leantorch.compress.channel_pruning`)."""

    name = "channel_pruning"
    needs_data = True
    prunes_in_one_pass = True

    def skip_reason(self, stage: Stage, name: str, module: nn.Module) -> str:
        if not prunable_layer(module):
            groups = getattr(module, "groups", 1)
            return f"{type(module).__name__} (groups={groups}) has no input channels to select"
        path = pruning_path(stage.gm, name)
        if not isinstance(path, PruningPath):
            return path
        # A module called at several places sees several inputs; its channels cannot be chosen from one
        # call's statistics, and pruning its producer would change the other calls' values too.
        reused = [
            f"{m} is called at {stage.calls[m]} places"
            for m in [name, path.producer, *path.batch_norms, *path.depthwise]
            if stage.calls.get(m, 0) > 1
        ]
        if reused:
            return "; ".join(reused)
        stage.paths[name] = path
        return ""

    def size_for(self, stage: Stage, name: str, module: nn.Module, ratio: float) -> int | None:
        keep = channels_for_ratio(module, ratio, stage.multiple)
        return keep if keep < module.in_channels else None

    def scale_macs(self, stage: Stage, name: str, module: nn.Module, size: int, macs: dict[str, float]) -> None:
        kept = size / module.in_channels
        path = stage.paths[name]
        for touched in [name, path.producer, *path.depthwise]:
            macs[touched] *= kept

    def replacement(
        self, stage: Stage, name: str, module: nn.Module, size: int, grams: GramAccumulator | None
    ) -> nn.Module:
        assert grams is not None, "channel pruning needs the layer's input statistics"
        kept = select_channels(module.weight, grams.current, size)
        small = copy.deepcopy(module)
        small.weight = nn.Parameter(reconstruct(module.weight, grams, kept).contiguous())
        small.in_channels = len(kept)
        return KeptInputs(kept, small)

    def apply(self, stage: Stage, model: fx.GraphModule, name: str, size: int, grams: GramAccumulator | None) -> None:
        assert stage.reference is not None and stage.data is not None
        module = model.get_submodule(name)
        if grams is None:
            grams = sample_grams(model, stage.reference, name, stage.data, stage.samples_per_image)
        kept = select_channels(module.weight, grams.current, size)
        prune_channels(model, stage.paths[name], kept, reconstruct(module.weight, grams, kept))


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
