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

from torch import fx, nn

from .channel_pruning import GramAccumulator
from .cost import CostReport
from .kept_inputs import KeptInputs
from .pruning_groups import PruningGroup
from .schemes import CompressionScheme, scheme_for

__all__ = ["Stage", "KeptInputs", "swapped"]


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
    """One scheme applied to one traced model: which layers, how to compress one, at what cost.

    What the scheme does to a layer is its :class:`~leantorch.compress.schemes.CompressionScheme`
    (``self.method``); the stage holds the model, its costs and the per-model state the scheme keeps
    (``groups``, ``group_of``, ``reference``, ``data``). ``layers`` are the units whose ratio is chosen: the
    layers themselves, or for channel pruning the dependency groups, named by their first consumer."""

    def __init__(
        self,
        gm: fx.GraphModule,
        scheme: str,
        costs: CostReport,
        skip: Sequence[str],
        data: list | None,
        multiple: int,
        samples_per_image: int,
    ) -> None:
        self.gm, self.scheme, self.costs, self.multiple = gm, scheme, costs, multiple
        self.method: CompressionScheme = scheme_for(scheme)
        self.data, self.samples_per_image = data, samples_per_image
        self.reference = copy.deepcopy(gm) if self.method.needs_data else None
        self.layers: list[str] = []
        self.skipped: dict[str, str] = {}
        self.groups: dict[str, PruningGroup] = {}
        self.group_of: dict[str, str] = {}  # consumer layer -> its group's name
        self.calls = collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
        units = self.method.units(self, skip)
        if units is not None:
            self.layers, self.skipped = units
            return
        for name in costs.layers:
            reason = (
                "skipped by request" if name in skip else self.method.skip_reason(self, name, gm.get_submodule(name))
            )
            if reason:
                self.skipped[name] = reason
            else:
                self.layers.append(name)

    def size_for(self, name: str, ratio: float) -> int | None:
        """Rank or kept input channels ``apply`` would use at ``ratio``; None if that saves nothing."""
        return self.method.size_for(self, name, self.gm.get_submodule(name), ratio)

    def estimate_macs(self, ratios: dict[str, float]) -> float:
        """Total MACs per sample after compressing with ``ratios``, with rounding and, for channel
        pruning, the output channels removed from producers and depthwise convs on the way."""
        macs = {n: float(c.macs) for n, c in self.costs.layers.items()}
        for name, ratio in ratios.items():
            size = self.size_for(name, ratio) if ratio < 1.0 else None
            if size is not None:
                self.method.scale_macs(self, name, self.gm.get_submodule(name), size, macs)
        return sum(macs.values())

    def replacement(self, name: str, ratio: float, grams: GramAccumulator | None = None) -> nn.Module | None:
        """What layer ``name`` of ``self.gm`` becomes at ``ratio`` (the model is not changed); None when that
        would not save anything. Channel pruning needs the layer's input ``grams`` (current = original)."""
        size = self.size_for(name, ratio)
        if size is None:
            return None
        return self.method.replacement(self, name, self.gm.get_submodule(name), size, grams)

    def replacements(self, name: str, ratio: float, stats: Any = None) -> dict[str, nn.Module] | None:
        """Every layer unit ``name`` changes at ``ratio`` and what it becomes (the model is not changed); None
        when that would not save anything. Channel pruning takes ``{consumer: grams}`` of the group."""
        size = self.size_for(name, ratio)
        if size is None:
            return None
        return self.method.replacements(self, name, size, stats)

    def apply(self, model: fx.GraphModule, name: str, ratio: float, grams: Any = None) -> int | None:
        """Compress ``name`` in ``model`` (in place) to about ``ratio`` of its MACs; returns the rank or the
        kept channels, None when that would not save anything. Channel pruning samples the layer's inputs in
        ``model`` and the original model unless ``grams`` holds them already."""
        size = self.size_for(name, ratio)
        if size is None:
            return None
        self.method.apply(self, model, name, size, grams)
        return size
