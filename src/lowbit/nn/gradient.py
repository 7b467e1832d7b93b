"""Quantizing gradients in the backward pass (Banner et al. 2018).

The gradient ``g_l`` with respect to a layer's output is used twice in backpropagation:

1. ``g_{l-1} = g_l · W^T`` (the gradient propagated to the layer below) is computed from ``Q(g_l)``, an 8-bit copy
   with stochastic rounding over the global range of the tensor;
2. ``g_W = g_l^T · I_{l-1}`` (the weight gradient) is computed from the high-precision ``g_l``.

This "gradient bifurcation" is done here inside one autograd Function per layer type: the forward is a single
``linear``/``conv2d`` and the backward calls the two halves of the layer's own backward with different gradients, so
the cost is that of an ordinary backward plus one quantization of ``g_l``. With ``bifurcate=False`` (ablation) the
weight gradient also sees ``Q(g_l)``.

Under ``torch.autocast`` the forward op runs in the autocast dtype (bfloat16, float16) while the saved input and
weight keep theirs (float32); the backward computes in the gradient's dtype, as autocast's own backward of the op
would, and returns each gradient in the dtype of the tensor it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..quantizers.base import Quantizer

__all__ = ["quantize_gradient", "bifurcated_linear", "bifurcated_conv2d"]


class _QuantizeGradient(torch.autograd.Function):
    """Identity in the forward pass; the incoming gradient is replaced by ``Q(gradient)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantizer: Quantizer) -> torch.Tensor:
        ctx.quantizer = quantizer
        # a copy, not ``x.view_as(x)``: autograd refuses in-place ops on a view returned by a custom Function, and
        # the next layer is often an in-place activation (ReLU(inplace=True) after BatchNorm, as in torchvision)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return ctx.quantizer(grad), None


def quantize_gradient(x: torch.Tensor, quantizer: Optional[Quantizer]) -> torch.Tensor:
    """Return ``x`` unchanged, but quantize the gradient that flows back through it."""
    if quantizer is None or not torch.is_grad_enabled() or not x.requires_grad:
        return x
    return _QuantizeGradient.apply(x, quantizer)


class _BifurcatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        quantizer: Quantizer,
        bifurcate: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.quantizer = quantizer
        ctx.bifurcate = bifurcate
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype = x.dtype, weight.dtype
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)  # as autocast ran the forward (no-op otherwise)
        quantize = ctx.needs_input_grad[0] or not ctx.bifurcate
        with torch.no_grad():
            grad_q = ctx.quantizer(grad) if quantize else grad
        grad_for_weight = grad if ctx.bifurcate else grad_q
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_q.matmul(weight).to(x_dtype)
        flat_g = grad_for_weight.reshape(-1, grad_for_weight.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = flat_g.t().matmul(x.reshape(-1, x.shape[-1])).to(weight_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = flat_g.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


class _BifurcatedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
        quantizer: Quantizer,
        bifurcate: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.quantizer = quantizer
        ctx.bifurcate = bifurcate
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        dtypes = (x.dtype, weight.dtype, ctx.bias_dtype)
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)  # as autocast ran the forward (no-op otherwise)
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.bias_sizes is not None

        def conv_backward(g: torch.Tensor, mask: list[bool]) -> tuple[Optional[torch.Tensor], ...]:
            return torch.ops.aten.convolution_backward(
                g, x, weight, ctx.bias_sizes, list(stride), list(padding), list(dilation), False, [0, 0], groups, mask
            )

        if ctx.bifurcate:
            grad_x = None
            if need_x:  # not for the first layer: nothing is propagated, so nothing is quantized
                with torch.no_grad():
                    grad_x = conv_backward(ctx.quantizer(grad), [True, False, False])[0]
            _, grad_w, grad_b = conv_backward(grad, [False, need_w, need_b])
        else:
            with torch.no_grad():
                grad_q = ctx.quantizer(grad)
            grad_x, grad_w, grad_b = conv_backward(grad_q, [need_x, need_w, need_b])
        grad_x, grad_w, grad_b = (g if g is None else g.to(dtype) for g, dtype in zip((grad_x, grad_w, grad_b), dtypes))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def bifurcated_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    quantizer: Quantizer,
    bifurcate: bool = True,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose backward propagates ``Q(g)`` to ``x`` and uses ``g`` (or ``Q(g)`` without
    ``bifurcate``) for the weight gradient."""
    return _BifurcatedLinear.apply(x, weight, bias, quantizer, bifurcate)


def bifurcated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    quantizer: Quantizer,
    bifurcate: bool = True,
) -> torch.Tensor:
    """``F.conv2d`` with the bifurcated, quantized backward of :func:`bifurcated_linear`.

    ``padding`` must be a pair of ints (callers resolve string padding and non-zero padding modes first)."""
    return _BifurcatedConv2d.apply(
        x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, quantizer, bifurcate
    )
