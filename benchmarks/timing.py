"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import ctypes
import statistics
import time
from typing import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def stable_allocator() -> bool:
    """Keep glibc from returning large blocks to the OS after every free.

    By default glibc serves multi-MB tensors with fresh ``mmap`` pages and unmaps them on free, so each new tensor
    pays page faults, and how often depends on glibc's adaptive thresholds: timings of the same op then vary by
    10x between runs. Pinning both thresholds high makes every configuration pay the same (small) allocation cost.
    Returns False where glibc is not available (timings are then noisier).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) if samples else 0.0
