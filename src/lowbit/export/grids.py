"""What ONNX can express of a quantizer's grid: QuantizeLinear/DequantizeLinear parameters, or a float fallback.

The grids themselves are described by the quantizers (``Quantizer.eval_grid()``, :mod:`lowbit.quantizers.grids`);
this module only maps them, and weight codes, onto ONNX's 8-bit containers.

ONNX's pair is ``q = saturate(round_half_even(x / s) + z)`` into an 8-bit container and ``x̂ = (q − z)·s``. A lowbit
grid of integer levels ``l ∈ [l_min, l_max]`` with ``x̂ = s·(l − z)`` maps onto it by storing ``l + o`` with an offset
``o`` that fits ``[l_min + o, l_max + o]`` into the container; the container's zero point is ``z + o``. When the grid
is narrower than the container (e.g. 4 bits in ``uint8``), a ``Clip`` to ``[s·(l_min − z), s·(l_max − z)]`` comes
first, so saturation happens at the grid's ends (clipping before or after rounding is the same: both are monotone).

Activations always get ``uint8`` containers (signed grids with zero point 128): every onnxruntime integer kernel
accepts a ``uint8`` input. Weights get ``int8`` when their levels are small (``|l| <= 64`` and zero point 0: binary
±1, 2- to 7-bit grids) and ``uint8`` otherwise: on x86 CPUs without VNNI, onnxruntime multiplies ``uint8 × int8``
with ``VPMADDUBSW``, whose 16-bit pair sums saturate once ``|w| > 64`` (``255·65·2 > 32767``); its ``uint8 ×
uint8`` kernel does not saturate. Both store the same values, so the choice changes speed, not the function.

Grids with no QDQ form are written as float ops: a real-valued zero point or more than 256 levels (``AffineFloat``),
power-of-two grids (``Pow2Grid``) and binary activations (``SignGrid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..quantizers.codes import QuantizedTensor
from ..quantizers.grids import IntegerGrid

__all__ = ["QDQ", "WeightCodes", "activation_qdq", "weight_codes", "WEIGHT_DTYPES", "SATURATION_SAFE"]

WEIGHT_DTYPES = ("auto", "int8", "uint8")
#: largest |weight level| for which uint8 × int8 pair sums fit in int16 (VPMADDUBSW): 255 · 64 · 2 = 32640
SATURATION_SAFE = 64
_RANGES = {np.uint8: (0, 255), np.int8: (-128, 127)}


@dataclass(frozen=True)
class QDQ:
    """Parameters of a QuantizeLinear/DequantizeLinear pair (uint8 container) with an optional Clip before it."""

    scale: np.float32
    zero_point: np.uint8
    clip: Optional[tuple[np.float32, np.float32]]


def activation_qdq(grid: IntegerGrid) -> Optional[QDQ]:
    """uint8 QuantizeLinear/DequantizeLinear parameters of an integer grid, or ``None`` if it has > 256 levels."""
    offset = 128 if grid.l_min < 0 else 0
    low, high = grid.l_min + offset, grid.l_max + offset
    zero = grid.zero_point + offset
    if low < 0 or high > 255 or not 0 <= zero <= 255:
        return None
    clip = None
    if low > 0 or high < 255:
        clip = (
            np.float32(grid.scale * np.float32(grid.l_min - grid.zero_point)),
            np.float32(grid.scale * np.float32(grid.l_max - grid.zero_point)),
        )
    return QDQ(grid.scale, np.uint8(zero), clip)


@dataclass
class WeightCodes:
    """A weight as an 8-bit container plus DequantizeLinear parameters (per tensor, or per output channel)."""

    values: np.ndarray  # int8 or uint8, the weight's shape
    scale: np.ndarray  # float32, 0-d or (C,)
    zero_point: np.ndarray  # the container dtype, same shape as scale
    bits: int

    @property
    def axis(self) -> Optional[int]:
        return 0 if self.scale.ndim == 1 else None


def _per_channel(t: torch.Tensor, axis: Optional[int], channels: int) -> np.ndarray:
    array = t.detach().cpu().numpy()
    if array.size == 1:
        return array.reshape(())
    if axis != 0 or array.size != channels:
        raise ValueError("only per-tensor or per-output-channel (axis 0) parameters have a DequantizeLinear form")
    return array.reshape(channels)


def weight_codes(qt: QuantizedTensor, weight_dtype: str = "auto") -> Optional[WeightCodes]:
    """The codes of a weight in an 8-bit container, or ``None`` when they do not fit one (> 8 bits, non-integer
    levels or zero point, parameters along another axis)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"unknown weight_dtype {weight_dtype!r}; valid choices: {', '.join(WEIGHT_DTYPES)}")
    levels = qt.levels.detach().cpu().numpy()
    channels = qt.indices.shape[0] if qt.indices.dim() else 1
    try:
        scale = _per_channel(qt.scale, qt.axis, channels).astype(np.float32)
        zero = _per_channel(qt.zero_point, qt.axis, channels)
    except ValueError:
        return None
    if scale.ndim == 0 and zero.ndim == 1 or scale.ndim == 1 and zero.ndim == 0:
        scale, zero = np.broadcast_arrays(scale, zero)
        scale, zero = scale.copy(), zero.copy()
    if not (np.all(np.mod(levels, 1) == 0) and np.all(np.mod(zero, 1) == 0)):
        return None
    levels, zero = levels.astype(np.int64), zero.astype(np.int64)
    low, high = min(levels.min(initial=0), zero.min(initial=0)), max(levels.max(initial=0), zero.max(initial=0))

    def fits(dtype: type[np.integer], offset: int) -> bool:
        lo, hi = _RANGES[dtype]
        return lo <= low + offset and high + offset <= hi

    small = not np.any(zero) and max(abs(low), abs(high)) <= SATURATION_SAFE
    options = {
        "int8": [(np.int8, 0), (np.uint8, 128), (np.uint8, 0)],
        "uint8": [(np.uint8, 128), (np.uint8, 0), (np.int8, 0)],
        "auto": ([(np.int8, 0)] if small else []) + [(np.uint8, 128), (np.uint8, 0), (np.int8, 0)],
    }
    for dtype, offset in options[weight_dtype]:
        if fits(dtype, offset):
            zero_point = (zero + offset).astype(dtype).reshape(scale.shape)
            return WeightCodes((levels + offset).astype(dtype), scale, zero_point, int(qt.bits))
    return None
