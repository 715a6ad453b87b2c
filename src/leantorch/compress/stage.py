"""One compression scheme on one traced model: which layers, what one layer becomes at a ratio, at what cost.

:class:`Stage` is shared by the eval-score table (every candidate is one layer changed in the otherwise
unchanged model) and by the final pass that compresses the chosen layers one after the other.
:meth:`Stage.replacement` builds what a layer becomes at a ratio *without* touching the model: an SVD
pair, or for channel pruning a :class:`KeptInputs` module that selects the kept input channels and applies
the smaller, least-squares re-fitted conv. Run in place of the layer on the unchanged model's activations,
it computes what the pruned model computes (the producer's dropped output channels are simply not read).
"""

from __future__ import annotations

import collections
import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

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
from .cost import CostReport
from .svd import decomposable, macs_per_rank, rank_for_ratio, spatial_svd, weight_svd


class KeptInputs(nn.Module):
    """``conv(x[:, kept])``: a pruned conv acting on the full-width input of the unpruned model.

    Example:
        >>> conv = nn.Conv2d(4, 2, 1)
        >>> x = torch.randn(1, 4, 3, 3)
        >>> small = nn.Conv2d(2, 2, 1); small.weight.data = conv.weight.data[:, [0, 2]]; small.bias = conv.bias
        >>> layer = KeptInputs(torch.tensor([0, 2]), small)
        >>> torch.allclose(layer(x), conv(x * torch.tensor([1., 0., 1., 0.])[:, None, None]), atol=1e-6)
        True
    """

    def __init__(self, kept: torch.Tensor, conv: nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("kept", kept)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.index_select(1, self.kept.to(x.device)))


@contextlib.contextmanager
def swapped(module: nn.Module, replacement: Callable[..., Any]) -> Iterator[None]:
    """Inside the block, calls of ``module`` run ``replacement`` (a module or a function) instead.

    The module object stays where it is (its ``forward`` is shadowed by an instance attribute) rather than
    being swapped out of its parent: a :class:`~leantorch.ptq.frontier.Frontier` looks modules up in a table
    made when it was created, so a module assigned to the graph module afterwards would not be seen."""
    # A Module assigned as an attribute would be registered as a submodule named "forward", which the class's
    # forward method shadows; its bound __call__ is a plain attribute that does shadow the method.
    call = replacement.__call__ if isinstance(replacement, nn.Module) else replacement
    module.forward = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward


class Stage:
    """One scheme applied to one traced model: which layers, how to compress one, at what cost."""

    def __init__(self, gm: fx.GraphModule, scheme: str, costs: CostReport, skip: Sequence[str],
                 data: list | None, multiple: int, samples_per_image: int) -> None:
        self.gm, self.scheme, self.costs, self.multiple = gm, scheme, costs, multiple
        self.data, self.samples_per_image = data, samples_per_image
        self.reference = copy.deepcopy(gm) if scheme == "channel_pruning" else None
        self.layers: list[str] = []
        self.skipped: dict[str, str] = {}
        self.paths: dict[str, PruningPath] = {}
        self.calls = collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
        for name in costs.layers:
            reason = self._reason_to_skip(name, skip)
            if reason:
                self.skipped[name] = reason
            else:
                self.layers.append(name)

    def _reason_to_skip(self, name: str, skip: Sequence[str]) -> str:
        module = self.gm.get_submodule(name)
        if name in skip:
            return "skipped by request"
        if self.scheme == "channel_pruning":
            if not prunable_layer(module):
                groups = getattr(module, 'groups', 1)
                return f"{type(module).__name__} (groups={groups}) has no input channels to select"
            path = pruning_path(self.gm, name)
            if not isinstance(path, PruningPath):
                return path
            # A module called at several places sees several inputs; its channels cannot be chosen from one
            # call's statistics, and pruning its producer would change the other calls' values too.
            reused = [f"{m} is called at {self.calls[m]} places" for m in
                      [name, path.producer, *path.batch_norms, *path.depthwise] if self.calls.get(m, 0) > 1]
            if reused:
                return "; ".join(reused)
            self.paths[name] = path
            return ""
        if not decomposable(module, self.scheme):
            return f"{type(module).__name__} cannot be decomposed by {self.scheme}"
        if macs_per_rank(module, self.scheme, self.costs.layers[name]) >= self.costs.layers[name].macs:
            return "a rank-1 decomposition would not save MACs"
        return ""

    def size_for(self, name: str, ratio: float) -> int | None:
        """Rank or kept input channels ``apply`` would use at ``ratio``; None if that saves nothing."""
        module, layer_cost = self.gm.get_submodule(name), self.costs.layers[name]
        if self.scheme == "channel_pruning":
            keep = channels_for_ratio(module, ratio, self.multiple)
            return keep if keep < module.in_channels else None
        rank = rank_for_ratio(module, self.scheme, layer_cost, ratio, self.multiple)
        return rank if rank * macs_per_rank(module, self.scheme, layer_cost) < layer_cost.macs else None

    def estimate_macs(self, ratios: dict[str, float]) -> float:
        """Total MACs per sample after compressing with ``ratios``, with rounding and, for channel
        pruning, the output channels removed from producers and depthwise convs on the way."""
        macs = {n: float(c.macs) for n, c in self.costs.layers.items()}
        for name, ratio in ratios.items():
            size = self.size_for(name, ratio) if ratio < 1.0 else None
            if size is None:
                continue
            module = self.gm.get_submodule(name)
            if self.scheme != "channel_pruning":
                macs[name] = size * macs_per_rank(module, self.scheme, self.costs.layers[name])
                continue
            kept = size / module.in_channels
            path = self.paths[name]
            for touched in [name, path.producer, *path.depthwise]:
                macs[touched] *= kept
        return sum(macs.values())

    def replacement(self, name: str, ratio: float, grams: GramAccumulator | None = None) -> nn.Module | None:
        """What layer ``name`` of ``self.gm`` becomes at ``ratio`` (the model is not changed); None when that
        would not save anything. Channel pruning needs the layer's input ``grams`` (current = original)."""
        size = self.size_for(name, ratio)
        if size is None:
            return None
        module = self.gm.get_submodule(name)
        if self.scheme == "channel_pruning":
            assert grams is not None
            kept = select_channels(module.weight, grams.current, size)
            small = copy.deepcopy(module)
            small.weight = nn.Parameter(reconstruct(module.weight, grams, kept).contiguous())
            small.in_channels = len(kept)
            return KeptInputs(kept, small)
        return weight_svd(module, size) if self.scheme == "weight_svd" else spatial_svd(module, size)

    def apply(self, model: fx.GraphModule, name: str, ratio: float,
              grams: GramAccumulator | None = None) -> int | None:
        """Compress ``name`` in ``model`` (in place) to about ``ratio`` of its MACs; returns the rank or the
        kept channels, None when that would not save anything. Channel pruning samples the layer's inputs in
        ``model`` and the original model unless ``grams`` holds them already."""
        size = self.size_for(name, ratio)
        if size is None:
            return None
        module = model.get_submodule(name)
        if self.scheme == "channel_pruning":
            assert self.reference is not None and self.data is not None
            if grams is None:
                grams = sample_grams(model, self.reference, name, self.data, self.samples_per_image)
            kept = select_channels(module.weight, grams.current, size)
            prune_channels(model, self.paths[name], kept, reconstruct(module.weight, grams, kept))
            return size
        pair = weight_svd(module, size) if self.scheme == "weight_svd" else spatial_svd(module, size)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, pair)
        return size
