"""A stand-alone activation quantizer, for placing a quantizer anywhere in a model by hand."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..quantizers.base import Quantizer

__all__ = ["QuantAct"]


class QuantAct(nn.Module):
    """``y = Q(x)`` for an activation quantizer ``Q`` (role ``activation``).

    ``lowbit.quantize`` puts activation quantizers in the ``input`` slot of each quantized layer, which covers the
    activations feeding every Linear/Conv2d. Use this module for activations that feed something else (an output
    you export, a pooling layer, a custom op) or to build a quantized model by hand.
    """

    def __init__(self, quantizer: Quantizer) -> None:
        super().__init__()
        if quantizer.role != "activation":
            raise ConfigError(f"QuantAct needs a quantizer built with role='activation', got role={quantizer.role!r}")
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(x)
