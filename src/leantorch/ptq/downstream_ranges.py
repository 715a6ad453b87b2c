"""Activation ranges chosen by the error they cause downstream, not by their own histogram.

A range estimator (minmax, tf_enhanced, mse) picks each activation quantizer's range from that activation's own
values: it weighs clipping against rounding as if every value mattered equally. What matters is what the next
layers make of it: a convolution sums hundreds of quantized inputs, so its output error depends on which
channels its weights amplify and on whether rounding errors cancel. Here each activation quantizer that feeds
weighted layers tries a family of ranges (its calibrated range scaled by ``fractions``) and keeps the one that
gives the smallest error **at the outputs of those layers** (each consumer's normalised squared error against
the float model's output of the same layer, fed float inputs; summed over consumers).

The sweep runs the quantized model and the float model side by side, node by node, over a few calibration
batches (:class:`~leantorch.ptq.frontier.Frontier`): every quantizer is chosen with the ranges chosen before it
already in place, and the whole sweep costs one forward pass of each model plus, per quantizer, one run of its
consumer layers per candidate. Quantizers whose value reaches no weighted layer through a chain of
single-input ops (those feeding only an add, a concat, or the model output) keep their range.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..batches import model_inputs
from ..errors import CalibrationDataError, InvalidOptionError
from ..graph import example_inputs
from ..quant.encoding import compute_encoding
from ..quant.estimator_base import MinMaxEstimator
from ..quant.quantizer import Quantizer
from ..quant.schemes import register_estimator
from ..quant.wrapper import QuantWrapper
from .frontier import Frontier

if TYPE_CHECKING:
    from ..quant.sim import QuantSim

__all__ = ["DownstreamRange", "downstream_ranges", "DownstreamEstimator", "DEFAULT_FRACTIONS"]

#: Scales of the calibrated range tried for each quantizer (1.0, the calibrated range, is always among them):
#: narrower only, since the default start is the data's full range (scheme "downstream": minmax statistics).
DEFAULT_FRACTIONS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class DownstreamRange:
    """What :func:`downstream_ranges` did to one quantizer.

    Attributes:
        quantizer: its name in ``sim.quantizers()``; consumers: the weighted layers its error was measured at.
        fraction: the chosen scale of the calibrated range (1.0: unchanged).
        error_before, error_after: the summed normalised squared error at the consumers' outputs with the
            calibrated range and with the chosen one (on the batches of the sweep).
    """

    quantizer: str
    consumers: tuple[str, ...]
    fraction: float
    error_before: float
    error_after: float


@dataclass
class _Target:
    quantizer: Quantizer
    name: str
    producer: fx.Node
    paths: list[list[fx.Node]]  # per consumer: the single-input nodes after the producer, ending at the layer


def downstream_ranges(
    sim: QuantSim,
    calibration: Iterable[Any],
    num_batches: int = 2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    progress: bool = True,
) -> list[DownstreamRange]:
    """Re-choose the calibrated sim's activation ranges by their error at the next weighted layers (in place,
    as :meth:`QuantSim.compute_encodings` sets encodings); returns what changed, per quantizer.

    Args:
        sim: a calibrated QuantSim (``compute_encodings`` ran): its ranges are the starting point.
        calibration: batches like the example input; the first ``num_batches`` are used.
        fractions: scales of each calibrated range to try (positive; 1.0 is always tried).

    Raises:
        InvalidOptionError: ``sim`` is not calibrated, or a fraction is not positive.
        CalibrationDataError: no batch.

    Example:
        >>> from leantorch import QuantSim
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> sim = QuantSim(net, torch.randn(1, 3, 8, 8), scheme="minmax")
        >>> data = [torch.randn(16, 3, 8, 8)]
        >>> sim.compute_encodings(data, progress=False)
        >>> rows = downstream_ranges(sim, data, progress=False)
        >>> all(r.error_after <= r.error_before for r in rows)
        True
    """
    fractions = sorted({float(f) for f in fractions} | {1.0})
    if any(not f > 0 for f in fractions):
        raise InvalidOptionError(f"fractions must be positive scales of the calibrated range, got {fractions}")
    uncalibrated = [n for n, q in sim.activation_quantizers().items() if q.is_active and q.encoding is None]
    if uncalibrated:
        raise InvalidOptionError(
            f"downstream_ranges starts from calibrated ranges: call sim.compute_encodings first "
            f"({len(uncalibrated)} quantizers have none, e.g. {uncalibrated[0]!r})"
        )
    count = len(example_inputs(sim.example_input))
    data = [model_inputs(b, count, i, device=sim.device) for i, b in zip(range(num_batches), calibration)]
    if not data:
        raise CalibrationDataError("downstream_ranges needs calibration data (got no batch)")
    reference = copy.deepcopy(sim.model)  # same graph, same node names; all quantization off: the float model
    for module in reference.modules():
        if isinstance(module, Quantizer):
            module.enabled = False
    targets = _targets(sim)
    results: list[DownstreamRange] = []
    was_training = sim.model.training
    sim.model.eval()
    reference.eval()
    bar = tqdm(total=len(targets), desc="downstream ranges", unit="quantizer", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            float_frontier, sim_frontier = Frontier(reference, data), Frontier(sim.model, data)
            for (node, _), (float_node, float_values) in zip(sim_frontier, float_frontier):
                assert node.name == float_node.name
                target = targets.get(node.name)
                if target is None:
                    continue
                results.append(_choose(sim, reference, target, sim_frontier, float_values, fractions))
                sim_frontier.rerun()  # later nodes see the chosen range
                bar.update(1)
    finally:
        bar.close()
        sim.model.train(was_training)
    return results


def _targets(sim: QuantSim) -> dict[str, _Target]:
    """Per producer node: its active output quantizer and the chains to the weighted layers it feeds."""
    gm = sim.model
    targets: dict[str, _Target] = {}
    names = {id(q): n for n, q in sim.quantizers().items()}
    for node in gm.graph.nodes:
        layer = _module(gm, node)
        if not isinstance(layer, QuantWrapper) or not any(q.is_active for q in layer.param_quantizers.values()):
            continue
        path = [node]
        producer = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        while producer is not None and _single_input_step(gm, producer):
            path.insert(0, producer)
            producer = cast(fx.Node, producer.args[0])
        quantizer = _output_quantizer(gm, producer) if producer is not None else None
        if producer is None or quantizer is None:
            continue
        target = targets.setdefault(
            producer.name, _Target(quantizer, names.get(id(quantizer), producer.name), producer, [])
        )
        target.paths.append(path)
    return targets


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _output_quantizer(gm: fx.GraphModule, node: fx.Node) -> Quantizer | None:
    """The active integer-grid quantizer that produces ``node``'s value (a wrapper's only output quantizer, or a
    model-input quantizer), if any."""
    module = _module(gm, node)
    if isinstance(module, QuantWrapper) and len(module.output_quantizers) == 1:
        module = module.output_quantizers[0]
    if isinstance(module, Quantizer) and module.is_active and not module.frozen and module.float_format is None:
        return module
    return None


def _single_input_step(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a node that only transforms one tensor (padding, pooling, reshapes) without quantizing it again,
    and whose value nothing else reads: the candidate range can be pushed through it unchanged in meaning."""
    inputs = [a for a in node.all_input_nodes]
    if len(inputs) != 1 or len(node.users) != 1 or not node.args or node.args[0] is not inputs[0]:
        return False
    if node.op in ("call_function", "call_method"):
        return True
    module = _module(gm, node)
    if isinstance(module, QuantWrapper):
        quantizers = [*module.input_quantizers, *module.output_quantizers, *module.param_quantizers.values()]
        return not any(cast(Quantizer, q).is_active for q in quantizers)
    return False


def _run_node(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    """``node`` computed on ``value`` in place of its (single) input node."""
    args = fx.node.map_arg(node.args, lambda _: value)
    kwargs = fx.node.map_arg(node.kwargs, lambda _: value)
    if node.op == "call_module":
        return cast(torch.Tensor, gm.get_submodule(str(node.target))(*args, **kwargs))
    if node.op == "call_method":
        return cast(torch.Tensor, getattr(args[0], str(node.target))(*args[1:], **kwargs))
    return cast(torch.Tensor, cast(Any, node.target)(*args, **kwargs))


def _run_path(gm: fx.GraphModule, path: list[fx.Node], value: torch.Tensor) -> torch.Tensor:
    for node in path:
        value = _run_node(gm, node, value)
    return value


def _choose(
    sim: QuantSim,
    reference: fx.GraphModule,
    target: _Target,
    frontier: Frontier,
    float_values: list[Any],
    fractions: list[float],
) -> DownstreamRange:
    q = target.quantizer
    calibrated = q.encoding
    assert calibrated is not None
    lo, hi = calibrated.min, calibrated.max
    q.enabled = False
    try:
        raw = [cast(torch.Tensor, v) for v in frontier.rerun()]  # the producer's value before its quantizer
    finally:
        q.enabled = True
    goals = [[_run_path(reference, path, x) for x in float_values] for path in target.paths]
    layers = [cast(QuantWrapper, sim.model.get_submodule(str(path[-1].target))) for path in target.paths]
    saved = [[cast(Quantizer, o).enabled for o in layer.output_quantizers] for layer in layers]
    candidates = [
        compute_encoding(lo * f, hi * f, q.bitwidth, q.symmetric, q.unsigned_symmetric, q.axis) for f in fractions
    ]
    errors = []
    try:
        for layer in layers:  # the error is measured at the layers' own outputs, before they are quantized
            for o in layer.output_quantizers:
                cast(Quantizer, o).enabled = False
        for candidate in candidates:
            q.set_encoding(candidate)
            error = 0.0
            for path, goal in zip(target.paths, goals):
                num = sum(float((_run_path(sim.model, path, q(x)) - g).pow(2).sum()) for x, g in zip(raw, goal))
                den = sum(float(g.pow(2).sum()) for g in goal)
                error += num / max(den, 1e-30)
            errors.append(error)
    finally:
        for layer, flags in zip(layers, saved):
            for o, flag in zip(layer.output_quantizers, flags):
                cast(Quantizer, o).enabled = flag
    best = min(range(len(fractions)), key=lambda i: (errors[i], abs(fractions[i] - 1.0)))
    chosen = fractions[best]
    q.set_encoding(calibrated if chosen == 1.0 else candidates[best])
    return DownstreamRange(
        quantizer=target.name,
        consumers=tuple(str(path[-1].target) for path in target.paths),
        fraction=chosen,
        error_before=errors[fractions.index(1.0)],
        error_after=errors[best],
    )


@register_estimator("downstream")
class DownstreamEstimator(MinMaxEstimator):
    """Scheme ``downstream``: the data's range (as minmax), which :meth:`QuantSim.compute_encodings` then narrows
    for each activation quantizer to the fraction with the least error at the weighted layers it feeds, measured
    on the first :attr:`kept_batches` calibration batches (:func:`downstream_ranges`). Weights (known in full)
    keep the data's range.

    Example:
        >>> from leantorch import QuantSim
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4),
        ...                scheme="downstream")
        >>> sim.compute_encodings([torch.randn(16, 4) for _ in range(3)], progress=False)
        >>> all(q.encoding is not None for q in sim.activation_quantizers().values() if q.is_active)
        True
    """

    #: calibration batches the search measures errors on
    kept_batches: ClassVar[int] = 2

    @staticmethod
    def after_calibration(sim: QuantSim, batches: list[tuple[torch.Tensor, ...]], progress: bool) -> None:
        """Re-choose ``sim``'s activation ranges by their downstream error on ``batches`` (the kept ones)."""
        downstream_ranges(sim, batches, num_batches=len(batches), progress=progress)
