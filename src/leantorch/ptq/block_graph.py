"""Finding the blocks that block reconstruction (BRECQ, QDrop) optimises jointly, from the fx graph.

A block must be *single-entry single-exit*: a span of the graph (in node order) that reads one value produced
before it and hands one value on. Only then is "the block's output given its input" a function the algorithm
can fit. Such spans are found by liveness: after node ``i`` runs, the live values are those produced at or
before ``i`` that a later node reads. Position ``i`` is a *cut* when exactly one tensor is live there;
placeholders (the model inputs, e.g. an attention mask every layer reads), ``get_attr`` constants and
non-tensor values (``x.size(0)`` read at the end of a CNN) do not count, because they are the same for every
block and are handed to it beside the live tensor. Between two consecutive cuts lies an *atomic span*: a
residual block ends at its add (its skip connection keeps two values live inside it), a transformer
sub-layer at its residual add / LayerNorm, and in a plain chain every layer is its own span.

Atomic spans are then grouped by the module that owns their layers, so that an MBConv block without a skip
connection (a chain of three convolutions) or a transformer layer (attention and MLP sub-layers) is one block
too. The owner of a layer is the deepest prefix of its name that ends in an index (``blocks.3`` of
``blocks.3.conv_pw``: an element of a list of blocks), going one index up when that prefix holds only this
layer (torchvision's ``features.2.conv.0`` wraps a single convolution). Consecutive spans with the same owner
merge while the block has at most ``max_layers`` weighted layers. A span without weights that follows a block
and whose modules belong to the block's owner (a post-LN transformer layer's last LayerNorm, the ReLU after a
residual add) closes that block; other spans without weights open the next block. A span with more than
``max_layers`` layers (a U-Net's long skips keep the whole network one span) is split into single layers: each is
then reconstructed alone, on its own output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.conv import _ConvNd

from ..errors import InvalidOptionError
from ..graph import example_inputs, prepare
from ..options import check_count

__all__ = ["Block", "find_blocks", "graph_blocks", "tensor_nodes"]


@dataclass(frozen=True)
class Block:
    """A span of the graph reconstructed jointly.

    Attributes:
        layers: the weighted layers (Conv/Linear module names) in graph order.
        nodes: the names of the graph nodes of the span, in order (its last one is the output).
    """

    layers: tuple[str, ...]
    nodes: tuple[str, ...]

    @property
    def output(self) -> str:
        """The node whose value is the block's output."""
        return self.nodes[-1]


def find_blocks(model: nn.Module, example_input: Any, max_layers: int = 8) -> list[Block]:
    """The blocks :func:`~leantorch.ptq.block_reconstruction.reconstruct` would use for ``model``.

    Every Conv/Linear layer is in exactly one block; blocks come in graph order.

    Raises:
        InvalidOptionError: ``max_layers`` is not a whole number ≥ 1.

    Example:
        >>> class Residual(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        ...     def forward(self, x):
        ...         return x + self.b(torch.relu(self.a(x)))
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), Residual(), nn.Conv2d(4, 2, 1))
        >>> [b.layers for b in find_blocks(net, torch.randn(1, 3, 8, 8))]
        [('0',), ('1.a', '1.b'), ('2',)]
    """
    check_count("max_layers", max_layers, hint=" (weighted layers per block at most)")
    inputs = example_inputs(example_input)
    gm = prepare(model, inputs)
    modules = dict(gm.named_modules())
    return graph_blocks(gm, tensor_nodes(gm, inputs), lambda name: _is_weighted(modules.get(name)), max_layers)


def _is_weighted(module: nn.Module | None) -> bool:
    inner = getattr(module, "module", module)  # a QuantWrapper's layer
    return isinstance(inner, (_ConvNd, nn.Linear))


def tensor_nodes(gm: fx.GraphModule, inputs: Sequence[Any]) -> set[str]:
    """The names of the nodes whose value is a tensor when ``gm`` runs on ``inputs`` (one pass, no gradient)."""
    found: set[str] = set()

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                found.add(n.name)
            return value

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return found


def graph_blocks(
    gm: fx.GraphModule, tensors: set[str], is_weighted: Callable[[str], bool], max_layers: int
) -> list[Block]:
    """The blocks of ``gm`` (module docstring): ``tensors`` names the nodes that hold tensors,
    ``is_weighted(target)`` tells the weighted layers among the ``call_module`` targets."""
    nodes = list(gm.graph.nodes)
    spans = _atomic_spans(nodes, tensors)
    layers_of = [
        [str(n.target) for n in span if n.op == "call_module" and is_weighted(str(n.target))] for span in spans
    ]
    owner = _owners([name for names in layers_of for name in names])
    blocks: list[Block] = []
    group: list[int] = []  # indices of the spans in the block being grown
    pending: list[int] = []  # spans without weights since the last weighted one: they lead into the next block
    group_owner: str | None = None

    def close() -> None:
        if any(layers_of[i] for i in group):
            blocks.append(_block([n for i in group for n in spans[i]], [x for i in group for x in layers_of[i]]))
        group.clear()  # spans without weights alone belong to no block: the sweep just runs them

    for i, names in enumerate(layers_of):
        if not names:
            targets = [str(n.target) for n in spans[i] if n.op == "call_module"]
            if (
                group_owner is not None
                and not pending
                and targets
                and all(t.startswith(group_owner + ".") for t in targets)
            ):
                group.append(i)  # the block's own closing op (a LayerNorm, the ReLU after a skip's add)
            else:
                pending.append(i)
            continue
        span_owner = _common({owner[n] for n in names})
        held = sum(len(layers_of[j]) for j in group)
        if held and (span_owner is None or span_owner != group_owner or held + len(names) > max_layers):
            close()
        group.extend(pending)
        pending.clear()
        if len(names) > max_layers:
            close()
            blocks.extend(_single_layers(spans[i], set(names)))
            group_owner = None
            continue
        group.append(i)
        group_owner = span_owner
    close()  # trailing spans without weights (pooling, the output) belong to no block
    return blocks


def _atomic_spans(nodes: list[fx.Node], tensors: set[str]) -> list[list[fx.Node]]:
    """The graph cut after every position where exactly one counted value is live (module docstring)."""
    index = {node: i for i, node in enumerate(nodes)}
    counted = {n for n in nodes if n.name in tensors and n.op not in ("placeholder", "get_attr", "output")}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    spans: list[list[fx.Node]] = []
    current: list[fx.Node] = []
    live: set[fx.Node] = set()
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "output"):
            continue
        current.append(node)
        if node in counted and last_use[node] > i:
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if len(live) == 1 and node in live:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


def _owners(layers: list[str]) -> dict[str, str | None]:
    """Each layer's owner: the deepest index-ended prefix of its name holding another layer too (or None)."""

    def prefixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1) if parts[k - 1].isdigit()]

    owners: dict[str, str | None] = {}
    for name in layers:
        owners[name] = None
        for prefix in prefixes(name):
            if sum(1 for other in layers if other.startswith(prefix + ".")) > 1:
                owners[name] = prefix
                break
    return owners


def _common(owners: set[str | None]) -> str | None:
    return next(iter(owners)) if len(owners) == 1 else None


def _block(nodes: list[fx.Node], layers: list[str]) -> Block:
    return Block(tuple(layers), tuple(n.name for n in nodes))


def _single_layers(span: list[fx.Node], layers: set[str]) -> list[Block]:
    """A span too large for one block: each weighted layer alone, its output its own call's value."""
    return [Block((str(n.target),), (n.name,)) for n in span if n.op == "call_module" and str(n.target) in layers]


def check_blocks(blocks: Any) -> str:
    """``blocks`` as the option reconstruct accepts (``"auto"`` or ``"layers"``)."""
    if blocks not in ("auto", "layers"):
        raise InvalidOptionError(
            f"blocks={blocks!r}: use 'auto' (residual/transformer blocks from the graph) or 'layers' (one layer each)"
        )
    return str(blocks)
