"""The pure quantization numerics (leantorch.quant.primitives) against float64 references written out here.

Every reference is numpy in float64; where the code works in float32 the reference rounds to float32 at the
same points (a float32 division or product is the float64 one rounded once), so outputs compare bit for bit.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from leantorch import DataError
from leantorch.quant import primitives
from leantorch.quant.encoding import compute_encoding
from leantorch.quant.primitives import (
    FLT_MAX,
    MIN_SCALE,
    asymmetric_grid,
    dequantize,
    fake_quantize,
    grid_from_range,
    learnable_fake_quantize,
    lsq_grad_scale,
    quantize,
    symmetric_grid,
    unsigned_grid,
)
from leantorch.quant.quantizer import Quantizer

BITWIDTHS = list(range(2, 17))
MODES = ["asymmetric", "symmetric", "unsigned"]


# ----------------------------------------------------------------------------- float64 references
def ref_grid(lo: np.ndarray, hi: np.ndarray, bw: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, int64 offset) per the formulas, for ranges well inside float32."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    steps, half = 2**bw - 1, 2 ** (bw - 1)
    if mode == "unsigned":
        return np.float32(np.maximum(hi / steps, MIN_SCALE)), np.zeros(np.shape(hi), np.int64)
    if mode == "symmetric":
        scale = np.float32(np.maximum(np.maximum(-lo, hi) / (half - 1), MIN_SCALE))
        return scale, np.full(np.shape(hi), -half, np.int64)
    scale = np.float32(np.maximum((hi - lo) / steps, MIN_SCALE))
    return scale, np.clip(np.rint(lo / scale.astype(np.float64)), -steps, 0).astype(np.int64)


def along(t: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if axis is None:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(t, shape)


def ref_quantize(x: np.ndarray, scale, offset, bw: int, axis: int | None, divide32: bool = False) -> np.ndarray:
    """``clamp(rint(x / scale) - offset, 0, 2**bw - 1)``; ``divide32``: the quotient rounded to float32."""
    s, o = along(np.float64(scale), axis, x.ndim), along(np.int64(offset), axis, x.ndim)
    v = x.astype(np.float64) / s
    if divide32:
        v = v.astype(np.float32).astype(np.float64)
    return np.clip(np.rint(v) - o, 0, 2**bw - 1).astype(np.int64)  # numpy's rint: half to even


def ref_dequantize(q: np.ndarray, scale, offset, axis: int | None) -> np.ndarray:
    s, o = along(np.float64(scale), axis, q.ndim), along(np.int64(offset), axis, q.ndim)
    return ((q + o) * s).astype(np.float32)  # (q + o) * s is exact in float64: one rounding, as in float32


def case(bw: int, mode: str, axis: int | None, seed: int = 0):
    """Ranges (per tensor or 3 channels), their grid as tensors, and data inside and beyond the grid."""
    rng = np.random.default_rng(1000 * bw + 10 * MODES.index(mode) + (axis is not None))
    chans = () if axis is None else (3,)
    lo = -rng.uniform(0.01, 5.0, chans) * (mode != "unsigned")
    hi = rng.uniform(0.01, 5.0, chans)
    lo64, hi64 = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    scale, offset = grid_from_range(lo64, hi64, bw, mode != "asymmetric")
    shape = [2000] if axis is None else [12, 12, 12]
    if axis is not None:
        shape[axis] = 3
    x = rng.uniform(-7.0, 7.0, shape)  # beyond both ends of every grid
    # Half the values at half-step ties rounded to float32: x / scale lands within an ulp of the tie.
    ties = (rng.integers(-(2**bw), 2**bw, shape) + 0.5) * along(scale.double().numpy(), axis, len(shape))
    x = np.where(rng.random(shape) < 0.5, ties, x).astype(np.float32)
    return lo, hi, scale, offset, x


# ----------------------------------------------------------------------------- grids
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bw", BITWIDTHS)
def test_grids_match_reference(bw: int, mode: str, per_channel: bool) -> None:
    lo, hi, scale, offset, _ = case(bw, mode, 0 if per_channel else None)
    ref_scale, ref_offset = ref_grid(lo, hi, bw, mode)
    assert scale.dtype == torch.float32 and offset.dtype == torch.int64 and scale.shape == np.shape(hi)
    assert np.array_equal(scale.numpy(), ref_scale) and np.array_equal(offset.numpy(), ref_offset)
    direct = {"asymmetric": asymmetric_grid, "symmetric": symmetric_grid, "unsigned": unsigned_grid}[mode]
    s, o = direct(torch.tensor(lo), torch.tensor(hi), bw)
    assert torch.equal(s, scale) and torch.equal(o, offset)
    enc = compute_encoding(
        torch.tensor(lo), torch.tensor(hi), bw, mode != "asymmetric", axis=0 if per_channel else None
    )
    assert torch.equal(enc.scale, scale) and torch.equal(enc.offset, offset)  # one implementation


def test_grid_choice_widening_and_refusals() -> None:
    # Symmetric over a range that is never negative: unsigned unless asked for the signed grid.
    assert int(grid_from_range(torch.tensor(0.5), torch.tensor(2.0), 8, True)[1]) == 0
    assert int(grid_from_range(torch.tensor(0.5), torch.tensor(2.0), 8, True, unsigned_symmetric=False)[1]) == -128
    # Per channel, one negative channel makes every channel signed (one container per tensor).
    assert grid_from_range(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]), 8, True)[1].tolist() == [-128, -128]
    # A range that excludes 0 is widened to contain it; a constant-zero tensor gets the smallest scale.
    scale, offset = asymmetric_grid(torch.tensor(2.0), torch.tensor(3.0), 8)
    assert int(offset) == 0 and float(scale) == float(np.float32(3.0 / 255))
    assert float(asymmetric_grid(torch.tensor(0.0), torch.tensor(0.0), 8)[0]) == float(np.float32(MIN_SCALE))
    for bad in (float("nan"), float("inf"), 1e39):
        with pytest.raises(DataError, match="float32"):
            grid_from_range(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(bad, dtype=torch.float64), 8, False)
    # Ranges at float32's edge: both grid ends stay finite.
    for grid in (asymmetric_grid, symmetric_grid, unsigned_grid):
        for bw in (2, 8, 16):
            s, o = grid(torch.tensor(-FLT_MAX * (grid is not unsigned_grid)), torch.tensor(FLT_MAX), bw)
            ends = (o.double() + torch.tensor([0.0, 2**bw - 1])) * s.double()
            assert bool((ends.abs() <= FLT_MAX).all()), (grid.__name__, bw, ends)


# ----------------------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bw", BITWIDTHS)
def test_quantize_dequantize_match_reference(bw: int, mode: str, axis: int | None) -> None:
    lo, hi, scale, offset, x = case(bw, mode, axis)
    q = quantize(torch.from_numpy(x), scale, offset, bw, axis)
    ref_q = ref_quantize(x, scale.numpy(), offset.numpy(), bw, axis)
    assert q.dtype == torch.int64 and np.array_equal(q.numpy(), ref_q)
    assert int(q.min()) == 0 and int(q.max()) == 2**bw - 1  # data beyond both ends clips to them
    dq = dequantize(q, scale, offset, axis)
    assert dq.dtype == torch.float32
    assert np.array_equal(dq.numpy(), ref_dequantize(ref_q, scale.numpy(), offset.numpy(), axis))


# ----------------------------------------------------------------------------- fake quantization
@pytest.mark.parametrize("axis", [None, 0, -1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bw", BITWIDTHS)
def test_fake_quantize_matches_onnx_reference(bw: int, mode: str, axis: int | None) -> None:
    """Without gradients: ONNX QuantizeLinear's float32 ``x / scale``, half to even, then DequantizeLinear."""
    _, _, scale, offset, x = case(bw, mode, axis)
    got = fake_quantize(torch.from_numpy(x), scale, offset, bw, axis)
    ref_q = ref_quantize(x, scale.numpy(), offset.numpy(), bw, axis, divide32=True)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), ref_dequantize(ref_q, scale.numpy(), offset.numpy(), axis))
    # Other dtypes come back in their own dtype, computed in float32.
    assert torch.equal(fake_quantize(torch.from_numpy(x).double(), scale, offset, bw, axis), got.double())


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bw", [2, 3, 4, 8, 12, 16])
def test_fake_quantize_with_gradients_is_torch_kernel_with_clipped_ste(bw: int, mode: str, axis: int | None) -> None:
    """With gradients: ``x * float32(1/scale)`` then as above; ``∂x̂/∂x`` is 1 on the grid, 0 off it."""
    _, _, scale, offset, x = case(bw, mode, axis)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = fake_quantize(xt, scale, offset, bw, axis)
    out.sum().backward()
    inv = np.float32(1.0) / scale.numpy()
    s, o = along(np.float64(scale.numpy()), axis, x.ndim), along(offset.numpy(), axis, x.ndim)
    v = np.rint((x * along(inv, axis, x.ndim)).astype(np.float32).astype(np.float64)) - o
    q = np.clip(v, 0, 2**bw - 1)
    assert np.array_equal(out.detach().numpy(), ((q + o) * s).astype(np.float32))
    assert np.array_equal(xt.grad.numpy(), ((v >= 0) & (v <= 2**bw - 1)).astype(np.float32))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("bw", BITWIDTHS)
def test_ties_round_to_even_and_grid_ends_clip(bw: int, grad: bool) -> None:
    scale, qmax = 2.0**-3, 2**bw - 1  # a power of two: x / scale and x * (1/scale) are exact
    offset = -(2 ** (bw - 1))
    k = np.arange(offset, offset + qmax, dtype=np.float64)  # ties k + 0.5 across the whole grid
    x = torch.tensor(
        np.concatenate([(k + 0.5) * scale, [(offset - 3) * scale, (offset + qmax + 3) * scale]]),
        dtype=torch.float32,
        requires_grad=grad,
    )
    even = k + (np.rint(k + 0.5) - k)  # k + 0.5 rounds to whichever of k, k + 1 is even
    assert set(np.rint(even) % 2) == {0.0}
    want = np.concatenate([even, [offset, offset + qmax]]) * scale  # beyond the ends: the ends
    got = fake_quantize(x, torch.tensor(scale), torch.tensor(offset), bw)
    assert np.array_equal(got.detach().numpy(), want.astype(np.float32))
    codes = quantize(x.detach(), torch.tensor(scale), torch.tensor(offset), bw)
    assert np.array_equal(codes.numpy(), np.rint(want / scale).astype(np.int64) - offset)


# ----------------------------------------------------------------------------- LSQ
def lsq_reference(
    x: np.ndarray, scale: np.ndarray, offset: np.ndarray, bw: int, axis: int | None, grad_factor: float, dy: np.ndarray
):
    """Output and d/dx, d/dscale, d/doffset of ``sum(dy * x̂)`` in float64 (Esser et al., 2020, eqs. 3-5).

    With ``v = x/s`` and ``q = round(v) - o``: on the grid (``0 ≤ q ≤ 2**bw - 1``) ``∂x̂/∂s = round(v) - v``,
    ``∂x̂/∂o = 0``, ``∂x̂/∂x = 1``; below it ``∂x̂/∂s = o`` (x̂ = o·s), above it ``2**bw - 1 + o``, and
    ``∂x̂/∂o = s``, ``∂x̂/∂x = 0``. The scale and offset gradients are multiplied by ``grad_factor``.
    """
    qmax = 2**bw - 1
    s, o = along(scale.astype(np.float64), axis, x.ndim), along(offset.astype(np.float64), axis, x.ndim)
    v = x / s
    q = np.rint(v) - o
    inside, below = (q >= 0) & (q <= qmax), q < 0
    out = (np.clip(q, 0, qmax) + o) * s
    d_s = dy * np.where(inside, np.rint(v) - v, np.where(below, o, qmax + o)) * grad_factor
    d_o = dy * np.where(inside, 0.0, s) * grad_factor
    reduce = tuple(d for d in range(x.ndim) if axis is None or d != axis % x.ndim)
    return out, dy * inside, d_s.sum(axis=reduce), d_o.sum(axis=reduce)


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bw", [2, 3, 4, 5, 8, 12, 16])
def test_learnable_fake_quantize_gradients_are_lsq(bw: int, symmetric: bool, axis: int | None) -> None:
    rng = np.random.default_rng(bw * 7 + symmetric + 3 * (axis is not None))
    qmax, chans = 2**bw - 1, () if axis is None else (4,)
    scale = rng.uniform(0.02, 0.5, chans).astype(np.float32)
    offset = np.full(chans, -(2 ** (bw - 1))) if symmetric else -rng.integers(0, qmax + 1, chans)
    x = rng.normal(0.0, 1.0, (50, 4)) * np.float64(scale) * qmax / 2 + np.float64(scale) * (offset + qmax / 2)
    v = x / np.float64(scale)
    x = np.where(np.abs(v % 1.0 - 0.5) < 1e-3, x + 0.01 * np.float64(scale), x)  # away from half-step ties
    dy = rng.uniform(0.5, 1.5, x.shape)
    factor = lsq_grad_scale(x.size, bw, symmetric)
    s = torch.tensor(scale, requires_grad=True)
    o = torch.tensor(offset.astype(np.float32), requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    out = learnable_fake_quantize(xt, s, o, bw, axis, grad_factor=factor)
    (out * torch.tensor(dy, dtype=torch.float32)).sum().backward()
    want, d_x, d_s, d_o = lsq_reference(xt.detach().double().numpy(), scale, offset, bw, axis, factor, dy)
    assert 0 < (d_x != 0).mean() < 1  # values on and off the grid
    np.testing.assert_allclose(out.detach().double().numpy(), want, rtol=1e-6, atol=1e-6 * float(scale.max()))
    np.testing.assert_allclose(xt.grad.double().numpy(), d_x, rtol=1e-6)
    np.testing.assert_allclose(s.grad.double().numpy(), d_s, rtol=1e-4, atol=1e-5 * factor * x.size)
    np.testing.assert_allclose(o.grad.double().numpy(), d_o, rtol=1e-4, atol=1e-7)


def test_learnable_fake_quantize_uses_magnitude_of_scale() -> None:
    x = torch.linspace(-1.0, 1.0, 41)
    pos = learnable_fake_quantize(x, torch.tensor(0.1), torch.tensor(-8.0), 4)
    assert torch.equal(learnable_fake_quantize(x, torch.tensor(-0.1), torch.tensor(-8.0), 4), pos)
    assert torch.equal(pos, fake_quantize(x.requires_grad_(True), torch.tensor(0.1), torch.tensor(-8), 4))


@pytest.mark.parametrize("is_param", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantizer_scales_lsq_gradients_by_one_over_sqrt_n_qp(symmetric: bool, is_param: bool) -> None:
    """The factor the Quantizer passes: ``1/sqrt(N * Q_P)``, N the values of one sample of an activation
    (all values of a parameter), Q_P = 2**(bw-1) - 1 symmetric, 2**bw - 1 asymmetric."""
    bw, x = 4, torch.randn(6, 10) * 2
    q = Quantizer(bitwidth=bw, symmetric=symmetric, scheme="minmax", unsigned_symmetric=False)
    q.encoding_from_tensor(x * 0.5)  # part of x lies off the grid
    q.is_param = is_param
    q.set_range_learning(True)
    q(x).sum().backward()
    n, qp = (60 if is_param else 10), (2 ** (bw - 1) - 1 if symmetric else 2**bw - 1)
    assert lsq_grad_scale(n, bw, symmetric) == 1 / np.sqrt(n * qp)
    scale, offset = q.scale.detach().numpy().copy(), q.offset.detach().numpy().astype(np.int64)
    _, _, d_s, _ = lsq_reference(x.double().numpy(), scale, offset, bw, None, 1 / np.sqrt(n * qp), np.ones((6, 10)))
    assert float(q.scale.grad) == pytest.approx(float(d_s), rel=1e-4, abs=1e-6)


def test_primitives_docstring_examples() -> None:
    result = doctest.testmod(primitives, extraglobs={"torch": torch})
    assert result.attempted >= 10 and result.failed == 0
