"""Value types for ``argparse`` options shared by the ``lowbit`` commands: each names the bad value in its error."""

from __future__ import annotations

import argparse
import math

import yaml

from ..recipes.safe_yaml import describe, safe_load

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
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def assignment(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with the value read as YAML, as recipe files are (``3``, ``1e-3``, ``true``, ``[16, 32]``,
    ``null``; see :mod:`lowbit.recipes.safe_yaml`). A value that is not YAML is a one-line error naming it."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. train.optimizer.lr=0.01), got {text!r}")
    try:
        return key, safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML: {describe(error)}") from None
