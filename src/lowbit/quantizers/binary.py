"""Binary weights {-H, +H} (BinaryConnect, Courbariaux et al. 2015).

* deterministic (``rounding: nearest``): ``Wb = +H if W >= 0 else -H`` (so sign(0) = +1, unlike ``torch.sign``);
* stochastic (``rounding: stochastic``): ``Wb = +H`` with probability ``hard_sigmoid(W / H)``,
  ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``, drawn independently per element and per forward pass. This is
  Li & De's unbiased stochastic rounding on the two-level grid: ``E[Wb] = clip(W, -H, H)``.

Scale: a number, or ``glorot``: BinaryConnect's ``H = "Glorot"``, one H per weight tensor,
``H_l = sqrt(1.5 / (fan_in + fan_out))`` (dense: fan_in = inputs, fan_out = units; conv: ``k_h k_w C_in`` and
``k_h k_w C_out``), set from the weight's shape when the layer is built and saved with the quantizer's state. With the
Glorot LR scale ``1 / H_l`` of the update policy, an ADAM step of size ``lr`` moves a weight by
``lr (fan_in + fan_out) / 1.5`` units of ``H_l``: deterministic rounding (R) crosses a level where that reaches 1 (a
weight at ``-H`` must travel ``H``), which it never does on a {-1, +1} grid at ADAM's usual learning rates.

Backward: the identity straight-through estimator, ``dC/dW := dC/dWb``, with no ``|W| <= 1`` mask (the mask belongs
to the later BinaryNet paper). Evaluation: ``eval_mode: deterministic`` uses sign(W) (BC-det), ``eval_mode: float``
uses the real-valued W (BC-stoch as in the paper's code).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from ..errors import ConfigError
from ..rounding import stochastic_threshold
from .base import EVAL_MODE_OPTION, NOISE_BITS_OPTION, QUANTIZERS, ROUNDING_OPTION, QuantizedTensor, Quantizer
from .grids import SignGrid, float32

__all__ = ["BinaryQuantizer", "glorot_scale"]


class _BinarizeSTE(torch.autograd.Function):
    """Forward ``+H where w >= threshold else -H`` as ``H sign(sign(w - threshold) + 1/2)``; backward identity.

    The outer sign maps sign(0) = 0 (and -0.0) to +1: two cheap in-place kernels after one ``sign``.
    """

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, threshold: Optional[torch.Tensor], scale: float) -> torch.Tensor:
        signs = torch.sign(w) if threshold is None else torch.sub(w, threshold).sign_()
        signs.add_(0.5).sign_()
        return signs if scale == 1.0 else signs.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


@QUANTIZERS.register("binary")
class BinaryQuantizer(Quantizer):
    kind = "binary"
    OPTIONS = {
        "scale": {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "glorot"}],
            "default": 1.0,
            "description": "H: the levels are -H, +H; glorot: per weight tensor sqrt(1.5/(fan_in+fan_out)) "
            "(BinaryConnect's H='Glorot')",
        },
        "rounding": {**ROUNDING_OPTION, "default": "nearest"},
        "eval_mode": EVAL_MODE_OPTION,
        "noise_bits": NOISE_BITS_OPTION,
    }

    def __init__(
        self,
        *,
        scale: Union[float, str] = 1.0,
        role: str = "weight",
        rounding: str = "nearest",
        eval_mode: str = "deterministic",
        noise_bits: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__(role=role, rounding=rounding, eval_mode=eval_mode, noise_bits=noise_bits, seed=seed)
        self.glorot = scale == "glorot"
        if self.glorot:
            if role != "weight":
                raise ConfigError(f"binary scale 'glorot' is set from a weight's fans; the {role} slot has none")
            scale = 1.0  # replaced by the weight's H when the layer is built (reset_parameters_from)
        elif isinstance(scale, str) or not scale > 0:
            raise ConfigError(f"binary scale H must be a positive number or 'glorot', got {scale!r}")
        self.scale = float(scale)
        self._bits, self._signed = 1, True

    def reset_parameters_from(self, w: torch.Tensor) -> None:
        if self.glorot:
            # rounded to float32 so that the stored weights (float32) equal +-scale exactly
            self.scale = float(torch.tensor(glorot_scale(w), dtype=torch.float32))

    def clip_range(self) -> tuple[float, float]:
        if self.glorot:
            self.require_initialized()
        return (-self.scale, self.scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.glorot:
            self.maybe_initialize(w)
        if self.passthrough_now:
            return w
        threshold = None
        if self.stochastic_now:
            # P(Wb = +H) = P(W >= -H + 2H·u) = (W/H + 1)/2; clipping p to [0, 1] is implicit.
            threshold = stochastic_threshold(self.noise, w, -self.scale, self.scale)
        return _BinarizeSTE.apply(w, threshold, self.scale)

    def deterministic_grid(self) -> SignGrid:
        if self.glorot:
            self.require_initialized()
        return SignGrid(float32(self.scale))

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "scale": self.scale}  # a Glorot H was set from the weight's shape

    def set_extra_state(self, state: Optional[dict[str, Any]]) -> None:
        super().set_extra_state(state)
        if self.glorot and state and state.get("scale") is not None:
            self.scale = float(state["scale"])

    def encode(self, w: torch.Tensor) -> QuantizedTensor:
        w = w.detach()
        return QuantizedTensor(
            indices=(w >= 0).to(torch.uint8),
            bits=1,
            scale=torch.tensor(self.scale, dtype=w.dtype),
            zero_point=torch.tensor(0.0, dtype=w.dtype),
            table=torch.tensor([-1.0, 1.0], dtype=w.dtype),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:g}" + (" (glorot)" if self.glorot else "")


def glorot_scale(weight: torch.Tensor) -> float:
    """BinaryConnect's ``H = sqrt(1.5 / (fan_in + fan_out))`` for a dense ``(out, in)`` or conv ``(out, in, k...)``
    weight (the receptive field counts in both fans, pooling is ignored)."""
    if weight.dim() < 2:
        raise ConfigError(
            f"binary scale 'glorot' needs a weight with fan-in and fan-out, got shape {tuple(weight.shape)}"
        )
    receptive = math.prod(weight.shape[2:])
    return math.sqrt(1.5 / ((weight.shape[0] + weight.shape[1]) * receptive))
