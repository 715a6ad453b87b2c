"""AdaRound's rounding variables for one weight, differentiable with autograd (block reconstruction trains several
layers at once through the block's forward pass, so the closed-form gradient of :mod:`.adaround` does not apply).

``W̃(V) = base + slope · h(V)``: ``base`` is the weight rounded down (clamped to the grid), ``slope`` one grid step
where rounding up stays on the grid and 0 where the grid's clamp holds the weight still, ``h`` the rectified
sigmoid of :func:`~leantorch.ptq.adaround.rectified_sigmoid`, started at the fractional part of ``W/s`` (so the
soft weight starts at the float weight, within the grid). The regulariser ``Σ 1 − |2h − 1|^β`` pushes every
``h`` to 0 or 1; :meth:`SoftRounding.hard` then takes the decisions ``h ≥ 0.5``, a weight on its grid.
"""

from __future__ import annotations

import torch

from ..quant.blocks import expand_blocks
from ..quant.encoding import Encoding
from .adaround import initial_v, rectified_sigmoid

__all__ = ["SoftRounding"]


class SoftRounding:
    """The rounding of one weight tensor on ``encoding``'s grid (per tensor, per channel or blockwise).

    Example:
        >>> enc = Encoding(4, False, torch.tensor(0.25), torch.tensor(-8))
        >>> r = SoftRounding(torch.tensor([0.1, -0.6, 0.3]), enc)
        >>> torch.allclose(r.weight(), torch.tensor([0.1, -0.6, 0.3]))
        True
        >>> r.hard().tolist()  # round to nearest from the start: 0.1 → 0, −0.6 → −0.5, 0.3 → 0.25
        [0.0, -0.5, 0.25]
    """

    def __init__(self, weight: torch.Tensor, encoding: Encoding) -> None:
        weight = weight.detach()
        scale, offset = _grid(weight, encoding)
        floor = torch.floor(weight / scale)
        grid = floor - offset  # the floor's index on the integer grid
        steps = encoding.num_steps
        self._grid = (scale, offset, floor, steps)
        self.base = scale * (grid.clamp(0, steps) + offset)
        self.slope = scale * ((grid >= 0) & (grid <= steps - 1)).to(weight.dtype)
        #: the trained variables (one per weight)
        self.v = initial_v(weight / scale - floor).requires_grad_(True)

    def weight(self) -> torch.Tensor:
        """The soft weight ``base + slope · h(V)`` (differentiable in ``v``)."""
        return torch.addcmul(self.base, self.slope, rectified_sigmoid(self.v))

    def regularizer(self, beta: float) -> torch.Tensor:
        """``Σ 1 − |2h(V) − 1|^β``: 0 when every ``h`` is 0 or 1."""
        return (1 - (2 * rectified_sigmoid(self.v) - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard(self) -> torch.Tensor:
        """The weight with the hard decisions ``h(V) ≥ 0.5``: a point of the grid."""
        scale, offset, floor, steps = self._grid
        # integer index times the scale, as the quantizer computes it: the result is a grid point bit for bit
        up = (rectified_sigmoid(self.v) >= 0.5).to(floor.dtype)
        return scale * (torch.clamp(floor + up - offset, 0, steps) + offset)


def _grid(weight: torch.Tensor, enc: Encoding) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset broadcastable against ``weight`` (one per element for blockwise encodings)."""
    if enc.is_blockwise:
        assert enc.axis is not None and enc.block_axis is not None and enc.block_size is not None
        where = (weight.shape, enc.axis, enc.block_axis, enc.block_size)
        scale = expand_blocks(enc.scale.to(weight.device), *where)
        offset = expand_blocks(enc.offset.to(weight.device), *where)
    else:
        shape = [1] * weight.dim()
        if enc.axis is not None:
            shape[enc.axis] = -1
        scale = enc.scale.to(weight.device).reshape(shape)
        offset = enc.offset.to(weight.device).reshape(shape)
    return scale.to(weight.dtype), offset.to(weight.dtype)
