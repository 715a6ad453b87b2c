"""Quantization numerics as pure tensor functions: no modules, no state.

A grid maps the integers ``[0, 2**bw - 1]`` onto reals by a float32 ``scale`` and an integer ``offset``::

    q  = clamp(round(x / scale) - offset, 0, 2**bw - 1)      # round half to even, as ONNX QuantizeLinear
    x̂  = (q + offset) * scale                               # fake quantization: x̂ = dequantize(quantize(x))

Per tensor, ``scale`` and ``offset`` are 0-d; per channel they hold one value per channel along ``axis``.

Grids from an observed range ``[lo, hi]``, first widened to contain 0 (``lo ≤ 0 ≤ hi``) so that 0.0 is exact:

* :func:`asymmetric_grid`: ``scale = (hi - lo) / (2**bw - 1)``, ``offset = round(lo / scale)`` in
  ``[-(2**bw - 1), 0]``, derived from the float32 scale that every consumer uses;
* :func:`symmetric_grid` (signed): ``scale = max(-lo, hi) / (2**(bw-1) - 1)``, ``offset = -2**(bw-1)``;
* :func:`unsigned_grid` (symmetric, never negative): ``scale = hi / (2**bw - 1)``, ``offset = 0``;

and :func:`grid_from_range` picks one. Scales are at least ``MIN_SCALE`` and capped so that both grid ends
stay within float32 (``±FLT_MAX``); a range holding NaN, Inf or a magnitude above ``FLT_MAX`` raises
:class:`~leantorch.errors.DataError`.

:func:`fake_quantize` gives the clipped straight-through gradient (``∂x̂/∂x = 1`` on the grid, 0 off it);
:func:`learnable_fake_quantize` adds the LSQ gradients (Esser et al., 2020) of ``scale`` and ``offset``::

    ∂x̂/∂scale  = round(x/s) - x/s  on the grid,   offset  below it,   2**bw - 1 + offset  above it
    ∂x̂/∂offset = 0                 on the grid,   scale   off it

both multiplied by ``grad_factor`` (LSQ's ``1 / sqrt(N * Q_P)``: :func:`lsq_grad_scale`).
"""

from __future__ import annotations

import math

import torch

from ..errors import DataError

__all__ = [
    "MIN_SCALE",
    "FLT_MAX",
    "Grid",
    "grid_from_range",
    "asymmetric_grid",
    "symmetric_grid",
    "unsigned_grid",
    "quantize",
    "dequantize",
    "fake_quantize",
    "learnable_fake_quantize",
    "lsq_grad_scale",
]

# Smallest scale we allow: a tensor that is constant zero still needs a valid (non-zero) grid.
MIN_SCALE = 1e-10

#: Largest finite float32: every grid (scale, min, max) must stay within it.
FLT_MAX = float(torch.finfo(torch.float32).max)

Grid = tuple[torch.Tensor, torch.Tensor]  # (float32 scale, int64 offset), same shape


# ----------------------------------------------------------------------------- grids
def grid_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
) -> Grid:
    """(scale, offset) for the observed range ``[lo, hi]``: :func:`unsigned_grid` when ``symmetric`` and
    ``unsigned_symmetric`` and every ``lo >= 0``, else :func:`symmetric_grid` or :func:`asymmetric_grid`.

    Example:
        >>> scale, offset = grid_from_range(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=True)
        >>> round(float(scale), 6), int(offset)
        (0.01, 0)
    """
    lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    if symmetric and unsigned_symmetric and bool((lo >= 0).all()):
        return unsigned_grid(lo, hi, bitwidth)
    return symmetric_grid(lo, hi, bitwidth) if symmetric else asymmetric_grid(lo, hi, bitwidth)


def asymmetric_grid(lo: torch.Tensor, hi: torch.Tensor, bitwidth: int) -> Grid:
    """``scale = (hi - lo) / (2**bw - 1)`` (float32), ``offset = round(lo / scale)`` on ``[-(2**bw - 1), 0]``.

    Example:
        >>> scale, offset = asymmetric_grid(torch.tensor(-1.0), torch.tensor(3.0), 8)
        >>> round(float(scale), 6), int(offset)
        (0.015686, -64)
    """
    lo, hi = _range64(lo, hi)
    num_steps = 2**bitwidth - 1
    scale = _as_scale((hi - lo) / num_steps, limit=2 * FLT_MAX / (num_steps + 1))
    # Derive the offset from the float32 scale that every consumer will use.
    s64 = scale.double()
    offset = torch.round(lo / s64).clamp(-num_steps, 0)
    # Both grid ends inside float32 (binds only for ranges within a few steps of FLT_MAX).
    lowest, highest = torch.ceil(-FLT_MAX / s64), torch.floor(FLT_MAX / s64) - num_steps
    return scale, torch.minimum(torch.maximum(offset, lowest), highest).to(torch.int64)


def symmetric_grid(lo: torch.Tensor, hi: torch.Tensor, bitwidth: int) -> Grid:
    """Signed grid ``[-2**(bw-1), 2**(bw-1) - 1]``: ``scale = max(-lo, hi) / (2**(bw-1) - 1)``,
    ``offset = -2**(bw-1)``.

    Example:
        >>> scale, offset = symmetric_grid(torch.tensor(-2.0), torch.tensor(1.0), 8)
        >>> round(float(scale) * 127, 6), int(offset)
        (2.0, -128)
    """
    lo, hi = _range64(lo, hi)
    half = 2 ** (bitwidth - 1)
    scale = _as_scale(torch.maximum(-lo, hi) / (half - 1), limit=FLT_MAX / half)
    return scale, torch.full_like(scale, -half, dtype=torch.int64)


def unsigned_grid(lo: torch.Tensor, hi: torch.Tensor, bitwidth: int) -> Grid:
    """Unsigned symmetric grid ``[0, hi]``: ``scale = hi / (2**bw - 1)``, ``offset = 0`` (``lo`` is only
    checked; a negative one is clipped to 0 by this grid).

    Example:
        >>> scale, offset = unsigned_grid(torch.tensor(0.0), torch.tensor(2.55), 8)
        >>> round(float(scale), 6), int(offset)
        (0.01, 0)
    """
    _, hi = _range64(lo, hi)
    num_steps = 2**bitwidth - 1
    scale = _as_scale(hi / num_steps, limit=FLT_MAX / num_steps)
    return scale, torch.zeros_like(scale, dtype=torch.int64)


def _range64(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` in float64, checked to fit float32 and widened to contain 0."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    values = torch.cat([lo.reshape(-1), hi.reshape(-1)])
    bad = values[~(torch.isfinite(values) & (values.abs() <= FLT_MAX))]
    if bad.numel():
        raise DataError(
            f"cannot quantize a range holding {float(bad[0]):.4g}: NaN, Inf and magnitudes beyond float32's "
            f"largest value ({FLT_MAX:.4g}) have no float32 quantization grid. Check the data (or the model's "
            "numerics) for values of that size, or rescale them into float32's range."
        )
    return torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)


def _as_scale(scale: torch.Tensor, limit: float) -> torch.Tensor:
    """``scale`` clamped to ``[MIN_SCALE, limit]`` and rounded to float32 without exceeding ``limit``."""
    scale32 = torch.clamp(scale, min=MIN_SCALE, max=limit).to(torch.float32)
    # Rounding to float32 may step above ``limit``; one float32 step down is then below it.
    over = scale32.double() > limit
    if bool(over.any()):
        scale32 = torch.where(over, torch.nextafter(scale32, torch.zeros_like(scale32)), scale32)
    return scale32


def _along(t: torch.Tensor, axis: int | None, ndim: int) -> torch.Tensor:
    """Per-channel ``t`` shaped to broadcast along ``axis`` of an ``ndim``-d tensor (per tensor: as is)."""
    if axis is None:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


# ----------------------------------------------------------------------------- quantize / dequantize
def quantize(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bitwidth: int, axis: int | None = None
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) - offset, 0, 2**bw - 1)`` (int64), in float64 arithmetic.

    Division (not multiplication by 1/scale) as in ONNX QuantizeLinear; ties round to even.

    Example:
        >>> quantize(torch.tensor([0.0, 0.25, 0.75, 9.0]), torch.tensor(0.5), torch.tensor(-2), 2).tolist()
        [2, 2, 3, 3]
    """
    scale, offset = _along(scale.to(x.device), axis, x.dim()), _along(offset.to(x.device), axis, x.dim())
    q = torch.round(x.double() / scale.double()) - offset
    return q.clamp(0, 2**bitwidth - 1).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Real values ``(q + offset) * scale`` (float32, computed in float64) of integer codes ``q``.

    Example:
        >>> dequantize(torch.tensor([0, 1, 3]), torch.tensor(0.5), torch.tensor(-2)).tolist()
        [-1.0, -0.5, 0.5]
    """
    scale, offset = _along(scale.to(q.device), axis, q.dim()), _along(offset.to(q.device), axis, q.dim())
    return ((q.double() + offset) * scale.double()).to(torch.float32)


# ----------------------------------------------------------------------------- fake quantization
def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bitwidth: int, axis: int | None = None
) -> torch.Tensor:
    """Quantize-dequantize ``x``: ``(clamp(round(x / scale) - offset, 0, 2**bw - 1) + offset) * scale``.

    Without gradients, ``round(x / scale)`` is computed exactly as ONNX QuantizeLinear defines it (float32
    division, round half to even). With gradients, torch's fake-quant kernels are used (clipped STE:
    ``∂x̂/∂x`` is 1 on the grid, 0 off it); they multiply by ``1/scale`` instead, which can differ by one
    step only at values within float32 rounding of a half-step tie.

    Example:
        >>> fake_quantize(torch.tensor([0.26, 9.0]), torch.tensor(0.1), torch.tensor(0), 4).tolist()
        [0.30000001192092896, 1.5]
    """
    qmax = 2**bitwidth - 1
    work = x if x.dtype == torch.float32 else x.float()
    if axis is not None:
        axis = axis % x.dim()
    if not (torch.is_grad_enabled() and work.requires_grad):
        out = _fake_quantize_inference(work, scale.float(), offset, qmax, axis)
    elif axis is None:
        zero_point = (-offset).to(torch.int32)
        out = torch.fake_quantize_per_tensor_affine(work, scale.reshape(1).float(), zero_point.reshape(1), 0, qmax)
    else:
        out = torch.fake_quantize_per_channel_affine(work, scale.float(), (-offset).to(torch.int32), axis, 0, qmax)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _fake_quantize_inference(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmax: int, axis: int | None
) -> torch.Tensor:
    """ONNX QuantizeLinear/DequantizeLinear arithmetic (float32 ``x / scale``, half-to-even rounding) as
    in-place elementwise ops: about 2.5x faster on CPU than the native kernel, which also builds a
    gradient mask."""
    scale, offset = _along(scale, axis, x.dim()), _along(offset, axis, x.dim())
    offset = offset.to(torch.float32)
    out = torch.div(x, scale)
    out.round_().sub_(offset).clamp_(0, qmax).add_(offset).mul_(scale)
    return out


def learnable_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    bitwidth: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Fake quantization with LSQ gradients for ``scale`` and (float) ``offset`` (torch's learnable kernels).

    Forward: :func:`fake_quantize` with ``s = max(|scale|, MIN_SCALE)`` (``|scale|`` keeps a step that
    overshot zero usable), ``offset`` rounded to an integer, ``x / s`` taken as ``x * (1/s)``. Backward
    (module docstring): ``∂x̂/∂x`` is 1 on the grid and 0 off it; ``∂x̂/∂s`` is ``round(x/s) - x/s`` on the
    grid and the grid end (``offset`` or ``2**bw - 1 + offset``) off it; ``∂x̂/∂offset`` is 0 on the grid
    and ``s`` off it; both grid-parameter gradients times ``grad_factor``.

    Example:
        >>> s = torch.tensor(0.5, requires_grad=True); o = torch.tensor(-2.0, requires_grad=True)
        >>> learnable_fake_quantize(torch.tensor([0.4, 9.0]), s, o, 2).sum().backward()
        >>> round(float(s.grad), 6), float(o.grad)  # (round(0.8) - 0.8) + (3 - 2), and s for the clipped 9.0
        (1.2, 0.5)
    """
    qmax = 2**bitwidth - 1
    work = x if x.dtype == torch.float32 else x.float()
    scale = scale.abs().clamp_min(MIN_SCALE)
    zero_point = -offset.to(torch.float32)
    if axis is None:
        out = torch._fake_quantize_learnable_per_tensor_affine(
            work, scale.reshape(1), zero_point.reshape(1), 0, qmax, grad_factor
        )
    else:
        out = torch._fake_quantize_learnable_per_channel_affine(
            work, scale, zero_point, axis % x.dim(), 0, qmax, grad_factor
        )
    return out if out.dtype == x.dtype else out.to(x.dtype)


def lsq_grad_scale(count: int, bitwidth: int, symmetric: bool) -> float:
    """LSQ's gradient scale ``1 / sqrt(N * Q_P)``: ``N = count`` values share the grid (the weights of a
    parameter, the features of one sample of an activation), ``Q_P`` is the largest positive level
    (``2**(bw-1) - 1`` symmetric, ``2**bw - 1`` asymmetric); both at least 1.

    Example:
        >>> lsq_grad_scale(100, 8, symmetric=False) == 1 / math.sqrt(100 * 255)
        True
    """
    levels = 2 ** (bitwidth - 1) - 1 if symmetric else 2**bitwidth - 1
    return 1.0 / math.sqrt(max(count, 1) * max(levels, 1))
