"""Eval-score table rows that run only the part of the model after the compressed layer.

Every candidate of the table is ONE layer compressed in the otherwise unchanged model, so everything before
that layer computes what the uncompressed model computes. When ``eval_fn`` is an
:class:`~leantorch.evaluation.OutputScore`, the probe batches are advanced once through the unchanged model
(a :class:`~leantorch.ptq.frontier.Frontier`), stopped just before each layer's first call, and for each
candidate ratio the layer's replacement (:meth:`Stage.replacement`) stands in for the layer while only the
rest of the graph runs (``fork().run_rest()``); ``score_outputs`` scores those outputs.

Channel pruning works on dependency groups, named by their first consumer; a candidate replaces every
consumer of the group (the rows are per group). It also needs each consumer's input statistics on the
calibration batches: a second frontier over them stops at the same node, and a fork of it runs on to the
group's later consumers. In the table the layer's "current" and "original" inputs are the same tensors
(nothing before the layer has changed), so the Gram matrices are gathered once per layer, not once per
candidate. The numbers are those of a full run of a deep copy with the layer compressed: the same nodes run on
the same inputs, and the Gram matrices come from the same patches at the same random positions.

The work is a function of a contiguous list of layers (:func:`score_layers`): a worker of a parallel back end
advances its own frontiers from the model input over its range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..batches import run_batch
from ..errors import CalibrationDataError, LeanTorchError
from ..evaluation import OutputScore
from ..ptq.auto import call_eval_fn
from ..ptq.frontier import Frontier
from ..sweep import first_calls
from .channel_pruning import GramAccumulator
from .group_pruning import layer_grams
from .stage import Stage, swapped

__all__ = ["score_layers", "layer_nodes", "suffix_work", "advance_checked", "rows_fn"]

Row = dict[float, float]


def layer_nodes(gm: fx.GraphModule, layers: Sequence[str]) -> dict[str, int]:
    """Index of the first graph node calling each layer (a layer called at several places starts at its
    first call: everything before it is unchanged)."""
    first = first_calls(gm)
    return {name: first[id(gm.get_submodule(name))] for name in layers}


def suffix_work(stage: Stage, layers: Sequence[str]) -> dict[str, float]:
    """Per layer, the MACs per sample of the part of the model from that layer on (what one candidate runs):
    the unit of the progress bars and the weights that split the layers into chunks of equal work."""
    start = layer_nodes(stage.gm, list(stage.costs.layers))
    return {
        name: float(sum(c.macs for n, c in stage.costs.layers.items() if start[n] >= start[name])) for name in layers
    }


def score_layers(
    stage: Stage, score: OutputScore, grid: Sequence[float], baseline: float, layers: list[str], progress: bool = True
) -> list[Row]:
    """The eval-score table rows of ``layers`` (one ``{ratio: score}`` per layer, in the order given).

    Example:
        >>> from leantorch import prepare
        >>> from leantorch.compress.cost import cost
        >>> from leantorch.evaluation import sqnr_score
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()
        >>> x = torch.randn(2, 3, 12, 12)
        >>> gm = prepare(net, x[:1])
        >>> stage = Stage(gm, "spatial_svd", cost(gm, x[:1]), (), None, 1, 16)
        >>> rows = score_layers(stage, sqnr_score(net, [x]), [0.5, 1.0], 200.0, ["0", "2"], progress=False)
        >>> [sorted(row) for row in rows], rows[0][0.5] < 200.0
        ([[0.5, 1.0], [0.5, 1.0]], True)
    """
    gm, nodes = stage.gm, list(stage.gm.graph.nodes)
    start = layer_nodes(gm, layers)
    order = sorted(layers, key=lambda n: start[n])
    work = suffix_work(stage, order)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    probe = Frontier(gm, [(batch.to(device),) for batch in score.probe])
    pruning = stage.method.needs_data  # candidates re-fitted from input statistics
    calib = Frontier(gm, [tuple(x.to(device) for x in batch) for batch in stage.data or []]) if pruning else None
    samples = sum(len(b) for b in score.probe)
    ratios = [r for r in grid if r < 1.0]
    rows: dict[str, Row] = {}
    was_training = gm.training
    gm.eval()
    # Progress in MACs actually run (each candidate runs the suffix from its layer on the probe samples): an
    # early layer's candidates cost most of a forward pass, a late one's a few percent, so counting
    # candidates would give an ETA far too pessimistic at the start and too optimistic at the end.
    total = sum(int(work[n]) * samples * len(ratios) for n in order)
    bar = tqdm(
        total=total,
        desc=f"eval-score table ({stage.scheme})",
        unit="MAC",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    try:
        with torch.no_grad(), bar:
            for name in order:
                node = nodes[start[name]]
                probe.advance_to(node)
                grams = _layer_grams(stage, calib, node, name) if calib is not None else None
                row: Row = {1.0: baseline}
                for ratio in ratios:
                    replacements = stage.replacements(name, ratio, grams)
                    if replacements is None:
                        row[ratio] = baseline
                    else:
                        with contextlib.ExitStack() as swaps:
                            for layer, replacement in replacements.items():
                                swaps.enter_context(swapped(gm.get_submodule(layer), replacement))
                            outputs = probe.fork().run_rest()
                        what = f"the model with layer {name} compressed to ratio {ratio}"
                        row[ratio] = call_eval_fn(lambda _m, outputs=outputs: score.score_outputs(outputs), gm, what)
                    bar.update(int(work[name]) * samples)
                rows[name] = row
    finally:
        gm.train(was_training)
    return [rows[n] for n in layers]


def _layer_grams(stage: Stage, calib: Frontier, node: fx.Node, name: str) -> dict[str, GramAccumulator]:
    """The Gram matrices :func:`~leantorch.compress.group_pruning.sample_group_grams` gathers for every consumer
    of group ``name`` in an unchanged copy of the model (same batches, same seed, so the same random
    positions). The group's later consumers are reached by a fork, so ``calib`` stays at ``node``."""
    advance_checked(calib, node, stage.gm)
    return group_grams(stage, calib, node, name)


def group_grams(stage: Stage, frontier: Frontier, node: fx.Node, name: str) -> dict[str, GramAccumulator]:
    """Input Gram matrices (current = original) of group ``name``'s consumers on the model ``frontier`` runs,
    which stands at ``node``, the call of the first consumer."""
    gm, group = frontier.gm, stage.groups[name]
    calls = {str(n.target): n for n in frontier.nodes if n.op == "call_module"}
    grams: dict[str, GramAccumulator] = {}
    ahead: Frontier | None = None
    for layer in group.consumers:
        at = calls[layer]
        if at is not node and ahead is None:
            ahead = frontier.fork()
        if ahead is not None:
            advance_checked(ahead, at, gm)
        inputs = (ahead or frontier).inputs_of(at)
        grams[layer] = layer_grams(gm.get_submodule(layer), inputs, inputs, stage.samples_per_image)
    return grams


def advance_checked(frontier: Frontier, node: fx.Node, model: nn.Module) -> None:
    """``frontier.advance_to(node)``; a batch the model cannot run raises :class:`CalibrationDataError` naming it
    (as :func:`~leantorch.batches.run_batch` does for a full run), not torch's message about a layer's weight."""
    try:
        frontier.advance_to(node)
    except (LeanTorchError, torch.OutOfMemoryError):
        raise
    except RuntimeError as err:
        _name_failing_batch(frontier.batches, model)
        raise CalibrationDataError(f"the model fails on the calibration batches: {err}") from err


def _name_failing_batch(batches: Sequence[tuple[torch.Tensor, ...]], model: nn.Module) -> None:
    """Run each batch through ``model`` alone: the first that fails raises the error naming it."""
    for index, inputs in enumerate(batches):
        run_batch(model, inputs, index)


def rows_fn(
    stage: Stage, score: OutputScore, grid: Sequence[float], baseline: float, progress: bool
) -> Callable[[list[str]], list[Row]]:
    """``fn(layers) -> rows`` for a contiguous chunk of layers (picklable with cloudpickle for a worker)."""

    def rows(layers: list[str]) -> list[Row]:
        return score_layers(stage, score, grid, baseline, layers, progress)

    return rows
