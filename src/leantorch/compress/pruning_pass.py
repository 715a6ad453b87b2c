"""Channel pruning of the chosen dependency groups in one pass over the calibration batches.

Each consumer's least-squares fit needs its inputs in the model pruned so far ("current") and in the original
model. :func:`~leantorch.compress.group_pruning.sample_group_grams` runs both models from their inputs up to
the consumers, so pruning ``L`` groups costs about ``L / 2`` forward passes of each. Here one
:class:`~leantorch.ptq.frontier.Frontier` advances over the model being pruned and one over the original, in
lock-step by consumer call (the graphs are copies: the same node names), so the whole pass costs about one
forward pass of each, plus, per group with consumers further down, a fork of the current frontier that runs
from its first consumer to its last to gather their statistics for the selection: the cost grows with how
far the groups reach (a residual stream: its stage), not with the number of groups times the depth.

Nothing is cut while the frontiers run. At a group's first consumer its kept units are chosen (from every
consumer's Gram matrix, the later ones from the fork); each consumer, when reached, is re-fitted on its
inputs in the current model and from then on runs as a forward that reads only the kept channels of its
full-width input: exactly what the pruned model computes, since every channel of a group is computed on its
own and leaves the group only through a consumer. The producers, BatchNorms and depthwise convs are cut and
the consumers get their weights at the end (:func:`~leantorch.compress.group_pruning.prune_groups`). For a
single chain the result equals layer-by-layer pruning (the same Gram matrices from the same patches at the
same random positions) up to float rounding in the convs.
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from ..ptq.frontier import Frontier
from .group_pruning import layer_grams, prune_groups, reading_kept, refit, select_units
from .stage import Stage, swapped
from .suffix_table import advance_checked, group_grams, layer_nodes

__all__ = ["prune_in_one_pass"]


def prune_in_one_pass(stage: Stage, chosen: dict[str, float], progress: bool = True) -> dict[str, int]:
    """Prune ``stage.gm`` in place with the ratios ``chosen`` (per group); returns the kept units per group.

    Example:
        >>> from torch import nn
        >>> from leantorch import prepare
        >>> from leantorch.compress.cost import cost
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
        >>> data = [(torch.randn(4, 3, 8, 8),)]
        >>> gm = prepare(net, data[0][0][:1])
        >>> stage = Stage(gm, "channel_pruning", cost(gm, data[0][0][:1]), (), data, 1, 16)
        >>> prune_in_one_pass(stage, {"2": 0.5}, progress=False), gm.get_submodule("0").out_channels
        ({'2': 8}, 8)
    """
    assert stage.reference is not None and stage.data is not None
    model, reference = stage.gm, stage.reference
    todo = {n: s for n, r in chosen.items() if r < 1.0 and (s := stage.size_for(n, r)) is not None}
    if not todo:
        return {}
    nodes = list(model.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    calls = {str(n.target): n for n in nodes if n.op == "call_module"}
    # One event per consumer call, in graph order (a consumer belongs to one group).
    events = sorted((index[calls[c]], c, g) for g in todo for c in stage.groups[g].consumers)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [tuple(x.to(device) for x in batch) for batch in stage.data]
    current, original = Frontier(model, batches), Frontier(reference, batches)
    by_name = {n.name: n for n in reference.graph.nodes}
    samples = sum(len(batch[0]) for batch in batches)
    start = layer_nodes(model, list(stage.costs.layers))
    # Progress in MACs run (both models, up to each consumer): the consumers sit at very different depths.
    reached = [sum(c.macs for m, c in stage.costs.layers.items() if start[m] < at) for at, _, _ in events]
    bar = tqdm(
        total=2 * samples * reached[-1],
        desc="pruning (channel_pruning)",
        unit="MAC",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    kept: dict[str, torch.Tensor] = {}
    weights: dict[str, dict[str, torch.Tensor]] = {g: {} for g in todo}
    done = 0
    with torch.no_grad(), bar, contextlib.ExitStack() as swaps:
        for (at, consumer, name), macs in zip(events, reached):
            node, group, layer = nodes[at], stage.groups[name], model.get_submodule(consumer)
            advance_checked(current, node, model)
            advance_checked(original, by_name[node.name], reference)
            now, before = current.inputs_of(node), original.inputs_of(by_name[node.name])
            grams = layer_grams(layer, now, before, stage.samples_per_image)
            if name not in kept:  # the group's first consumer: choose its units
                stats = {c: grams.current if c == consumer else None for c in group.consumers}
                if len(group.consumers) > 1:
                    ahead = group_grams(stage, current, node, name)
                    stats = {c: g.current if c != consumer else grams.current for c, g in ahead.items()}
                layers = {c: model.get_submodule(c).weight for c in group.consumers}
                kept[name] = select_units(group, layers, stats, todo[name])  # type: ignore[arg-type]
            local, weight = refit(group, consumer, layer, grams, kept[name])
            weights[name][consumer] = weight
            swaps.enter_context(swapped(layer, reading_kept(layer, local, weight)))
            bar.update(2 * samples * (macs - done))
            done = macs
    prune_groups(model, [(stage.groups[g], kept[g], weights[g]) for g in todo])
    return {g: todo[g] for g in sorted(todo, key=lambda g: start[g])}
