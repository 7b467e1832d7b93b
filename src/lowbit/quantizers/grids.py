"""The grid a quantizer applies in eval mode, as plain data: what ONNX export and the conformance tests read instead
of a quantizer's internals.

Every quantizer maps a real ``x`` to one of these four kinds of grid (``Quantizer.eval_grid()``), or passes ``x``
through unchanged (``None``):

* :class:`IntegerGrid`: ``x̂ = scale·(l − zero_point)``, ``l = clip(round(x / scale) + zero_point, l_min, l_max)``
  with integer levels and zero point (LSQ, fixed uniform, min-max with an integer zero point, Uhlich's uniform);
* :class:`AffineFloat`: the same affine grid with a real-valued zero point added before rounding (min-max with
  ``zero_point: exact``);
* :class:`Pow2Grid`: ``sign(x)·clip(2^round(log2|x|), q_min, q_max)`` (Uhlich's power-of-two grid);
* :class:`SignGrid`: ``+H`` where ``x >= 0``, else ``−H`` (binary).

Scales and bounds are ``np.float32``: the values the quantizer computes with in float32, and what an exported
graph stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "IntegerGrid",
    "AffineFloat",
    "Pow2Grid",
    "SignGrid",
    "Grid",
    "GridUnavailable",
    "float32",
    "HALF_EVEN",
    "HALF_AWAY",
]

#: how ``round`` breaks ties in an :class:`IntegerGrid`: to even (``torch.round``, ONNX) or away from zero
HALF_EVEN, HALF_AWAY = "half_even", "half_away"


class GridUnavailable(ConfigError):
    """The quantizer has no fixed eval-mode grid (yet): it has not seen data, or it derives its range from every
    tensor it quantizes. The message says which, and what to do instead."""


def float32(value: Union[torch.Tensor, float]) -> np.float32:
    """A 0-dim tensor or a Python number as ``np.float32``."""
    return np.float32(float(value.detach()) if isinstance(value, torch.Tensor) else value)


@dataclass(frozen=True)
class IntegerGrid:
    """``x̂ = scale·(l − zero_point)`` with ``l = clip(round(x / scale) + zero_point, l_min, l_max)``.

    Clipping before or after rounding gives the same levels (both are monotone and the bounds are integers).
    ``rounding`` says how ties ``x / scale = k + 1/2`` break: ``half_even`` or ``half_away`` (Li & De, Uhlich).
    """

    scale: np.float32
    zero_point: int
    l_min: int
    l_max: int
    rounding: str = HALF_EVEN


@dataclass(frozen=True)
class AffineFloat:
    """``x̂ = scale·(clip(round(x·(1/scale) + zero_point), u_min, u_max) − zero_point)``, real-valued zero point."""

    scale: np.float32
    zero_point: np.float32
    u_min: float
    u_max: float


@dataclass(frozen=True)
class Pow2Grid:
    """``x̂ = sign(x)·clip(2^round(log2|x|), q_min, q_max)``, and 0 where ``|x| < threshold`` (a zero level,
    ``threshold = q_min/√2``). Unsigned grids apply a ReLU first. A grid without a zero level maps ``x = 0`` to
    ``+q_min`` (sign(0) = +1)."""

    q_min: np.float32
    q_max: np.float32
    threshold: Optional[np.float32]  # None: no zero level
    signed: bool


@dataclass(frozen=True)
class SignGrid:
    """``x̂ = +scale`` where ``x >= 0`` (so sign(0) = +1), else ``−scale``."""

    scale: np.float32


Grid = Union[IntegerGrid, AffineFloat, Pow2Grid, SignGrid]
