"""Large-allocation policy of glibc for processes that train.

By default glibc serves every allocation above an adaptive threshold (128 KB up to 32 MB) with fresh ``mmap``
pages and returns them to the OS on free. A training step allocates and frees the same multi-MB activation and
gradient tensors every time, so each of them pays page faults again. Pinning the mmap and trim thresholds at 1 GB
keeps freed blocks in the heap for reuse. The cost is that the process keeps its peak memory instead of shrinking
after it. The ``lowbit`` command applies this to the commands that train or evaluate; importing the library never
does, and ``LOWBIT_DEFAULT_MALLOC=1`` in the environment leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_large_allocations", "OPT_OUT_VARIABLE"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30
OPT_OUT_VARIABLE = "LOWBIT_DEFAULT_MALLOC"


def keep_large_allocations(respect_opt_out: bool = True) -> bool:
    """Set glibc's mmap and trim thresholds to 1 GB; True if applied (False on other C libraries or when opted out)."""
    if respect_opt_out and os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
