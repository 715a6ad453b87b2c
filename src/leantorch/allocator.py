"""Keep freed activation memory in the process instead of handing it back to the OS after every op.

glibc serves every allocation above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a fresh
``mmap`` and unmaps it on free, so each forward pass page-faults its activations in again: on a 2-core CPU
EfficientNet-Lite0 spent about as much time in the kernel (zeroing those pages) as in its convolutions.
:func:`keep_freed_memory` pins the threshold at its maximum and stops heap trimming, so activations of up to
32 MiB (a batch of 8 224×224 images in most CNNs) reuse memory; the ``leantorch`` command calls it at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc refuses larger values on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc so that freed activation buffers are reused; ``False`` where it is not glibc.

    Process-wide and harmless to call twice. Peak memory is unchanged; memory freed late in a run is kept
    by the process (up to about 1 GiB at the top of the heap) instead of being returned at once.

    Example:
        >>> keep_freed_memory() in (True, False)
        True
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
