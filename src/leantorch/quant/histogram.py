"""Per-tensor histograms with torch.histc's exact arithmetic, fast on CPU and without host syncs on a GPU.

``torch.histc`` takes its bounds as Python numbers (a host sync per call on a GPU) and is slow on CPU (per
element bounds checks, a fresh output per call). :func:`histc_counts` computes the same bins with the same
float32 arithmetic from tensor-valued bounds, in work buffers reused across calls (a fresh multi-megabyte CPU
tensor is page-faulted in on every call, which costs more than the arithmetic), and splits the serial
counting loop of ``torch.bincount`` over torch's threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch


class _Scratch:
    """Work buffers of the per-tensor histogram, reused across calls.

    Why: a fresh multi-megabyte CPU tensor is page-faulted in on every call, which costs several times the
    arithmetic on it; activations of one model have a bounded size, so two buffers grown on demand serve
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
    return _SCRATCH.value


def release_scratch() -> None:
    """Free the histogram work buffers of this thread (they are re-allocated on the next calibration)."""
    _SCRATCH.__dict__.pop("value", None)


def histc_counts(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """``torch.histc(values, bins, lo, hi)`` as float64 counts, for tensor-valued bounds (no host sync).

    Same float32 arithmetic as histc: ``bin = trunc((x - lo) * bins / (hi - lo))``, the right edge counted in
    the last bin, and ``[lo - 1, hi + 1]`` when ``lo == hi`` in float32. Every value must lie in ``[lo, hi]``.

    Example:
        >>> x = torch.randn(1000)
        >>> lo, hi = x.min(), x.max()
        >>> bool((histc_counts(x, lo, hi, 512) == torch.histc(x, 512, float(lo), float(hi))).all())
        True
    """
    x = values.reshape(-1)
    x = x if x.dtype == torch.float32 else x.float()
    lo32, hi32 = lo.reshape(1).float(), hi.reshape(1).float()
    same = lo32 == hi32
    lo32, hi32 = torch.where(same, lo32 - 1, lo32), torch.where(same, hi32 + 1, hi32)
    scratch = _scratch()
    pos = torch.sub(x, lo32, out=scratch.get(x.numel(), torch.float32, x.device))
    if bins & (bins - 1) == 0:
        # (x-lo)*B/w == (x-lo)/(w/B) exactly when B is a power of two (both scalings are exact): one pass less.
        pos.div_((hi32 - lo32) / bins)
    else:
        pos.mul_(bins).div_(hi32 - lo32)
    index_dtype = torch.int16 if bins < 2**15 else torch.int32
    index = scratch.get(x.numel(), index_dtype, x.device)
    index.copy_(pos)  # truncation toward zero; pos >= 0
    counts = _bincount(index, bins + 1).double()
    counts[bins - 1] += counts[bins]  # x == hi lands on index B: histc counts it in the last bin
    return counts[:bins]


_POOL: list[ThreadPoolExecutor] = []


def _bincount(index: torch.Tensor, minlength: int) -> torch.Tensor:
    """``torch.bincount`` split over torch's CPU threads: its counting loop is serial, and torch ops release the
    GIL. Integer counts, so the split sums exactly."""
    threads = torch.get_num_threads()
    if threads < 2 or index.device.type != "cpu" or index.numel() < (1 << 21):
        return torch.bincount(index, minlength=minlength)
    if not _POOL or _POOL[0]._max_workers != threads:
        _POOL[:] = [ThreadPoolExecutor(threads, thread_name_prefix="leantorch-histogram")]
    parts = [_POOL[0].submit(torch.bincount, part, minlength=minlength) for part in index.chunk(threads)]
    return torch.stack([p.result() for p in parts]).sum(0)
