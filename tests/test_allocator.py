"""The glibc large-allocation policy the lowbit command applies to training processes."""

import ctypes

import pytest

from lowbit import allocator


def _has_glibc_mallopt() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


def test_the_opt_out_variable_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(allocator.OPT_OUT_VARIABLE, "1")
    assert allocator.keep_large_allocations() is False


@pytest.mark.skipif(not _has_glibc_mallopt(), reason="not a glibc system")
def test_thresholds_are_applied_on_glibc(monkeypatch):
    monkeypatch.delenv(allocator.OPT_OUT_VARIABLE, raising=False)
    assert allocator.keep_large_allocations() is True
    monkeypatch.setenv(allocator.OPT_OUT_VARIABLE, "1")
    assert allocator.keep_large_allocations(respect_opt_out=False) is True
