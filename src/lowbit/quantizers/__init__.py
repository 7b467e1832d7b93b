"""Quantizers: which grid, and how values are rounded onto it.

``build_quantizer({"type": "lsq", "bits": 4}, role="weight")`` builds one from a recipe entry. The registry below is
the only place that lists the families; the recipe schema reads it too (a family defined elsewhere registers itself
with ``QUANTIZERS.register("name", factory)``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..registry import Registry
from .base import Quantizer
from .binary import BinaryQuantizer
from .codes import QuantizedTensor
from .lsq import LSQQuantizer
from .minmax import MinMaxQuantizer
from .parametric import ParametricPow2Quantizer, ParametricUniformQuantizer, make_parametric
from .uniform import UniformQuantizer

__all__ = [
    "Quantizer", "QuantizedTensor", "BinaryQuantizer", "UniformQuantizer", "MinMaxQuantizer", "LSQQuantizer",
    "ParametricUniformQuantizer", "ParametricPow2Quantizer", "QUANTIZERS", "build_quantizer",
]

#: recipe ``type`` -> constructor taking keyword options plus ``role`` and ``seed``; each family's options are its
#: ``OPTIONS`` (JSON schema), which the recipe schema reads from here
QUANTIZERS: Registry[str] = Registry("quantizer type")
QUANTIZERS.register("binary", BinaryQuantizer)
QUANTIZERS.register("uniform", UniformQuantizer)
QUANTIZERS.register("minmax", MinMaxQuantizer)
QUANTIZERS.register("lsq", LSQQuantizer)
QUANTIZERS.register("parametric", make_parametric, keywords_from=(ParametricUniformQuantizer, ParametricPow2Quantizer))


def build_quantizer(spec: Mapping[str, Any], *, role: str, seed: int = 0) -> Quantizer:
    """Instantiate the quantizer described by a (validated) recipe entry ``{"type": ..., **options}``."""
    return QUANTIZERS.build(spec, role=role, seed=seed)
