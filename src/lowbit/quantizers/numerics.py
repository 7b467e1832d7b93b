"""Numerical hygiene shared by the quantizers and Range BatchNorm: the dtype statistics are computed in, casting
results back to the input's dtype, and the checks on the tensor a data-dependent initialisation reads.

Dtype policy:

* Statistics (means, ranges, running averages) and learned-parameter arithmetic (steps, their gradients) are
  computed in ``statistics_dtype(x.dtype) = promote(x.dtype, float32)``: float16 and bfloat16 inputs are widened to
  float32, float32 and float64 are computed as they are. In float16, ``v / s`` overflows for an activation of 700
  and a step of 0.01, and ``max - min`` of ``±6e4`` overflows, which turned step gradients and ranges into NaN.
* Outputs keep the input's dtype (:func:`cast_back`, saturating at the dtype's largest finite value, so that a
  level just beyond float16's range becomes 65504 rather than ``inf``); gradients flow back in the input's dtype.
* Parameters and buffers keep whatever dtype the module has. Under ``torch.autocast`` (the usual route to mixed
  precision) they stay float32; ``module.half()`` casts them, as it casts BatchNorm's running statistics, and the
  statistics are then computed in float32 and rounded into them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "InitializationError",
    "statistics_dtype",
    "widen",
    "cast_back",
    "check_initializing_tensor",
    "lerp_finite_",
]


class InitializationError(ConfigError):
    """A data-dependent initialisation (LSQ step, min-max running range, Uhlich ranges, Range BN statistics) was
    given a tensor it cannot initialise from: empty, or holding NaN or infinite values. Initialising from it would
    leave the state NaN or undefined for the rest of training, so nothing is changed and this is raised instead."""


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics of a tensor of ``dtype`` are computed in: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def widen(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`statistics_dtype` (``x`` itself, not a copy, when it already is)."""
    return x.to(statistics_dtype(x.dtype))


class _SaturatingCast(torch.autograd.Function):
    """``clamp(y, -max, max).to(dtype)`` in the forward pass; the gradient passes unchanged (cast back to ``y``'s
    dtype): the saturation only stands for the carrier dtype's lack of range, not for a clipping of the grid."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.dtype = y.dtype
        limit = torch.finfo(dtype).max
        return y.clamp(-limit, limit).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.to(ctx.dtype), None


def cast_back(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``y`` (computed in a wider dtype) as ``dtype``, saturating at ``dtype``'s finite range; ``y`` itself when it
    has that dtype already."""
    if y.dtype == dtype:
        return y
    if torch.finfo(dtype).max >= torch.finfo(y.dtype).max:
        return y.to(dtype)
    return _SaturatingCast.apply(y, dtype)


def check_initializing_tensor(x: torch.Tensor, who: str, fix: str) -> None:
    """Raise :class:`InitializationError` unless ``x`` is non-empty and finite.

    ``who`` names the module (``"the activation quantizer 'features.4.input_quantizer'"``), ``fix`` says what to do.
    Reads one flag from ``x``'s device: it runs once per module, not per step.
    """
    if x.numel() == 0:
        raise InitializationError(
            f"{who} cannot initialise from an empty tensor (shape {tuple(x.shape)}): it needs at least one value; {fix}"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan = int(torch.isnan(x).sum())
        inf = x.numel() - int(finite.sum()) - nan
        raise InitializationError(
            f"{who} cannot initialise from a tensor with {nan} NaN and {inf} inf values (of {x.numel()}): its state "
            f"would stay non-finite for the rest of training; {fix}"
        )


def lerp_finite_(running: torch.Tensor, batch: torch.Tensor, weight: float) -> torch.Tensor:
    """``running = (1 - weight)·running + weight·batch`` in ``running``'s dtype, elementwise skipped where ``batch``
    (cast to that dtype) is not finite: one NaN batch would otherwise poison a running statistic for good. Reads
    nothing on the host, so it costs no synchronisation on an accelerator."""
    batch = batch.to(running.dtype)
    return running.lerp_(torch.where(torch.isfinite(batch), batch, running), weight)
