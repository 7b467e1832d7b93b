"""Value types for ``argparse`` options shared by the ``lowbit`` commands: each names the bad value in its error."""

from __future__ import annotations

import argparse

import yaml

__all__ = ["non_negative_int", "positive_int", "positive_float", "assignment"]


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def assignment(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with the value read as YAML (``3``, ``0.5``, ``true``, ``[16, 32]``, ``null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. train.optimizer.lr=0.01), got {text!r}")
    return key.strip(), yaml.safe_load(value)
