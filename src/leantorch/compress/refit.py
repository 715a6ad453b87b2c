"""Recovery by least squares: re-fit every layer of a compressed model, in order, to the original's outputs.

Compression changes some layers; every later layer then sees inputs its weights were not trained for, and the
errors add up through the depth. Channel pruning already re-fits the layers it prunes (``channel_pruning``);
this re-fits *all* of them, one after the other in graph order: each conv/linear layer of the compressed model
gets the weights and bias that best map the inputs it actually receives (those of the compressed model with
every earlier layer already re-fitted) to the outputs of the same layer of the original model, by ridge
regression towards its current weights (He et al.'s reconstruction, applied through the whole network rather
than only where channels were removed). It needs no labels and no gradients: one sweep of each model over the
data (:class:`~leantorch.ptq.frontier.Frontier`) and one linear solve per layer, seconds to a minute on a CPU
instead of the minutes of :func:`~leantorch.compress.distill` (which can run after it).

Per layer kind, with an intercept column so that the bias absorbs mean shifts:

* Linear, and Conv1d/Conv2d with ``groups=1``: one system over the input patches (``in·kh·kw + 1`` unknowns per
  output channel).
* Depthwise convs: one small system per channel (``kh·kw + 1`` unknowns).

Convs are fitted on ``samples_per_image`` random output positions per image.

A layer is left alone (``result.skipped`` says why) when it has no layer of the same name and output size in the
original (a producer whose output channels were pruned, a renamed layer), is called at several places, has
other grouped convolutions, has more than ``max_unknowns`` unknowns per output, or receives exactly the original's
inputs with the original's weights (nothing to correct). The second factor of a spatial/weight SVD pair
(``<name>.1``) is fitted to the original ``<name>``'s outputs.

Example:
    >>> import copy
    >>> _ = torch.manual_seed(0)
    >>> original = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> damaged = copy.deepcopy(original)
    >>> with torch.no_grad():
    ...     _ = damaged[0].weight.mul_(1.3)
    >>> x = torch.randn(512, 8)
    >>> result = refit_layers(damaged, original, x, progress=False)
    >>> err = lambda m: float((m(x) - original(x)).pow(2).mean().detach())
    >>> err(result.model) < 0.01 * err(damaged), result.refitted
    (True, ['0', '2'])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, InvalidOptionError
from ..graph import call_counts, prepare
from ..options import check_count, check_flag, check_positive
from ..ptq.frontier import Frontier
from .layer_least_squares import assign_layer, depthwise, kept_channels, solve_layer, unknowns

__all__ = ["RefitResult", "refit_layers"]

#: layer types re-fitted (others are left as they are)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class RefitResult:
    """What :func:`refit_layers` did.

    Attributes:
        model: the re-fitted model (a traced copy unless ``inplace=True``).
        refitted: the layers whose weights and bias were re-fitted, in graph order.
        skipped: layer name -> why it was left alone.
        seconds: wall time of the call.
    """

    model: nn.Module
    refitted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def refit_layers(
    model: nn.Module,
    original: nn.Module,
    data: Any,
    ridge: float = 0.1,
    samples_per_image: int = 1024,
    max_unknowns: int = 6144,
    max_samples: int = 512,
    fit_bias: bool = True,
    num_inputs: int = 1,
    seed: int = 0,
    progress: bool = True,
    inplace: bool = False,
) -> RefitResult:
    """Re-fit the conv/linear layers of ``model`` (e.g. ``lt.compress``'s output), in graph order, to reproduce the
    outputs of the same-named layers of ``original`` from the inputs ``model`` gives them (see the module notes).

    Args:
        model: the compressed model.
        original: the model it was compressed from (run, never modified).
        data: unlabeled inputs: a tensor ``[N, ...]`` (split into batches of 32) or an iterable of batches (a
            tensor, or a tuple/list whose first ``num_inputs`` items are the inputs). A few hundred images
            are enough for a CNN; every batch is held in memory during the sweep.
        ridge: pull towards the current weights, relative to the mean diagonal of each layer's input Gram
            matrix (> 0): it keeps the directions the samples do not span (a wide classifier fitted on
            fewer images than its inputs) at their trained values.
        samples_per_image: output positions sampled per image for each conv (all when it has fewer).
        max_unknowns: layers with more weights per output channel than this are skipped (the Gram matrix
            grows with its square).
        max_samples: use the first this many samples of ``data`` (the sweep holds the live activations of all of
            them, spilled to disk beyond a quarter of the memory per model): 256-512 images of 224² are enough,
            more did not help on EfficientNet-Lite0 (``benchmarks/compress.py``).
        fit_bias: fit each layer's bias too (a layer without one gains one); False keeps the biases.
        num_inputs: positional inputs of the model.
        seed: the sampled positions.
        progress: a progress bar over the layers.
        inplace: write the new weights into ``model``'s own layers too (it must have the traced copy's layer
            names, as ``lt.compress``'s output does).

    Raises:
        InvalidOptionError: an option out of range.
        CalibrationDataError: ``data`` is empty, not tensors/batches, or holds NaN/Inf (before any change).

    Example:
        >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # another init
        >>> result = refit_layers(student, teacher, torch.randn(64, 4), progress=False)
        >>> result.refitted, result.model is student
        (['0', '2'], False)
    """
    start = time.perf_counter()
    check_positive("ridge", ridge)
    check_count("samples_per_image", samples_per_image)
    check_count("max_unknowns", max_unknowns)
    check_count("max_samples", max_samples)
    check_count("num_inputs", num_inputs)
    check_count("seed", seed, minimum=0)
    check_flag("progress", progress)
    check_flag("inplace", inplace)
    check_flag("fit_bias", fit_bias)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = _batches(data, num_inputs, device, max_samples)
    example = tuple(x[:1] for x in batches[0])
    modes = model.training, original.training
    try:
        gm, reference = prepare(model, example), prepare(original, example)
        gm.eval()
        reference.eval()
        pairs, skipped = _pairs(gm, reference, max_unknowns)
        result = RefitResult(gm, skipped=skipped)
        _sweep(gm, reference, batches, pairs, result, ridge, samples_per_image, fit_bias, seed, progress)
    finally:
        model.train(modes[0])
        original.train(modes[1])
    if inplace:
        _copy_back(gm, model, result.refitted)
        result.model = model
    result.seconds = time.perf_counter() - start
    return result


def _batches(data: Any, num_inputs: int, device: torch.device, max_samples: int) -> list[tuple[torch.Tensor, ...]]:
    """The first ``max_samples`` samples of ``data`` as checked batches of input tuples on ``device``."""
    if isinstance(data, torch.Tensor):
        data = torch.split(data, 32)
    check_iterable(data, "refit_layers: data", CalibrationDataError)
    batches, count = [], 0
    for i, batch in enumerate(data):
        inputs = model_inputs(batch, num_inputs, i, CalibrationDataError, "batch", device)
        inputs = tuple(x[: max_samples - count] for x in inputs)
        if len(inputs[0]):
            batches.append(inputs)
            count += len(inputs[0])
        if count >= max_samples:
            break
    if not batches:
        raise CalibrationDataError("refit_layers: data holds no sample; pass a few hundred unlabeled inputs")
    return batches


def _pairs(
    gm: fx.GraphModule, reference: fx.GraphModule, max_unknowns: int
) -> tuple[dict[str, tuple[str, torch.Tensor | None]], dict[str, str]]:
    """Layer of ``gm`` -> (layer of ``reference`` it is fitted to, the original output channels it kept or None
    for all), and layer -> why it is skipped."""
    ours, theirs = dict(gm.named_modules()), dict(reference.named_modules())
    counts = call_counts(gm)
    pairs: dict[str, tuple[str, torch.Tensor | None]] = {}
    skipped: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(ours[node.target], _LAYERS):
            continue
        name, layer = str(node.target), ours[node.target]
        parent, _, last = name.rpartition(".")
        match = name if name in theirs else parent if last == "1" and parent in theirs else None
        other = theirs.get(match) if match is not None else None
        pruned = other is not None and type(other) is type(layer) and other.weight.shape[0] != layer.weight.shape[0]
        kept = kept_channels(layer.weight, other.weight) if pruned else None  # type: ignore[union-attr]
        if other is None or type(other) is not type(layer):
            skipped[name] = "no layer of that name and type in the original"
        elif pruned and kept is None:
            skipped[name] = "its output channels differ from the original's and are not a subset of them"
        elif counts[name] > 1:
            skipped[name] = f"called at {counts[name]} places"
        elif isinstance(layer, nn.Conv2d | nn.Conv1d) and layer.groups > 1 and not depthwise(layer):
            skipped[name] = "grouped convolution (only groups=1 and depthwise are re-fitted)"
        elif isinstance(layer, nn.Conv2d | nn.Conv1d) and (
            isinstance(layer.padding, str) or layer.padding_mode != "zeros"
        ):
            skipped[name] = (
                f"padding {layer.padding!r} / padding_mode {layer.padding_mode!r} (only explicit zero padding)"
            )
        elif unknowns(layer) > max_unknowns:
            skipped[name] = f"{unknowns(layer)} weights per output channel (max_unknowns={max_unknowns})"
        else:
            pairs[name] = (match, kept)  # type: ignore[assignment]
    return pairs, skipped


def _sweep(
    gm: fx.GraphModule,
    reference: fx.GraphModule,
    batches: list[tuple[torch.Tensor, ...]],
    pairs: dict[str, tuple[str, torch.Tensor | None]],
    result: RefitResult,
    ridge: float,
    samples_per_image: int,
    fit_bias: bool,
    seed: int,
    progress: bool,
) -> None:
    """Advance both models over ``batches`` node by node; at each paired layer (:func:`_pairs`), solve and re-run
    it. The re-fitted layers and the ones skipped on the way are recorded in ``result``."""
    skipped = result.skipped
    ours, theirs = dict(gm.named_modules()), dict(reference.named_modules())
    reference_nodes = {str(n.target): n for n in reference.graph.nodes if n.op == "call_module"}
    frontier, reference_frontier = Frontier(gm, batches), Frontier(reference, batches)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=len(pairs), desc="re-fitting layers", unit="layer", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for node, _ in frontier:
                name = str(node.target)
                if node.op != "call_module" or name not in pairs:
                    continue
                bar.update(1)
                match, kept = pairs[name]
                target = reference_nodes[match]
                if reference_frontier.nodes.index(target) < reference_frontier.position:
                    skipped[name] = "runs in another order than in the original"
                    continue
                reference_frontier.advance_to(target)
                outputs = next(iter(reference_frontier))[1]
                layer, inputs = ours[name], [args[0] for args in frontier.inputs_of(node)]
                if kept is None and _unchanged(
                    layer, theirs[match], inputs, lambda t=target: reference_frontier.inputs_of(t)
                ):
                    skipped[name] = "inputs and weights equal to the original: nothing to correct"
                    continue
                solved = solve_layer(layer, inputs, outputs, ridge, samples_per_image, gen, kept, fit_bias)
                if solved is None:
                    skipped[name] = "the least-squares solution is not finite"
                    continue
                assign_layer(layer, *solved)
                frontier.rerun()
                result.refitted.append(name)
    finally:
        bar.close()


def _unchanged(
    layer: nn.Module, before: nn.Module, inputs: list[torch.Tensor], original: Callable[[], list[tuple[Any, ...]]]
) -> bool:
    """The layer and its inputs are those of the original (``original()`` gives its inputs, loaded only if
    the weights are equal)."""
    same_weights = layer.weight.shape == before.weight.shape and torch.equal(layer.weight, before.weight)
    same_bias = (layer.bias is None and before.bias is None) or (
        layer.bias is not None and before.bias is not None and torch.equal(layer.bias, before.bias)
    )
    return same_weights and same_bias and all(torch.equal(a, b[0]) for a, b in zip(inputs, original()))


def _copy_back(gm: fx.GraphModule, model: nn.Module, names: list[str]) -> None:
    """The re-fitted weights written into ``model``'s layers of the same names (``inplace=True``)."""
    targets = dict(model.named_modules())
    missing = [n for n in names if n not in targets or targets[n].weight.shape != gm.get_submodule(n).weight.shape]
    if missing:
        raise InvalidOptionError(
            f"refit_layers(inplace=True): {missing[:3]} are not layers of the model with the traced copy's names "
            "and shapes; call it with inplace=False and use result.model"
        )
    with torch.no_grad():
        for name in names:
            fitted = gm.get_submodule(name)
            assign_layer(targets[name], fitted.weight, fitted.bias)
