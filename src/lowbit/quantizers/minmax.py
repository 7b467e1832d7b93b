"""Asymmetric min-max ``b``-bit quantization (GEMMLOWP; Banner et al. 2018).

For a range ``[m, M]`` (widened to contain 0 so that zero is exactly representable)::

    scale = (M - m) / (2^b - 1),      z = clamp(round(-m / scale), 0, 2^b - 1)     (integer zero point)
    q     = clamp(round(x / scale) + z, 0, 2^b - 1)          nearest
    q     = clamp(floor(x / scale + u) + z, 0, 2^b - 1)      stochastic, u ~ U[0, 1)  (gradients)
    x_hat = (q - z) * scale

which is what ``torch.fake_quantize_per_tensor_affine`` computes for the same scale and zero point. The range comes
from the tensor itself, reduced according to ``granularity``:

* ``tensor``: min and max of the whole tensor (weights in Banner's older code; gradients: the global range);
* ``channel``: per output channel (dim 0) for weights (Banner's convNet.pytorch);
* ``sample``: min and max of each sample, averaged over the batch (Banner's activations). Running estimates,
  ``running = (1 - momentum)·running + momentum·batch`` (PyTorch's convention; Banner's code weights the new batch by
  0.9), are used in eval mode.

Backward: identity straight-through estimator, no clipping mask (as in Banner's code).

Numerics: ranges, running averages and the fake quantization are computed in float32 for float16/bfloat16 inputs
(``max - min`` of ``±6e4`` overflows float16); the output has the input's dtype, the running range the module's
dtype. The first training batch of ``granularity: sample`` initialises the running range and must be non-empty and
finite (:class:`~lowbit.quantizers.numerics.InitializationError` otherwise); a later batch whose range is not finite
leaves the running range unchanged, and an empty one is passed through without touching it.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from ..errors import ConfigError
from ..rounding import stochastic_round_
from .base import EVAL_MODE_OPTION, NOISE_BITS_OPTION, QUANTIZERS, ROUNDING_OPTION, Quantizer, bits_option
from .codes import QuantizedTensor, index_dtype
from .grids import AffineFloat, GridUnavailable, IntegerGrid, float32
from .numerics import cast_back, lerp_finite_, widen

__all__ = ["MinMaxQuantizer", "GRANULARITIES"]

GRANULARITIES = ("tensor", "channel", "sample")


def affine_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    q_max: int,
    noise: Optional[torch.Tensor] = None,
    integer_zero: bool = True,
) -> torch.Tensor:
    """``(clamp(round(x / scale) + z, 0, q_max) - z) * scale`` using a handful of in-place kernels.

    ``x * (1 / scale)`` rather than ``x / scale``, as torch's fused kernel does, so both round identically. With a
    real-valued zero point (``integer_zero=False``) the offset is added before rounding: ``q = round((x - m)/Δ)``.
    """
    y = x * torch.reciprocal(scale)
    if not integer_zero:
        y.add_(zero_point)
    if noise is not None:
        stochastic_round_(y, noise)
    else:
        y.round_()
    if integer_zero:
        y.add_(zero_point)
    return y.clamp_(0, q_max).sub_(zero_point).mul_(scale)


def affine_params(
    low: torch.Tensor, high: torch.Tensor, q_max: int, integer_zero: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the range ``[min(low, 0), max(high, 0)]``.

    With ``integer_zero`` the zero point is rounded (GEMMLOWP: zero is exactly representable, and the grid may shift
    by up to half a step); otherwise it is ``-m / Δ`` and the grid spans exactly ``[m, M]`` (Banner's code), which
    keeps stochastic rounding unbiased up to the extremes of the tensor.
    """
    low = low.clamp(max=0)
    high = high.clamp(min=0)
    scale = ((high - low) / q_max).clamp_min(1e-12)
    zero_point = -low / scale
    if integer_zero:
        zero_point = torch.round(zero_point).clamp_(0, q_max)
    return scale, zero_point


class _AffineSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        q_max: int,
        noise: Optional[torch.Tensor],
        integer_zero: bool,
    ) -> torch.Tensor:
        return affine_fake_quantize(x, scale, zero_point, q_max, noise, integer_zero)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        return grad, None, None, None, None, None


@QUANTIZERS.register("minmax")
class MinMaxQuantizer(Quantizer):
    kind = "minmax"
    OPTIONS = {
        "bits": bits_option(2, 16, default=8),
        "granularity": {
            "enum": list(GRANULARITIES),
            "description": "range per tensor, per output channel, or per sample averaged over the batch "
            "(default: sample for activations, tensor otherwise)",
        },
        "momentum": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.1,
            "description": "weight of the new batch in the running range (activations)",
        },
        "rounding": {**ROUNDING_OPTION, "description": "default: stochastic for gradients, nearest otherwise"},
        "zero_point": {
            "enum": ["integer", "exact"],
            "description": "integer (GEMMLOWP, exportable; default) or exact -m/scale (unbiased stochastic "
            "rounding over the whole range; default for gradients)",
        },
        "eval_mode": EVAL_MODE_OPTION,
        "noise_bits": NOISE_BITS_OPTION,
    }

    def __init__(
        self,
        *,
        bits: int = 8,
        granularity: Optional[str] = None,
        momentum: float = 0.1,
        role: str = "weight",
        rounding: Optional[str] = None,
        zero_point: Optional[str] = None,
        eval_mode: str = "deterministic",
        noise_bits: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        # Banner's defaults by role: per-sample averaged ranges for activations, stochastic rounding for gradients.
        if granularity is None:
            granularity = {"activation": "sample"}.get(role, "tensor")
        if rounding is None:
            rounding = "stochastic" if role == "gradient" else "nearest"
        if zero_point is None:
            zero_point = "exact" if role == "gradient" else "integer"
        super().__init__(role=role, rounding=rounding, eval_mode=eval_mode, noise_bits=noise_bits, seed=seed)
        if granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {granularity!r}; valid choices: {', '.join(GRANULARITIES)}")
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum}")
        self._bits = int(bits)
        self.q_max = 2**self._bits - 1
        self.granularity = granularity
        self.momentum = float(momentum)
        if zero_point not in ("integer", "exact"):
            raise ConfigError(f"unknown zero_point {zero_point!r}; valid choices: integer, exact")
        self.integer_zero = zero_point == "integer"
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(0.0))

    @property
    def signed(self) -> bool:
        # The grid is asymmetric: signed whenever the observed range reaches below zero.
        return bool(self.running_min < 0) if self.granularity == "sample" else True

    # ------------------------------------------------------------------------------------------- ranges
    def _observed_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.granularity == "tensor" or x.dim() < 2:
            return torch.aminmax(x)
        rows = x.reshape(x.shape[0], -1)
        low, high = rows.amin(dim=1), rows.amax(dim=1)  # on CPU much faster than aminmax(dim=1)
        if self.granularity == "sample":
            return low.mean(), high.mean()
        shape = (-1,) + (1,) * (x.dim() - 1)
        return low.reshape(shape), high.reshape(shape)

    def _running_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = widen(self.running_min), widen(self.running_max)
        return affine_params(low, high, self.q_max, self.integer_zero)

    @torch.no_grad()
    def quant_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for ``x`` (in float32 or wider); in training also updates the running range of
        activations."""
        x = widen(x)
        if self.granularity == "sample":
            if self.training:
                if not self._is_initialized:
                    self.check_initializing_tensor(x)
                    low, high = self._observed_range(x)
                    self.running_min.copy_(low)
                    self.running_max.copy_(high)
                    self.mark_initialized()
                    return affine_params(low, high, self.q_max, self.integer_zero)
                if x.numel() == 0:
                    return self._running_params()
                low, high = self._observed_range(x)
                lerp_finite_(self.running_min, low, self.momentum)
                lerp_finite_(self.running_max, high, self.momentum)
                return affine_params(low, high, self.q_max, self.integer_zero)
            if self._is_initialized:
                return self._running_params()
            # Evaluated before any training batch: fall back to this batch's range rather than a zero range.
        if x.numel() == 0:  # no range to observe; any grid maps an empty tensor to an empty tensor
            return x.new_ones(()), x.new_zeros(())
        low, high = self._observed_range(x)
        return affine_params(low, high, self.q_max, self.integer_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passthrough_now:
            return x
        work = widen(x)
        scale, zero_point = self.quant_params(work.detach())
        noise = self.noise.uniform_like(work) if self.stochastic_now else None
        return cast_back(_AffineSTE.apply(work, scale, zero_point, self.q_max, noise, self.integer_zero), x.dtype)

    def deterministic_grid(self) -> Union[IntegerGrid, AffineFloat]:
        """The grid of the running range (``granularity: sample``); other granularities have none fixed."""
        if self.granularity != "sample":
            raise GridUnavailable(
                f"a min-max quantizer with granularity {self.granularity!r} computes its range "
                f"from every tensor it quantizes, so it has no fixed grid; use granularity: sample "
                f"(running range) for one"
            )
        self.require_initialized()
        with torch.no_grad():
            scale, zero_point = affine_params(self.running_min, self.running_max, self.q_max, self.integer_zero)
        if self.integer_zero:
            return IntegerGrid(float32(scale), int(zero_point), 0, self.q_max)
        return AffineFloat(float32(scale), float32(zero_point), 0.0, float(self.q_max))

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        x = x.detach()
        scale, zero_point = self.quant_params(x)
        if not self.integer_zero:
            raise ConfigError("encode() needs an integer zero point; build the quantizer with zero_point: integer")
        q = torch.round(x * torch.reciprocal(scale)).add_(zero_point).clamp_(0, self.q_max)
        per_channel = self.granularity == "channel" and x.dim() >= 2
        return QuantizedTensor(
            indices=q.to(index_dtype(self._bits)),
            bits=self._bits,
            scale=scale,
            zero_point=zero_point,
            qmin=0,
            axis=0 if per_channel else None,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", granularity={self.granularity}"
