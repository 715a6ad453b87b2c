"""Range estimators: stream over calibration batches with bounded memory, then propose ``(min, max)``.

* ``minmax``     — running minimum and maximum (AIMET "tf").
* ``tf_enhanced`` — a 512-slot histogram; a 2-D search over (step size, window position) candidates for the
  range that minimises the expected quantization noise (AIMET's "tf_enhanced"/SQNR analyser)::

      noise(a, b) = Σ_bins  p_i · [ Δ²/12                      if a ≤ c_i ≤ b   (rounding noise)
                                    γ · (c_i - clip(c_i))²       otherwise      (clipping noise) ]

  with ``Δ = (b - a) / (2**bw - 1)``, bin centres ``c_i`` and counts ``p_i``. ``γ = 3`` weights clipping
  noise above rounding noise: clipped values are the large-magnitude ones that matter most downstream,
  so the search only clips where it buys a clearly finer grid.
* ``percentile`` — the ``p``-th and ``(100-p)``-th percentiles read off the same histogram.
* ``mse``        — the same objective with ``γ = 1`` (plain mean squared error), searched along one
  dimension: the observed range scaled by ``α ∈ (0, 1]`` towards zero (the "MSE clipping" of Nagel et
  al.'s white paper).

Memory per estimator is O(channels × bins) whatever the number of batches. The histogram lives on the
nested power-of-two grid of :mod:`.histogram`, chosen from the range alone: a batch that widens the range
merges whole bins (exact), so any order of batches ends with the histogram of all data on the grid of the
final range. Between a quarter and all of the 512 slots (2048 for percentile) fall inside the range.

Speed: the per-tensor hot path is one multiplication by ``2**-e``, a truncating int16 cast and a bincount, in
reused scratch buffers with tensor-valued bounds (no host syncs on a GPU). The range search evaluates every
candidate in O(1) from prefix sums of the histogram (:mod:`.range_search`) instead of summing every bin per
candidate; both pick the same candidate.

Distributed calibration (:mod:`leantorch.distributed`) merges estimators through :meth:`RangeEstimator.extremes`,
:meth:`RangeEstimator.adopt_range` and :meth:`RangeEstimator.counts`: a common range first, then summed counts;
the result equals one process on all the data, bit for bit.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .estimator_base import (
    HistogramEstimator,
    MinMaxEstimator,
    RangeEstimator,
    channel_extremes,
    channels_first,
    release_scratch,
)
from .range_search import expected_noise, search_noise, search_values
from .schemes import QuantScheme, estimator_factory, estimator_names, register_estimator

__all__ = [
    "QuantScheme",
    "RangeEstimator",
    "MinMaxEstimator",
    "HistogramEstimator",
    "TfEnhancedEstimator",
    "MseEstimator",
    "PercentileEstimator",
    "make_estimator",
    "compute_ranges",
    "search_ranges",
    "channels_first",
    "channel_extremes",
    "expected_noise",
    "search_noise",
    "release_scratch",
    "register_estimator",
    "estimator_names",
]


class _SearchEstimator(HistogramEstimator):
    """Picks the candidate range with the least :func:`expected_noise` (computed by :func:`search_noise`)."""

    gamma: float = 1.0

    @abstractmethod
    def candidates(
        self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool, unsigned: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate ``(min, max)`` pairs, each ``[C, K]``, for observed ranges ``lo, hi`` ``[C]``."""

    def settings(self) -> tuple[Any, ...]:
        """What the candidates depend on besides the range (estimators with equal settings search together)."""
        return (self.num_bins, self.gamma)

    def is_unsigned(self, symmetric: bool, unsigned_symmetric: bool) -> bool:
        """True when a symmetric range may start at 0: allowed, and no channel saw a negative value."""
        assert self.lo is not None
        return symmetric and unsigned_symmetric and bool((self.lo >= 0).all())

    def compute_range(
        self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return search_ranges([self], bitwidth, symmetric, self.is_unsigned(symmetric, unsigned_symmetric))[0]


def search_ranges(
    estimators: Sequence[_SearchEstimator], bitwidth: int, symmetric: bool, unsigned: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:meth:`~RangeEstimator.compute_range` of estimators of one kind and settings, as one batched search.

    Why batched: a search costs a few dozen small tensor ops whatever its size, so one search over the
    channels of every activation quantizer of a model takes little more time than one over a single tensor.
    Each channel's result is the one its own search would give.
    """
    first = estimators[0]
    for est in estimators:
        assert est.has_data and est.lo is not None and est.hi is not None
        assert type(est) is type(first) and est.settings() == first.settings(), "one kind and settings per batch"
    lo = torch.cat([est.lo for est in estimators]).clamp(max=0.0)  # type: ignore[misc]
    hi = torch.cat([est.hi for est in estimators]).clamp(min=0.0)  # type: ignore[misc]
    cand_lo, cand_hi = first.candidates(lo, hi, bitwidth, symmetric, unsigned)
    if symmetric and not unsigned:
        delta = cand_hi / (2 ** (bitwidth - 1) - 1)
    else:
        delta = (cand_hi - cand_lo) / (2**bitwidth - 1)
    noise = _candidate_noise(estimators, cand_lo, cand_hi, delta, first.gamma)
    best = noise.argmin(dim=1, keepdim=True)
    best_lo, best_hi = cand_lo.gather(1, best)[:, 0], cand_hi.gather(1, best)[:, 0]  # first of equal ones
    sizes = [est.lo.shape[0] for est in estimators]  # type: ignore[union-attr]
    lows = best_lo.split(sizes)  # type: ignore[no-untyped-call]
    highs = best_hi.split(sizes)  # type: ignore[no-untyped-call]
    return [(est._squeeze(a), est._squeeze(b)) for est, a, b in zip(estimators, lows, highs)]


def _candidate_noise(
    estimators: Sequence[_SearchEstimator], lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Every channel's noise per candidate ``[C, K]`` (channels of ``estimators`` in order): from the histogram
    slots (:func:`search_noise`), or from the values themselves where an estimator kept them (few values per
    channel, :func:`search_values`; estimators with equally many values per channel are searched together)."""
    ends = torch.tensor([0] + [est.lo.shape[0] for est in estimators]).cumsum(0).tolist()  # type: ignore[union-attr]
    rows = [torch.arange(a, b, device=lo.device) for a, b in zip(ends, ends[1:])]
    noise = lo.new_empty(lo.shape)
    by_count: dict[int, list[int]] = {}
    dense: list[int] = []
    for i, est in enumerate(estimators):
        few = est.few
        (dense if few is None else by_count.setdefault(few.shape[1], [])).append(i)
    if dense:
        at = torch.cat([rows[i] for i in dense])
        views = [estimators[i].uniform_view() for i in dense]
        hist, centres, zero_mass = (torch.cat([v[j] for v in views]) for j in range(3))
        part = search_noise(hist, centres, lo[at], hi[at], delta[at], gamma)
        # Bin 0's mass sits at 0, off the equally spaced grid: its noise is added bin by bin (one bin).
        zeros = torch.zeros_like(zero_mass)[:, None]
        noise[at] = part + expected_noise(zero_mass[:, None], zeros, lo[at], hi[at], delta[at], gamma)
    for members in by_count.values():
        at = torch.cat([rows[i] for i in members])
        found = [estimators[i].value_positions() for i in members]
        positions, unit = (torch.cat([f[j] for f in found if f is not None]) for j in range(2))
        noise[at] = search_values(positions, unit, lo[at], hi[at], delta[at], gamma)
    return noise


def compute_ranges(jobs: Sequence[tuple[RangeEstimator, int, bool, bool]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[est.compute_range(bitwidth, symmetric, unsigned_symmetric) for est, ... in jobs]``, with the range
    searches of estimators that share kind, settings, grid, signedness and device run as one batch
    (:func:`search_ranges`). Every estimator must have data.

    Example:
        >>> ests = [TfEnhancedEstimator() for _ in range(3)]
        >>> for i, est in enumerate(ests):
        ...     est.observe(torch.randn(10_000) * (i + 1))
        >>> together = compute_ranges([(est, 8, False, True) for est in ests])
        >>> all(torch.equal(a, b) for est, pair in zip(ests, together)
        ...     for a, b in zip(est.compute_range(8, False), pair))
        True
    """
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (est, bitwidth, symmetric, unsigned_symmetric) in enumerate(jobs):
        if isinstance(est, _SearchEstimator):
            unsigned = est.is_unsigned(symmetric, unsigned_symmetric)
            assert est.lo is not None
            key = (type(est), est.settings(), bitwidth, symmetric, unsigned, est.lo.device)
            groups.setdefault(key, []).append(i)
        else:
            results[i] = est.compute_range(bitwidth, symmetric, unsigned_symmetric)
    for (_, _, bitwidth, symmetric, unsigned, _), members in groups.items():
        found = search_ranges([jobs[i][0] for i in members], bitwidth, symmetric, unsigned)  # type: ignore[misc]
        for i, pair in zip(members, found):
            results[i] = pair
    return [r for r in results if r is not None]


@register_estimator("tf_enhanced")
class TfEnhancedEstimator(_SearchEstimator):
    """Histogram search over step sizes and window positions; clipping noise weighted by γ = 3.

    Example:
        >>> est = TfEnhancedEstimator()
        >>> est.observe(torch.cat([torch.randn(100_000), torch.tensor([60.0])]))  # one outlier
        >>> lo, hi = est.compute_range(8, symmetric=False)
        >>> float(hi) < 60.0   # the outlier is clipped
        True
    """

    gamma = 3.0

    def __init__(
        self,
        axis: int | None = None,
        num_bins: int = 512,
        delta_candidates: int = 17,
        offset_candidates: int = 21,
        symmetric_candidates: int = 101,
    ) -> None:
        super().__init__(axis, num_bins)
        self.delta_candidates = delta_candidates
        self.offset_candidates = offset_candidates
        self.symmetric_candidates = symmetric_candidates

    def settings(self) -> tuple[Any, ...]:
        return (*super().settings(), self.delta_candidates, self.offset_candidates, self.symmetric_candidates)

    def candidates(
        self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool, unsigned: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if symmetric:
            frac = torch.linspace(
                1.0 / self.symmetric_candidates, 1.0, self.symmetric_candidates, dtype=torch.float64, device=lo.device
            )
            top = torch.maximum(-lo, hi)[:, None] * frac[None, :]
            return (torch.zeros_like(top) if unsigned else -top), top
        # Window widths from the full range down to 1/Kd of it, slid across the observed range.
        width_frac = torch.linspace(
            1.0 / self.delta_candidates, 1.0, self.delta_candidates, dtype=torch.float64, device=lo.device
        )
        pos = torch.linspace(0.0, 1.0, self.offset_candidates, dtype=torch.float64, device=lo.device)
        span = (hi - lo)[:, None, None]
        width = span * width_frac[None, :, None]
        start = lo[:, None, None] + (span - width) * pos[None, None, :]
        start = torch.minimum(torch.maximum(start, -width), torch.zeros_like(start))  # window holds 0
        c = lo.shape[0]
        return start.reshape(c, -1), (start + width).reshape(c, -1)


@register_estimator("mse")
class MseEstimator(_SearchEstimator):
    """Observed range scaled by α ∈ (0, 1] towards zero; α minimising the plain MSE (γ = 1).

    Example:
        >>> est = MseEstimator()
        >>> est.observe(torch.randn(100_000))
        >>> lo, hi = est.compute_range(4, symmetric=True)
        >>> 1.5 < float(hi) < 4.0   # well inside the observed ~±4.4 at 4 bits
        True
    """

    gamma = 1.0

    def __init__(self, axis: int | None = None, num_bins: int = 512, num_candidates: int = 100) -> None:
        super().__init__(axis, num_bins)
        self.num_candidates = num_candidates

    def settings(self) -> tuple[Any, ...]:
        return (*super().settings(), self.num_candidates)

    def candidates(
        self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool, unsigned: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.linspace(
            1.0 / self.num_candidates, 1.0, self.num_candidates, dtype=torch.float64, device=lo.device
        )[None, :]
        if symmetric:
            top = torch.maximum(-lo, hi)[:, None] * alpha
            return (torch.zeros_like(top) if unsigned else -top), top
        return lo[:, None] * alpha, hi[:, None] * alpha


@register_estimator("percentile")
class PercentileEstimator(HistogramEstimator):
    """Range from the ``(100 - p)``-th to the ``p``-th percentile of the data.

    Example:
        >>> est = PercentileEstimator(percentile=99.0)
        >>> est.observe(torch.arange(10_000.0))
        >>> [round(float(v)) for v in est.compute_range(8, False)]   # edges of bins of 8 holding 99 and 9900
        [96, 9904]
    """

    def __init__(self, axis: int | None = None, num_bins: int = 2048, percentile: float = 99.99) -> None:
        super().__init__(axis, num_bins)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def compute_range(
        self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.hist is not None and self.lo is not None and self.hi is not None
        cdf = self.hist.cumsum(1) / self.hist.sum(1, keepdim=True)
        left, right = self.bin_edges()
        q = self.percentile / 100.0
        first = torch.searchsorted(cdf, torch.full_like(cdf[:, :1], 1.0 - q)).clamp(max=self.num_bins - 1)
        last = torch.searchsorted(cdf, torch.full_like(cdf[:, :1], q)).clamp(max=self.num_bins - 1)
        # Left edge of the bin holding the lower percentile, right edge of the one holding the upper one, both
        # inside the data's range.
        lo = left.gather(1, first)[:, 0].clamp(self.lo, self.hi)
        hi = right.gather(1, last)[:, 0].clamp(self.lo, self.hi)
        return self._squeeze(lo), self._squeeze(hi)


def make_estimator(scheme: str, axis: int | None = None) -> RangeEstimator:
    """Estimator for ``scheme``: a built-in (``minmax``, ``tf_enhanced``, ``percentile``, ``mse``) or one added
    with :func:`~leantorch.quant.schemes.register_estimator`.

    Example:
        >>> type(make_estimator("tf_enhanced")).__name__
        'TfEnhancedEstimator'
    """
    return estimator_factory(scheme)(axis=axis)
