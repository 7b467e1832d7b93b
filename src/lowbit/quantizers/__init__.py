"""Quantizers: which grid, and how values are rounded onto it.

``build_quantizer({"type": "lsq", "bits": 4}, role="weight")`` builds one from a recipe entry. The registry below is
the only place that lists the families; the recipe schema reads it too.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

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

#: recipe ``type`` -> constructor taking keyword options plus ``role`` and ``seed``
QUANTIZERS: dict[str, Callable[..., Quantizer]] = {
    "binary": BinaryQuantizer,
    "uniform": UniformQuantizer,
    "minmax": MinMaxQuantizer,
    "lsq": LSQQuantizer,
    "parametric": make_parametric,
}


def build_quantizer(spec: Mapping[str, Any], *, role: str, seed: int = 0) -> Quantizer:
    """Instantiate the quantizer described by a (validated) recipe entry ``{"type": ..., **options}``."""
    options = dict(spec)
    kind = options.pop("type")
    try:
        factory = QUANTIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown quantizer type {kind!r}; valid choices: {', '.join(QUANTIZERS)}") from None
    return factory(role=role, seed=seed, **options)
