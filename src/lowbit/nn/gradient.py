"""Quantizing gradients in the backward pass (Banner et al. 2018).

The gradient ``g_l`` with respect to a layer's output is used twice in backpropagation:

1. ``g_{l-1} = g_l · W^T`` (the gradient propagated to the layer below) is computed from ``Q(g_l)``, an 8-bit copy
   with stochastic rounding over the global range of the tensor;
2. ``g_W = g_l^T · I_{l-1}`` (the weight gradient) is computed from the high-precision ``g_l``.

This "gradient bifurcation" is done here inside one autograd Function per op family: the forward is a single
``linear`` or convolution (1-3 d, direct or transposed, :class:`ConvGeometry`) and the backward calls the two
halves of the layer's own backward with different gradients, so the cost is that of an ordinary backward plus one
quantization of ``g_l``. With ``bifurcate=False`` (ablation) the weight gradient also sees ``Q(g_l)``. Layer types
without a hand-written backward (users' registered layers) use :func:`bifurcated_call`, which asks the op's own
autograd graph for the two halves.

Under ``torch.autocast`` the forward op runs in the autocast dtype (bfloat16, float16) while the saved input and
weight keep theirs (float32); the backward computes in the gradient's dtype, as autocast's own backward of the op
would, and returns each gradient in the dtype of the tensor it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..quantizers.base import Quantizer

__all__ = [
    "quantize_gradient",
    "bifurcated_linear",
    "bifurcated_conv",
    "bifurcated_conv2d",
    "bifurcated_call",
    "ConvGeometry",
]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything of a convolution but its tensors: ``n`` spatial dimensions (1, 2, 3), direct or transposed.

    ``padding`` is explicit (callers resolve ``'same'`` and non-zero padding modes into an ``F.pad`` first);
    ``output_padding`` is used by transposed convolutions only (zeros otherwise)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.output_padding:
            object.__setattr__(self, "output_padding", (0,) * len(self.stride))

    @property
    def dims(self) -> int:
        return len(self.stride)

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The convolution itself, through ``F.conv{n}d`` / ``F.conv_transpose{n}d`` (so autocast applies)."""
        if self.transposed:
            conv_transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
            return conv_transpose(
                x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


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


class _BifurcatedConv(torch.autograd.Function):
    """A convolution of any dimension, direct or transposed, with the bifurcated backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        geometry: ConvGeometry,
        quantizer: Quantizer,
        bifurcate: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        ctx.quantizer = quantizer
        ctx.bifurcate = bifurcate
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return geometry.forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        dtypes = (x.dtype, weight.dtype, ctx.bias_dtype)
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)  # as autocast ran the forward (no-op otherwise)
        geometry: ConvGeometry = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.bias_sizes is not None

        def conv_backward(g: torch.Tensor, mask: list[bool]) -> tuple[Optional[torch.Tensor], ...]:
            return torch.ops.aten.convolution_backward(
                g,
                x,
                weight,
                ctx.bias_sizes,
                list(geometry.stride),
                list(geometry.padding),
                list(geometry.dilation),
                geometry.transposed,
                list(geometry.output_padding),
                geometry.groups,
                mask,
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
        return grad_x, grad_w, grad_b, None, None, None


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


def bifurcated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    geometry: ConvGeometry,
    quantizer: Quantizer,
    bifurcate: bool = True,
) -> torch.Tensor:
    """A convolution (1-, 2- or 3-d, direct or transposed, any groups) with the bifurcated, quantized backward of
    :func:`bifurcated_linear`: ``Q(g)`` is propagated to ``x`` (``aten.convolution_backward`` with the input mask),
    ``g`` (``Q(g)`` without ``bifurcate``) gives the weight and bias gradients."""
    return _BifurcatedConv.apply(x, weight, bias, geometry, quantizer, bifurcate)


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
    """``F.conv2d`` with the bifurcated, quantized backward (:func:`bifurcated_conv` for a 2-d direct convolution).

    ``padding`` must be a pair of ints (callers resolve string padding and non-zero padding modes first)."""
    geometry = ConvGeometry(tuple(stride), tuple(padding), tuple(dilation), groups)
    return bifurcated_conv(x, weight, bias, geometry, quantizer, bifurcate)


class _BifurcatedCall(torch.autograd.Function):
    """Any ``y = fn(x, weight, bias)`` with the bifurcated backward, from the op's own autograd graph: the forward
    records ``fn`` on detached leaves, the backward asks that graph for ``∂L/∂x`` with ``Q(g)`` and for
    ``∂L/∂W, ∂L/∂b`` with ``g`` (``Q(g)`` without ``bifurcate``)."""

    @staticmethod
    def forward(
        ctx: Any,
        fn: Any,
        quantizer: Quantizer,
        bifurcate: bool,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
    ) -> torch.Tensor:
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in (x, weight, bias)]
        with torch.enable_grad():
            y = fn(*leaves)
        ctx.graph = (y, leaves)
        ctx.quantizer, ctx.bifurcate = quantizer, bifurcate
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        y, (x, weight, bias) = ctx.graph
        need_x, need_w, need_b = ctx.needs_input_grad[3:6]
        with torch.no_grad():
            grad_q = ctx.quantizer(grad) if need_x or not ctx.bifurcate else grad
        grad_x = grad_w = grad_b = None
        if need_x:
            (grad_x,) = torch.autograd.grad(y, [x], grad_q, retain_graph=True, allow_unused=True)
        params = [t for t, need in ((weight, need_w), (bias, need_b)) if need and t is not None]
        if params:
            found = iter(torch.autograd.grad(y, params, grad if ctx.bifurcate else grad_q, allow_unused=True))
            grad_w = next(found) if need_w else None
            grad_b = next(found) if need_b and bias is not None else None
        ctx.graph = None
        return None, None, None, grad_x, grad_w, grad_b


def bifurcated_call(
    fn: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    quantizer: Quantizer,
    bifurcate: bool = True,
) -> torch.Tensor:
    """``fn(x, weight, bias)`` (any differentiable op, e.g. a user's layer) with the bifurcated backward of
    :func:`bifurcated_linear`, for layer types that have no hand-written one."""
    return _BifurcatedCall.apply(fn, quantizer, bifurcate, x, weight, bias)
