"""Quantized layers: where quantizers are applied (weight, input, bias and output-gradient slots).

Supported layer types and their slots: docs/layers.md.
"""

from .activation import QuantAct
from .adapter import QuantizedAdapter, register_layer
from .attention import QuantMultiheadAttention
from .conv import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
)
from .embedding import QuantEmbedding
from .gradient import bifurcated_call, bifurcated_conv, bifurcated_conv2d, bifurcated_linear, quantize_gradient
from .layers import QUANTIZED_LAYERS, QuantizedLayer, QuantLinear
from .range_bn import RANGE_BATCHNORMS, RangeBatchNorm1d, RangeBatchNorm2d
from .recurrent import UNSUPPORTED_LAYERS, unsupported_reason
from .slots import SLOTS, Slot

__all__ = [
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantEmbedding",
    "QuantMultiheadAttention",
    "QuantizedAdapter",
    "QuantizedLayer",
    "QuantAct",
    "RangeBatchNorm1d",
    "RangeBatchNorm2d",
    "register_layer",
    "unsupported_reason",
    "quantize_gradient",
    "bifurcated_linear",
    "bifurcated_conv",
    "bifurcated_conv2d",
    "bifurcated_call",
    "SLOTS",
    "Slot",
    "QUANTIZED_LAYERS",
    "RANGE_BATCHNORMS",
    "UNSUPPORTED_LAYERS",
]
