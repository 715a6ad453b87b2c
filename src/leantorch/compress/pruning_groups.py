"""Channel-pruning dependency groups: which channels of a traced model must be removed together.

Removing channel ``c`` of a tensor removes it from every tensor that carries the same channel: the output of
the producing conv, the BatchNorms, activations, pads, pools and depthwise convs it flows through, both
operands of a residual ``add`` (and the other element-wise ops), every consumer of a value that fans out,
and the slice of a channel-wise concatenation that came from it. Channels are tracked one by one with a
union-find: each conv/linear output (and each tensor nothing can shrink: the model input, a constant, an op
not understood) gets fresh channel ids; channel-wise ops pass the ids on, element-wise ops unite their
operands' ids position by position, ``cat`` along channels concatenates them and a flatten of ``C×H×W``
repeats each id ``H·W`` times. A second union-find joins all the ids that meet in one tensor: its
components are the **groups**. A group's **units** are its distinct channel ids (a unit is kept or removed
as a whole); its **consumers** are the regular convs and linears that read it (their input channels are
selected), its **producers** the convs and linears whose output channels are its units, and its
**channel-wise** members the BatchNorms and depthwise convs on the way.

A group is unprunable, with the reasons kept, when one of its tensors reaches the model input or output, a
constant, a module called at several places, or an op that mixes channels in a way not modelled here
(``view`` other than a flatten, ``permute``, ``matmul``, attention, a grouped conv that is not depthwise).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .. import ops
from ..ops.modules import Add, Cat, Div, Interpolate, Mul, Sub
from .channel_pruning import prunable_layer

__all__ = ["PruningGroup", "GroupAnalysis", "find_groups"]

_ELEMENTWISE = (Add, Sub, Mul, Div)
# Channel-preserving ops the registry does not flag (its role is about the old single-path walk).
_SPATIAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d, nn.AvgPool2d, Interpolate, nn.Upsample)
_HARMLESS_METHODS = {"size", "dim"}  # read the shape, not the values
_CHANNELWISE_METHODS = {"contiguous", "clone"}
_FLATTEN_METHODS = {"view", "reshape", "flatten"}


@dataclass
class PruningGroup:
    """Channels pruned together, as indices into the group's ``units`` (one kept set per group).

    Attributes:
        name: the group's first consumer in graph order (the unit the ratio selection works on).
        units: number of independent channels.
        consumers: per layer reading the group, the unit of each of its input channels.
        producers: per conv/linear writing the group, the unit of each of its output channels.
        channelwise: per BatchNorm2d / depthwise conv on the way, the unit of each of its channels.
    """

    name: str
    units: int
    consumers: dict[str, torch.Tensor] = field(default_factory=dict)
    producers: dict[str, torch.Tensor] = field(default_factory=dict)
    channelwise: dict[str, torch.Tensor] = field(default_factory=dict)

    def kept(self, member: torch.Tensor, kept_units: torch.Tensor) -> torch.Tensor:
        """Indices of a member's channels whose unit is in ``kept_units``.

        Example:
            >>> g = PruningGroup("c", 2, {"c": torch.tensor([0, 1, 0])})
            >>> g.kept(g.consumers["c"], torch.tensor([0])).tolist()
            [0, 2]
        """
        return torch.nonzero(torch.isin(member, kept_units.to(member.device))).flatten()


@dataclass
class GroupAnalysis:
    """The prunable groups by name, the layers that cannot be pruned with the reason, and each consumer's
    group name."""

    groups: dict[str, PruningGroup]
    skipped: dict[str, str]
    group_of: dict[str, str]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def fresh(self, count: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return torch.arange(start, start + count)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _shape(node: Any) -> tuple[int, ...] | None:
    shape = node.meta.get("lt_shape") if isinstance(node, fx.Node) else None
    return (
        tuple(shape)
        if isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(s, int) for s in shape)
        else None
    )


class _Tracer:
    """One walk over the graph, filling the channel maps (node -> channel ids) and the roles."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.units, self.groups = _UnionFind(), _UnionFind()
        self.maps: dict[fx.Node, torch.Tensor] = {}
        self.bad: list[tuple[int, str]] = []
        self.consumers: list[tuple[str, fx.Node, fx.Node]] = []  # (layer, its input node, its node)
        self.producers: list[tuple[str, fx.Node]] = []  # (layer, its output node)
        self.channelwise: list[tuple[str, fx.Node]] = []
        self.calls = collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")

    def fresh(self, node: fx.Node, reason: str = "") -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2 and shape[1] > 0:
            self.maps[node] = self.groups_join(self.units.fresh(shape[1]))
            if reason:
                self.mark(node, reason)

    def groups_join(self, ids: torch.Tensor) -> torch.Tensor:
        while len(self.groups.parent) < len(self.units.parent):
            self.groups.fresh(1)
        for i in ids[1:].tolist():
            self.groups.union(int(ids[0]), i)
        return ids

    def tie(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for i, j in zip(a.tolist(), b.tolist()):
            self.units.union(i, j)
            self.groups.union(i, j)

    def mark(self, node: Any, reason: str) -> None:
        if isinstance(node, fx.Node) and node in self.maps:
            self.bad.append((int(self.maps[node][0]), reason))

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if n in self.maps]

    def unknown(self, node: fx.Node, what: str) -> None:
        for arg in self.inputs(node):
            self.mark(arg, f"{what} mixes channels in a way pruning does not model")
        self.fresh(node, f"channels come from {what}, which cannot drop them")

    def walk(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.fresh(node, "reaches the model input")
            elif node.op == "get_attr":
                self.fresh(node, f"meets the constant {node.target}")
            elif node.op == "output":
                for arg in self.inputs(node):
                    self.mark(arg, "reaches the model output")
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(str(node.target)))
            elif node.op == "call_method" and node.target in _HARMLESS_METHODS:
                continue
            elif node.op == "call_method" and node.target in _CHANNELWISE_METHODS | _FLATTEN_METHODS:
                self.reshape(node, f"{node.target}()")
            else:
                self.unknown(node, f"{node.target}")

    def module(self, node: fx.Node, m: nn.Module) -> None:
        name, what = str(node.target), f"{node.target} ({type(m).__name__})"
        first = node.args[0] if node.args else None
        if self.calls[name] > 1:
            for arg in self.inputs(node):
                self.mark(arg, f"{name} is called at {self.calls[name]} places")
            self.fresh(node, f"{name} is called at {self.calls[name]} places")
            return
        if (type(m) is nn.Conv2d and m.groups == 1) or type(m) is nn.Linear:
            in_shape = _shape(first)
            if type(m) is nn.Linear and (in_shape is None or len(in_shape) != 2):
                self.unknown(node, f"{what} on a {len(in_shape or ())}-D input")  # features not on dim 1
                return
            if isinstance(first, fx.Node) and first in self.maps:
                if type(m) is nn.Linear or prunable_layer(m):
                    self.consumers.append((name, first, node))
                else:
                    self.mark(first, f"{what} cannot have its input channels selected")
            self.fresh(node)
            self.producers.append((name, node))
        elif type(m) is nn.Conv2d and ops.is_depthwise(m):
            self.passthrough(node, first, what)
            self.channelwise.append((name, node))
        elif isinstance(m, nn.Conv2d) and m.groups > 1:
            self.unknown(node, f"{what[:-1]}, groups={m.groups}: grouped but not depthwise)")
        elif isinstance(m, nn.BatchNorm2d):
            self.passthrough(node, first, what)
            self.channelwise.append((name, node))
        elif ops.has_role(m, "prune_channelwise") or isinstance(m, _SPATIAL):
            self.passthrough(node, first, what)
        elif isinstance(m, nn.Flatten):
            self.reshape(node, what)
        elif isinstance(m, _ELEMENTWISE):
            self.elementwise(node, what)
        elif isinstance(m, Cat):
            self.concat(node, m.dim, what)
        else:
            self.unknown(node, what)

    def passthrough(self, node: fx.Node, first: Any, what: str) -> None:
        if isinstance(first, fx.Node) and first in self.maps and _shape(node) is not None:
            if _shape(node)[:2] == _shape(first)[:2]:  # type: ignore[index]
                self.maps[node] = self.maps[first]
                return
        self.unknown(node, what)

    def reshape(self, node: fx.Node, what: str) -> None:
        """A flatten of ``(N, C, *rest)`` to ``(N, C·Πrest)``: each channel becomes ``Πrest`` features."""
        first = node.args[0] if node.args else None
        before, after = _shape(first), _shape(node)
        if isinstance(first, fx.Node) and first in self.maps and before and after and len(before) >= 2:
            repeat = math.prod(before[2:])
            if after == before:
                self.maps[node] = self.maps[first]
                return
            if len(after) == 2 and after == (before[0], before[1] * repeat):
                self.maps[node] = self.maps[first].repeat_interleave(repeat)
                return
        self.unknown(node, what)

    def elementwise(self, node: fx.Node, what: str) -> None:
        out = _shape(node)
        tied = []
        for arg in node.args:
            shape = _shape(arg)
            if not isinstance(arg, fx.Node) or shape is None or (len(shape) >= 2 and shape[1] == 1):
                continue  # a scalar, or broadcast over the channels: not tied to them
            if arg not in self.maps or out is None or len(shape) != len(out) or shape[1] != out[1]:
                self.unknown(node, what)
                return
            tied.append(self.maps[arg])
        if not tied:
            self.fresh(node, f"channels come from {what}, which cannot drop them")
            return
        for other in tied[1:]:
            self.tie(tied[0], other)
        self.maps[node] = tied[0]

    def concat(self, node: fx.Node, dim: int, what: str) -> None:
        out = _shape(node)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if out is None or len(args) != len(node.args) or any(a not in self.maps for a in args):
            self.unknown(node, what)
            return
        if dim % len(out) == 1:
            self.maps[node] = self.groups_join(torch.cat([self.maps[a] for a in args]))
        else:  # along another dim: every input carries the same channels
            self.elementwise(node, what)


def find_groups(gm: fx.GraphModule, layers: list[str]) -> GroupAnalysis:
    """Dependency groups of a prepared graph (shapes from :func:`leantorch.prepare`'s trace) and, for each of
    ``layers`` whose input channels cannot be selected, the reason.

    Example:
        >>> from leantorch import prepare
        >>> class Res(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        ...     def forward(self, x):
        ...         y = self.a(x)
        ...         return self.c(y + self.b(y))
        >>> found = find_groups(prepare(Res(), torch.randn(1, 3, 8, 8)), ["a", "b", "c"])
        >>> sorted(found.groups["b"].consumers), sorted(found.groups["b"].producers), found.groups["b"].units
        (['b', 'c'], ['a', 'b'], 8)
        >>> found.skipped
        {'a': 'reaches the model input'}
    """
    tracer = _Tracer(gm)
    tracer.walk()
    uf = tracer.groups
    reasons: dict[int, list[str]] = collections.defaultdict(list)
    for i, reason in tracer.bad:
        if reason not in reasons[uf.find(i)]:
            reasons[uf.find(i)].append(reason)
    root = {node: uf.find(int(ids[0])) for node, ids in tracer.maps.items()}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    index: dict[int, dict[int, int]] = collections.defaultdict(dict)  # group -> unit root -> unit index

    def units_of(node: fx.Node) -> torch.Tensor:
        table = index[root[node]]
        out = []
        for i in tracer.maps[node].tolist():
            out.append(table.setdefault(tracer.units.find(i), len(table)))
        return torch.tensor(out, dtype=torch.long)

    for node in sorted(tracer.maps, key=order.__getitem__):  # unit indices in order of first appearance
        units_of(node)
    consumers: dict[int, list[tuple[str, fx.Node]]] = collections.defaultdict(list)
    for name, node, _call in sorted(tracer.consumers, key=lambda c: order[c[2]]):
        consumers[root[node]].append((name, node))
    groups: dict[str, PruningGroup] = {}
    group_of: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key, members in consumers.items():
        why = list(reasons.get(key, []))
        if len(index[key]) < 2:
            why.append("its input has a single channel")
        if why:
            for name, _ in members:
                skipped[name] = "; ".join(why[:3])
            continue
        first = members[0][0]  # in graph order of the consumers' calls
        group = PruningGroup(first, len(index[key]), {n: units_of(node) for n, node in members})
        group.producers = {n: units_of(node) for n, node in tracer.producers if root.get(node) == key}
        group.channelwise = {n: units_of(node) for n, node in tracer.channelwise if root.get(node) == key}
        groups[first] = group
        group_of.update({n: first for n in group.consumers})
    members = {n for g in groups.values() for n in g.channelwise}
    for name in layers:
        if name in group_of or name in skipped or name in members:
            continue
        m = gm.get_submodule(name)
        node = next((n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == name), None)
        first = node.args[0] if node is not None and node.args else None
        if isinstance(first, fx.Node) and first in root and reasons.get(root[first]):
            skipped[name] = "; ".join(reasons[root[first]][:3])
        else:
            skipped[name] = f"{type(m).__name__} (groups={getattr(m, 'groups', 1)}) has no input channels to select"
    return GroupAnalysis(groups, {n: skipped[n] for n in layers if n in skipped}, group_of)
