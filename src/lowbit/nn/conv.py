"""Quantized convolutions: ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` (groups and depthwise included).

Every slot applies, as for Linear::

    y = conv( Q_input(x), Q_weight(W), Q_bias(b) )        and, in backward, g -> Q_grad(g) (bifurcated)

The bifurcated backward is one function for every dimension and for transposed convolutions
(:func:`~lowbit.nn.gradient.bifurcated_conv`): ``Q(g)`` goes to the input gradient, ``g`` to the weight gradient.
A ConvTranspose's weight is ``(C_in, C_out / groups, k...)``: per-channel weight quantizers scale it per input channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..quantizers.base import Quantizer
from .gradient import ConvGeometry, bifurcated_conv
from .layers import QUANTIZED_LAYERS, QuantizedLayer, SlotQuantizers, slot_layer_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
]


class _QuantConvNd(QuantizedLayer):
    """Slots for ``nn.ConvNd`` / ``nn.ConvTransposeNd``: the float class's constructor arguments, then the quantizer
    keywords (``weight_quantizer=...``)."""

    padding: Any
    padding_mode: str
    transposed: bool

    def __init__(
        self,
        *args: Any,
        weight_quantizer: Optional[Quantizer] = None,
        input_quantizer: Optional[Quantizer] = None,
        bias_quantizer: Optional[Quantizer] = None,
        grad_quantizer: Optional[Quantizer] = None,
        bifurcate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._set_slots(weight_quantizer, input_quantizer, bias_quantizer, grad_quantizer, bifurcate)

    @classmethod
    def from_float(cls, conv: nn.Module, **slots: Unpack[SlotQuantizers]) -> _QuantConvNd:
        """Wrap an existing convolution; its parameter tensors are reused, not copied."""
        options = dict(
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        if conv.transposed:
            options["output_padding"] = conv.output_padding
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **options, device="meta")
        layer.weight, layer.bias = conv.weight, conv.bias
        if "bias" in slots and slots["bias"] is not None and conv.bias is None:
            raise ConfigError(f"{slot_layer_name(slots)}: a bias quantizer was given for a layer without bias")
        layer._set_slots(**slots)
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor, output_size: Optional[list[int]] = None) -> torch.Tensor:
        x = self._quantize_input(x)
        weight, bias = self.quantized_weight(), self.quantized_bias()
        dims = len(self.kernel_size)
        if self.transposed:
            output_padding = self._output_padding(
                x, output_size, list(self.stride), list(self.padding), list(self.kernel_size), dims, list(self.dilation)
            )
            geometry = ConvGeometry(
                tuple(self.stride), tuple(self.padding), tuple(self.dilation), self.groups, True, tuple(output_padding)
            )
        else:
            padding = self.padding
            if isinstance(padding, str) or self.padding_mode != "zeros":
                # resolve 'same' and non-zero padding modes into an explicit pad, as nn.ConvNd does internally
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
                padding = (0,) * dims
            geometry = ConvGeometry(tuple(self.stride), tuple(padding), tuple(self.dilation), self.groups)
        if self.grad_quantizer is None or not torch.is_grad_enabled():
            return geometry.forward(x, weight, bias)
        return bifurcated_conv(x, weight, bias, geometry, self.grad_quantizer, self.bifurcate)


@QUANTIZED_LAYERS.register(nn.Conv1d, options={}, description="nn.Conv1d with quantizer slots")
class QuantConv1d(_QuantConvNd, nn.Conv1d):
    pass


@QUANTIZED_LAYERS.register(nn.Conv2d, options={}, description="nn.Conv2d with quantizer slots")
class QuantConv2d(_QuantConvNd, nn.Conv2d):
    pass


@QUANTIZED_LAYERS.register(nn.Conv3d, options={}, description="nn.Conv3d with quantizer slots")
class QuantConv3d(_QuantConvNd, nn.Conv3d):
    pass


@QUANTIZED_LAYERS.register(nn.ConvTranspose1d, options={}, description="nn.ConvTranspose1d with quantizer slots")
class QuantConvTranspose1d(_QuantConvNd, nn.ConvTranspose1d):
    pass


@QUANTIZED_LAYERS.register(nn.ConvTranspose2d, options={}, description="nn.ConvTranspose2d with quantizer slots")
class QuantConvTranspose2d(_QuantConvNd, nn.ConvTranspose2d):
    pass


@QUANTIZED_LAYERS.register(nn.ConvTranspose3d, options={}, description="nn.ConvTranspose3d with quantizer slots")
class QuantConvTranspose3d(_QuantConvNd, nn.ConvTranspose3d):
    pass
