"""Quantizers: which grid, and how values are rounded onto it.

``build_quantizer({"type": "lsq", "bits": 4}, role="weight")`` builds one from a recipe entry. Each family registers
itself in :data:`QUANTIZERS` in its own module (``@QUANTIZERS.register("lsq")``); every module of this package is
imported below, so a new family is one new file. The recipe schema reads the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..registry import import_submodules
from .base import QUANTIZERS, Quantizer
from .binary import BinaryQuantizer
from .codes import QuantizedTensor
from .lsq import LSQQuantizer
from .minmax import MinMaxQuantizer
from .numerics import InitializationError
from .parametric import ParametricPow2Quantizer, ParametricUniformQuantizer, make_parametric
from .uniform import UniformQuantizer

__all__ = [
    "Quantizer",
    "QuantizedTensor",
    "BinaryQuantizer",
    "UniformQuantizer",
    "MinMaxQuantizer",
    "LSQQuantizer",
    "ParametricUniformQuantizer",
    "ParametricPow2Quantizer",
    "make_parametric",
    "QUANTIZERS",
    "InitializationError",
    "build_quantizer",
]


def build_quantizer(spec: Mapping[str, Any], *, role: str, seed: int = 0) -> Quantizer:
    """Instantiate the quantizer described by a (validated) recipe entry ``{"type": ..., **options}``."""
    return QUANTIZERS.build(spec, role=role, seed=seed)


import_submodules(__name__, __path__)  # families in modules not named above register themselves too
