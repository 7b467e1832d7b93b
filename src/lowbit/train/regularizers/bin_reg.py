"""Bin Regularization (Han et al. 2021): pull each latent weight towards the level of its quantization bin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...convert import quantized_layers
from ...errors import ConfigError
from .base import REGULARIZERS, Regularizer

if TYPE_CHECKING:
    from ...quantizers.base import Quantizer

__all__ = ["BinRegularizer", "bin_regularization", "level_distance", "REDUCTIONS"]

#: how the per-bin terms add up, over the bins of a layer and over layers. The paper's Eq. 5 sums over bins; no
#: author code exists and whether the terms are averaged (over bins, over layers) is unverified (ALGORITHMS.md 3b),
#: so both readings are options. "sum" is the default: it is what the one public reimplementation does.
REDUCTIONS = ("sum", "mean")


def bin_regularization(weight: torch.Tensor, quantizer: Quantizer, reduction: str = "sum") -> torch.Tensor:
    """``L_BR = Σ_i over non-empty bins [(mean(B_i) - t_i)^2 + Var(B_i)]`` for one weight tensor (``reduction="sum"``),
    or that sum divided by the number of non-empty bins (``"mean"``).

    Bins are the current integer codes (same clipping as the forward quantizer), targets ``t_i`` the levels with the
    step detached (the conservative choice: BR moves the weights, not the step). With the population variance,
    ``(mean - t)^2 + Var`` is the mean squared distance to the target inside the bin, so the sum over bins is
    ``Σ_j (w_j - t_{c_j})^2 / |B_{c_j}|``: one bincount and one gather, no loop over bins. A weight is therefore pulled
    towards its level with the force ``2 (w_j - t) / |B_{c_j}|`` per unit of λ (``"mean"``: divided again by the
    number of non-empty bins), which is large on the small layers of depthwise-separable nets and vanishes on layers
    with hundreds of thousands of weights.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"bin_reg reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    encoded = quantizer.encode(weight)
    targets = encoded.dequantize().to(weight.dtype)
    index = encoded.indices.reshape(-1).long()
    counts = torch.bincount(index, minlength=2**encoded.bits).to(weight.dtype)
    squared_error = (weight - targets).reshape(-1).square()
    total = (squared_error / counts[index]).sum()
    return total / (counts > 0).sum() if reduction == "mean" else total


@torch.no_grad()
def level_distance(weight: torch.Tensor, quantizer: Quantizer) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(|w - Q(w)| / s, w / s, bits)`` per weight (flattened), with ``s`` the quantizer's step: how far each latent
    weight sits from its quantization level, in steps (0 on a level, 1/2 on a bin edge)."""
    encoded = quantizer.encode(weight)
    step = encoded.scale.float()
    w = weight.detach().float()
    return ((w - encoded.dequantize()).abs() / step).reshape(-1), (w / step).reshape(-1), int(encoded.bits)


@REGULARIZERS.register(
    "bin_reg",
    options={
        "strength": {"type": "number", "minimum": 0, "default": 0.5, "description": "lambda"},
        "start_epoch": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "train with the task loss only before this epoch (staged strategy S2)",
        },
        "reduction": {
            "enum": list(REDUCTIONS),
            "default": "sum",
            "description": "sum: Σ_layers Σ_bins (the reimplementation's reading of Eq. 5); mean: averaged over the "
            "non-empty bins of a layer and over layers (the paper's normalization is unverified)",
        },
    },
)
@dataclass
class BinRegularizer(Regularizer):
    """``λ Σ_layers L_BR(layer)`` on quantized weights (``reduction="mean"``: ``λ mean_layers L_BR(layer)``, each
    layer's term averaged over its non-empty bins), off before ``start_epoch`` (staged strategy S2)."""

    strength: float = 0.5
    start_epoch: int = 0
    reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"bin_reg reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and self.strength > 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [
            bin_regularization(layer.weight, layer.weight_quantizer, self.reduction)
            for _, layer in quantized_layers(model)
            if layer.weight_quantizer is not None
        ]
        if not terms:
            raise ConfigError("bin_reg needs quantized weights, but the recipe quantizes none")
        stacked = torch.stack(terms)
        return self.strength * (stacked.mean() if self.reduction == "mean" else stacked.sum())

    @torch.no_grad()
    def describe(self, model: nn.Module) -> dict:
        """Mean |w - Q(w)| / step and the fraction of weights within 0.05 step of a level (BR's sharpness)."""
        distances = [
            level_distance(layer.weight, layer.weight_quantizer)[0]
            for _, layer in quantized_layers(model)
            if layer.weight_quantizer is not None
        ]
        if not distances:
            return {}
        relative = torch.cat(distances)
        return {"br_mean_distance": float(relative.mean()), "br_near_level": float((relative <= 0.05).float().mean())}

    def log_line(self, record: dict) -> str:
        return f"  near-level {100 * record['br_near_level']:.1f}%" if "br_near_level" in record else ""
