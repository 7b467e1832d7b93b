"""Binary weights {-H, +H} (BinaryConnect, Courbariaux et al. 2015).

* deterministic (``rounding: nearest``): ``Wb = +H if W >= 0 else -H`` (so sign(0) = +1, unlike ``torch.sign``);
* stochastic (``rounding: stochastic``): ``Wb = +H`` with probability ``hard_sigmoid(W / H)``,
  ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``, drawn independently per element and per forward pass. This is
  Li & De's unbiased stochastic rounding on the two-level grid: ``E[Wb] = clip(W, -H, H)``.

Backward: the identity straight-through estimator, ``dC/dW := dC/dWb``, with no ``|W| <= 1`` mask (the mask belongs
to the later BinaryNet paper). Evaluation: ``eval_mode: deterministic`` uses sign(W) (BC-det), ``eval_mode: float``
uses the real-valued W (BC-stoch as in the paper's code).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..rounding import stochastic_threshold
from .base import EVAL_MODE_OPTION, QUANTIZERS, ROUNDING_OPTION, QuantizedTensor, Quantizer
from .grids import SignGrid, float32

__all__ = ["BinaryQuantizer"]


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
        "scale": {"type": "number", "exclusiveMinimum": 0, "default": 1.0, "description": "H: the levels are -H, +H"},
        "rounding": {**ROUNDING_OPTION, "default": "nearest"},
        "eval_mode": EVAL_MODE_OPTION,
    }

    def __init__(
        self,
        *,
        scale: float = 1.0,
        role: str = "weight",
        rounding: str = "nearest",
        eval_mode: str = "deterministic",
        seed: int = 0,
    ) -> None:
        super().__init__(role=role, rounding=rounding, eval_mode=eval_mode, seed=seed)
        if not scale > 0:
            raise ConfigError(f"binary scale H must be positive, got {scale}")
        self.scale = float(scale)
        self._bits, self._signed = 1, True

    def clip_range(self) -> tuple[float, float]:
        return (-self.scale, self.scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.passthrough_now:
            return w
        threshold = None
        if self.stochastic_now:
            # P(Wb = +H) = P(W >= -H + 2H·u) = (W/H + 1)/2; clipping p to [0, 1] is implicit.
            threshold = stochastic_threshold(self.noise, w, -self.scale, self.scale)
        return _BinarizeSTE.apply(w, threshold, self.scale)

    def deterministic_grid(self) -> SignGrid:
        return SignGrid(float32(self.scale))

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
        return super().extra_repr() + f", scale={self.scale:g}"
