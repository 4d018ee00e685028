"""How the analysis gets its memory: fresh pages are its largest hidden cost.

A Llama-3-8B-shaped analysis (``benchmarks/analysis_speed.py``) allocates about 6 GB of short-lived
float64 arrays of a few MB each (every factor widened from float32, ``A - A_init``) and a table of
0.7 GB. A page touched for the first time costs the kernel a fault and a zeroing, far more than the
write itself: on the 2-core benchmark VM a fresh 69 MB array was filled in 30-250 ms, the same array
refilled in 3.6 ms. ``analysis_memory()`` therefore, for the block:

- keeps freed blocks below 32 MB in glibc's heap for the next array of that size instead of returning
  them to the kernel (``mallopt``: mmap threshold 32 MB, no trimming); minor page faults of the whole
  analysis 600k -> 260k. The free memory is handed back (``malloc_trim``) when the block ends.
- turns numpy's transparent-huge-page hint off: where the kernel compacts memory synchronously for
  huge pages (THP defrag=madvise) each fresh array waits for it (measured on the benchmark VM: table
  assembly 1.43 s -> 0.34 s, the whole analysis 7.7 s -> 5.9 s).

Neither changes a value. Outside glibc (macOS, musl) the first is skipped.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_KEEP_BELOW = 32 << 20  # glibc's largest mmap threshold on 64-bit
_NEVER_TRIM = (1 << 31) - 1  # mallopt takes an int
_GLIBC_DEFAULT = 128 << 10  # both thresholds' defaults
_depth = [0]  # nested blocks: only the outermost sets and restores


def _libc():
    try:
        libc = ctypes.CDLL(None)  # the C library the process already uses
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def analysis_memory() -> Iterator[None]:
    """Freed arrays reused rather than unmapped, and no huge-page hint, for the block (see above).

    After the block glibc's thresholds are back at their default values (fixed values: its dynamic
    mmap threshold stays off, as after any ``mallopt``) and the free heap is returned to the kernel.
    """
    libc = _libc() if _depth[0] == 0 else None
    _depth[0] += 1
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
        libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    toggle = getattr(getattr(np, "_core", None), "multiarray", None)
    toggle = getattr(toggle, "_set_madvise_hugepage", None)
    previous = toggle(False) if toggle else None
    try:
        yield
    finally:
        _depth[0] -= 1
        if toggle:
            toggle(previous)
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
            libc.malloc_trim(0)
