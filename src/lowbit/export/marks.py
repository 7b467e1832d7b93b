"""What each ``lowbit.Mark`` placeholder of a traced graph stands for (see :mod:`lowbit.export.onnx_graph`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..quantizers.grids import Grid
from .grids import WeightCodes

__all__ = ["WeightMark", "ActMark", "AffineMark", "Mark", "MARK_DOMAIN", "MARK_OP"]

MARK_DOMAIN, MARK_OP = "lowbit", "Mark"


@dataclass
class WeightMark:
    name: str  # parameter name, e.g. "features.0.weight"
    codes: Optional[WeightCodes]
    values: np.ndarray  # float values (used when codes is None)


@dataclass
class ActMark:
    name: str  # e.g. "features.4.input"
    grid: Grid


@dataclass
class AffineMark:
    name: str  # the normalisation module, e.g. "features.1"
    a: np.ndarray  # float64 (C,)
    b: np.ndarray
    rank: int = 4  # rank of the tensor it normalises (channels on axis 1)


Mark = Union[WeightMark, ActMark, AffineMark]
