"""Advancing a data set through a traced model one node at a time, keeping only the live values.

Layer-by-layer algorithms change one layer and need its effect on every later layer: bias correction
measures each layer's output in the partially corrected model. Re-running the model up to each layer costs
a forward pass per layer, O(depth²) in all. A :class:`Frontier` instead holds, for every batch, the values
still needed by nodes not yet run (the frontier), and advances it one node at a time; a changed layer is
re-run in place. The whole sweep then costs about one forward pass over the data.

Sweeps that try one change at a time (per-layer sensitivity, a compression candidate per layer and ratio)
need the model's output with only that change: :meth:`Frontier.fork` copies the frontier just before the
changed node, and :meth:`Frontier.run_rest` runs only the suffix of the graph from there.

Memory: the frontier of every batch at once (the live activations of the whole calibration set at the
widest point of the graph). Batches are advanced together so that each node runs once per batch, in the
same order and with the same arithmetic as a plain forward pass. With ``max_bytes``, values beyond that
budget are written to temporary files and read back when a node needs them, so a calibration set larger than
memory still advances, more slowly. Plain reads and writes, not memory maps: a mapped spill file's pages count as
the process's own memory while it lives (a 4,096-crop EfficientNet-Lite0 GPTQ held 7.8 GB of them beside its
frontiers), whereas the page cache behind a file read is the kernel's to drop.
"""

from __future__ import annotations

import operator
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import fx

__all__ = ["Frontier"]


class Frontier:
    """The live values of ``gm``'s graph for each batch, advanced node by node.

    Args:
        gm: a traced model (``torch.fx.GraphModule``), e.g. ``sim.model``.
        batches: the model inputs of each batch (a tuple of tensors per batch, already on the model's device).
        max_bytes: keep at most this many bytes of live tensors in memory (device or RAM); values produced
            beyond it go to temporary files and come back to their device when read.
            ``"auto"`` (default): a quarter of the memory still available, or of the free GPU memory on CUDA (room for
            the two frontiers algorithms advance side by side). Values an in-place op writes to stay in memory.
            ``None``: no limit.

    Example:
        >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
        >>> frontier = Frontier(gm, [(torch.randn(2, 3),), (torch.randn(5, 3),)])
        >>> [(node.target, [tuple(v.shape) for v in values]) for node, values in frontier if node.op == "call_module"]
        [('0', [(2, 4), (5, 4)]), ('1', [(2, 4), (5, 4)])]
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        batches: Sequence[tuple[torch.Tensor, ...]],
        max_bytes: int | Literal["auto"] | None = "auto",
    ) -> None:
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
        self.max_bytes = _memory_budget(self.batches) if max_bytes == "auto" else max_bytes
        self.held_bytes = 0  # bytes of live tensors kept in memory (not on disk)
        self.spilled_bytes = 0  # bytes ever written to disk (a diagnostic for tests and logs)
        self.in_place = _in_place_values(gm, self.nodes)

    def __iter__(self) -> Iterator[tuple[fx.Node, list[Any]]]:
        """Run the remaining nodes in order; yields each node and its value for every batch.

        The values of the node just yielded may be changed by re-running it (:meth:`rerun`) before the
        iteration goes on: later nodes then see the new values."""
        while self.position < len(self.nodes):
            node = self._step()
            yield node, [self._load(env[node]) for env in self.envs]

    def _step(self) -> fx.Node:
        """Run the next node on every batch (no value read back: spilled values stay on disk)."""
        node: fx.Node = self.nodes[self.position]
        self._drop_dead_values()
        self._run(node)
        self.position += 1
        return node

    def peek(self) -> fx.Node | None:
        """The node the next step of the iteration will run (``None`` at the end)."""
        return self.nodes[self.position] if self.position < len(self.nodes) else None

    def advance_to(self, node: fx.Node) -> None:
        """Run every node before ``node`` (which must not have run yet), so that :meth:`peek` is ``node``."""
        target = self.nodes.index(node)
        if target < self.position:
            raise ValueError(f"node {node.name} has already run")
        # Not through __iter__: it reads every batch's value of each node back from disk at once, which for a
        # spilled EfficientNet-Lite0 block on 1,536 crops was 7.4 GB per frontier (the cause of out-of-memory kills).
        while self.position < target:
            self._step()

    def inputs_of(self, node: fx.Node) -> list[tuple[Any, ...]]:
        """The positional arguments ``node`` is (or was, before moving on) called with, per batch."""
        # map_arg calls the lambda at once, with this env (B023 is a false positive)
        return [tuple(fx.node.map_arg(node.args, lambda n: self._load(env[n]))) for env in self.envs]  # noqa: B023

    def argument_of(self, node: fx.Node, batch: int, position: int = 0) -> Any:
        """Positional argument ``position`` of ``node`` in batch ``batch`` alone: a spilled value is read back for
        this call only, so a caller that takes the batches one at a time holds one batch's copy at a time.

        Example:
            >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
            >>> frontier = Frontier(gm, [(torch.randn(2, 3),), (torch.randn(5, 3),)])
            >>> relu = [n for n in gm.graph.nodes if n.target == "1"][0]
            >>> frontier.advance_to(relu); tuple(frontier.argument_of(relu, 1).shape)
            (5, 4)
        """
        return fx.node.map_arg(node.args[position], lambda n: self._load(self.envs[batch][n]))

    def value_of(self, node: fx.Node, batch: int) -> Any:
        """``node``'s live value in batch ``batch`` (read back from disk if it was spilled).

        Example:
            >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
            >>> frontier = Frontier(gm, [(torch.randn(2, 3),)], max_bytes=0)   # every value on disk
            >>> linear = [n for n in gm.graph.nodes if n.target == "0"][0]
            >>> frontier.advance_to(linear.next); tuple(frontier.value_of(linear, 0).shape)
            (2, 4)
        """
        return self._load(self.envs[batch][node])

    def fork(self) -> Frontier:
        """An independent copy at the same position; running it leaves this frontier untouched.

        The live tensors held in memory are cloned (tensors that alias each other stay aliased): a node of the
        suffix may work in place (``ReLU(inplace=True)``) and must not change the values this frontier goes on
        with. Cost: one copy of the in-memory live activations; spilled ones are shared.

        Example:
            >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
            >>> frontier = Frontier(gm, [(torch.randn(2, 3),)])
            >>> frontier.advance_to(list(gm.graph.nodes)[2])   # stop before the ReLU
            >>> torch.equal(frontier.fork().run_rest()[0], gm(frontier.batches[0][0]))
            True
        """
        copy = Frontier.__new__(Frontier)
        copy.__dict__.update(self.__dict__)
        # Spilled values are shared, not copied: nothing mutates them (values an in-place op touches are never
        # spilled), and loading them would defeat the budget. The fork spends what is left of it.
        memo: dict[int, Any] = {}
        copy.envs = [
            {node: value if isinstance(value, _Spilled) else _clone(value, memo) for node, value in env.items()}
            for env in self.envs
        ]
        if self.max_bytes is not None:
            copy.max_bytes = max(0, self.max_bytes - self.held_bytes)
        copy.held_bytes, copy.spilled_bytes = 0, 0
        return copy

    def run_rest(self) -> list[Any]:
        """Run the remaining nodes; returns the graph's output for every batch."""
        outputs: list[Any] = []
        for node, values in self:
            if node.op == "output":
                outputs = values
        return outputs

    def rerun(self) -> list[Any]:
        """Run the node last yielded again on every batch (after its module changed); returns the new values.

        Its inputs are still held: values are dropped only when the iteration moves on."""
        node = self.nodes[self.position - 1]
        self._run(node)
        return [self._load(env[node]) for env in self.envs]

    def _drop_dead_values(self) -> None:
        for env in self.envs:
            for node in [n for n in env if self.last_use[n] < self.position]:
                self._forget(env.pop(node))

    def _run(self, node: fx.Node) -> None:
        for env, batch in zip(self.envs, self.batches):
            if node in env:  # a rerun replaces the value
                self._forget(env.pop(node))
            env[node] = self._keep(node, self._execute(node, env, batch))

    # -- memory budget: values past ``max_bytes`` live in temporary files ------------------------------------
    def _keep(self, node: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or self.max_bytes is None:
            return value
        assert isinstance(self.max_bytes, int)
        size = value.numel() * value.element_size()
        # A value an in-place op writes to (or produces) must stay one tensor: a spilled copy would not see the
        # write. Dtypes without a same-size integer view (complex) stay in memory too.
        if self.held_bytes + size <= self.max_bytes or node in self.in_place or value.element_size() not in _RAW_DTYPES:
            self.held_bytes += size
            return value
        self.spilled_bytes += size
        return _Spilled(value)

    def _load(self, value: Any) -> Any:
        return value.load() if isinstance(value, _Spilled) else value

    def _forget(self, value: Any) -> None:
        # a spilled value's file goes when its last reference (this frontier's or a fork's) does
        if isinstance(value, torch.Tensor) and self.max_bytes is not None:
            self.held_bytes -= value.numel() * value.element_size()

    def _execute(self, node: fx.Node, env: dict[fx.Node, Any], batch: tuple[torch.Tensor, ...]) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self._load(env[n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._load(env[n]))
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


# Values are spilled as raw bytes through a same-size integer view (bfloat16, bool ... included).
_RAW_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 30  # bytes per read/write call (Linux moves at most ~2 GiB per call)


class _Spilled:
    """A tensor kept in an unlinked temporary file: written once, read back (to its device) on each
    :meth:`load`; the file's space is freed when this object is.

    Example:
        >>> x = torch.randn(3, 4).to(torch.bfloat16)
        >>> torch.equal(_Spilled(x).load(), x)
        True
    """

    def __init__(self, value: torch.Tensor) -> None:
        self.device, self.dtype, self.shape = value.device, value.dtype, tuple(value.shape)
        raw = value.detach().reshape(-1).contiguous().view(_RAW_DTYPES[value.element_size()]).cpu()
        self.raw_dtype, self.numel = raw.dtype, raw.numel()
        handle, path = tempfile.mkstemp(prefix="leantorch-frontier-", suffix=".bin")
        self.file = os.fdopen(handle, "r+b", buffering=0)
        try:
            os.unlink(path)  # the open file keeps the data; nothing is left behind if the process dies
        except OSError:  # (Windows cannot unlink an open file: it stays until the temporary folder is cleaned)
            pass
        view = raw.numpy().data.cast("B")
        done = 0
        while done < len(view):
            done += self.file.write(view[done : done + _CHUNK]) or 0
        if hasattr(os, "posix_fadvise"):  # start the write-back now and let the kernel drop these pages first
            os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)

    def load(self) -> torch.Tensor:
        """The value, as a new tensor on its original device."""
        raw = torch.empty(self.numel, dtype=self.raw_dtype)
        view = raw.numpy().data.cast("B")
        self.file.seek(0)
        done = 0
        while done < len(view):
            read = self.file.readinto(view[done : done + _CHUNK])
            if not read:
                raise OSError(f"a spilled activation file ended after {done} of {len(view)} bytes")
            done += read
        return raw.view(self.dtype).reshape(self.shape).to(self.device)

    def __del__(self) -> None:
        file = getattr(self, "file", None)
        if file is not None:
            file.close()


def _in_place_values(gm: fx.GraphModule, nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes whose value an in-place op may write to or return: the inputs and outputs of such ops
    (``x.add_(y)``, ``operator.iadd``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``)."""
    touched: set[fx.Node] = set()
    for node in nodes:
        if node.op == "call_module":
            in_place = bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
        elif node.op in ("call_function", "call_method"):
            name = str(getattr(node.target, "__name__", node.target))
            in_place = (
                (name.endswith("_") and not name.endswith("__"))
                or (node.target in _OPERATOR_IN_PLACE)
                or node.kwargs.get("inplace") is True
            )
        else:
            in_place = False
        if in_place:
            touched.add(node)
            touched.update(n for n in node.all_input_nodes)
    return touched


_OPERATOR_IN_PLACE = {
    getattr(operator, name)
    for name in dir(operator)
    if name.startswith("i") and name[1:] in dir(operator) and callable(getattr(operator, name))
}


def _clone(value: Any, memo: dict[int, Any]) -> Any:
    """A copy of a tensor, or of the tensors inside a tuple/list/dict (other values are immutable enough).
    ``memo`` maps ``id(original)`` to its copy, so that values that were one tensor stay one tensor."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.clone()
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return (
            type(value)(_clone(v, memo) for v in value)
            if not hasattr(value, "_fields")
            else type(value)(*(_clone(v, memo) for v in value))
        )
    if isinstance(value, dict):
        return {k: _clone(v, memo) for k, v in value.items()}
    return value


def _memory_budget(batches: Sequence[tuple[Any, ...]]) -> int | None:
    """A quarter of the memory still free where the batches live (free GPU memory for CUDA tensors, the memory
    the operating system reports available otherwise): algorithms advance two frontiers side by side (float and
    quantized, probe and calibration), and the calibration set, the models and each layer's working memory need
    the rest, which a quarter of *physical* memory (as before) did not leave them when the data is large. (GPTQ on
    4,096 EfficientNet-Lite0 crops on a 23 GB machine was killed at 24 GB either way until the crops stopped
    leaving fragmented heap behind and spills stopped being memory-mapped; it now peaks at 17.6 GB.)"""
    first = next((x for batch in batches for x in batch if isinstance(x, torch.Tensor)), None)
    if first is not None and first.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(first.device)
        return free // 4
    available = _available_memory()
    if available is not None:
        return available // 4
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no limit rather than a wrong one
        return None


def _available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes the kernel reports available for new allocations (Linux ``MemAvailable``), or None elsewhere.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        ...     _ = f.write("MemTotal:  2048 kB\\nMemAvailable:  1024 kB\\n")
        >>> _available_memory(f.name)
        1048576
    """
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
