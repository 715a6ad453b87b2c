"""One-change-at-a-time sweeps that run only the part of the model after the change.

A sensitivity sweep (quantize one layer, score the model) or an eval-score table (compress one layer to one
ratio, score the model) scores many variants of a model that differ from a base model in one place. A full
forward pass per variant repeats the unchanged prefix every time. Here the probe batches are advanced once
through the base model (:class:`~leantorch.ptq.frontier.Frontier`); just before the first node a trial
changes, the frontier is forked, the change is applied, and only the rest of the graph runs. The outputs are
the same numbers a full pass gives (the same nodes run with the same inputs); the cost of a sweep over all
layers drops from ``layers × model`` to about ``layers × model / 2`` plus one pass, and much less where the
changed layers sit late in the model.

Example:
    >>> import contextlib
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    >>> gm = fx.symbolic_trace(net)
    >>> probe = [(torch.randn(3, 4),)]
    >>> def zero_bias(layer):
    ...     @contextlib.contextmanager
    ...     def change():
    ...         saved = layer.bias.data.clone(); layer.bias.data.zero_()
    ...         try:
    ...             yield
    ...         finally:
    ...             layer.bias.data.copy_(saved)
    ...     return change
    >>> trials = [Trial("last", (gm.get_submodule("2"),), zero_bias(gm.get_submodule("2")))]
    >>> outputs = suffix_outputs(gm, probe, trials, progress=False)
    >>> torch.allclose(outputs["last"][0], net(probe[0][0]) - net[2].bias)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from .ptq.frontier import Frontier

__all__ = ["Trial", "suffix_outputs", "first_calls"]


@dataclass(frozen=True)
class Trial:
    """One variant of the base model.

    Args:
        key: how the result is named (a layer name, ``(layer, ratio)`` ...).
        modules: the modules whose behaviour the change affects; the suffix starts at the first graph node that
            calls one of them (or a module containing one). Empty: the whole model runs.
        change: a context manager factory; inside it the model is the variant, on exit it is the base again.
    """

    key: Hashable
    modules: tuple[nn.Module, ...]
    change: Callable[[], AbstractContextManager[Any]]


def first_calls(gm: fx.GraphModule) -> dict[int, int]:
    """``id(module) -> index`` of the first graph node whose called module is, or contains, that module."""
    nodes = list(gm.graph.nodes)
    first: dict[int, int] = {}
    for index, node in enumerate(nodes):
        if node.op == "call_module":
            for sub in gm.get_submodule(str(node.target)).modules():
                first.setdefault(id(sub), index)
    return first


def suffix_outputs(
    gm: fx.GraphModule,
    batches: Sequence[tuple[torch.Tensor, ...]],
    trials: Sequence[Trial],
    progress: bool = True,
    desc: str = "sweep",
    max_bytes: int | str | None = "auto",
    on_result: Callable[[Hashable, list[Any]], Any] | None = None,
) -> dict[Hashable, Any]:
    """The model's outputs on ``batches`` for each trial, running only the nodes from the trial's change on.

    ``gm`` must be in the state each trial expects as its base (e.g. the right quantizers enabled); it is put
    in eval mode for the sweep and back afterwards. ``on_result(key, outputs)``, if given, turns each trial's
    per-batch outputs into what is kept (a score), so that the outputs of all trials are never held at once.
    ``max_bytes`` bounds the cached activations (see :class:`Frontier`).
    """
    first = first_calls(gm)
    nodes = list(gm.graph.nodes)

    def start(trial: Trial) -> int:
        return min((first[id(m)] for m in trial.modules if id(m) in first), default=0)

    ordered = sorted(trials, key=start)  # stable: trials starting at one node keep their order
    was_training = gm.training
    gm.eval()
    results: dict[Hashable, Any] = {}
    try:
        with torch.no_grad():
            frontier = Frontier(gm, batches, max_bytes=max_bytes)
            # Progress counts graph nodes run, not trials: an early layer's suffix is most of the model, a late
            # one's a few nodes, so a per-trial ETA would start far too pessimistic and end too optimistic.
            bar = tqdm(
                total=sum(len(nodes) - start(t) for t in ordered),
                desc=desc,
                unit="node",
                disable=not progress,
                leave=False,
            )
            with bar:
                for trial in ordered:
                    frontier.advance_to(nodes[start(trial)])
                    with trial.change():
                        outputs = frontier.fork().run_rest()
                    results[trial.key] = on_result(trial.key, outputs) if on_result is not None else outputs
                    bar.update(len(nodes) - start(trial))
    finally:
        gm.train(was_training)
    return results
