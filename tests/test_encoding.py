"""Encodings and fake quantization against an independent float64 reference (numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leantorch import DataError, Encoding, EncodingsFileError, UnsupportedBitwidthError, compute_encoding
from leantorch.quant.encoding import dequantize, quantize
from leantorch.quant.quantizer import fake_quantize


def reference_encoding(lo: float, hi: float, bw: int, symmetric: bool, unsigned_ok: bool = True):
    """(scale, offset) written from the DESIGN formulas, in float64 numpy."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric and unsigned_ok and lo >= 0:
        scale = np.float32(max(hi / (2**bw - 1), 1e-10))
        return float(scale), 0
    if symmetric:
        scale = np.float32(max(max(-lo, hi) / (2 ** (bw - 1) - 1), 1e-10))
        return float(scale), -(2 ** (bw - 1))
    scale = np.float32(max((hi - lo) / (2**bw - 1), 1e-10))
    return float(scale), int(np.clip(np.rint(lo / np.float64(scale)), -(2**bw - 1), 0))


def reference_fake_quant(x: np.ndarray, scale: float, offset: int, bw: int) -> np.ndarray:
    q = np.clip(np.rint(x.astype(np.float64) / scale) - offset, 0, 2**bw - 1)
    return (q + offset) * scale


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(lo=finite, hi=finite, bw=st.integers(2, 16), symmetric=st.booleans())
def test_compute_encoding_matches_reference(lo: float, hi: float, bw: int, symmetric: bool) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    enc = compute_encoding(torch.tensor(lo), torch.tensor(hi), bw, symmetric)
    scale, offset = reference_encoding(lo, hi, bw, symmetric)
    assert float(enc.scale) == pytest.approx(scale, rel=1e-6)
    assert int(enc.offset) == offset
    # The grid always holds 0 exactly and covers the observed range up to half a step.
    assert float(enc.min) <= 1e-12 and float(enc.max) >= -1e-12
    assert float(enc.min) <= lo + scale and float(enc.max) >= hi - scale


@settings(max_examples=150, deadline=None)
@given(
    lo=finite, hi=finite, bw=st.integers(2, 16), symmetric=st.booleans(), seed=st.integers(0, 2**16), grad=st.booleans()
)
def test_fake_quantize_matches_reference(lo, hi, bw, symmetric, seed, grad) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    enc = compute_encoding(torch.tensor(lo), torch.tensor(hi), bw, symmetric)
    gen = torch.Generator().manual_seed(seed)
    span = max(hi - lo, 1e-3)
    x = (torch.rand(2000, generator=gen) * 1.4 - 0.2) * span + lo  # includes values outside the range
    x.requires_grad_(grad)  # the native kernel (training) and the inference path must agree
    got = fake_quantize(x, enc.scale, enc.offset, bw).detach().double().numpy()
    xs = x.detach().double().numpy()
    step, offset = float(enc.scale), int(enc.offset)
    got_codes = np.rint(got / step) - offset
    want_codes = np.clip(np.rint(xs / step) - offset, 0, 2**bw - 1)
    # Outputs are exactly on the grid (up to float32 rounding of the product).
    np.testing.assert_allclose(got, (got_codes + offset) * step, rtol=1e-6, atol=1e-12)
    # torch multiplies by float32 1/scale: codes may differ by one, and only right next to a rounding tie.
    ratio = xs / step
    near_tie = np.abs(ratio - np.floor(ratio) - 0.5) < 1e-6 * np.abs(ratio) + 1e-6
    assert np.all(got_codes[~near_tie] == want_codes[~near_tie])
    assert np.all(np.abs(got_codes - want_codes) <= 1)


@settings(max_examples=60, deadline=None)
@given(axis=st.integers(0, 2), bw=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 1000))
def test_per_channel_any_axis(axis: int, bw: int, symmetric: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=gen) * torch.rand(3, 4, 5, generator=gen) * 4
    moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    enc = compute_encoding(moved.min(1).values, moved.max(1).values, bw, symmetric, axis=axis)
    got = fake_quantize(x, enc.scale, enc.offset, bw, axis=axis).double().numpy()
    for c in range(x.shape[axis]):
        xs = x.select(axis, c).numpy()
        want = reference_fake_quant(xs, float(enc.scale[c]), int(enc.offset[c]), bw)
        np.testing.assert_allclose(got.take(c, axis=axis), want, atol=float(enc.scale[c]) * 1.0001)
        assert np.mean(np.abs(got.take(c, axis=axis) - want) > 1e-6) < 0.01


def test_unsigned_symmetric_for_non_negative_tensors() -> None:
    enc = compute_encoding(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=True)
    assert int(enc.offset) == 0 and float(enc.scale) == pytest.approx(0.01)
    signed = compute_encoding(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=True, unsigned_symmetric=False)
    assert int(signed.offset) == -128 and signed.is_signed


def test_integer_codes_and_dequantize_roundtrip() -> None:
    enc = compute_encoding(torch.tensor(-1.0), torch.tensor(3.0), 4, symmetric=False)
    x = torch.linspace(-2, 4, 101)
    q = quantize(x, enc)
    assert q.min() == 0 and q.max() == 15
    np.testing.assert_allclose(
        dequantize(q, enc).numpy(), reference_fake_quant(x.numpy(), float(enc.scale), int(enc.offset), 4), atol=1e-6
    )


def test_straight_through_gradient_is_identity_inside_range_zero_outside() -> None:
    enc = compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=False)
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 3.0], requires_grad=True)
    fake_quantize(x, enc.scale, enc.offset, 8).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("bw", [0, 1, 17, 33, 8.0, True, "8"])
def test_unsupported_bitwidth_is_a_clear_error(bw) -> None:
    with pytest.raises(UnsupportedBitwidthError, match="from 2 to 16"):
        compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), bw, symmetric=False)


def test_aimet_entries_roundtrip() -> None:
    enc = compute_encoding(torch.tensor([-1.0, -0.5]), torch.tensor([2.0, 0.25]), 8, symmetric=True, axis=0)
    entries = json.loads(json.dumps(enc.to_aimet()))
    assert entries[0]["offset"] == -128 and entries[0]["is_symmetric"] == "True"
    assert entries[0]["min"] == pytest.approx(-128 * entries[0]["scale"])
    back = Encoding.from_aimet(entries, axis=0)
    assert torch.equal(back.scale, enc.scale) and torch.equal(back.offset, enc.offset)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("scale", 0.0, "scale=0.0"),
        ("offset", 5, "offset=5"),
        ("max", 9.0, "max=9.0 disagrees"),
        ("bitwidth", 1, "bitwidth=1"),
    ],
)
def test_aimet_entries_are_checked(field: str, value, message: str) -> None:
    entry = compute_encoding(torch.tensor(-1.0), torch.tensor(3.0), 8, symmetric=False).to_aimet()[0]
    with pytest.raises(EncodingsFileError, match=message):
        Encoding.from_aimet([{**entry, field: value}])


def test_range_beyond_float32_is_a_typed_error() -> None:
    # float64 ranges no float32 scale can cover (and NaN/Inf) are refused, not turned into scale=inf.
    for lo, hi in [(-1e300, 1e300), (float("nan"), 1.0), (-1.0, float("inf"))]:
        with pytest.raises(DataError, match="float32"):
            compute_encoding(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), 8, False)


@pytest.mark.parametrize("bw", [2, 8, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_grid_near_float32_max_stays_finite(bw: int, symmetric: bool) -> None:
    flt_max = float(np.finfo(np.float32).max)
    enc = compute_encoding(torch.tensor(-3.4e38), torch.tensor(3.4e38), bw, symmetric)
    assert -flt_max <= float(enc.min) and float(enc.max) <= flt_max and float(enc.scale) > 0
    x = torch.tensor([-3.4e38, -1.0, 0.0, 1.0, 3.4e38])
    assert bool(torch.isfinite(dequantize(quantize(x, enc), enc)).all())
    assert bool(torch.isfinite(fake_quantize(x, enc.scale, enc.offset, bw)).all())
    # The usual ranges keep the plain formula (the cap binds only within a few steps of float32's maximum).
    assert int(compute_encoding(torch.tensor(-3.4e38), torch.tensor(3.4e38), 2, False).offset) == -2
