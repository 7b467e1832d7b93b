"""Task losses: cross-entropy, and BinaryConnect's squared hinge ("L2-SVM output")."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["squared_hinge", "get_loss", "LOSS_FUNCTIONS"]


def squared_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over batch and classes of max(0, 1 - y·o)^2`` with one-hot targets mapped to ``y ∈ {-1, +1}``."""
    signs = torch.full_like(logits, -1.0).scatter_(1, target.unsqueeze(1), 1.0)
    return torch.clamp(1.0 - signs * logits, min=0.0).square().mean()


LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "squared_hinge": squared_hinge,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSS_FUNCTIONS)}") from None
