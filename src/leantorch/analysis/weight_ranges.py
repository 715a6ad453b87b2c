"""Per-output-channel weight ranges of every conv/linear layer (the analysis report's CLE view).

Example:
    >>> from torch import nn
    >>> weight_ranges(nn.Sequential(nn.Linear(3, 2)))["0"].name
    '0'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..quant.wrapper import QuantWrapper

__all__ = ["WeightRanges", "weight_ranges"]


@dataclass
class WeightRanges:
    """Per-output-channel min, max and mean of one layer's weight."""

    name: str
    min: list[float]
    max: list[float]
    mean: list[float]

    @property
    def spread(self) -> float:
        """Largest channel range over the smallest (1 = all channels alike)."""
        ranges = [hi - lo for lo, hi in zip(self.min, self.max)]
        smallest = min(ranges)
        return math.inf if smallest <= 0 else max(ranges) / smallest


def weight_ranges(model: nn.Module) -> dict[str, WeightRanges]:
    """Per-output-channel min, max and mean of the weight of every conv/linear layer of ``model``.

    Works on a plain model and on ``sim.model`` (wrapped layers report the float weights).

    Example:
        >>> ranges = weight_ranges(nn.Sequential(nn.Linear(3, 2)))
        >>> len(ranges["0"].max)
        2
    """
    wrapped = {id(m.module) for m in model.modules() if isinstance(m, QuantWrapper)}
    result = {}
    for name, module in model.named_modules():
        if id(module) in wrapped:
            continue  # reported under its wrapper's name
        inner = module.module if isinstance(module, QuantWrapper) else module
        if not isinstance(inner, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        w = inner.weight.detach().float().cpu()
        # ConvTranspose stores (in, out/groups, ...): output channels are dim 1 there.
        if isinstance(inner, nn.modules.conv._ConvTransposeNd):
            w = w.transpose(0, 1)
        flat = w.reshape(w.shape[0], -1)
        result[name] = WeightRanges(
            name=name, min=flat.min(1).values.tolist(), max=flat.max(1).values.tolist(), mean=flat.mean(1).tolist()
        )
    return result
