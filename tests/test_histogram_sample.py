"""Strided samples of large activations in per-tensor histograms: which values, exact counts of them, the same
counts whatever the batching, exact extremes, and weights always counted in full."""

from __future__ import annotations

import math

import pytest
import torch

from leantorch.quant.estimator_base import every_value_histograms, storage_order
from leantorch.quant.estimators import HistogramEstimator, MinMaxEstimator, make_estimator
from leantorch.quant.histogram import grid_for, tensor_counts
from leantorch.quant.histogram_sample import sample_stride, strided_sample
from leantorch.quant.quantizer import Quantizer
from leantorch.quant.weight_encodings import tensor_encodings


def _reference_counts(values: torch.Tensor, exponent: int, start: int, slots: int) -> torch.Tensor:
    bins = torch.trunc(values.double().reshape(-1) / 2.0**exponent).long() - start
    return torch.bincount(bins, minlength=slots).double()


@pytest.mark.parametrize(("per_sample", "period", "cap"), [(401_408, 112, 16_384), (75_264, 24, 1000), (99, 7, 10)])
def test_stride_is_the_least_coprime_one_reaching_the_cap(per_sample: int, period: int, cap: int) -> None:
    stride = sample_stride(per_sample, period, cap)
    assert math.ceil(per_sample / stride) <= cap and math.gcd(stride, period) == 1
    assert all(math.gcd(k, period) != 1 for k in range(math.ceil(per_sample / cap), stride))
    assert sample_stride(cap, period, cap) == 1


def test_channels_last_sample_is_a_view_of_whole_pixels_reaching_every_channel_and_column() -> None:
    x = torch.randn(4, 24, 56, 56).contiguous(memory_format=torch.channels_last)
    view = strided_sample(storage_order(x), 2000)
    assert view.data_ptr() == x.data_ptr()  # no copy
    samples, pixels, channels = view.shape
    assert (samples, channels) == (4, 24) and pixels * channels <= 2000 + channels
    # the pixels kept: every k-th of each sample, k coprime with the width, so every column appears
    stride = sample_stride(56 * 56 * 24, 56, 2000)
    kept = torch.arange(0, 56 * 56, stride)
    assert torch.equal(view[2], storage_order(x)[2].reshape(-1, 24)[kept])
    assert set((kept % 56).tolist()) == set(range(56))


def test_small_tensors_and_vectors_are_counted_in_full() -> None:
    x = torch.randn(8, 100)
    assert strided_sample(x, 1000) is x and strided_sample(x, None) is x
    vector = torch.randn(5000)
    assert strided_sample(vector, 10) is vector
    rows = strided_sample(torch.arange(2 * 30.0).reshape(2, 30), 10)  # one row per sample: every 3rd value
    assert rows.shape == (2, 10) and rows[1, :2].tolist() == [30.0, 33.0]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_counts_of_the_sample_equal_a_float64_reference(memory_format: torch.memory_format) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 40, 37, 37, generator=gen) * 3 + 1).relu().contiguous(memory_format=memory_format)
    view = strided_sample(storage_order(x), 4096)
    assert view.numel() < x.numel() // 4
    exponent, start = grid_for(x.min().double().reshape(1), x.max().double().reshape(1), 512)
    counts = tensor_counts(view, exponent, start, 512)
    assert torch.equal(counts[0], _reference_counts(view.contiguous(), int(exponent), int(start), 512))


@pytest.mark.parametrize("scheme", ["tf_enhanced", "mse", "percentile"])
def test_sampled_counts_do_not_depend_on_how_samples_are_batched(scheme: str) -> None:
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(12, 16, 30, 30, generator=gen) * torch.linspace(0.1, 5, 12)[:, None, None, None]
    data = data.contiguous(memory_format=torch.channels_last)
    one_pass, streamed = make_estimator(scheme), make_estimator(scheme)
    assert isinstance(one_pass, HistogramEstimator) and isinstance(streamed, HistogramEstimator)
    one_pass.values_per_sample = streamed.values_per_sample = 2000
    one_pass.observe(data)
    assert float(one_pass.hist.sum()) < data.numel() / 4  # a sample was counted
    for part in (data[7:], data[2:7], data[:2]):
        streamed.observe(part)
    assert torch.equal(streamed.hist, one_pass.hist)
    for a, b in zip(streamed.compute_range(8, False), one_pass.compute_range(8, False)):
        assert torch.equal(a, b)


def _quantization_mse(x: torch.Tensor, lo: float, hi: float, bitwidth: int = 8) -> float:
    """Float64 MSE of asymmetric quantization of all of ``x`` to ``[lo, hi]`` (the reference)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2**bitwidth - 1)
    offset = round(lo / scale)
    q = torch.clamp(torch.round(x.double() / scale) - offset, 0, 2**bitwidth - 1)
    return float((((q + offset) * scale - x.double()) ** 2).mean())


def test_extremes_come_from_every_value_and_the_sampled_range_is_nearly_as_good_on_all_of_them() -> None:
    torch.manual_seed(2)
    # Heavy tails (Student-t, 3 degrees of freedom): the optimum depends on a few dozen extreme values, of which
    # the sample sees about a quarter; the range moves, the error it gives on all the data hardly does.
    x = torch.distributions.StudentT(3.0).sample((16, 32, 48, 48))
    sampled, full = make_estimator("tf_enhanced"), make_estimator("tf_enhanced")
    full.values_per_sample = None
    sampled.observe(x)
    full.observe(x)
    assert float(sampled.hist.sum()) < x.numel() / 4 and float(full.hist.sum()) == x.numel()
    assert float(sampled.extremes()[1]) == float(x.max())  # the range the histogram spans is exact
    found = {name: [float(v) for v in est.compute_range(8, False)] for name, est in [("s", sampled), ("f", full)]}
    best = _quantization_mse(x, *found["f"])
    assert _quantization_mse(x, *found["s"]) <= 1.03 * best
    minmax = MinMaxEstimator()
    minmax.observe(x)
    assert _quantization_mse(x, *(float(v) for v in minmax.compute_range(8, False))) > 2 * best


def test_weights_are_counted_in_full() -> None:
    # Rows longer than the sample size, with every 3rd value (the stride's) small: a sample would clip the rest.
    weight = torch.randn(4, 40_000, generator=torch.Generator().manual_seed(3))
    weight[:, torch.arange(40_000) % 3 != 0] *= 10
    ranges = {}
    for cap in (None, HistogramEstimator.values_per_sample):
        est = make_estimator("tf_enhanced")
        est.values_per_sample = cap
        est.observe(weight)
        ranges[cap] = [float(v) for v in est.compute_range(8, False)]
    assert ranges[None][1] > 2 * ranges[HistogramEstimator.values_per_sample][1]  # the sample would matter
    [(_, enc)] = tensor_encodings([(Quantizer(bitwidth=8, scheme="tf_enhanced"), weight)])
    assert [float(enc.min), float(enc.max)] == pytest.approx(ranges[None], rel=1e-3)  # grid-aligned
    single = Quantizer(bitwidth=8, scheme="tf_enhanced").encoding_from_tensor(weight)
    assert torch.equal(single.scale, enc.scale)


def test_every_value_histograms_counts_all_within_the_block_and_restores_the_sample_size() -> None:
    x = torch.rand(4, 8, 80, 80)
    default = HistogramEstimator.values_per_sample
    with every_value_histograms():
        est = make_estimator("mse")
        est.observe(x)
        assert float(est.hist.sum()) == x.numel()
    with every_value_histograms(enabled=False):
        assert HistogramEstimator.values_per_sample == default
    assert HistogramEstimator.values_per_sample == default
    est = make_estimator("mse")
    est.observe(x)
    assert float(est.hist.sum()) < x.numel() / 2
