"""Integer codes of a quantized tensor: what bit-packing stores and ONNX export reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["QuantizedTensor", "index_dtype", "integer_range"]


@dataclass
class QuantizedTensor:
    """Integer codes of a quantized tensor, and how to turn them back into real values.

    ``indices`` are the unsigned codes ``0 .. 2**bits - 1`` that bit-packing stores. The integer level of an index is
    ``q = table[index]`` when a lookup ``table`` is given (binary ``[-1, +1]``, power-of-two grids), else
    ``q = index + qmin``. The real value is ``x = scale * (q - zero_point)``; ``scale`` and ``zero_point`` are
    per-tensor (0-d) or per-channel (shape broadcastable against ``indices`` along ``axis``).
    """

    indices: torch.Tensor
    bits: int
    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int = 0
    table: Optional[torch.Tensor] = None
    axis: Optional[int] = None

    @property
    def levels(self) -> torch.Tensor:
        """Integer levels ``q`` (as float when a non-integer table is used)."""
        if self.table is not None:
            return self.table[self.indices.long()]
        return self.indices.long() + self.qmin

    def dequantize(self) -> torch.Tensor:
        return self.scale * (self.levels.to(self.scale.dtype) - self.zero_point)


def index_dtype(bits: int) -> torch.dtype:
    """Smallest torch integer dtype that holds unsigned codes of ``bits`` bits."""
    if bits <= 8:
        return torch.uint8
    return torch.int32 if bits <= 31 else torch.int64


def integer_range(bits: int, signed: bool, symmetric: bool = False) -> tuple[int, int]:
    """``(Q_N, Q_P)`` such that codes lie in ``[-Q_N, Q_P]``.

    signed: ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1`` (``Q_N = Q_P`` when ``symmetric``); unsigned: ``0, 2^b - 1``.
    """
    if signed:
        q_p = 2 ** (bits - 1) - 1
        return (q_p if symmetric else q_p + 1), q_p
    return 0, 2**bits - 1
