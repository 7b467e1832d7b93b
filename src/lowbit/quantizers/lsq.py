"""Learned Step Size Quantization (Esser et al., ICLR 2020).

Forward, with one learned step ``s > 0`` per tensor::

    v_bar = round(clip(v / s, -Q_N, Q_P)),   v_hat = v_bar * s
    signed (weights):      Q_N = 2^(b-1),  Q_P = 2^(b-1) - 1
    unsigned (post-ReLU):  Q_N = 0,        Q_P = 2^b - 1

Backward (paper eq. 3), times the gradient scale ``g = 1 / sqrt(N * Q_P)``::

    dv_hat/dv = 1 if -Q_N < v/s < Q_P else 0
    dv_hat/ds = round(v/s) - v/s   if -Q_N < v/s < Q_P
              = -Q_N               if v/s <= -Q_N
              = +Q_P               if v/s >= Q_P

``N`` is the number of elements of the quantized tensor: weights ``N_W``; for activations the paper's ``N_F`` is
ambiguous and lowbit counts the whole activation tensor, batch included (``grad_scale: numel``, as the common
reimplementations do); ``per_sample`` divides by the batch size instead and ``none`` sets ``g = 1`` (ablation).
On several processes (``batch_shards`` ranks, each with a chunk of the global batch) ``numel`` counts the global
batch, ``N = N_chunk · batch_shards``: with the chunk's own count the averaged step gradient would be
``sqrt(batch_shards)`` times one process's.

Initialisation: ``s = 2 * mean|v| / sqrt(Q_P)`` from the weights, or from the first training batch for activations.
``signed: auto`` (the default for activations) decides the sign from that first batch: a layer whose input can be
negative (the network input, or a pre-activation) gets the signed range. The initial step is computed in float32
(float64 if the float32 mean overflows, for values near float32's limit of 3.4e38) and clamped to
``[1e-8, max / 2^8]``, ``max`` the largest finite value of the step's dtype, so that every level ``q·s`` with
``|q| <= 2^8`` is finite too; ``project_()`` keeps ``s`` in the same interval.

Numerics: ``v / s``, the rounding and the step gradient are computed in float32 for float16/bfloat16 inputs (in
float16, ``v / s`` overflows for ``v = 700``, ``s = 0.01``, and the step gradient became ``0·inf = NaN``); the output
has ``v``'s dtype. An empty tensor (after initialisation) gives an empty output and a zero step gradient.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..rounding import outside_mask
from .base import EVAL_MODE_OPTION, QUANTIZERS, Quantizer, bits_option
from .codes import QuantizedTensor, index_dtype, integer_range
from .grids import IntegerGrid, float32
from .numerics import cast_back, widen

__all__ = ["LSQQuantizer", "GRAD_SCALES", "step_bounds"]

GRAD_SCALES = ("numel", "per_sample", "none")
MIN_STEP = 1e-8
#: the largest step is the dtype's largest finite value over this, so that ``q·s`` stays finite for ``|q| <= 256``
LEVEL_HEADROOM = 2.0**8


def step_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """``[max(1e-8, smallest normal), largest finite / 2^8]`` of ``dtype``: the interval the step is kept in."""
    info = torch.finfo(dtype)
    return max(MIN_STEP, info.tiny), info.max / LEVEL_HEADROOM


class _LSQFunction(torch.autograd.Function):
    """Fused LSQ forward/backward: the closed-form eq. 3 instead of autograd through clamp/round."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int, g: float) -> torch.Tensor:
        x = v / s
        q = x.clamp(-q_n, q_p).round_()
        ctx.save_for_backward(x, q)
        ctx.q_range = (q_n, q_p)
        ctx.g = g
        return q * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, q = ctx.saved_tensors
        q_n, q_p = ctx.q_range
        # the STE mask is 1 inside [-Q_N, Q_P]; the boundary points themselves (a measure-zero set) count as inside
        grad_v = grad * (1.0 - outside_mask(x, -q_n, q_p))
        # sum(grad * (q - x·inside)) written as two dot products: no full-size temporary for the step gradient.
        grad_s = torch.dot(grad.reshape(-1), q.reshape(-1)) - torch.dot(grad_v.reshape(-1), x.reshape(-1))
        return grad_v, (grad_s * ctx.g).reshape(()), None, None, None


@QUANTIZERS.register("lsq")
class LSQQuantizer(Quantizer):
    kind = "lsq"
    OPTIONS = {
        "bits": bits_option(2, 8, default=4),
        "signed": {
            "enum": [True, False, "auto", None],
            "default": None,
            "description": "auto: decided from the first batch; null: signed for weights, auto for activations",
        },
        "grad_scale": {
            "enum": list(GRAD_SCALES),
            "default": "numel",
            "description": "g = 1/sqrt(N Q_P) with N = numel, numel per sample, or g = 1",
        },
        "init_step": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "default": None,
            "description": "null: 2 mean|v| / sqrt(Q_P) from the first tensor",
        },
        "eval_mode": EVAL_MODE_OPTION,
    }

    def __init__(
        self,
        *,
        bits: int = 4,
        signed: Union[bool, str, None] = None,
        grad_scale: str = "numel",
        init_step: Optional[float] = None,
        role: str = "weight",
        eval_mode: str = "deterministic",
        seed: int = 0,
    ) -> None:
        super().__init__(role=role, rounding="nearest", eval_mode=eval_mode, seed=seed)
        if grad_scale not in GRAD_SCALES:
            raise ConfigError(f"unknown grad_scale {grad_scale!r}; valid choices: {', '.join(GRAD_SCALES)}")
        if signed is None:
            signed = "auto" if role == "activation" else True
        self._bits = int(bits)
        self.auto_sign = signed == "auto"
        self.register_buffer("is_signed", torch.tensor(bool(signed) if not self.auto_sign else False))
        self.grad_scale = grad_scale
        self.step = nn.Parameter(torch.tensor(float(init_step) if init_step else 1.0))
        self._set_range()
        if init_step:
            self.init_given = True
            self.mark_initialized()

    def _set_range(self) -> None:
        self.q_n, self.q_p = integer_range(self._bits, bool(self.is_signed))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._set_range()

    @property
    def signed(self) -> bool:
        return bool(self.is_signed)

    def reset_parameters_from(self, x: torch.Tensor) -> None:
        """``s = clamp(2 mean|x| / sqrt(Q_P), step_bounds)``, the mean in float32 (or wider)."""
        x = widen(x)
        if self.auto_sign:
            self.is_signed.fill_(bool(x.min() < 0))
            self._set_range()
        mean = float(x.abs().mean())
        if not math.isfinite(mean):  # the float32 sum overflowed (values near 3.4e38): average in float64
            mean = float(x.abs().mean(dtype=torch.float64))
        low, high = step_bounds(self.step.dtype)
        self.step.fill_(min(max(2 * mean / math.sqrt(self.q_p), low), high))

    def gradient_scale(self, x: torch.Tensor) -> float:
        """``g = 1 / sqrt(N Q_P)`` (``N`` per ``grad_scale``); 1 for an empty tensor, whose step gradient is 0."""
        n = x.numel()
        if self.grad_scale == "none" or n == 0:
            return 1.0
        if self.grad_scale == "per_sample" and self.role == "activation" and x.dim() > 1:
            n //= x.shape[0]
        elif self.role in ("activation", "gradient"):  # the batch is in N: count the global one
            n *= self.batch_shards
        return 1.0 / math.sqrt(n * self.q_p)

    @torch.no_grad()
    def project_(self) -> None:
        self.step.clamp_(*step_bounds(self.step.dtype))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        self.maybe_initialize(v)
        if self.passthrough_now:
            return v
        work = widen(v)
        y = _LSQFunction.apply(work, self.step, self.q_n, self.q_p, self.gradient_scale(v))
        return cast_back(y, v.dtype)

    def deterministic_grid(self) -> IntegerGrid:
        self.require_initialized()
        return IntegerGrid(float32(self.step), 0, -self.q_n, self.q_p)

    def encode(self, v: torch.Tensor) -> QuantizedTensor:
        self.maybe_initialize(v)
        s = self.step.detach()
        q = torch.round(torch.clamp(v.detach() / s, -self.q_n, self.q_p))
        return QuantizedTensor(
            indices=(q + self.q_n).to(index_dtype(self._bits)),
            bits=self._bits,
            scale=s.clone(),
            zero_point=torch.zeros((), dtype=v.dtype),
            qmin=-self.q_n,
        )

    def extra_repr(self) -> str:
        sign = "auto" if self.auto_sign and not self._is_initialized else self.signed
        return super().extra_repr() + f", signed={sign}, step={self.step.item():.4g}"
