"""What every range estimator is (:class:`RangeEstimator`: observe batches, propose ``(min, max)``, merge across
ranks), the running min/max one (``minmax``), and :class:`HistogramEstimator`, the base of the histogram-based
ones in :mod:`.estimators` (counts on the exact, mergeable grid of :mod:`.histogram`).

Example:
    >>> est = MinMaxEstimator()
    >>> est.observe(torch.tensor([-1.0, 3.0]))
    >>> [float(v) for v in est.compute_range(8, symmetric=False)]
    [-1.0, 3.0]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .histogram import bin_edges, grid_counts, grid_for, pow2, regrid, release_scratch, tensor_counts, uniform_view
from .histogram_sample import VALUES_PER_SAMPLE, strided_sample
from .schemes import register_estimator

__all__ = [
    "RangeEstimator",
    "MinMaxEstimator",
    "HistogramEstimator",
    "channels_first",
    "storage_order",
    "channel_extremes",
    "release_scratch",
    "every_value_histograms",
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

    #: Per-tensor histograms count at most this many values of each sample (see :mod:`.histogram_sample`);
    #: None counts every value.
    values_per_sample: int | None = VALUES_PER_SAMPLE

    def __init__(self, axis: int | None = None, num_bins: int = 512) -> None:
        super().__init__(axis)
        self.num_bins = num_bins
        self.lo: torch.Tensor | None = None  # [C] float64, the data's minimum
        self.hi: torch.Tensor | None = None  # [C] float64, the data's maximum
        self.exponent: torch.Tensor | None = None  # [C] int64, grid exponent (see histogram.grid_for)
        self.start: torch.Tensor | None = None  # [C] int64, first bin of the window
        self._hist: torch.Tensor | None = None  # [C, num_bins] float64 counts (see hist)
        # Every value seen, [C, N], while N <= num_bins // 2 (weights: one tensor, few values per channel). The
        # range search then runs over the values' bin centres instead of every slot (same objective, much
        # cheaper), and the counts are made from them only if asked for.
        self.few: torch.Tensor | None = None

    @property
    def hist(self) -> torch.Tensor | None:
        """The counts ``[C, num_bins]`` (float64) on the grid of the range seen; None before any data."""
        if self._hist is None and self.few is not None:
            assert self.exponent is not None and self.start is not None
            self._hist = grid_counts(self.few, self.exponent, self.start, self.num_bins)
        return self._hist

    @property
    def has_data(self) -> bool:
        return self.lo is not None

    def observe(self, x: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        flat = channels_first(x.detach(), self.axis)
        if not flat.is_floating_point():
            flat = flat.float()
        lo, hi = (t.double() for t in self._extremes(flat, extremes))
        if self.lo is None or self.hi is None:
            self._start(lo, hi)
        else:
            self._grow(torch.minimum(self.lo, lo), torch.maximum(self.hi, hi))
        if self._keep_few(flat):
            return
        assert self.exponent is not None and self.start is not None
        if self.axis is None:  # one histogram of the whole tensor: of a strided sample when it is large
            sample = strided_sample(storage_order(x.detach()), self.values_per_sample)
            counts = tensor_counts(sample, self.exponent, self.start, self.num_bins)
        else:
            counts = grid_counts(flat, self.exponent, self.start, self.num_bins)
        self._hist = counts if self._hist is None else self._hist.add_(counts)

    def _keep_few(self, flat: torch.Tensor) -> bool:
        """Keep ``flat`` with the values seen before if they stay few; True when kept."""
        kept = 0 if self.few is None else self.few.shape[1]
        if (self.few is not None or self._hist is None) and kept + flat.shape[1] <= self.num_bins // 2:
            self.few = flat.clone() if self.few is None else torch.cat([self.few, flat], 1)
            self._hist = None  # made again from every value when asked for
            return True
        self._drop_few()
        return False

    def _drop_few(self) -> None:
        """Forget the values seen, their counts made first."""
        if self.few is not None:
            self._hist = self.hist
            self.few = None

    def value_positions(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With few values seen (see ``few``): their bin centres, sorted per channel, in units of half a bin
        (``2k ± 1`` for bin ``k ≠ 0``, 0 for bin 0), and that unit ``[C]``; None otherwise."""
        if self.few is None:
            return None
        assert self.exponent is not None
        k = (self.few.double() * pow2(-self.exponent)[:, None]).trunc()  # the bin, exactly as grid_counts
        return (2 * k + k.sign()).sort(1).values, pow2(self.exponent - 1)

    def _start(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo, self.hi = lo, hi
        self.exponent, self.start = grid_for(lo, hi, self.num_bins)
        self._hist = None

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)

    def adopt_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self._drop_few()  # merged counts from elsewhere will follow: the values seen here are not all of them
        if self.lo is None:
            self._start(lo, hi)
            self._hist = torch.zeros(lo.shape[0], self.num_bins, dtype=torch.float64, device=lo.device)
        else:
            self._grow(lo, hi)

    def counts(self) -> torch.Tensor | None:
        self._drop_few()  # handed out to be merged (changed in place): the values seen here no longer describe them
        return self._hist

    def _grow(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> None:
        assert self.exponent is not None and self.start is not None
        assert self.lo is not None and self.hi is not None
        # An unchanged range keeps its grid; on a GPU the check would cost a host sync per batch, more than
        # the 512-slot re-gridding it saves.
        if new_lo.device.type == "cpu" and bool((new_lo == self.lo).all()) and bool((new_hi == self.hi).all()):
            return
        exponent, start = grid_for(new_lo, new_hi, self.num_bins)
        if self._hist is not None:  # kept values are binned on the final grid when asked for
            self._hist = regrid(self._hist, self.exponent, self.start, exponent, start)
        self.lo, self.hi, self.exponent, self.start = new_lo, new_hi, exponent, start

    def bin_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Left and right edges of every slot, ``[C, num_bins]`` each."""
        assert self.exponent is not None and self.start is not None
        return bin_edges(self.exponent, self.start, self.num_bins)

    def uniform_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, centres, mass of bin 0)``: the bins at their midpoints (:func:`~.histogram.uniform_view`)."""
        assert self.hist is not None and self.exponent is not None and self.start is not None
        return uniform_view(self.hist, self.exponent, self.start)


@contextmanager
def every_value_histograms(enabled: bool = True) -> Iterator[None]:
    """Within the block, per-tensor histograms count every value of each activation instead of a strided sample
    of at most :attr:`HistogramEstimator.values_per_sample` per sample (``enabled=False``: no change). The CLI's
    ``--thorough`` uses it.

    Example:
        >>> with every_value_histograms():
        ...     HistogramEstimator.values_per_sample is None
        True
    """
    previous = HistogramEstimator.values_per_sample
    if enabled:
        HistogramEstimator.values_per_sample = None
    try:
        yield
    finally:
        HistogramEstimator.values_per_sample = previous
