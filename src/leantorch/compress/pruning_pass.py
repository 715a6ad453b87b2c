"""Channel pruning of the chosen layers in one pass over the calibration batches.

Each layer's least-squares fit needs its inputs in the model pruned so far ("current") and in the original
model. :func:`~leantorch.compress.channel_pruning.sample_grams` runs both models from their inputs up to the
layer, so pruning ``L`` layers costs about ``L / 2`` forward passes of each. Here one
:class:`~leantorch.ptq.frontier.Frontier` advances over the model being pruned and one over the original, in
lock-step by layer (the graphs are copies: the same node names), so the whole pass costs about one forward
pass of each.

After a layer is pruned, its producer, BatchNorms and depthwise convs have lost the dropped channels, but the
current frontier still holds their full-width outputs (those nodes ran before the pruning). The layer is
therefore stepped over with a forward that reads only the kept channels: exactly what the pruned chain
computes (the dropped channels are never read), so every later layer sees the pruned model's activations.
The result equals layer-by-layer pruning with ``sample_grams`` (the same Gram matrices from the same patches
at the same random positions) up to float rounding in the convs, whose kernels may block a different
number of channels differently.
"""

from __future__ import annotations

import torch
from torch import fx
from tqdm.auto import tqdm

from ..ptq.frontier import Frontier
from .channel_pruning import GramAccumulator, prune_channels, reconstruct, select_channels
from .stage import Stage, swapped
from .suffix_table import advance_checked, layer_nodes

__all__ = ["prune_in_one_pass"]


def prune_in_one_pass(stage: Stage, chosen: dict[str, float], progress: bool = True) -> dict[str, int]:
    """Prune ``stage.gm`` in place with the ratios ``chosen``; returns the kept channels per pruned layer.

    Layers are pruned in graph order (a layer's statistics depend on the layers before it).

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
    start = layer_nodes(model, list(stage.costs.layers))
    todo = sorted(
        (n for n, r in chosen.items() if r < 1.0 and stage.size_for(n, r) is not None), key=lambda n: start[n]
    )
    if not todo:
        return {}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [tuple(x.to(device) for x in batch) for batch in stage.data]
    current, original = Frontier(model, batches), Frontier(reference, batches)
    nodes, by_name = list(model.graph.nodes), {n.name: n for n in reference.graph.nodes}
    samples = sum(len(batch[0]) for batch in batches)
    # Progress in MACs run (both models, up to each layer): the layers sit at very different depths.
    reached = {n: sum(c.macs for m, c in stage.costs.layers.items() if start[m] < start[n]) for n in todo}
    bar = tqdm(
        total=2 * samples * reached[todo[-1]],
        desc="pruning (channel_pruning)",
        unit="MAC",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    sizes: dict[str, int] = {}
    done = 0
    with torch.no_grad(), bar:
        for name in todo:
            node = nodes[start[name]]
            advance_checked(current, node, model)
            advance_checked(original, by_name[node.name], reference)
            kept = _prune(stage, name, (node, by_name[node.name]), (current, original), chosen[name])
            sizes[name] = len(kept)
            conv = model.get_submodule(name)
            # Step over the layer reading only the kept channels of its (still full-width) input.
            with swapped(conv, lambda x, conv=conv, kept=kept: type(conv).forward(conv, x.index_select(1, kept))):
                current.advance_to(nodes[start[name] + 1])
            bar.update(2 * samples * (reached[name] - done))
            done = reached[name]
    return sizes


def _prune(
    stage: Stage, name: str, nodes: tuple[fx.Node, fx.Node], frontiers: tuple[Frontier, Frontier], ratio: float
) -> torch.Tensor:
    """Gram matrices from both frontiers, channel selection, least-squares fit, pruning; returns the kept."""
    conv = stage.gm.get_submodule(name)
    grams = GramAccumulator()
    gen = torch.Generator().manual_seed(0)  # as sample_grams: the same positions for every layer
    (node, reference_node), (current, original) = nodes, frontiers
    for now, before in zip(current.inputs_of(node), original.inputs_of(reference_node)):
        grams.add_inputs(conv, now[0], before[0], stage.samples_per_image, gen)
    size = stage.size_for(name, ratio)
    assert size is not None
    kept = select_channels(conv.weight, grams.current, size)
    prune_channels(stage.gm, stage.paths[name], kept, reconstruct(conv.weight, grams, kept))
    return kept.to(conv.weight.device)
