"""Property-based tests (hypothesis) over bitwidths, schemes, shapes, configs and encodings files.

Every property asserts one of two outcomes: a typed error (a :class:`leantorch.LeanTorchError` subclass)
or a finite result that agrees with an independent reference (float64 numpy formulas of
``quant/encoding.py``'s docstring, the float model, the config's own rules). Never a mutated user model,
never NaN/Inf in a simulation.

Hypothesis runs derandomized, without a database and without deadlines, so CI sees the same examples on
every run. Tests marked ``xfail(strict=True)`` pin library bugs this module found (see their reasons);
they start passing (and so fail as XPASS) once the bug is fixed — then drop the mark.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from torch import nn

import leantorch as lt
from leantorch.errors import (
    CalibrationDataError,
    ConfigError,
    EncodingsFileError,
    LeanTorchError,
    UnsupportedBitwidthError,
)
from leantorch.quant.config import PER_CHANNEL_AXIS, QuantSimConfig
from leantorch.quant.encoding import MIN_SCALE, Encoding, check_bitwidth, compute_encoding, dequantize, quantize
from leantorch.quant.encodings_file import same_encoding
from leantorch.quant.estimators import make_estimator
from leantorch.quant.quantizer import Quantizer, fake_quantize

# One settings parent for the module: reproducible (derandomized, no example database) and free of
# wall-clock limits. Each test only chooses its number of examples.
PROPS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

SCHEMES = ("minmax", "tf_enhanced", "percentile", "mse")
FLT_MAX = float(np.finfo(np.float32).max)


# ============================================================================ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: torch's intra-op threads only add overhead (and contend on shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_model_unchanged(model: nn.Module, before: dict[str, torch.Tensor], training: bool = False) -> None:
    state = model.state_dict()
    assert set(state) == set(before), "the user's model gained or lost state"
    for k, v in before.items():
        assert torch.equal(state[k], v), f"the user's model was modified: {k}"
    assert model.training == training, "the user's model changed train/eval mode"


def sim_state(sim: lt.QuantSim) -> dict[str, tuple]:
    """Everything a quantizer's encoding consists of, copied."""
    out = {}
    for name, q in sim.quantizers().items():
        scale = None if q.scale is None else q.scale.detach().clone()
        offset = None if q.offset is None else q.offset.detach().clone()
        out[name] = (q.bitwidth, bool(q.symmetric), q.axis, bool(q.enabled), bool(q.frozen), scale, offset)
    return out


def assert_same_state(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name][:5] == b[name][:5], f"{name}: settings changed {a[name][:5]} -> {b[name][:5]}"
        for i in (5, 6):
            x, y = a[name][i], b[name][i]
            assert (x is None) == (y is None), f"{name}: encoding appeared/disappeared"
            if x is not None:
                assert x.dtype == y.dtype and torch.equal(x, y), f"{name}: encoding changed"


def assert_encodings_valid(sim: lt.QuantSim) -> None:
    """Every encoding in the sim: finite positive float32 scale, integer offset on its grid."""
    for name, q in sim.quantizers().items():
        enc = q.encoding
        if enc is None:
            continue
        scale = enc.scale.double()
        assert bool(torch.isfinite(scale).all()) and bool((scale >= np.float32(MIN_SCALE)).all()), name
        assert enc.offset.dtype == torch.int64, name
        assert_offset_on_grid(enc.offset, enc.bitwidth, enc.symmetric)
        assert bool(torch.isfinite(enc.min).all()) and bool(torch.isfinite(enc.max).all()), name


def assert_offset_on_grid(offset: torch.Tensor, bw: int, symmetric: bool) -> None:
    if symmetric:
        assert bool(((offset == 0) | (offset == -(2 ** (bw - 1)))).all()), (offset, bw)
    else:
        assert bool(((offset <= 0) & (offset >= -(2**bw - 1))).all()), (offset, bw)


def run_sim(sim: lt.QuantSim, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sim.model(x)


def quiet_sim(*args: Any, **kwargs: Any) -> lt.QuantSim:
    """QuantSim without its "nothing to quantize" / unknown-layer warnings (they are not under test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lt.QuantSim(*args, **kwargs)


# ============================================================================ 1. encoding numerics
def ref_encoding(lo: float, hi: float, bw: int, symmetric: bool, unsigned: bool = True) -> tuple[float, int]:
    """(scale, offset) from the docstring formulas of quant/encoding.py, in float64 numpy."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    n = 2**bw - 1
    if symmetric and unsigned and lo >= 0:
        return float(np.float32(max(hi / n, MIN_SCALE))), 0
    if symmetric:
        return float(np.float32(max(max(-lo, hi) / (2 ** (bw - 1) - 1), MIN_SCALE))), -(2 ** (bw - 1))
    scale = np.float32(max((hi - lo) / n, MIN_SCALE))
    return float(scale), int(np.clip(np.rint(lo / np.float64(scale)), -n, 0))  # rint: half to even


def ref_quant_dequant(x: np.ndarray, scale: float, offset: int, bw: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.clip(np.rint(x.astype(np.float64) / scale) - offset, 0, 2**bw - 1)
    return q.astype(np.int64), ((q + offset) * scale).astype(np.float32)


# Values as float32 tensors hold them: zero, subnormal/tiny, ordinary and huge magnitudes, up to 1e37 (the
# grid of a range near float32's maximum is capped to fit float32: see the tests below).
F37, F38, F30 = float(np.float32(1e37)), float(np.float32(1e38)), float(np.float32(1e-30))
values = st.one_of(
    st.floats(-F37, F37, allow_nan=False, allow_infinity=False, width=32),
    st.floats(-F30, F30, allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, float(np.float32(1e-10)), F37, -F37, 1.0, -1.0]),
)
ranges = st.one_of(
    st.tuples(values, values).map(lambda t: (min(t), max(t))),
    values.map(lambda v: (v, v)),  # min == max
    st.just((0.0, 0.0)),  # all zero
)
bitwidths = st.integers(2, 16)


@settings(PROPS, max_examples=250)
@given(
    rng=ranges,
    bw=bitwidths,
    symmetric=st.booleans(),
    unsigned=st.booleans(),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
)
def test_compute_encoding_matches_float64_reference(rng, bw, symmetric, unsigned, fractions) -> None:
    lo, hi = rng
    enc = compute_encoding(
        torch.tensor(lo, dtype=torch.float64),
        torch.tensor(hi, dtype=torch.float64),
        bw,
        symmetric,
        unsigned_symmetric=unsigned,
    )
    scale, offset = float(enc.scale), int(enc.offset)
    ref_scale, ref_offset = ref_encoding(lo, hi, bw, symmetric, unsigned)
    assert enc.scale.dtype == torch.float32 and enc.offset.dtype == torch.int64
    assert scale == ref_scale and offset == ref_offset, (scale, ref_scale, offset, ref_offset)
    assert math.isfinite(scale) and scale > 0
    assert_offset_on_grid(enc.offset, bw, symmetric)
    assert math.isfinite(float(enc.min)) and math.isfinite(float(enc.max))

    # 0.0 is exactly representable.
    zero = torch.zeros(1, dtype=torch.float64)
    assert float(dequantize(quantize(zero, enc), enc)) == 0.0

    # Inside the (zero-widened) observed range: codes on [0, 2**bw - 1], error at most half a step.
    wlo, whi = min(lo, 0.0), max(hi, 0.0)
    xs = np.clip(np.array([wlo, whi, lo, hi] + [wlo + f * (whi - wlo) for f in fractions]), wlo, whi)
    q = quantize(torch.from_numpy(xs), enc)
    dq = dequantize(q, enc)
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bw - 1
    assert bool(torch.isfinite(dq).all())
    tol = 0.5 * scale + 2.0**-21 * np.maximum(np.abs(xs), np.abs(dq.double().numpy())) + 1e-45
    err = np.abs(dq.double().numpy() - xs)
    assert (err <= tol).all(), (xs[err > tol], dq.numpy()[err > tol], scale, offset)
    ref_q, ref_dq = ref_quant_dequant(xs, scale, offset, bw)
    assert np.array_equal(q.numpy(), ref_q)
    assert np.array_equal(dq.numpy(), ref_dq)

    # Far outside the range, codes saturate on the grid and stay finite.
    outside = torch.tensor(
        [-3e38, -1e30, 1e30, 3e38, wlo - (whi - wlo) - 1.0, whi + (whi - wlo) + 1.0], dtype=torch.float64
    )
    q_out = quantize(outside, enc)
    assert int(q_out.min()) >= 0 and int(q_out.max()) <= 2**bw - 1
    assert bool(torch.isfinite(dequantize(q_out, enc)).all())

    # The simulation kernel (float32 division as ONNX QuantizeLinear) agrees to one step (ties only).
    x32 = torch.from_numpy(xs).float()
    fq = fake_quantize(x32, enc.scale, enc.offset, bw)
    assert bool(torch.isfinite(fq).all())
    ref32 = dequantize(quantize(x32, enc), enc)
    # (one step, plus the float32 rounding of the two dequantized values: a tie at 0.3 with a step of 1/255 differs
    # by 1.000002 steps)
    ulp = 2.0**-23 * torch.maximum(fq.double().abs(), ref32.double().abs())
    assert bool(((fq.double() - ref32.double()).abs() <= scale * (1 + 1e-6) + ulp + 1e-45).all())

    # The AIMET file entry (through strict JSON) gives back the same grid.
    assert same_encoding(Encoding.from_aimet(json.loads(json.dumps(enc.to_aimet(), allow_nan=False))), enc)


@settings(PROPS, max_examples=120)
@given(
    chans=st.lists(ranges, min_size=1, max_size=5),
    bw=bitwidths,
    symmetric=st.booleans(),
    unsigned=st.booleans(),
    axis=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_per_channel_encoding_equals_per_tensor_channel_by_channel(chans, bw, symmetric, unsigned, axis, seed) -> None:
    lo = torch.tensor([c[0] for c in chans], dtype=torch.float64)
    hi = torch.tensor([c[1] for c in chans], dtype=torch.float64)
    enc = compute_encoding(lo, hi, bw, symmetric, unsigned_symmetric=unsigned, axis=axis)
    assert enc.scale.shape == (len(chans),) and enc.offset.shape == (len(chans),) and enc.axis == axis
    # One tensor has one container: the unsigned-symmetric grid only when every channel is non-negative.
    shared_unsigned = unsigned and all(c[0] >= 0 for c in chans)
    gen = torch.Generator().manual_seed(seed)
    cols = torch.rand(len(chans), 7, generator=gen, dtype=torch.float64)
    x = lo[:, None].clamp(max=0) + cols * (hi.clamp(min=0) - lo.clamp(max=0))[:, None]  # [C, 7] in range
    x = torch.cat([x, torch.tensor([[-1e30, 1e30]], dtype=torch.float64).expand(len(chans), 2)], dim=1)
    x_axis = x if axis == 0 else x.t()
    dq = dequantize(quantize(x_axis, enc), enc)
    dq = dq if axis == 0 else dq.t()
    for c, (clo, chi) in enumerate(chans):
        per_tensor = compute_encoding(
            torch.tensor(clo, dtype=torch.float64),
            torch.tensor(chi, dtype=torch.float64),
            bw,
            symmetric,
            unsigned_symmetric=shared_unsigned,
        )
        assert float(enc.scale[c]) == float(per_tensor.scale) and int(enc.offset[c]) == int(per_tensor.offset)
        assert float(enc.scale[c]) == ref_encoding(clo, chi, bw, symmetric, shared_unsigned)[0]
        assert torch.equal(dq[c], dequantize(quantize(x[c], per_tensor), per_tensor))
    assert bool(torch.isfinite(dq).all())
    # The simulation kernel, per channel, stays within one step of the reference.
    fq = fake_quantize(x_axis.float(), enc.scale, enc.offset, bw, axis)
    fq = fq if axis == 0 else fq.t()
    assert bool(((fq.double() - dq.double()).abs() <= enc.scale.double()[:, None] * (1 + 1e-6) + 1e-45).all())
    # One AIMET entry per channel (through strict JSON) gives back the same per-channel grid.
    entries = json.loads(json.dumps(enc.to_aimet(), allow_nan=False))
    assert len(entries) == len(chans)
    assert same_encoding(Encoding.from_aimet(entries, axis=axis), enc)


@settings(PROPS, max_examples=20)
@example(lo=-1e300, hi=1e300, bw=8, symmetric=False)
@given(lo=st.floats(-1e308, -4e38), hi=st.floats(4e38, 1e308), bw=bitwidths, symmetric=st.booleans())
def test_range_beyond_float32_gives_typed_error_or_finite_grid(lo, hi, bw, symmetric) -> None:
    try:
        enc = compute_encoding(
            torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), bw, symmetric
        )
    except LeanTorchError:
        return
    assert math.isfinite(float(enc.scale))
    x = torch.tensor([lo, 0.0, hi], dtype=torch.float64)
    assert bool(torch.isfinite(dequantize(quantize(x, enc), enc)).all())


@settings(PROPS, max_examples=20)
@example(lo=-3.4e38, hi=3.4e38, bw=2, symmetric=False)
@example(lo=-FLT_MAX, hi=0.0, bw=16, symmetric=False)
@given(
    lo=st.floats(-FLT_MAX, -F38, width=32), hi=st.floats(F38, FLT_MAX, width=32), bw=bitwidths, symmetric=st.booleans()
)
def test_range_near_float32_max_dequantizes_finite(lo, hi, bw, symmetric) -> None:
    enc = compute_encoding(torch.tensor(lo), torch.tensor(hi), bw, symmetric)
    x = torch.tensor([lo, 0.0, hi], dtype=torch.float64)
    dq = dequantize(quantize(x, enc), enc)
    assert bool(torch.isfinite(dq).all()), (float(enc.scale), int(enc.offset), dq)


# ============================================================================ 1b. range estimators
@st.composite
def estimator_batches(draw):
    channels = draw(st.integers(1, 4))
    per_channel_len = draw(st.integers(1, 6))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        rows = []
        for _c in range(channels):
            kind = draw(st.sampled_from(["normal", "constant", "zeros", "positive"]))
            exp = draw(st.integers(-30, 30))
            seed = draw(st.integers(0, 2**16))
            gen = torch.Generator().manual_seed(seed)
            if kind == "normal":
                row = torch.randn(per_channel_len, generator=gen) * 10.0**exp
            elif kind == "positive":
                row = torch.rand(per_channel_len, generator=gen) * 10.0**exp
            elif kind == "constant":
                row = torch.full((per_channel_len,), draw(st.floats(-1.0, 1.0, width=32)) * 10.0**exp)
            else:
                row = torch.zeros(per_channel_len)
            rows.append(row)
        batches.append(torch.stack(rows))
    return batches


@settings(PROPS, max_examples=60)
@given(
    batches=estimator_batches(),
    scheme=st.sampled_from(SCHEMES),
    per_channel=st.booleans(),
    bw=bitwidths,
    symmetric=st.booleans(),
)
def test_estimators_give_finite_ranges_inside_the_data(batches, scheme, per_channel, bw, symmetric) -> None:
    axis = 0 if per_channel else None
    est = make_estimator(scheme, axis)
    for b in batches:
        est.observe(b)
    lo, hi = est.compute_range(bw, symmetric)
    data = torch.cat(batches, dim=1).double()
    true_lo = data.min(dim=1).values if per_channel else data.min().reshape(())
    true_hi = data.max(dim=1).values if per_channel else data.max().reshape(())
    assert lo.shape == true_lo.shape and hi.shape == true_hi.shape
    assert bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())
    if scheme == "minmax":
        assert torch.equal(lo, true_lo) and torch.equal(hi, true_hi)
    else:  # inside the observed range (widened to hold 0, and made symmetric for symmetric search schemes)
        bound_lo, bound_hi = true_lo.clamp(max=0), true_hi.clamp(min=0)
        if scheme == "percentile":
            bound_lo, bound_hi = true_lo, true_hi
        elif symmetric:  # a signed symmetric grid reaches max(|lo|, |hi|) on both sides
            top, signed = torch.maximum(-bound_lo, bound_hi), bound_lo < 0
            bound_lo, bound_hi = torch.where(signed, -top, bound_lo), torch.where(signed, top, bound_hi)
        slack = 1e-9 * torch.maximum(true_lo.abs(), true_hi.abs()) + 1e-12  # float rounding of bin edges
        assert bool((lo >= bound_lo - slack).all()) and bool((hi <= bound_hi + slack).all()), (lo, hi)
        assert bool((lo <= hi).all())
    enc = compute_encoding(lo, hi, bw, symmetric, axis=axis)
    assert bool(torch.isfinite(enc.scale).all()) and bool((enc.scale > 0).all())
    for b in batches:
        out = fake_quantize(b, enc.scale, enc.offset, bw, axis)
        assert bool(torch.isfinite(out).all())


@settings(PROPS, max_examples=10)
@example(value=1e5, sign=1.0, scheme="tf_enhanced")
@given(
    value=st.floats(1e4, 1e30),
    sign=st.sampled_from([1.0, -1.0]),
    scheme=st.sampled_from(["tf_enhanced", "percentile", "mse"]),
)
def test_per_channel_constant_weight_row_calibrates(value, sign, scheme) -> None:
    model = nn.Linear(3, 2).eval()
    with torch.no_grad():
        model.weight[0] = sign * value
    before = snapshot(model)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    sim = quiet_sim(model, x, scheme=scheme, per_channel=True)
    try:
        sim.compute_encodings([x], progress=False)
    finally:
        assert_model_unchanged(model, before)
    assert_encodings_valid(sim)
    assert bool(torch.isfinite(run_sim(sim, x)).all())


# ============================================================================ 2. bitwidths
bad_bitwidths = st.one_of(
    st.integers().filter(lambda b: not (2 <= b <= 16 or b == 32)),
    st.sampled_from([0, 1, 17, 31, 33, 64, -8, -1]),
    st.floats(allow_nan=True, allow_infinity=True),  # no float is a bitwidth, not even 8.0
    st.booleans(),
    st.text(max_size=3),
    st.sampled_from(["8", "32", b"8", None, [8], (8,), {8: 8}, 8 + 0j]),
)


@settings(PROPS, max_examples=80)
@given(bw=bad_bitwidths, which=st.sampled_from(["param_bw", "act_bw"]))
def test_unsupported_bitwidths_raise_typed_error(bw, which) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU()).eval()
    before = snapshot(model)
    with pytest.raises(UnsupportedBitwidthError):
        check_bitwidth(bw)
    with pytest.raises(UnsupportedBitwidthError):
        lt.QuantSim(model, torch.randn(1, 3), **{which: bw})
    with pytest.raises(UnsupportedBitwidthError):
        Quantizer(bitwidth=bw)
    with pytest.raises(UnsupportedBitwidthError):
        compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), bw, symmetric=False)
    assert issubclass(UnsupportedBitwidthError, (LeanTorchError, ValueError))
    assert_model_unchanged(model, before)


@settings(PROPS, max_examples=17)
@given(bw=st.sampled_from(list(range(2, 17)) + [32]))
def test_supported_bitwidths_are_accepted(bw) -> None:
    assert check_bitwidth(bw) == bw


# ============================================================================ 3. QuantSim on random models
@st.composite
def small_models(draw):
    """A tiny Sequential of Linear or Conv2d layers (depth 1-3, any parameter scale) and its input shape
    (without the batch dimension)."""
    kind = draw(st.sampled_from(["linear", "conv"]))
    depth = draw(st.integers(1, 3))
    in_ch = draw(st.integers(1, 4))
    size_in = size = draw(st.integers(7, 9))
    spec: list[tuple] = []
    c = in_ch
    for _ in range(depth):
        out = draw(st.integers(1, 6))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            pad = draw(st.integers(0, k // 2))
            spec.append(("conv", c, out, k, pad))
            size = size + 2 * pad - k + 1
        else:
            spec.append(("linear", c, out))
        act = draw(st.sampled_from([None, "relu", "relu6"]))
        if act:
            spec.append((act,))
        c = out
    if kind == "conv" and draw(st.booleans()):
        spec.append(("flatten",))
        spec.append(("linear", c * size * size, draw(st.integers(1, 4))))
    seed = draw(st.integers(0, 2**16))
    weight_exp = draw(st.integers(-6, 6))  # parameters of any scale
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for s in spec:
            if s[0] == "conv":
                layers.append(nn.Conv2d(s[1], s[2], s[3], padding=s[4]))
            elif s[0] == "linear":
                layers.append(nn.Linear(s[1], s[2]))
            elif s[0] == "relu":
                layers.append(nn.ReLU())
            elif s[0] == "relu6":
                layers.append(nn.ReLU6())
            else:
                layers.append(nn.Flatten())
        model = nn.Sequential(*layers).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(10.0**weight_exp)
    shape = (in_ch,) if kind == "linear" else (in_ch, size_in, size_in)
    return model, shape


batch_kinds = st.tuples(
    st.sampled_from(["normal", "uniform", "constant", "zeros"]),
    st.integers(-20, 20),
    st.floats(-1.0, 1.0, width=32),
    st.integers(0, 2**16),
    st.integers(1, 3),
)


def make_batch(shape: tuple[int, ...], kind: tuple) -> torch.Tensor:
    name, exp, const, seed, batch = kind
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0**exp
    if name == "normal":
        return torch.randn((batch, *shape), generator=gen) * scale
    if name == "uniform":
        return (torch.rand((batch, *shape), generator=gen) * 2 - 1) * scale
    if name == "constant":
        return torch.full((batch, *shape), const * scale)
    return torch.zeros((batch, *shape))


def layer_magnitude(model: nn.Sequential, x: torch.Tensor) -> float:
    """Largest magnitude of any tensor the float model computes on ``x`` (input included)."""
    with torch.no_grad():
        biggest = float(x.abs().max())
        for layer in model:
            x = layer(x)
            biggest = max(biggest, float(x.abs().max()))
    return biggest


@settings(PROPS, max_examples=50)
@given(
    model_shape=small_models(),
    kinds=st.lists(batch_kinds, min_size=1, max_size=3),
    scheme=st.sampled_from(SCHEMES),
    per_channel=st.sampled_from([True, False, None]),
    config=st.sampled_from(["default", "per_channel"]),
    param_bw=st.sampled_from([4, 8, 16, 32]),
    act_bw=st.sampled_from([4, 8, 16, 32]),
    unseen=batch_kinds,
    bad=st.tuples(st.integers(0, 2), st.floats(0.0, 1.0), st.sampled_from([math.nan, math.inf, -math.inf])),
)
def test_quantsim_on_random_models_is_finite_and_leaves_the_model_alone(
    model_shape, kinds, scheme, per_channel, config, param_bw, act_bw, unseen, bad
) -> None:
    model, shape = model_shape
    before = snapshot(model)
    batches = [make_batch(shape, k) for k in kinds]
    x_eval = batches[0]
    with torch.no_grad():
        float_out = model(x_eval)
    assume(bool(torch.isfinite(float_out).all()))  # a float model that overflows is out of scope
    want_per_channel = per_channel if per_channel is not None else config == "per_channel"

    sim = quiet_sim(
        model, batches[0], param_bw=param_bw, act_bw=act_bw, scheme=scheme, per_channel=per_channel, config=config
    )
    sim.compute_encodings(batches, progress=False)
    assert_model_unchanged(model, before)
    assert_encodings_valid(sim)
    active = [q for q in sim.quantizers().values() if q.is_active]
    assert all(q.encoding is not None for q in active)
    for name, q in sim.param_quantizers().items():
        if q.is_active:
            assert q.bitwidth == param_bw and (q.axis is not None) == (want_per_channel and name.endswith("weight"))
    for q in sim.activation_quantizers().values():
        if q.enabled:
            assert q.bitwidth == act_bw

    out = run_sim(sim, x_eval)
    assert out.shape == float_out.shape and bool(torch.isfinite(out).all())
    assert bool(torch.isfinite(sim.model(x_eval)).all())  # with autograd: torch's fake-quant kernels
    if scheme == "minmax" and param_bw >= 16 and act_bw >= 16:  # near-lossless grids: close to float
        # The grids span what calibration saw: a calibration batch 1e5 times larger than x_eval sets the step.
        tol = 2e-3 * max(layer_magnitude(model, b) for b in batches) + 1e-30
        assert float((out - float_out).abs().max()) <= tol
    # Data the calibration never saw (another scale, possibly far outside the ranges) is clamped, not NaN.
    assert bool(torch.isfinite(run_sim(sim, make_batch(shape, unseen))).all())

    # The saved file loads into a fresh sim of the same model and config: identical outputs.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.encodings"
        sim.save_encodings(path)
        fresh = quiet_sim(
            model, batches[0], param_bw=param_bw, act_bw=act_bw, scheme=scheme, per_channel=per_channel, config=config
        )
        assert fresh.load_encodings(path, strict=True) == []
        assert torch.equal(run_sim(fresh, x_eval), out)
    assert_model_unchanged(model, before)

    # NaN/Inf anywhere in the calibration data: CalibrationDataError, encodings and outputs unchanged.
    state = sim_state(sim)
    index, where, value = bad
    poisoned = [b.clone() for b in batches]
    target = poisoned[index % len(poisoned)].view(-1)
    target[min(int(where * target.numel()), target.numel() - 1)] = value
    with pytest.raises(CalibrationDataError):
        sim.compute_encodings(poisoned, progress=False)
    assert_same_state(state, sim_state(sim))
    assert torch.equal(run_sim(sim, x_eval), out)
    assert_model_unchanged(model, before)


@settings(PROPS, max_examples=12)
@given(
    model_shape=small_models(),
    scheme=st.sampled_from(SCHEMES),
    seed=st.integers(0, 2**16),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.floats(0.0, 1.0),
    callable_data=st.booleans(),
)
def test_nan_calibration_on_a_fresh_sim_leaves_no_encoding(
    model_shape, scheme, seed, value, where, callable_data
) -> None:
    model, shape = model_shape
    before = snapshot(model)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))
    sim = quiet_sim(model, x, scheme=scheme)
    state = sim_state(sim)
    bad = x.clone()
    bad.view(-1)[min(int(where * bad.numel()), bad.numel() - 1)] = value
    data = (lambda m: m(bad)) if callable_data else [x, bad]
    with pytest.raises(CalibrationDataError):
        sim.compute_encodings(data, progress=False)
    assert_same_state(state, sim_state(sim))
    assert all(q.encoding is None for q in sim.quantizers().values())
    assert_model_unchanged(model, before)


# ============================================================================ 4. encodings files
@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Calibrated sims for the encodings-file tests, each built once per module (see :func:`base`)."""
    return {"_root": tmp_path_factory.mktemp("encodings_bases")}


def base(bases: dict[str, Any], name: str) -> dict[str, Any]:
    """A calibrated sim (built on first use) with its saved file, state and outputs."""
    if name in bases:
        return bases[name]
    with torch.random.fork_rng():
        torch.manual_seed(7)
        if name == "per_channel_conv":
            model = nn.Sequential(
                nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)
            ).eval()
            x = torch.randn(4, 2, 5, 5)
            sim = quiet_sim(model, x, param_bw=4, act_bw=8, scheme="minmax", config="per_channel")
        else:  # symmetric activations, quantized biases, 16-bit activations
            model = nn.Sequential(nn.Linear(5, 4), nn.ReLU6(), nn.Linear(4, 2)).eval()
            x = torch.randn(4, 5)
            sim = quiet_sim(
                model,
                x,
                param_bw=8,
                act_bw=16,
                scheme="minmax",
                config={"activation_symmetric": True, "quantize_bias": True},
            )
        sim.compute_encodings([x, x * 2], progress=False)
    tmp = bases["_root"] / name
    tmp.mkdir()
    path = tmp / "base.encodings"
    sim.save_encodings(path)
    bases[name] = {
        "sim": sim,
        "x": x,
        "path": path,
        "data": json.loads(path.read_text()),
        "state": sim_state(sim),
        "out": run_sim(sim, x),
        "tmp": tmp,
        "model": model,
        "model_state": snapshot(model),
    }
    return bases[name]


BAD_SCALES = [
    0.0,
    -0.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    1e39,
    3.5e38,
    1e-11,
    5e-324,
    10**400,
    "0.1",
    None,
    True,
    [0.1],
]
BAD_BITWIDTHS = [0, 1, 17, 32, 33, 64, -8, 8.0, 16.0, "8", None, True, False, 1e9]
BAD_VERSIONS = ["0.6.0", "1.0.0", "2.0.0", "", "0.6.1 ", None, 0.61, 61, ["0.6.1"]]
BAD_SYMMETRY = ["yes", "TRUE", 1, 0, None, [], "1"]
BAD_NUMBERS = [math.nan, math.inf, -math.inf, "1", None, True, [1]]
MUTATIONS = [
    "unmodified",
    "scale_invalid",
    "scale_inconsistent",
    "scale_consistent",
    "offset_offgrid",
    "offset_shift",
    "offset_consistent",
    "min_gt_max",
    "minmax_invalid",
    "bitwidth_invalid",
    "bitwidth_other",
    "bitwidth_consistent",
    "delete_field",
    "delete_dtype",
    "dtype_other",
    "drop_entry",
    "drop_section",
    "unknown_name",
    "channel_append",
    "channel_remove",
    "channel_empty",
    "version",
    "delete_version",
    "symmetry_invalid",
    "symmetry_flip",
    "structure",
    "extra_entry_field",
    "extra_top_level",
    "truncate",
    "garbage",
    "names_map_invalid",
    "names_map_unknown",
    "names_map_identity",
]


def mutate(draw, info: dict[str, Any], kind: str) -> tuple[Any, str]:
    """Apply mutation ``kind`` to a copy of the base file. Returns (JSON object or raw text/bytes, expectation):
    ``error`` (must raise EncodingsFileError), ``same`` (must load and change nothing), ``ok`` (must load),
    ``either`` (a change the rules may accept or refuse)."""
    data = copy.deepcopy(info["data"])
    section = draw(st.sampled_from([s for s in ("activation_encodings", "param_encodings") if data[s]]))
    key = draw(st.sampled_from(sorted(data[section])))
    entries = data[section][key]
    ch = draw(st.integers(0, len(entries) - 1))
    e = entries[ch]
    bw, sym, scale, offset = e["bitwidth"], e["is_symmetric"] == "True", e["scale"], e["offset"]
    steps = 2**bw - 1
    if kind == "unmodified":
        return data, "same"
    if kind == "scale_invalid":
        e["scale"] = draw(st.sampled_from(BAD_SCALES + [-scale]))
        return data, "error"
    if kind == "scale_inconsistent":
        e["scale"] = scale * draw(st.sampled_from([2.0, 0.5, 1.01, 0.99, 1e6, 1e-6]))
        return data, "error"
    if kind == "scale_consistent":
        new = draw(st.floats(1e-9, 1e30))
        e.update(scale=new, min=offset * new, max=(offset + steps) * new)
        return data, "ok"
    if kind == "offset_offgrid":
        if sym:
            choices = [-(2 ** (bw - 1)) + 1, -1, 1, -(2**bw), 2 ** (bw - 1)]
        else:
            choices = [1, 2**bw, -steps - 1, -(2 ** (bw + 1))]
        e["offset"] = draw(st.sampled_from(choices + [offset + 0.5, offset - 0.25] + BAD_NUMBERS))
        return data, "error"
    if kind == "offset_shift":  # another offset on the grid, min/max left as they were: they disagree
        if sym:
            e["offset"] = 0 if offset != 0 else -(2 ** (bw - 1))
        else:
            e["offset"] = draw(st.integers(-steps, 0).filter(lambda o: o != offset))
        return data, "error"
    if kind == "offset_consistent":
        new = (0 if offset != 0 else -(2 ** (bw - 1))) if sym else draw(st.integers(-steps, 0))
        e.update(offset=new, min=new * scale, max=(new + steps) * scale)
        return data, "either" if sym else "ok"  # symmetric: signed and unsigned channels must not mix
    if kind == "min_gt_max":
        if draw(st.booleans()):
            e["min"], e["max"] = e["max"], e["min"]
        else:
            e["min"] = e["max"] + abs(scale) * draw(st.sampled_from([0.5, 1.0, 100.0]))
        return data, "error"
    if kind == "minmax_invalid":
        e[draw(st.sampled_from(["min", "max"]))] = draw(st.sampled_from(BAD_NUMBERS + [1e300, -1e300]))
        return data, "error"
    if kind == "bitwidth_invalid":
        e["bitwidth"] = draw(st.sampled_from(BAD_BITWIDTHS))
        return data, "error"
    if kind == "bitwidth_other":  # valid bitwidth, numbers of the old one: max disagrees
        e["bitwidth"] = draw(st.integers(2, 16).filter(lambda b: b != bw))
        return data, "error"
    if kind == "bitwidth_consistent":  # another bitwidth with offset/min/max of its own grid: a valid entry
        new_bw = draw(st.integers(2, 16))
        if sym:
            new_offset = 0 if offset == 0 else -(2 ** (new_bw - 1))
        else:
            new_offset = max(offset, -(2**new_bw - 1))
        e.update(bitwidth=new_bw, offset=new_offset, min=new_offset * scale, max=(new_offset + 2**new_bw - 1) * scale)
        # one tensor, one bitwidth: a channel of a per-channel encoding cannot differ from the others
        return data, "ok" if len(entries) == 1 or new_bw == bw else "error"
    if kind == "delete_field":
        del e[draw(st.sampled_from(["bitwidth", "is_symmetric", "scale", "offset", "min", "max"]))]
        return data, "error"
    if kind == "delete_dtype":
        del e["dtype"]
        return data, "same"
    if kind == "dtype_other":
        e["dtype"] = draw(st.sampled_from(["float", "int8", "", 1, None]))
        return data, "error"
    if kind == "drop_entry":
        del data[section][key]
        return data, "drop"
    if kind == "drop_section":
        del data[section]
        return data, "drop"
    if kind == "unknown_name":
        name = draw(st.sampled_from(["nonexistent.output_quantizers.0", "99.weight", key + "x", "", "fc.bias"]))
        data[draw(st.sampled_from(["activation_encodings", "param_encodings"]))][name] = copy.deepcopy(entries)
        return data, "error"
    if kind == "channel_append":
        entries.append(copy.deepcopy(e))
        return data, "either" if len(entries) == 2 else "error"
    if kind == "channel_remove":
        if len(entries) == 1:
            return data, "same"  # nothing to remove from a per-tensor entry: leave it
        del entries[ch]
        # one entry left on a per-channel quantizer: refused (never silently per-tensor); more: a wrong count
        return data, "error"
    if kind == "channel_empty":
        data[section][key] = []
        return data, "error"
    if kind == "version":
        data["version"] = draw(st.sampled_from(BAD_VERSIONS))
        return data, "error"
    if kind == "delete_version":
        del data["version"]
        return data, "error"
    if kind == "symmetry_invalid":
        e["is_symmetric"] = draw(st.sampled_from(BAD_SYMMETRY))
        return data, "error"
    if kind == "symmetry_flip":
        e["is_symmetric"] = draw(st.sampled_from(["False", False, "false"] if sym else ["True", True, "true"]))
        return data, "either"
    if kind == "structure":
        where = draw(
            st.sampled_from(
                ["section_list", "section_none", "entries_dict", "entry_number", "top_list", "entries_number"]
            )
        )
        if where == "section_list":
            data[section] = [entries]
        elif where == "section_none":
            data[section] = None
        elif where == "entries_dict":
            data[section][key] = e
        elif where == "entries_number":
            data[section][key] = 1.5
        elif where == "entry_number":
            entries[ch] = 3
        else:
            return [data], "error"
        return data, "error"
    if kind == "extra_entry_field":
        e[draw(st.sampled_from(["foo", "note", "encoding_type"]))] = draw(st.sampled_from([1, "x", None, [1]]))
        return data, "same"
    if kind == "extra_top_level":
        data[draw(st.sampled_from(["excluded_layers", "quantizer_args", "note"]))] = draw(
            st.sampled_from([[], {}, "x", 1])
        )
        return data, "same"
    if kind == "truncate":
        text = json.dumps(data, indent=2)
        return text[: draw(st.integers(0, len(text) - 1))], "error"
    if kind == "garbage":
        return draw(
            st.sampled_from([b"\xff\xfe\x00", b"", b"null", b"[]", b"{}", b"NaN", b'{"version": "0.6.1"}'])
        ), "error"
    if kind == "names_map_invalid":
        data["quantizer_names"] = draw(
            st.sampled_from([5, [], {"activation_encodings": {key: []}}, {"nonsense": {}}, {section: {key: [1]}}])
        )
        return data, "error"
    if kind == "names_map_unknown":
        data["quantizer_names"] = {section: {key: ["no.such.quantizer"]}}
        return data, "error"
    if kind == "names_map_identity":  # map an activation entry to its own quantizer, explicitly
        act = sorted(data["activation_encodings"])
        if act:
            data["quantizer_names"] = {"activation_encodings": {n: [n] for n in act}}
        return data, "same"
    raise AssertionError(kind)


def without_frozen(state: dict[str, tuple]) -> dict[str, tuple]:
    return {n: t[:4] + (False,) + t[5:] for n, t in state.items()}


@settings(PROPS, max_examples=300)
@given(
    which=st.sampled_from(["per_channel_conv", "symmetric_linear"]),
    kind=st.sampled_from(MUTATIONS),
    strict=st.booleans(),
    loader=st.sampled_from(["load_encodings", "load_encodings", "freeze_params"]),
    data=st.data(),
)
def test_mutated_encodings_files_are_refused_or_load_finite(bases, which, kind, strict, loader, data) -> None:
    """One field (or the structure) of a saved file mutated: ``load_encodings`` (strict or not) and
    ``set_and_freeze_param_encodings`` either refuse it with EncodingsFileError and change nothing, or load it
    and the sim stays finite; the unmodified file and harmless changes load back bit-exactly."""
    info = base(bases, which)
    sim: lt.QuantSim = info["sim"]
    assert_same_state(info["state"], sim_state(sim))  # the previous example left the sim as built
    content, expect = mutate(data.draw, info, kind)
    if expect == "drop":
        if loader == "freeze_params":  # coverage is not required; a file without parameters is refused
            expect = "error" if isinstance(content, dict) and "param_encodings" not in content else "same"
        else:
            expect = "error" if strict else "same"
    path = info["tmp"] / "mutated.encodings"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content, indent=2))  # NaN/Infinity tokens allowed: the reader must refuse them

    try:
        if loader == "freeze_params":
            missing = None
            sim.set_and_freeze_param_encodings(path)
        else:
            missing = sim.load_encodings(path, strict=strict)
    except EncodingsFileError as err:
        event(f"{kind}: refused")
        assert expect in ("error", "either"), f"{kind}: a valid file was refused: {err}"
        assert str(err)
        assert_same_state(info["state"], sim_state(sim))
        assert torch.equal(run_sim(sim, info["x"]), info["out"])
    else:
        event(f"{kind}: loaded")
        assert expect != "error", f"{kind}: an invalid file was accepted"
        assert_encodings_valid(sim)
        out = run_sim(sim, info["x"])
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(sim.model(info["x"])).all())
        if missing is not None:  # load_encodings names what the file left alone
            assert (len(missing) > 0) == kind.startswith("drop"), missing
        if loader == "freeze_params":
            assert all(q.frozen for n, q in sim.param_quantizers().items() if n in content.get("param_encodings", {}))
        if expect == "same":
            assert_same_state(without_frozen(info["state"]), without_frozen(sim_state(sim)))
            assert torch.equal(out, info["out"])
        # Put the base encodings back (this also checks the original file still loads exactly).
        sim.load_encodings(info["path"], strict=True)
        assert_same_state(info["state"], sim_state(sim))
        assert torch.equal(run_sim(sim, info["x"]), info["out"])
    assert_model_unchanged(info["model"], info["model_state"])


# ============================================================================ 5. configs
OP_NAMES = ["Conv", "Linear", "ReLU", "ReLU6", "Flatten", "BatchNorm", "Add", "Softmax", "MaxPool"]
BOOL_KEYS = [
    "output_quantized",
    "input_quantized",
    "params_quantized",
    "quantize_bias",
    "param_symmetric",
    "activation_symmetric",
    "unsigned_symmetric",
    "per_channel",
    "model_input_quantized",
]
op_rules = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(st.none(), st.booleans())
        for k in ("input_quantized", "output_quantized", "params_quantized", "per_channel")
    },
)
valid_configs = st.fixed_dictionaries(
    {},
    optional={
        **{k: st.booleans() for k in BOOL_KEYS},
        "name": st.text(max_size=8),
        "op_types": st.dictionaries(st.sampled_from(OP_NAMES), op_rules, max_size=4),
        "supergroups": st.lists(st.lists(st.sampled_from(OP_NAMES), min_size=1, max_size=3), max_size=4),
    },
)


def config_model() -> tuple[nn.Module, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4), nn.ReLU6(), nn.Linear(4, 2)
        ).eval()
        return model, torch.randn(3, 2, 5, 5)


@settings(PROPS, max_examples=40)
@given(cfg=valid_configs, as_file=st.booleans(), param_bw=st.sampled_from([4, 8]), act_bw=st.sampled_from([8, 16]))
def test_valid_config_dicts_build_finite_sims_that_follow_the_rules(cfg, as_file, param_bw, act_bw) -> None:
    model, x = config_model()
    before = snapshot(model)
    with tempfile.TemporaryDirectory() as tmp:
        source: Any = cfg
        if as_file:
            source = Path(tmp) / "config.json"
            source.write_text(json.dumps(cfg))
        sim = quiet_sim(model, x, param_bw=param_bw, act_bw=act_bw, scheme="minmax", config=source)
        sim.compute_encodings([x], progress=False)
    assert_model_unchanged(model, before)
    assert_encodings_valid(sim)
    out = run_sim(sim, x)
    assert bool(torch.isfinite(out).all())
    # Each weight and bias quantizer follows the config's rule for its op type.
    expected = QuantSimConfig.from_dict(copy.deepcopy(cfg))
    for layer, wrapper in sim.layers().items():
        rule = expected.rule(wrapper.op_type)
        for pname, q in wrapper.param_quantizers.items():
            want = rule.params_quantized and (pname == "weight" or expected.quantize_bias)
            assert q.enabled == want, (layer, pname)
            assert q.symmetric == expected.param_symmetric
            if pname == "weight":
                assert q.axis == (PER_CHANNEL_AXIS.get(wrapper.op_type) if rule.per_channel else None)
        for q in list(wrapper.input_quantizers) + list(wrapper.output_quantizers):
            assert q.symmetric == expected.activation_symmetric
    assert all(q.enabled == expected.model_input_quantized for q in sim.model.input_quantizers)
    # The same config from a dict, a file and a QuantSimConfig gives the same quantizers.
    again = quiet_sim(model, x, param_bw=param_bw, act_bw=act_bw, scheme="minmax", config=expected)
    assert {n: (q.enabled, q.axis, q.symmetric) for n, q in again.quantizers().items()} == {
        n: (q.enabled, q.axis, q.symmetric) for n, q in sim.quantizers().items()
    }


handled_invalid_configs = st.one_of(
    # unknown top-level keys
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in QuantSimConfig.__dataclass_fields__),
        st.booleans(),
        min_size=1,
        max_size=3,
    ),
    # op rules with unknown fields or that are not objects
    st.builds(
        lambda op, rule: {"op_types": {op: rule}},
        st.sampled_from(OP_NAMES),
        st.one_of(
            st.dictionaries(st.sampled_from(["foo", "quantized", "bitwidth"]), st.booleans(), min_size=1),
            st.sampled_from([5, "x", [True], None, True]),
        ),
    ),
    # unknown presets, missing or unreadable files
    st.sampled_from(["", "Default", "PER_CHANNEL", "transformerz", "missing.json", 5, None, 3.5, [1], ("default",)]),
)


@settings(PROPS, max_examples=40)
@given(cfg=handled_invalid_configs)
@example(cfg="unreadable.json")
def test_invalid_configs_raise_config_error(cfg) -> None:
    model, x = config_model()
    before = snapshot(model)
    with tempfile.TemporaryDirectory() as tmp:
        if cfg == "unreadable.json":
            cfg = Path(tmp) / "unreadable.json"
            cfg.write_text('{"per_channel": tru')
        with pytest.raises(ConfigError):
            lt.QuantSim(model, x, config=cfg)
    assert_model_unchanged(model, before)


wrongly_typed_configs = st.one_of(
    st.builds(
        lambda k, v: {k: v},
        st.sampled_from(BOOL_KEYS),
        st.sampled_from(["False", "yes", "", None, [], {}, 0.5, [True]]),
    ),
    st.builds(lambda v: {"name": v}, st.sampled_from([5, None, [], {}])),
    st.builds(lambda v: {"op_types": v}, st.sampled_from([[], 5, "Conv", [["Conv", {}]]])),
    st.builds(lambda v: {"supergroups": v}, st.sampled_from([5, "Conv", [[]], [[1]], [None], ["Conv"], [["Conv", 3]]])),
    st.builds(
        lambda op, k, v: {"op_types": {op: {k: v}}},
        st.sampled_from(OP_NAMES),
        st.sampled_from(["input_quantized", "output_quantized", "params_quantized", "per_channel"]),
        st.sampled_from(["no", "False", 0.5, [], {}]),
    ),
)


@settings(PROPS, max_examples=25)
@example(cfg={"param_symmetric": "False"})
@example(cfg={"supergroups": 5})
@given(cfg=wrongly_typed_configs)
def test_wrongly_typed_config_values_raise_config_error(cfg) -> None:
    model, x = config_model()
    before = snapshot(model)
    try:
        with pytest.raises(ConfigError):
            quiet_sim(model, x, config=cfg)
    finally:
        assert_model_unchanged(model, before)


@settings(PROPS, max_examples=10)
@example(text="5")
@given(text=st.sampled_from(["5", "null", "[[1]]", "true", "1.5", '[{"a": 1}]']))
def test_non_object_json_config_raises_config_error(text) -> None:
    model, x = config_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.json"
        path.write_text(text)
        with pytest.raises(ConfigError):
            lt.QuantSim(model, x, config=str(path))


@settings(PROPS, max_examples=60)
@given(
    st.lists(st.sampled_from([0.0, -1.5, 3e38, float("nan"), float("inf"), float("-inf")]), max_size=6),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_all_finite_agrees_with_isfinite(values: list[float], dtype: torch.dtype) -> None:
    from leantorch.batches import all_finite

    x = torch.tensor(values, dtype=torch.float64).to(dtype)  # 3e38 overflows to Inf in float16
    assert all_finite(x) == bool(torch.isfinite(x).all())
    assert all_finite(x, torch.ones(2)) == all_finite(x)
    assert all_finite(torch.tensor([1, 2]))  # integers cannot hold NaN/Inf


def test_numpy_bools_are_flags() -> None:
    from leantorch.options import check_flag

    assert check_flag("progress", np.bool_(False)) is False
    assert check_flag("progress", np.array([1, 2]).all()) is True
    with pytest.raises(lt.InvalidOptionError, match="progress=1: pass True or False"):
        check_flag("progress", 1)


def test_values_beyond_float32_are_named_only_for_float64() -> None:
    for dtype, match in ((torch.float64, "beyond float32's largest value"), (torch.float32, "NaN or Inf")):
        q = Quantizer(8, scheme="minmax", name="t")
        with pytest.raises(CalibrationDataError, match=match):
            q.encoding_from_tensor(torch.tensor([1.0, 1e39], dtype=torch.float64).to(dtype))
