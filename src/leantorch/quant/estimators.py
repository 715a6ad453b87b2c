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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .histogram import bin_edges, grid_counts, grid_for, regrid, release_scratch, uniform_view
from .range_search import expected_noise, search_noise
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


def channels_first(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as ``[channels, elements]`` (one channel when ``axis`` is None).

    One channel takes the elements in memory order: statistics of a whole tensor do not depend on the order,
    and ``reshape`` of a channels-last (NHWC) activation would otherwise copy it, which costs twice the
    histogram of it.

    Example:
        >>> x = torch.arange(24.0).reshape(1, 2, 3, 4).contiguous(memory_format=torch.channels_last)
        >>> flat = channels_first(x, None)
        >>> flat.data_ptr() == x.data_ptr(), sorted(flat[0].tolist()) == list(range(24))  # a view, every element
        (True, True)
    """
    if axis is None:
        return storage_order(x).reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def storage_order(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its dimensions permuted into memory order (outermost first): a contiguous view whenever ``x``
    is dense (e.g. channels-last), so that ``reshape(-1)`` of it does not copy. Dimensions of size 1 and equal
    strides keep their order."""
    # mypy checks the lambda against stride()'s first overload (no dim: a tuple), hence the ignore
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))  # type: ignore[operator]
    return x.permute(order) if order != list(range(x.dim())) else x


def channel_extremes(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(min, max)`` of ``[C, N]`` values, each ``[C]``.

    One channel takes the full reduction: CPU ``aminmax(dim=1)`` of a ``[1, N]`` tensor is ~6x slower than
    ``aminmax`` of all elements (it does not vectorise over a single long row), same values.
    """
    if flat.shape[0] == 1:
        lo, hi = torch.aminmax(flat)
        return lo.reshape(1), hi.reshape(1)
    return torch.aminmax(flat, dim=1)


class RangeEstimator(ABC):
    """Accumulates statistics of a tensor over batches; proposes the range to quantize it with.

    Merging (for distributed calibration): every estimator's statistics are a per-channel range
    (:meth:`extremes`) plus, for histogram estimators, counts over that range (:meth:`counts`). Merging
    several estimators of the same tensor means: take the union of their ranges, :meth:`adopt_range` it on
    each, then sum their :meth:`counts`.
    """

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis

    @abstractmethod
    def observe(self, x: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Fold one batch of the tensor into the statistics.

        ``extremes``: the whole tensor's ``(min, max)`` when the caller has them already (the quantizer's
        NaN check computes them); used by per-tensor estimators instead of a second reduction.
        """

    def _extremes(
        self, flat: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if extremes is None or self.axis is not None:
            return channel_extremes(flat)
        return extremes[0].reshape(1), extremes[1].reshape(1)

    @abstractmethod
    def compute_range(
        self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Proposed ``(min, max)``: 0-d tensors, or one value per channel."""

    @property
    @abstractmethod
    def has_data(self) -> bool:
        """True once :meth:`observe` has seen a batch."""

    @abstractmethod
    def extremes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The observed per-channel ``(min, max)`` as float64 ``[C]`` tensors; None before any data."""

    @abstractmethod
    def adopt_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Widen the statistics to the range ``[lo, hi]`` (float64 ``[C]``, containing :meth:`extremes`);
        an estimator without data starts empty on it."""

    def counts(self) -> torch.Tensor | None:
        """Counts that merge by summation (float64, integer-valued), or None when the range is everything."""
        return None

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(()) if self.axis is None else t


@register_estimator("minmax")
class MinMaxEstimator(RangeEstimator):
    """Running min and max.

    Example:
        >>> est = MinMaxEstimator()
        >>> est.observe(torch.tensor([-1.0, 2.0])); est.observe(torch.tensor([3.0]))
        >>> [float(v) for v in est.compute_range(8, False)]
        [-1.0, 3.0]
    """

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis)
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        lo, hi = self._extremes(channels_first(x.detach(), self.axis), extremes)
        lo, hi = lo.to(x.dtype), hi.to(x.dtype)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)

    @property
    def has_data(self) -> bool:
        return self.min is not None

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.min is None or self.max is None else (self.min.double(), self.max.double())

    def adopt_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        # float64 holds every float32/16 value exactly, so the merged extremes round-trip to the data dtype.
        dtype = self.min.dtype if self.min is not None else torch.float64
        self.min, self.max = lo.to(dtype), hi.to(dtype)

    def compute_range(
        self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min is not None and self.max is not None, "observe() was never called"
        return self._squeeze(self.min.double()), self._squeeze(self.max.double())


class HistogramEstimator(RangeEstimator):
    """Base of the histogram-based estimators: exact data extremes plus counts on the grid of their range.

    The counts live on the nested power-of-two grid of :mod:`.histogram` (``num_bins`` slots, re-gridded
    exactly when a batch widens the range), so the statistics after any sequence of batches, or merged over
    ranks, equal those of one pass over all the data, bit for bit.
    """

    def __init__(self, axis: int | None = None, num_bins: int = 512) -> None:
        super().__init__(axis)
        self.num_bins = num_bins
        self.lo: torch.Tensor | None = None  # [C] float64, the data's minimum
        self.hi: torch.Tensor | None = None  # [C] float64, the data's maximum
        self.exponent: torch.Tensor | None = None  # [C] int64, grid exponent (see histogram.grid_for)
        self.start: torch.Tensor | None = None  # [C] int64, first bin of the window
        self.hist: torch.Tensor | None = None  # [C, num_bins] float64 counts

    @property
    def has_data(self) -> bool:
        return self.hist is not None

    def observe(self, x: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        flat = channels_first(x.detach(), self.axis)
        if not flat.is_floating_point():
            flat = flat.float()
        lo, hi = (t.double() for t in self._extremes(flat, extremes))
        if self.hist is None:
            self._start(lo, hi)
        else:
            assert self.lo is not None and self.hi is not None  # set with hist
            self._grow(torch.minimum(self.lo, lo), torch.maximum(self.hi, hi))
        assert self.hist is not None and self.exponent is not None and self.start is not None
        self.hist += grid_counts(flat, self.exponent, self.start, self.num_bins)

    def _start(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo, self.hi = lo, hi
        self.exponent, self.start = grid_for(lo, hi, self.num_bins)
        self.hist = torch.zeros(lo.shape[0], self.num_bins, dtype=torch.float64, device=lo.device)

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)

    def adopt_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.hist is None:
            self._start(lo, hi)
        else:
            self._grow(lo, hi)

    def counts(self) -> torch.Tensor | None:
        return self.hist

    def _grow(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> None:
        assert self.hist is not None and self.exponent is not None and self.start is not None
        assert self.lo is not None and self.hi is not None  # set with hist
        # An unchanged range keeps its grid; on a GPU the check would cost a host sync per batch, more than
        # the 512-slot re-gridding it saves.
        if new_lo.device.type == "cpu" and bool((new_lo == self.lo).all()) and bool((new_hi == self.hi).all()):
            return
        exponent, start = grid_for(new_lo, new_hi, self.num_bins)
        self.hist = regrid(self.hist, self.exponent, self.start, exponent, start)
        self.lo, self.hi, self.exponent, self.start = new_lo, new_hi, exponent, start

    def bin_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Left and right edges of every slot, ``[C, num_bins]`` each."""
        assert self.exponent is not None and self.start is not None
        return bin_edges(self.exponent, self.start, self.num_bins)

    def uniform_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, centres, mass of bin 0)``: the bins at their midpoints (:func:`~.histogram.uniform_view`)."""
        assert self.hist is not None and self.exponent is not None and self.start is not None
        return uniform_view(self.hist, self.exponent, self.start)


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
        assert est.hist is not None and est.lo is not None and est.hi is not None
        assert type(est) is type(first) and est.settings() == first.settings(), "one kind and settings per batch"
    lo = torch.cat([est.lo for est in estimators]).clamp(max=0.0)  # type: ignore[misc]
    hi = torch.cat([est.hi for est in estimators]).clamp(min=0.0)  # type: ignore[misc]
    cand_lo, cand_hi = first.candidates(lo, hi, bitwidth, symmetric, unsigned)
    if symmetric and not unsigned:
        delta = cand_hi / (2 ** (bitwidth - 1) - 1)
    else:
        delta = (cand_hi - cand_lo) / (2**bitwidth - 1)
    views = [est.uniform_view() for est in estimators]
    hist, centres, zero_mass = (torch.cat([v[i] for v in views]) for i in range(3))
    noise = search_noise(hist, centres, cand_lo, cand_hi, delta, first.gamma)
    # Bin 0's mass sits at 0, off the equally spaced grid: its noise is added bin by bin (one bin).
    noise += expected_noise(
        zero_mass[:, None], torch.zeros_like(zero_mass)[:, None], cand_lo, cand_hi, delta, first.gamma
    )
    best = noise.argmin(dim=1, keepdim=True)
    best_lo, best_hi = cand_lo.gather(1, best)[:, 0], cand_hi.gather(1, best)[:, 0]  # first of equal ones
    sizes = [v[0].shape[0] for v in views]
    lows = best_lo.split(sizes)  # type: ignore[no-untyped-call]
    highs = best_hi.split(sizes)  # type: ignore[no-untyped-call]
    return [(est._squeeze(a), est._squeeze(b)) for est, a, b in zip(estimators, lows, highs)]


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
