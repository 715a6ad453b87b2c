"""Range estimators: streaming equals one-shot, bounded memory, and each objective does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leantorch.errors import CalibrationDataError
from leantorch.quant.estimators import (
    HistogramEstimator,
    MinMaxEstimator,
    MseEstimator,
    PercentileEstimator,
    TfEnhancedEstimator,
    make_estimator,
)
from leantorch.quant.histogram import grid_counts, grid_for, regrid
from leantorch.quant.quantizer import Quantizer


def mse_of_range(x: np.ndarray, lo: float, hi: float, bw: int) -> float:
    """Exact float64 MSE of asymmetric quantization of x to [lo, hi] (reference, numpy)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2**bw - 1)
    offset = np.rint(lo / scale)
    q = np.clip(np.rint(x / scale) - offset, 0, 2**bw - 1)
    return float(np.mean(((q + offset) * scale - x) ** 2))


def test_minmax_streaming_equals_global_per_channel() -> None:
    data = [torch.randn(4, 6, 5) * (i + 1) for i in range(5)]
    est = MinMaxEstimator(axis=1)
    for d in data:
        est.observe(d)
    lo, hi = est.compute_range(8, False)
    full = torch.cat(data).movedim(1, 0).reshape(6, -1)
    assert torch.equal(lo, full.min(1).values.double()) and torch.equal(hi, full.max(1).values.double())


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
def test_histogram_memory_is_bounded_and_streaming_tracks_one_shot(scheme: str) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(20_000, generator=gen) * (1 + i) for i in range(8)]  # range grows every batch
    streamed = make_estimator(scheme)
    for b in batches:
        streamed.observe(b)
    assert isinstance(streamed, HistogramEstimator) and streamed.hist.shape == (1, streamed.num_bins)
    assert float(streamed.hist.sum()) == pytest.approx(160_000)
    one_shot = make_estimator(scheme)
    one_shot.observe(torch.cat(batches))
    for a, b in zip(streamed.compute_range(8, False), one_shot.compute_range(8, False)):
        assert float(a) == pytest.approx(float(b), rel=0.1, abs=0.1)


def test_tf_enhanced_clips_outliers_and_beats_minmax_on_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200_000, generator=gen), torch.tensor([40.0, -25.0])])
    est = TfEnhancedEstimator()
    est.observe(x)
    lo, hi = est.compute_range(4, symmetric=False)
    assert -25.0 < float(lo) and float(hi) < 40.0
    xs = x.double().numpy()
    assert mse_of_range(xs, float(lo), float(hi), 4) < 0.5 * mse_of_range(xs, -25.0, 40.0, 4)


def test_mse_estimator_is_close_to_brute_force_optimum() -> None:
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    est = MseEstimator()
    est.observe(x)
    lo, hi = est.compute_range(4, symmetric=False)
    xs = x.double().numpy()
    best = min(mse_of_range(xs, a * xs.min(), a * xs.max(), 4) for a in np.linspace(0.02, 1, 200))
    assert mse_of_range(xs, float(lo), float(hi), 4) <= 1.1 * best


def test_percentile_matches_numpy() -> None:
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(2))
    est = PercentileEstimator(percentile=99.9)
    est.observe(x[:200_000])
    est.observe(x[200_000:])
    lo, hi = est.compute_range(8, False)
    width = 2.0 ** float(est.exponent[0])  # the grid's bin width
    assert float(lo) == pytest.approx(np.percentile(x.numpy(), 0.1), abs=2 * width)
    assert float(hi) == pytest.approx(np.percentile(x.numpy(), 99.9), abs=2 * width)


def test_symmetric_histogram_search_is_symmetric() -> None:
    est = TfEnhancedEstimator(axis=0)
    est.observe(torch.randn(3, 10_000) * torch.tensor([[1.0], [2.0], [5.0]]))
    lo, hi = est.compute_range(8, symmetric=True)
    assert torch.allclose(lo, -hi) and hi.shape == (3,)
    assert bool((hi[1:] > hi[:-1]).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantizer_names_tensor_with_nan_or_inf(bad: float) -> None:
    q = Quantizer(name="conv1.output_quantizers.0")
    q.start_calibration()
    x = torch.randn(100)
    x[17] = bad
    with pytest.raises(CalibrationDataError, match="conv1.output_quantizers.0"):
        q(x)


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
@pytest.mark.parametrize("value", [1e5, -1e30])
def test_histogram_estimators_take_a_large_constant_channel(scheme: str, value: float) -> None:
    # A constant channel once got a zero-width range (an absolute 1e-12 widening lost in float64 above ~1e4).
    est = make_estimator(scheme, axis=0)
    x = torch.randn(2, 50)
    x[0] = value
    est.observe(x)
    lo, hi = est.compute_range(8, symmetric=False)
    assert bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())
    assert float(max(abs(lo[0]), abs(hi[0]))) == pytest.approx(abs(value), rel=1e-6)


def test_quantizer_names_float64_values_beyond_float32() -> None:
    q = Quantizer(name="head.output_quantizers.0")
    q.start_calibration()
    with pytest.raises(CalibrationDataError, match=r"head.output_quantizers.0 holds values up to 1e\+300.*float32"):
        q(torch.tensor([1.0, -1e300], dtype=torch.float64))


def _reference_counts(x: torch.Tensor, exponent: int, start: int, slots: int) -> torch.Tensor:
    """Bin numbers trunc(x / 2**e) in float64 (exact for float32 data), counted slot by slot."""
    bins = torch.trunc(x.double() / 2.0**exponent).long() - start
    assert int(bins.min()) >= 0 and int(bins.max()) < slots
    return torch.bincount(bins, minlength=slots).double()


@pytest.mark.parametrize("size", [1_000, 3_000_000])  # the large one takes the threaded counting path
@pytest.mark.parametrize("shift", [0.0, 2.5, -40.0])  # windows starting at bin 0, above it, below it
def test_per_tensor_grid_counts_equal_a_float64_reference(size: int, shift: float) -> None:
    gen = torch.Generator().manual_seed(size)
    x = torch.cat([torch.randn(size, generator=gen), torch.randint(-3, 4, (size // 10,), generator=gen).float()])
    x = x + shift
    lo, hi = x.min().double().reshape(1), x.max().double().reshape(1)
    exponent, start = grid_for(lo, hi, 512)
    counts = grid_counts(x[None, :], exponent, start, 512)
    assert torch.equal(counts[0], _reference_counts(x, int(exponent), int(start), 512))
    assert float(counts.sum()) == x.numel()


def test_per_channel_grid_counts_equal_a_float64_reference() -> None:
    x = torch.randn(5, 4000, generator=torch.Generator().manual_seed(1)) * torch.tensor(
        [[1e-3], [1], [7], [300], [1e6]]
    )
    x[2] = x[2].relu()
    exponent, start = grid_for(x.min(1).values.double(), x.max(1).values.double(), 64)
    counts = grid_counts(x, exponent, start, 64)
    for c in range(5):
        assert torch.equal(counts[c], _reference_counts(x[c], int(exponent[c]), int(start[c]), 64)), c


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
def test_any_batch_order_gives_the_one_pass_histogram_bit_for_bit(scheme: str) -> None:
    # The grid is a function of the range and re-gridding moves whole bins: streaming is exact, so the
    # histogram (and the encoding) cannot depend on how the data was split into batches.
    gen = torch.Generator().manual_seed(3)
    data = torch.cat([torch.randn(30_000, generator=gen) * s + m for s, m in [(1, 0), (0.01, 3), (20, -5), (1e-4, 0)]])
    one_pass = make_estimator(scheme)
    one_pass.observe(data)
    for seed in range(3):
        order = data[torch.randperm(data.numel(), generator=torch.Generator().manual_seed(seed))]
        streamed = make_estimator(scheme)
        for chunk in order.split([7, 1000, 30_000, 2, 50_000, 38_991]):
            streamed.observe(chunk)
        assert torch.equal(streamed.hist, one_pass.hist) and torch.equal(streamed.exponent, one_pass.exponent)
        for bw, symmetric in [(8, False), (4, True)]:
            for a, b in zip(streamed.compute_range(bw, symmetric), one_pass.compute_range(bw, symmetric)):
                assert torch.equal(a, b)


def test_regrid_equals_binning_directly_on_the_coarser_grid() -> None:
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(4)) * torch.tensor([[1.0], [3.0], [0.2]])
    narrow = x[:, :2500]
    e0, s0 = grid_for(narrow.min(1).values.double(), narrow.max(1).values.double(), 128)
    e1, s1 = grid_for(x.min(1).values.double(), x.max(1).values.double(), 128)
    moved = regrid(grid_counts(narrow, e0, s0, 128), e0, s0, e1, s1)
    assert bool((e1 >= e0).all()) and torch.equal(moved, grid_counts(narrow, e1, s1, 128))


def _old_search(est: HistogramEstimator, bw: int, symmetric: bool) -> tuple[float, float]:
    """The range search as it was: every candidate's noise summed bin by bin (expected_noise), argmin."""
    from leantorch.quant.estimators import expected_noise

    lo, hi = est.lo.clamp(max=0.0), est.hi.clamp(min=0.0)
    unsigned = symmetric and bool((est.lo >= 0).all())
    cand_lo, cand_hi = est.candidates(lo, hi, bw, symmetric, unsigned)
    delta = cand_hi / (2 ** (bw - 1) - 1) if symmetric and not unsigned else (cand_hi - cand_lo) / (2**bw - 1)
    left, right = est.bin_edges()  # every bin at its true midpoint (bin 0's is 0), summed bin by bin
    best = expected_noise(est.hist, (left + right) / 2, cand_lo, cand_hi, delta, est.gamma).argmin(1, keepdim=True)
    return cand_lo.gather(1, best)[:, 0], cand_hi.gather(1, best)[:, 0]


@pytest.mark.parametrize("scheme", ["tf_enhanced", "mse"])
@pytest.mark.parametrize("seed", range(6))
def test_prefix_sum_search_picks_what_the_bin_by_bin_sum_picks(scheme: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    est = make_estimator(scheme, axis=0)
    for i in range(3):  # growing ranges: re-binned histograms
        x = torch.randn(6, 3000, generator=gen) * (1 + i)
        x[::2] = x[::2].relu() + 0.1 * seed  # some all-positive channels (unsigned, clamped windows)
        x[1, :5] = 30.0  # an outlier
        est.observe(x)
    for bw, symmetric in [(8, False), (8, True), (4, False), (3, True), (16, False)]:
        lo, hi = est.compute_range(bw, symmetric)
        ref_lo, ref_hi = _old_search(est, bw, symmetric)
        assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (bw, symmetric)


@pytest.mark.parametrize("scheme", ["tf_enhanced", "mse"])
@pytest.mark.parametrize("seed", range(4))
def test_search_over_few_values_picks_what_the_bin_by_bin_sum_picks(scheme: str, seed: int) -> None:
    # Channels with few values (a depthwise conv's 9 weights) are searched over the values' bin centres, not the
    # histogram's slots: same objective, so the same pick as the bin-by-bin reference on the counts.
    gen = torch.Generator().manual_seed(seed)
    est = make_estimator(scheme, axis=0)
    for i in range(3):  # growing ranges, values kept across batches
        x = torch.randn(7, 9, generator=gen) * (1 + i)
        x[::3] = x[::3].relu()  # all-non-negative channels: unsigned candidates
        x[1, 0] = 12.0  # an outlier
        x[2, :4] = 0.0  # values in bin 0
        est.observe(x)
    assert est.few is not None and est.few.shape == (7, 27)
    for bw, symmetric in [(8, False), (8, True), (4, False), (3, True)]:
        lo, hi = est.compute_range(bw, symmetric)
        ref_lo, ref_hi = _old_search(est, bw, symmetric)  # est.hist: counts made from the kept values
        assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (bw, symmetric)


def test_kept_values_give_the_histogram_and_stop_when_they_are_many() -> None:
    gen = torch.Generator().manual_seed(3)
    parts = [torch.randn(4, n, generator=gen) * (1 + i) for i, n in enumerate([100, 100, 100])]
    kept, streamed = TfEnhancedEstimator(axis=0), TfEnhancedEstimator(axis=0, num_bins=128)
    for part in parts[:2]:
        kept.observe(part)
    assert kept.few is not None  # 200 values per channel <= 512 // 2
    one_pass = TfEnhancedEstimator(axis=0)
    one_pass.observe(torch.cat(parts[:2], 1).repeat(1, 2))  # 400 values: counted, not kept
    assert one_pass.few is None
    assert torch.equal(kept.hist * 2, one_pass.hist)
    kept.observe(parts[2])  # 300 values: the counts are made, the values dropped
    for part in parts:
        streamed.observe(part)
    assert kept.few is None and streamed.few is None  # 128 // 2 < 100 + 100
    reference = TfEnhancedEstimator(axis=0)
    reference.observe(torch.cat(parts, 1))
    assert torch.equal(kept.hist, reference.hist)
    for a, b in zip(kept.compute_range(8, False), reference.compute_range(8, False)):
        assert torch.equal(a, b)


def test_merging_counts_forgets_the_kept_values() -> None:
    est = TfEnhancedEstimator(axis=0)
    est.observe(torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.5, 3.0]]))
    counts = est.counts()
    assert est.few is None and counts is not None and counts.sum().item() == 6
    counts.mul_(2)  # what a merge does: the search must use the changed counts
    assert est.hist is counts


def test_a_registered_estimator_is_a_scheme_everywhere() -> None:
    # One class in any module is enough: QuantSim, make_estimator and the CLI's --scheme choices accept it.
    from leantorch.cli_args import build_parser
    from leantorch.errors import ConfigError
    from leantorch.quant.schemes import QuantScheme, register_estimator, unregister_estimator

    @register_estimator("absmax_test")
    class AbsMax(MinMaxEstimator):
        """Symmetric range from the largest magnitude, whatever the quantizer's symmetry."""

        def compute_range(self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True):
            lo, hi = super().compute_range(bitwidth, symmetric, unsigned_symmetric)
            top = torch.maximum(lo.abs(), hi.abs())
            return -top, top

    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_estimator("absmax_test")(AbsMax)
        import leantorch as lt

        sim = lt.QuantSim(torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.randn(1, 4), scheme="AbsMax_Test")
        sim.compute_encodings([torch.rand(16, 4)], progress=False)
        active = [q for q in sim.activation_quantizers().values() if q.is_active]
        assert active and all(q.scheme == QuantScheme.parse("absmax_test") for q in active)
        for q in active:  # the inputs are non-negative: only AbsMax makes their ranges symmetric
            assert q.encoding is not None
            assert float(q.encoding.min) == pytest.approx(-float(q.encoding.max), rel=0.02)
        args = build_parser().parse_args(["quantize", "--model", "m.pt", "--data", "d.pt", "--scheme", "absmax_test"])
        assert args.scheme == "absmax_test"
    finally:
        unregister_estimator("absmax_test")
    with pytest.raises(ConfigError, match="choose one of: minmax, tf_enhanced"):
        make_estimator("absmax_test")


def test_value_search_noise_equals_the_bin_by_bin_sum() -> None:
    from leantorch.quant.range_search import expected_noise, search_values

    gen = torch.Generator().manual_seed(5)
    k = torch.randint(-40, 41, (6, 25), generator=gen).double()
    positions = (2 * k + k.sign()).sort(1).values  # bin centres in half-bin units, bin 0 at 0
    unit = 2.0 ** torch.randint(-8, 2, (6,), generator=gen).double()
    lo = -torch.rand(6, 30, generator=gen, dtype=torch.float64) * 90 * unit[:, None]
    hi = torch.rand(6, 30, generator=gen, dtype=torch.float64) * 90 * unit[:, None]
    delta = (hi - lo) / 255
    got = search_values(positions, unit, lo, hi, delta, 3.0)
    ref = expected_noise(torch.ones_like(positions), positions * unit[:, None], lo, hi, delta, 3.0)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0.0)
