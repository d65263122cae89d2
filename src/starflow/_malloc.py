"""The C allocator's thresholds for a PyTorch process on Linux (glibc): freed memory kept for the next call.

Why: PyTorch's CPU tensors come straight from malloc. glibc hands large blocks out by mmap and trims the heap's
free top back to the system, with thresholds that follow the largest blocks freed so far; a sampler that makes
and frees tens of MB of activations in every trunk call then gets fresh pages from the kernel again and again,
each one a page fault and a zero-fill. Measured on a 2-core Xeon: ~40,000 page faults and ~0.09 s of system time
per bench video sample (8% of it); with blocks up to 32 MiB from the heap and 64 MiB of free top kept, ~0 after
the first sample, and ~1/5 of the process's system time over six samples. The cost is that up to 64 MiB a heap
stays with the process after a peak.

`tune()` sets that once per process (the `starflow` command line does it on start). A process whose user set
glibc's own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_) or STARFLOW_MALLOC_TUNING=0,
or another C library, is left as it is.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 * 2**20      # glibc's own ceiling for its sliding threshold on 64-bit systems
TRIM_THRESHOLD = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # mallopt parameters (malloc.h)
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_done: bool | None = None


def tune() -> bool:
    """Set the thresholds (once); True when they are set in this process."""
    global _done
    if _done is None:
        _done = _set()
    return _done


def _set() -> bool:
    if (not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
            or os.environ.get("STARFLOW_MALLOC_TUNING", "1") == "0"
            or any(v in os.environ for v in _USER_VARIABLES)):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either threshold fixes both (glibc stops sliding them)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
