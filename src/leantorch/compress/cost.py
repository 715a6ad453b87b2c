"""Cost model: multiply-accumulates (MACs) and parameters per layer, from the shapes of one forward pass.

MACs are counted per sample (the batch dimension of the example input is divided out):

* Conv (1-3 d): ``out_channels * prod(out_spatial) * (in_channels / groups) * prod(kernel)``;
  stride and dilation enter through the output size, dilation adds no MACs.
* ConvTranspose: every input element is multiplied with a ``(out_channels / groups) * prod(kernel)``
  slice: ``in_channels * prod(in_spatial) * (out_channels / groups) * prod(kernel)``.
* Linear: ``out_features * in_features`` per output row (a ``[B, T, in]`` input counts ``T`` rows).

Biases, activations, norms and additions are not counted (they are not multiply-accumulates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..graph import example_inputs
from ..graph_checks import check_finite, check_module, run_checked
from ..ops import counted, counted_classes, spec_for
from .ratio_selection import CompressionError

__all__ = ["COUNTED", "LayerCost", "CostReport", "layer_macs", "cost"]

#: The module classes counted when this module was imported; the cost model itself asks the op registry
#: (an op type with ``OpSpec.mac_count``), so op types registered later are counted too.
COUNTED = counted_classes()


@dataclass
class LayerCost:
    """MACs (per sample) and parameters of one layer, with the shapes it saw."""

    name: str
    kind: str
    macs: int
    params: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass
class CostReport:
    """Per-layer and total cost of a model."""

    layers: dict[str, LayerCost] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        """Sum of the counted layers' MACs per sample."""
        return sum(c.macs for c in self.layers.values())

    @property
    def total_params(self) -> int:
        """Sum of the counted layers' parameters (weights and biases)."""
        return sum(c.params for c in self.layers.values())

    def rows(self) -> list[dict[str, Any]]:
        """Table rows (layer, type, MACs, params, share of MACs)."""
        total = max(self.total_macs, 1)
        return [
            {"layer": c.name, "type": c.kind, "MACs": c.macs, "params": c.params, "MAC share": c.macs / total}
            for c in self.layers.values()
        ]


def layer_macs(module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """MACs per sample of one conv/convtranspose/linear call with these (batched) shapes.

    Example:
        >>> layer_macs(nn.Conv2d(3, 8, 3, stride=2, padding=1), (1, 3, 8, 8), (1, 8, 4, 4))
        3456
    """
    spec = spec_for(module)
    if spec is None or spec.mac_count is None:
        raise CompressionError(
            f"no MAC formula for {type(module).__name__}: the cost model counts "
            f"{', '.join(c.__name__ for c in counted_classes())} layers"
        )
    return spec.mac_count(module, input_shape, output_shape)


def cost(model: nn.Module, example_input: Any) -> CostReport:
    """MACs and parameters of every Conv/ConvTranspose/Linear of ``model``, from one forward pass.

    Convolutions written as ``F.conv2d`` inside a module are counted after :func:`leantorch.prepare`
    has turned them into layers (``cost(lt.prepare(model, x), x)``).

    Raises:
        InvalidOptionError: ``model`` is not an ``nn.Module``.
        NonFiniteModelError: the example input, a parameter or a buffer holds NaN/Inf (as :func:`leantorch.prepare`).
        InputShapeError: ``example_input`` does not fit the model.

    Example:
        >>> report = cost(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 10)),
        ...               torch.randn(2, 3, 4, 4))
        >>> report.layers["0"].macs, report.layers["2"].macs, report.total_params
        (3456, 1280, 1514)
    """
    check_module(model)
    inputs = example_inputs(example_input)
    check_finite(model, inputs)  # NaN/Inf: NonFiniteModelError, as lt.prepare raises
    report = CostReport()
    handles = []
    for name, module in model.named_modules():
        if counted(module) and not any(counted(c) for c in module.children()):

            def hook(m: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                in_shape, out_shape = tuple(inputs[0].shape), tuple(output.shape)
                macs = layer_macs(m, in_shape, out_shape)
                previous = report.layers.get(name)  # a module called several times counts every call
                report.layers[name] = LayerCost(
                    name,
                    type(m).__name__,
                    macs + (previous.macs if previous else 0),
                    sum(p.numel() for p in m.parameters(recurse=False)),
                    in_shape[1:],
                    out_shape[1:],
                )

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        run_checked(model, inputs)  # an input that does not fit: InputShapeError
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return report
