"""Advancing a data set through a traced model one node at a time, keeping only the live values.

Layer-by-layer algorithms change one layer and need its effect on every later layer: bias correction
measures each layer's output in the partially corrected model. Re-running the model up to each layer costs
a forward pass per layer, O(depth²) in all. A :class:`Frontier` instead holds, for every batch, the values
still needed by nodes not yet run (the frontier), and advances it one node at a time; a changed layer is
re-run in place. The whole sweep then costs about one forward pass over the data.

Memory: the frontier of every batch at once (the live activations of the whole calibration set at the
widest point of the graph). Batches are advanced together so that each node runs once per batch, in the
same order and with the same arithmetic as a plain forward pass.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import fx

__all__ = ["Frontier"]


class Frontier:
    """The live values of ``gm``'s graph for each batch, advanced node by node.

    Args:
        gm: a traced model (``torch.fx.GraphModule``), e.g. ``sim.model``.
        batches: the model inputs of each batch (a tuple of tensors per batch, already on the model's device).

    Example:
        >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
        >>> frontier = Frontier(gm, [(torch.randn(2, 3),), (torch.randn(5, 3),)])
        >>> [(node.target, [tuple(v.shape) for v in values]) for node, values in frontier if node.op == "call_module"]
        [('0', [(2, 4), (5, 4)]), ('1', [(2, 4), (5, 4)])]
    """

    def __init__(self, gm: fx.GraphModule, batches: Sequence[tuple[torch.Tensor, ...]]) -> None:
        self.gm = gm
        self.batches = list(batches)
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())
        index = {node: i for i, node in enumerate(self.nodes)}
        # A value is dropped once no node at or after the current one reads it.
        self.last_use = {node: max((index[user] for user in node.users), default=index[node]) for node in self.nodes}
        self.placeholders = {node: i for i, node in enumerate(n for n in self.nodes if n.op == "placeholder")}
        self.envs: list[dict[fx.Node, Any]] = [{} for _ in self.batches]
        self.position = 0

    def __iter__(self) -> Iterator[tuple[fx.Node, list[Any]]]:
        """Run the remaining nodes in order; yields each node and its value for every batch.

        The values of the node just yielded may be changed by re-running it (:meth:`rerun`) before the
        iteration goes on: later nodes then see the new values."""
        while self.position < len(self.nodes):
            node = self.nodes[self.position]
            self._drop_dead_values()
            self._run(node)
            self.position += 1
            yield node, [env[node] for env in self.envs]

    def rerun(self) -> list[Any]:
        """Run the node last yielded again on every batch (after its module changed); returns the new values.

        Its inputs are still held: values are dropped only when the iteration moves on."""
        node = self.nodes[self.position - 1]
        self._run(node)
        return [env[node] for env in self.envs]

    def _drop_dead_values(self) -> None:
        for env in self.envs:
            for node in [n for n in env if self.last_use[n] < self.position]:
                del env[node]

    def _run(self, node: fx.Node) -> None:
        for env, batch in zip(self.envs, self.batches):
            env[node] = self._execute(node, env, batch)

    def _execute(self, node: fx.Node, env: dict[fx.Node, Any], batch: tuple[torch.Tensor, ...]) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            position = self.placeholders[node]
            return batch[position] if position < len(batch) else (node.args[0] if node.args else None)
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            receiver, *rest = args
            return getattr(receiver, str(node.target))(*rest, **kwargs)
        return args[0]  # output
