"""Fixed uniform grid ``Δ·Z`` restricted to ``b`` bits (Li, De et al. 2017).

Levels ``Δ·q`` with integer ``q ∈ [-Q_N, Q_P]`` (see :func:`integer_range`; symmetric by default, ``Q_N = Q_P =
2^(b-1) - 1``, so zero is a level and the grid is Li & De's ``Δ·Z`` clipped to ``b`` bits).

* deterministic (R): ``Q_d(w) = sign(w)·Δ·floor(|w|/Δ + 1/2)`` (round half away from zero, as in the paper);
* stochastic (SR): ``Q_s(w) = Δ·(k + 1)`` with probability ``p = w/Δ - k``, else ``Δ·k``, ``k = floor(w/Δ)``; unbiased
  inside the range, with variance ``Δ²·p(1-p) <= Δ²/4``.

Values are clipped to the range before rounding. Backward: identity straight-through estimator (the gradient is
evaluated at the quantized point and applied unchanged to whatever holds the weights: a float copy (BC) or the
on-grid weights themselves (R / SR)). ``step: null`` picks ``Δ = max|x| / Q_P`` from the first tensor seen, which
must be non-empty and finite.

Numerics: computed in float32 for float16/bfloat16 inputs; the output has the input's dtype.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..rounding import round_half_away, stochastic_round_
from .base import EVAL_MODE_OPTION, NOISE_BITS_OPTION, QUANTIZERS, ROUNDING_OPTION, Quantizer, bits_option
from .codes import QuantizedTensor, index_dtype, integer_range
from .grids import HALF_AWAY, IntegerGrid, float32
from .numerics import cast_back, widen

__all__ = ["UniformQuantizer"]


class _UniformSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, noise: Optional[torch.Tensor]
    ) -> torch.Tensor:
        y = x / step
        y.clamp_(-q_n, q_p)
        if noise is not None:
            return stochastic_round_(y, noise).mul_(step)
        return round_half_away(y).mul_(step)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        return grad, None, None, None, None


@QUANTIZERS.register("uniform")
class UniformQuantizer(Quantizer):
    kind = "uniform"
    OPTIONS = {
        "bits": bits_option(2, 16, default=8),
        "step": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "default": None,
            "description": "grid step; null: max|x| / Q_P from the first tensor",
        },
        "signed": {"type": ["boolean", "null"], "default": None, "description": "null: signed unless activation"},
        "symmetric": {"type": "boolean", "default": True, "description": "Q_N = Q_P (zero-centred grid)"},
        "rounding": {**ROUNDING_OPTION, "default": "nearest"},
        "eval_mode": EVAL_MODE_OPTION,
        "noise_bits": NOISE_BITS_OPTION,
    }

    def __init__(
        self,
        *,
        bits: int = 8,
        step: Optional[float] = None,
        signed: Optional[bool] = None,
        symmetric: bool = True,
        role: str = "weight",
        rounding: str = "nearest",
        eval_mode: str = "deterministic",
        noise_bits: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__(role=role, rounding=rounding, eval_mode=eval_mode, noise_bits=noise_bits, seed=seed)
        self._bits = int(bits)
        self._signed = (role != "activation") if signed is None else bool(signed)
        if self._signed and self._bits < 2:
            raise ConfigError("a signed uniform grid needs at least 2 bits; use type: binary for 1 bit")
        self.q_n, self.q_p = integer_range(self._bits, self._signed, symmetric)
        self.symmetric = symmetric
        self.register_buffer("step", torch.tensor(float(step) if step is not None else 1.0))
        if step is not None:
            if not step > 0:
                raise ConfigError(f"uniform step must be positive, got {step}")
            self.init_given = True
            self.mark_initialized()

    def clip_range(self) -> tuple[float, float]:
        step = float(self.step)
        return (-self.q_n * step, self.q_p * step)

    def reset_parameters_from(self, x: torch.Tensor) -> None:
        """``Δ = max(max|x|, 1e-8) / Q_P``."""
        peak = widen(x).abs().max().clamp_min(1e-8)
        self.step.fill_(float(peak) / self.q_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_initialize(x)
        if self.passthrough_now:
            return x
        work = widen(x)
        noise = self.noise.uniform_like(work) if self.stochastic_now else None
        return cast_back(_UniformSTE.apply(work, self.step, self.q_n, self.q_p, noise), x.dtype)

    def deterministic_grid(self) -> IntegerGrid:
        self.require_initialized()
        return IntegerGrid(float32(self.step), 0, -self.q_n, self.q_p, HALF_AWAY)

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        self.maybe_initialize(x)
        q = torch.round(self.eval_copy(x) / self.step)
        return QuantizedTensor(
            indices=(q + self.q_n).to(index_dtype(self._bits)),
            bits=self._bits,
            scale=self.step.detach().clone(),
            zero_point=torch.zeros((), dtype=x.dtype),
            qmin=-self.q_n,
        )

    def eval_copy(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic quantization of ``x`` with no autograd graph."""
        with torch.no_grad():
            return _UniformSTE.apply(x.detach(), self.step, self.q_n, self.q_p, None)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", step={float(self.step):.4g}, signed={self._signed}"
