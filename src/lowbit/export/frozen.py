"""A weight slot that holds fixed integer codes: what :func:`lowbit.load_packed` puts in place of the recipe's
weight and bias quantizers.

The layer's parameter already holds the decoded values ``codes.dequantize()``, so the slot is the identity in the
forward pass. Re-applying the original quantizer instead would not always be exact: min-max ranges, LSQ's clipping
and learned grids are recomputed from the tensor they quantize. The slot keeps what the rest of lowbit reads from a
quantizer: ``bits`` (model summary, memory), ``signed``, and ``encode`` (ONNX export of a loaded packed model).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..quantizers.base import Quantizer
from ..quantizers.codes import QuantizedTensor

__all__ = ["FrozenCodes"]


class FrozenCodes(Quantizer):
    """Identity quantizer slot carrying the stored codes (``codes`` is ``None`` for a tensor stored as float)."""

    kind = "frozen"

    def __init__(self, codes: Optional[QuantizedTensor], *, bits: int, signed: bool, role: str = "weight") -> None:
        super().__init__(role=role)
        self.codes = codes
        self._bits = int(bits)
        self._signed = bool(signed)
        self.mark_initialized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the parameter holds the decoded codes already

    def eval_grid(self) -> None:
        return None  # the identity, like forward

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        if self.codes is None:
            raise ValueError("this tensor was stored as float32, without integer codes")
        if tuple(self.codes.indices.shape) != tuple(x.shape):
            raise ValueError(
                f"stored codes have shape {tuple(self.codes.indices.shape)}, got a tensor of shape {tuple(x.shape)}"
            )
        return self.codes

    def extra_repr(self) -> str:
        return super().extra_repr() + (", codes=stored" if self.codes is not None else ", float32")
