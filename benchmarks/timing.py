"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from lowbit.allocator import keep_large_allocations


def stable_allocator() -> bool:
    """Keep glibc from returning large blocks to the OS after every free (``lowbit.allocator``), always.

    Otherwise each new multi-MB tensor pays page faults, and how often depends on glibc's adaptive thresholds:
    timings of the same op then vary by 10x between runs. Returns False where glibc is not available (timings are
    then noisier).
    """
    return keep_large_allocations(respect_opt_out=False)


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
