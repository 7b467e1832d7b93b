"""Quantized layers: where quantizers are applied (weight, input, bias and output-gradient slots)."""

from .activation import QuantAct
from .gradient import bifurcated_conv2d, bifurcated_linear, quantize_gradient
from .layers import QUANTIZED_LAYERS, QuantConv2d, QuantizedLayer, QuantLinear
from .range_bn import RANGE_BATCHNORMS, RangeBatchNorm1d, RangeBatchNorm2d
from .slots import SLOTS, Slot

__all__ = [
    "QuantLinear",
    "QuantConv2d",
    "QuantizedLayer",
    "QuantAct",
    "RangeBatchNorm1d",
    "RangeBatchNorm2d",
    "quantize_gradient",
    "bifurcated_linear",
    "bifurcated_conv2d",
    "SLOTS",
    "Slot",
    "QUANTIZED_LAYERS",
    "RANGE_BATCHNORMS",
]
