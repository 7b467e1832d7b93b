"""Quantized layers: ordinary PyTorch layers with quantizer slots (``Linear`` here; convolutions in ``conv.py``,
``Embedding`` in ``embedding.py``, attention in ``attention.py``, user layer types in ``adapter.py``).

A layer never looks inside its quantizers; it only applies them to its slots::

    y = layer( Q_input(x), Q_weight(W), Q_bias(b) )        and, in backward, g_l -> Q_grad(g_l) (bifurcated)

Every slot may be ``None`` (left in float). The float parameters keep their names (``weight``, ``bias``), so a float
``state_dict`` loads into a quantized model and the latent weights are what the optimizer updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..quantizers.base import Quantizer
from ..registry import Registry
from .gradient import bifurcated_linear
from .slots import SLOTS

if TYPE_CHECKING:
    from torch.types import Device
    from typing_extensions import Unpack

__all__ = ["QuantLinear", "QuantizedLayer", "SlotQuantizers", "SLOTS", "QUANTIZED_LAYERS", "slot_layer_name"]

#: float layer class -> its quantized replacement, which has ``from_float(layer, **slots)``; ``lowbit.quantize``
#: swaps modules whose type is a registered class. The supported types and their slots: docs/layers.md
QUANTIZED_LAYERS: Registry[type] = Registry("quantized layer type")


class SlotQuantizers(TypedDict, total=False):
    """The keyword arguments of ``from_float``: one quantizer (or ``None``) per slot, and ``bifurcate``."""

    weight: Optional[Quantizer]
    input: Optional[Quantizer]
    bias: Optional[Quantizer]
    grad: Optional[Quantizer]
    bifurcate: bool


def slot_layer_name(slots: dict[str, Any], default: str = "a layer") -> str:
    """The model's name of the layer being converted, read from its slot quantizers (``lowbit.quantize`` names them
    ``<layer>.<attribute>`` before ``from_float``), for messages."""
    for quantizer in slots.values():
        name = getattr(quantizer, "module_name", None)
        if isinstance(name, str) and "." in name:
            return name.rsplit(".", 1)[0]
    return default


def _decline_fused_fast_paths(module: nn.Module, args: tuple) -> None:
    """A no-op forward pre-hook on every quantized layer: ``nn.TransformerEncoderLayer``'s eval fast path declines
    modules with hooks, and would otherwise read ``linear1.weight`` etc. directly and compute in float."""
    return None


class QuantizedLayer:
    """Mixin holding the quantizer slots of a layer with a ``weight`` and an optional ``bias``.

    The weight slot quantizes ``weight`` as a whole tensor; per-channel quantizers take dimension 0 as the channel
    (the output channel of Linear and Conv, the input channel of ConvTranspose, the token of Embedding)."""

    weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def _set_slots(
        self,
        weight: Optional[Quantizer] = None,
        input: Optional[Quantizer] = None,
        bias: Optional[Quantizer] = None,
        grad: Optional[Quantizer] = None,
        bifurcate: bool = True,
    ) -> None:
        for slot, quantizer in (("weight", weight), ("input", input), ("bias", bias), ("grad", grad)):
            self.register_module(SLOTS[slot].attribute, quantizer)
        if bias is not None and self.bias is None:
            raise ConfigError("a bias quantizer was given for a layer without bias")
        self.bifurcate = bool(bifurcate)
        if _decline_fused_fast_paths not in self._forward_pre_hooks.values():
            self.register_forward_pre_hook(_decline_fused_fast_paths)
        # set by the grid update policy (R / SR): the stored weights are already on the quantizer's grid, so the
        # forward pass uses them as they are (quantizing again is the identity, but costs time and, for SR, noise)
        self.weights_on_grid = False
        # weights and biases are known now: data-free initialisation (LSQ step, Uhlich ranges) happens here
        if weight is not None:
            weight.maybe_initialize(self.weight)
        if bias is not None:
            bias.maybe_initialize(self.bias)

    def quantizers(self) -> dict[str, Quantizer]:
        """The non-empty slots, by slot name."""
        found = {}
        for slot, attribute in ((s.name, s.attribute) for s in SLOTS.values()):
            quantizer = getattr(self, attribute)
            if quantizer is not None:
                found[slot] = quantizer
        return found

    def quantized_weight(self) -> torch.Tensor:
        q = self.weight_quantizer
        return self.weight if q is None or self.weights_on_grid else q(self.weight)

    def quantized_bias(self) -> Optional[torch.Tensor]:
        q = self.bias_quantizer
        return self.bias if q is None or self.bias is None else q(self.bias)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        q = self.input_quantizer
        return x if q is None else q(x)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.grad_quantizer is not None and not self.bifurcate:
            text += ", bifurcate=False"
        return text


@QUANTIZED_LAYERS.register(nn.Linear, options={}, description="nn.Linear with quantizer slots")
class QuantLinear(QuantizedLayer, nn.Linear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_quantizer: Optional[Quantizer] = None,
        input_quantizer: Optional[Quantizer] = None,
        bias_quantizer: Optional[Quantizer] = None,
        grad_quantizer: Optional[Quantizer] = None,
        bifurcate: bool = True,
        device: Device = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._set_slots(weight_quantizer, input_quantizer, bias_quantizer, grad_quantizer, bifurcate)

    @classmethod
    def from_float(cls, linear: nn.Linear, **slots: Unpack[SlotQuantizers]) -> QuantLinear:
        """Wrap an existing ``nn.Linear``; its parameter tensors are reused, not copied."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer._set_slots(**slots)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quantize_input(x)
        weight, bias = self.quantized_weight(), self.quantized_bias()
        if self.grad_quantizer is not None and torch.is_grad_enabled():
            return bifurcated_linear(x, weight, bias, self.grad_quantizer, self.bifurcate)
        return F.linear(x, weight, bias)
