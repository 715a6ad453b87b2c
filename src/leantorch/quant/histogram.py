"""Exact, mergeable histograms: counts on a nested power-of-two grid, chosen from the range alone.

The grid of exponent ``e`` puts a value ``x`` in bin ``k = trunc(x / 2**e)``: bin ``k > 0`` is
``[k, k + 1) * 2**e``, bin ``k < 0`` is ``(k - 1, k] * 2**e`` and bin 0 is ``(-1, 1) * 2**e``. A histogram
holds ``slots`` consecutive bins from ``start``. Exponent and start are functions of the data's range
``[lo, hi]`` only (:func:`grid_for`): the smallest exponent whose bins cover the range in ``slots - 2``
bins or fewer.

Why this grid (instead of ``slots`` equal bins from ``lo`` to ``hi``):

* **exact**: ``x * 2**-e`` is exact in floating point (a power-of-two scaling) and truncation is exact, so a
  value's bin never depends on rounding, nor on where the histogram's window starts;
* **nested**: bin ``k`` of exponent ``e`` lies inside bin ``trunc(k / 2**d)`` of exponent ``e + d``, so
  re-binning onto a wider range (:func:`regrid`) moves whole bins and gives exactly the counts that binning
  the data directly on the wider grid would give.

Together: streaming over batches in any order, or over ranks that merge at the end, ends with the histogram
of all the data on the grid of the global range, bit for bit; counts are integers, exact in float64.

Speed: the per-tensor hot path (:func:`grid_counts`) is one multiplication, one truncating cast to int16, a
window shift when the window does not start at bin 0, and a bincount split over torch's threads; on a CPU in
cache-sized chunks, in work buffers reused across calls (a fresh multi-megabyte CPU tensor is page-faulted in
on every call, which costs more than the arithmetic). Bounds are tensors: no host sync on a GPU.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["grid_for", "grid_counts", "tensor_counts", "regrid", "bin_edges", "uniform_view", "pow2", "release_scratch"]

#: Largest ``|trunc(x / 2**e)|`` the grid allows: bin numbers fit int16 before the window shift.
_INDEX_BITS = 15
#: Exponent bounds: ``2**-e`` must be a finite float32 (``e >= -126``); data beyond float32 is refused upstream.
_MIN_EXPONENT = -126


def grid_for(lo: torch.Tensor, hi: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the grid exponent ``e`` and first bin ``start`` (int64 ``[C]``) for data in ``[lo, hi]``.

    ``e`` is the least exponent with ``(hi - lo) / 2**e <= slots - 4`` (rounded up to where ``frexp`` puts
    it) and ``max(|lo|, |hi|) / 2**e < 2**15`` (bin numbers fit int16); ``start = trunc(lo / 2**e)``. So the
    bins ``start .. start + slots - 1`` hold every value of ``[lo, hi]``: between about ``slots / 4`` and
    ``slots`` of them are inside the range.

    Example:
        >>> e, start = grid_for(torch.tensor([0.0], dtype=torch.float64), torch.tensor([6.0], dtype=torch.float64), 512)
        >>> int(e[0]), int(start[0])    # bins of 2**-6: 6.0 is bin 384, inside 512 slots from 0
        (-6, 0)
    """
    lo, hi = lo.double(), hi.double()
    span = (hi - lo) / (slots - 4)
    magnitude = torch.maximum(lo.abs(), hi.abs())
    floor = torch.full_like(lo, _MIN_EXPONENT, dtype=torch.int64)
    # frexp: v = m * 2**E with m in [0.5, 1), so v <= 2**E (the span fits) and v < 2**E (magnitudes).
    by_span = torch.where(span > 0, torch.frexp(span).exponent.long(), floor)
    by_magnitude = torch.where(magnitude > 0, torch.frexp(magnitude).exponent.long() - _INDEX_BITS, floor)
    exponent = torch.maximum(torch.maximum(by_span, by_magnitude), floor)
    start = (lo * pow2(-exponent)).trunc().long()
    return exponent, start


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2**exponent`` in float64, exactly (integer exponents)."""
    return torch.pow(2.0, exponent.double())


class _Scratch:
    """Work buffers of the per-tensor hot path, reused across calls.

    Why: a fresh multi-megabyte CPU tensor is page-faulted in on every call, which costs several times the
    arithmetic on it; activations of one model have a bounded size, so a few buffers grown on demand serve
    them all. :func:`release_scratch` frees them (``QuantSim.compute_encodings`` calls it when done).
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self.buffers.get((device, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[(device, dtype)] = buf
        return buf[:numel]


_SCRATCH = threading.local()


def _scratch() -> _Scratch:
    if not hasattr(_SCRATCH, "value"):
        _SCRATCH.value = _Scratch()
    scratch: _Scratch = _SCRATCH.value
    return scratch


def release_scratch() -> None:
    """Free the histogram work buffers of this thread (they are re-allocated on the next calibration)."""
    _SCRATCH.__dict__.pop("value", None)


def grid_counts(values: torch.Tensor, exponent: torch.Tensor, start: torch.Tensor, slots: int) -> torch.Tensor:
    """Counts of ``[C, N]`` values in the bins ``start .. start + slots - 1`` of each channel's grid.

    Every value must lie in the range the grid was made for (:func:`grid_for`). Returns float64 ``[C, slots]``.

    Example:
        >>> x = torch.tensor([[0.0, 0.3, 0.5, 1.0, -0.2]])
        >>> e, start = grid_for(x.min(1).values, x.max(1).values, 8)
        >>> int(e[0]), int(start[0])   # bins of 1/2; bin 0 is (-1/2, 1/2)
        (-1, 0)
        >>> grid_counts(x, e, start, 8).tolist()   # 0.0, 0.3 and -0.2 in bin 0; 0.5 in bin 1; 1.0 in bin 2
        [[3.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    channels = values.shape[0]
    if channels == 1:
        return tensor_counts(values, exponent, start, slots)
    if not values.is_floating_point() or values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    scale = pow2(-exponent).to(torch.float64 if values.dtype == torch.float64 else torch.float32)
    index = (values * scale[:, None]).to(torch.int64)  # truncation toward zero: the bin number
    index += (torch.arange(channels, device=values.device) * slots - start)[:, None]
    return torch.bincount(index.reshape(-1), minlength=channels * slots).reshape(channels, slots).double()


def tensor_counts(values: torch.Tensor, exponent: torch.Tensor, start: torch.Tensor, slots: int) -> torch.Tensor:
    """Counts of all of ``values`` (any shape, may be a strided view: it is not copied) as one channel, float64
    ``[1, slots]``; ``exponent``/``start`` are the channel's grid (``[1]``), see :func:`grid_counts`.

    Example:
        >>> x = torch.tensor([[0.0, 0.3], [0.5, 1.0]])
        >>> e, start = grid_for(torch.tensor([0.0]), torch.tensor([1.0]), 8)
        >>> tensor_counts(x[:, ::2], e, start, 8).tolist()   # 0.0 and 0.5
        [[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    if not values.is_floating_point() or values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    scale = pow2(-exponent).to(torch.float64 if values.dtype == torch.float64 else torch.float32)
    rows = values.reshape(-1) if values.is_contiguous() or values.dim() < 2 else values  # never copied
    return _tensor_counts(rows, scale, start, slots)[None, :]


#: Elements per pass of the CPU hot path: its float32 and int16 work buffers (6 MiB) stay in the last-level
#: cache, so a large activation is read from memory once instead of once per elementwise pass.
_CHUNK = 1 << 20


#: Interleaved sub-histograms of the CPU hot path: consecutive elements count into different copies of the
#: histogram. Why: activations repeat values (ReLU's zeros, ReLU6's sixes) in long runs, and a run of
#: increments of one counter waits on itself (each increment reads the previous one's store) — about twice
#: the time of counting spread-out values.
_LANES = 8


def _tensor_counts(x: torch.Tensor, scale: torch.Tensor, start: torch.Tensor, slots: int) -> torch.Tensor:
    """The per-tensor hot path of :func:`grid_counts`: a multiplication, an int16 cast, a bincount per chunk."""
    scratch = _scratch()
    lanes = _LANES if x.device.type == "cpu" and slots * _LANES < 2**15 else 1
    # Most activations start at 0 (ReLU): their window starts at bin 0. Checking costs a host sync on a GPU.
    shift = x.device.type != "cpu" or int(start) != 0
    start16 = start.to(torch.int16)
    lane_offsets = _lane_offsets(min(x.numel(), _CHUNK), lanes, slots, x.device) if lanes > 1 else None
    total: torch.Tensor | None = None
    for part in _chunks(x):
        scaled = torch.mul(part, scale, out=scratch.get(part.numel(), scale.dtype, x.device).view(part.shape))
        index = scratch.get(part.numel(), torch.int16, x.device)
        index.view(part.shape).copy_(scaled)  # truncation toward zero; |bin| < 2**15 by the choice of exponent
        if shift:
            index.sub_(start16)
        if lane_offsets is not None:
            index.add_(lane_offsets[: part.numel()])
        counts = _bincount(index, slots * lanes)
        total = counts if total is None else total.add_(counts)
    assert total is not None
    return total.reshape(lanes, slots).sum(0).double()


def _chunks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``x`` (1-D, or a strided sample split along dimension 0) in pieces of about ``_CHUNK`` elements on a CPU."""
    if x.device.type != "cpu":
        return (x,)
    rows = _CHUNK if x.dim() == 1 else max(1, _CHUNK // max(1, x[0].numel()))
    return tuple(x.split(rows))  # type: ignore[no-untyped-call]  # unannotated in torch


_LANE_OFFSETS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _lane_offsets(numel: int, lanes: int, slots: int, device: torch.device) -> torch.Tensor:
    """``[0, slots, 2 slots, ..., 0, slots, ...]`` (int16, at least ``numel`` long), made once."""
    key = (lanes, slots, device)
    offsets = _LANE_OFFSETS.get(key)
    if offsets is None or offsets.numel() < numel:
        offsets = ((torch.arange(max(numel, _CHUNK), device=device) % lanes) * slots).to(torch.int16)
        _LANE_OFFSETS[key] = offsets
    return offsets


_POOL: list[ThreadPoolExecutor] = []


def _bincount(index: torch.Tensor, minlength: int) -> torch.Tensor:
    """``torch.bincount`` split over torch's CPU threads (this one included): its counting loop is serial, and
    torch ops release the GIL. Integer counts, so the split sums exactly."""
    threads = torch.get_num_threads()
    if threads < 2 or index.device.type != "cpu" or index.numel() < (1 << 16):
        return torch.bincount(index, minlength=minlength)
    if not _POOL or _POOL[0]._max_workers != threads - 1:
        _POOL[:] = [ThreadPoolExecutor(threads - 1, thread_name_prefix="leantorch-histogram")]
    *others, own = index.chunk(threads)
    parts = [_POOL[0].submit(torch.bincount, part, minlength=minlength) for part in others]
    counts = torch.bincount(own, minlength=minlength)
    for part in parts:
        counts += part.result()
    return counts


def regrid(
    counts: torch.Tensor,
    exponent: torch.Tensor,
    start: torch.Tensor,
    new_exponent: torch.Tensor,
    new_start: torch.Tensor,
) -> torch.Tensor:
    """Counts ``[C, slots]`` on a grid moved to a coarser-or-equal exponent and a new window: exact.

    Bin ``k`` of exponent ``e`` lies inside bin ``trunc(k / 2**d)`` of exponent ``e + d`` (``d >= 0``), so whole
    bins move. The new window must hold every non-empty bin (it does when it was made for a wider range).

    Example:
        >>> counts = torch.tensor([[1.0, 2.0, 3.0, 4.0]])   # bins 0..3 of 2**-2
        >>> regrid(counts, torch.tensor([-2]), torch.tensor([0]), torch.tensor([-1]), torch.tensor([0])).tolist()
        [[3.0, 7.0, 0.0, 0.0]]
    """
    channels, slots = counts.shape
    shift = (new_exponent - exponent).clamp(0, 62)  # beyond 2**15 every bin number truncates to 0 anyway
    bins = start[:, None] + torch.arange(slots, device=counts.device)
    moved = torch.div(bins, torch.pow(2, shift)[:, None], rounding_mode="trunc") - new_start[:, None]
    # Only empty bins can fall outside the new window: clamp them anywhere, they add nothing.
    moved = moved.clamp(0, slots - 1) + (torch.arange(channels, device=counts.device) * slots)[:, None]
    return (
        torch.bincount(moved.reshape(-1), weights=counts.reshape(-1), minlength=channels * slots)
        .reshape(channels, slots)
        .to(counts.dtype)
    )


def bin_edges(exponent: torch.Tensor, start: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right edges of every slot, float64 ``[C, slots]`` (bin 0 is twice as wide: ``(-1, 1) * 2**e``).

    Example:
        >>> left, right = bin_edges(torch.tensor([-1]), torch.tensor([-1]), 3)
        >>> left.tolist(), right.tolist()
        ([[-1.0, -0.5, 0.5]], [[-0.5, 0.5, 1.0]])
    """
    bins = start[:, None] + torch.arange(slots, device=start.device)
    unit = pow2(exponent)[:, None]
    return (bins - (bins <= 0).long()) * unit, (bins + (bins >= 0).long()) * unit


def uniform_view(
    counts: torch.Tensor, exponent: torch.Tensor, start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The counts at their bins' midpoints, as an equally spaced histogram plus the mass of bin 0.

    Midpoints are ``(k + 1/2) * 2**e`` for ``k > 0`` and ``(k - 1/2) * 2**e`` for ``k < 0``: equally spaced,
    with one empty slot where bin 0 would be (its midpoint, 0, is half a slot off that grid, so its mass is
    returned apart). Returns ``(hist, centres, zero_mass)``: ``[C, slots + 1]``, ``[C, slots + 1]``, ``[C]``.

    Example:
        >>> hist, centres, zero = uniform_view(torch.tensor([[2.0, 5.0, 7.0]]), torch.tensor([0]), torch.tensor([-1]))
        >>> hist.tolist(), centres.tolist(), zero.tolist()   # bins -1 (centre -1.5), 0 (apart), 1 (centre 1.5)
        ([[2.0, 0.0, 0.0, 7.0]], [[-1.5, -0.5, 0.5, 1.5]], [5.0])
    """
    channels, slots = counts.shape
    bins = start[:, None] + torch.arange(slots, device=counts.device)
    base = start - (start <= 0).long()  # grid position of the first column: bin k < 0 sits at k - 1, k > 0 at k
    column = bins - (bins <= 0).long() - base[:, None]  # bin 0 goes to the empty slot of -1/2, with no mass
    is_zero = bins == 0
    zero_mass = (counts * is_zero).sum(1)
    hist = counts.new_zeros(channels, slots + 1).scatter_(1, column, counts * ~is_zero)
    positions = (base[:, None] + torch.arange(slots + 1, device=counts.device)).double() + 0.5
    return hist, positions * pow2(exponent)[:, None], zero_mass
