"""Range estimators: stream over calibration batches with bounded memory, then propose ``(min, max)``.

* ``minmax``     — running minimum and maximum (AIMET "tf").
* ``tf_enhanced`` — a 512-bin histogram; a 2-D search over (step size, window position) candidates for the
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

Memory per estimator is O(channels × bins) whatever the number of batches: when a batch extends the
range, the existing histogram is re-binned onto the wider range (each old bin's mass goes to the new bin
containing its centre) instead of storing data.

Speed: a per-tensor histogram is binned with torch.histc's exact float32 arithmetic
(``bin = trunc((x - lo) * B / (hi - lo))``) in reused scratch buffers with tensor-valued bounds, so the
counts equal ``torch.histc``'s while skipping its per-element bounds checks, fresh allocations and (on a GPU)
host syncs. The range search evaluates every candidate in O(1) from prefix sums of the histogram
(:mod:`.range_search`) instead of summing all B bins per candidate; both pick the same candidate.

Distributed calibration (:mod:`leantorch.distributed`) merges estimators through :meth:`RangeEstimator.extremes`,
:meth:`RangeEstimator.adopt_range` and :meth:`RangeEstimator.counts`: a common range first, then summed counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

import torch

from ..errors import ConfigError
from .histogram import histc_counts, release_scratch
from .range_search import expected_noise, search_noise

__all__ = ["QuantScheme", "RangeEstimator", "MinMaxEstimator", "HistogramEstimator", "TfEnhancedEstimator",
           "MseEstimator", "PercentileEstimator", "make_estimator", "channels_first", "channel_extremes",
           "expected_noise", "search_noise", "histc_counts", "release_scratch"]


class QuantScheme(str, Enum):
    """How a quantizer's range is chosen from calibration data."""

    MINMAX = "minmax"
    TF_ENHANCED = "tf_enhanced"
    PERCENTILE = "percentile"
    MSE = "mse"

    @classmethod
    def parse(cls, value: "str | QuantScheme") -> "QuantScheme":
        """Accept an enum member or its name (AIMET's ``tf`` is an alias of ``minmax``).

        Example:
            >>> QuantScheme.parse("tf")
            <QuantScheme.MINMAX: 'minmax'>
        """
        if isinstance(value, cls):
            return value
        aliases = {"tf": "minmax", "post_training_tf": "minmax", "post_training_tf_enhanced": "tf_enhanced"}
        name = aliases.get(str(value).lower(), str(value).lower())
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown quantization scheme {value!r}; choose one of: {choices}") from None


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
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))
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
    def observe(self, x: torch.Tensor) -> None:
        """Fold one batch of the tensor into the statistics."""

    @abstractmethod
    def compute_range(self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
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

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = channel_extremes(channels_first(x.detach(), self.axis))
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

    def compute_range(self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min is not None and self.max is not None, "observe() was never called"
        return self._squeeze(self.min.double()), self._squeeze(self.max.double())


class HistogramEstimator(RangeEstimator):
    """Base of the histogram-based estimators: a fixed number of bins per channel, re-binned on growth."""

    def __init__(self, axis: int | None = None, num_bins: int = 512) -> None:
        super().__init__(axis)
        self.num_bins = num_bins
        self.lo: torch.Tensor | None = None  # [C] float64 left edge
        self.hi: torch.Tensor | None = None  # [C] float64 right edge
        self.hist: torch.Tensor | None = None  # [C, B] float64 counts

    @property
    def has_data(self) -> bool:
        return self.hist is not None

    def observe(self, x: torch.Tensor) -> None:
        flat = channels_first(x.detach(), self.axis)
        if not flat.is_floating_point():
            flat = flat.float()
        lo, hi = (t.double() for t in channel_extremes(flat))
        if self.hist is None:
            self._start(lo, hi)
        else:
            self._grow(torch.minimum(self.lo, lo), torch.maximum(self.hi, hi))
        self.hist += self._bin_counts(flat, self.lo, self.hi)

    def _start(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        # A constant channel still needs a range of positive width; relative to its magnitude, since an
        # absolute 1e-12 vanishes in float64 above ~1e4 (and hi == lo makes the bin width 0).
        self.lo, self.hi = lo, torch.maximum(hi, lo + torch.clamp(lo.abs() * 1e-10, min=1e-12))
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

    def _bin_counts(self, values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
        channels, bins = values.shape[0], self.num_bins
        if channels == 1 and weights is None:
            return histc_counts(values, lo, hi, bins)[None, :]  # per-tensor activations: the hot path
        scale = (bins / (hi - lo)).to(values.dtype)
        # Bin index in the data's dtype: after clamping at 0, truncation equals floor.
        idx = ((values - lo[:, None].to(values.dtype)) * scale[:, None]).clamp_(0, bins - 1).to(torch.int64)
        idx += torch.arange(channels, device=values.device)[:, None] * bins
        w = None if weights is None else weights.reshape(-1)
        counts = torch.bincount(idx.reshape(-1), weights=w, minlength=channels * bins)
        return counts.reshape(channels, bins).double()

    def _grow(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> None:
        # Re-binning onto an unchanged range is the identity, so skipping it is exact; on a GPU the check
        # would cost a host sync per batch, more than the 512-bin re-binning it saves.
        if new_lo.device.type == "cpu" and bool((new_lo == self.lo).all()) and bool((new_hi == self.hi).all()):
            return
        centres = self.bin_centres()
        self.hist = self._bin_counts(centres, new_lo, new_hi, weights=self.hist)
        self.lo, self.hi = new_lo, new_hi

    def bin_centres(self) -> torch.Tensor:
        """Bin centres, ``[C, B]``."""
        assert self.lo is not None and self.hi is not None
        steps = (torch.arange(self.num_bins, device=self.lo.device, dtype=torch.float64) + 0.5) / self.num_bins
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * steps[None, :]


class _SearchEstimator(HistogramEstimator):
    """Picks the candidate range with the least :func:`expected_noise` (computed by :func:`search_noise`)."""

    gamma: float = 1.0

    @abstractmethod
    def candidates(self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool,
                   unsigned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate ``(min, max)`` pairs, each ``[C, K]``, for observed ranges ``lo, hi`` ``[C]``."""

    def compute_range(self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.hist is not None and self.lo is not None and self.hi is not None
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        unsigned = symmetric and unsigned_symmetric and bool((self.lo >= 0).all())
        cand_lo, cand_hi = self.candidates(lo, hi, bitwidth, symmetric, unsigned)
        if symmetric and not unsigned:
            delta = cand_hi / (2 ** (bitwidth - 1) - 1)
        else:
            delta = (cand_hi - cand_lo) / (2**bitwidth - 1)
        noise = search_noise(self.hist, self.bin_centres(), cand_lo, cand_hi, delta, self.gamma)
        best = noise.argmin(dim=1, keepdim=True)  # the first of equal candidates, as before
        return self._squeeze(cand_lo.gather(1, best)[:, 0]), self._squeeze(cand_hi.gather(1, best)[:, 0])


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

    def __init__(self, axis: int | None = None, num_bins: int = 512, delta_candidates: int = 17,
                 offset_candidates: int = 21, symmetric_candidates: int = 101) -> None:
        super().__init__(axis, num_bins)
        self.delta_candidates = delta_candidates
        self.offset_candidates = offset_candidates
        self.symmetric_candidates = symmetric_candidates

    def candidates(self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool,
                   unsigned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if symmetric:
            frac = torch.linspace(1.0 / self.symmetric_candidates, 1.0, self.symmetric_candidates,
                                  dtype=torch.float64, device=lo.device)
            top = torch.maximum(-lo, hi)[:, None] * frac[None, :]
            return (torch.zeros_like(top) if unsigned else -top), top
        # Window widths from the full range down to 1/Kd of it, slid across the observed range.
        width_frac = torch.linspace(1.0 / self.delta_candidates, 1.0, self.delta_candidates,
                                    dtype=torch.float64, device=lo.device)
        pos = torch.linspace(0.0, 1.0, self.offset_candidates, dtype=torch.float64, device=lo.device)
        span = (hi - lo)[:, None, None]
        width = span * width_frac[None, :, None]
        start = lo[:, None, None] + (span - width) * pos[None, None, :]
        start = torch.minimum(torch.maximum(start, -width), torch.zeros_like(start))  # window holds 0
        c = lo.shape[0]
        return start.reshape(c, -1), (start + width).reshape(c, -1)


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

    def candidates(self, lo: torch.Tensor, hi: torch.Tensor, bitwidth: int, symmetric: bool,
                   unsigned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.linspace(1.0 / self.num_candidates, 1.0, self.num_candidates,
                               dtype=torch.float64, device=lo.device)[None, :]
        if symmetric:
            top = torch.maximum(-lo, hi)[:, None] * alpha
            return (torch.zeros_like(top) if unsigned else -top), top
        return lo[:, None] * alpha, hi[:, None] * alpha


class PercentileEstimator(HistogramEstimator):
    """Range from the ``(100 - p)``-th to the ``p``-th percentile of the data.

    Example:
        >>> est = PercentileEstimator(percentile=99.0)
        >>> est.observe(torch.arange(10_000.0))
        >>> [round(float(v)) for v in est.compute_range(8, False)]
        [98, 9901]
    """

    def __init__(self, axis: int | None = None, num_bins: int = 2048, percentile: float = 99.99) -> None:
        super().__init__(axis, num_bins)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def compute_range(self, bitwidth: int, symmetric: bool, unsigned_symmetric: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.hist is not None and self.lo is not None and self.hi is not None
        cdf = self.hist.cumsum(1) / self.hist.sum(1, keepdim=True)
        width = (self.hi - self.lo) / self.num_bins
        q = self.percentile / 100.0
        first = torch.searchsorted(cdf, torch.full_like(cdf[:, :1], 1.0 - q)).clamp(max=self.num_bins - 1)
        last = torch.searchsorted(cdf, torch.full_like(cdf[:, :1], q)).clamp(max=self.num_bins - 1)
        lo = self.lo + first[:, 0] * width  # left edge of the bin holding the lower percentile
        hi = self.lo + (last[:, 0] + 1) * width  # right edge of the bin holding the upper one
        return self._squeeze(torch.minimum(lo, self.hi)), self._squeeze(torch.minimum(hi, self.hi))


def make_estimator(scheme: "str | QuantScheme", axis: int | None = None) -> RangeEstimator:
    """Estimator for ``scheme`` (``minmax``, ``tf_enhanced``, ``percentile``, ``mse``).

    Example:
        >>> type(make_estimator("tf_enhanced")).__name__
        'TfEnhancedEstimator'
    """
    kinds = {
        QuantScheme.MINMAX: MinMaxEstimator,
        QuantScheme.TF_ENHANCED: TfEnhancedEstimator,
        QuantScheme.PERCENTILE: PercentileEstimator,
        QuantScheme.MSE: MseEstimator,
    }
    return kinds[QuantScheme.parse(scheme)](axis=axis)
