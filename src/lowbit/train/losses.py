"""Task losses: cross-entropy, and BinaryConnect's squared hinge ("L2-SVM output").

A loss is ``f(logits, target) -> scalar``; the recipe's ``train.loss`` names one registered in :data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry

__all__ = ["squared_hinge", "get_loss", "LOSSES"]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: recipe ``train.loss`` -> ``f(logits, target)``
LOSSES: Registry[str] = Registry("loss")
LOSSES.register(
    "cross_entropy",
    F.cross_entropy,
    options={},
    description="softmax cross-entropy of the logits against the class index",
)


@LOSSES.register("squared_hinge", options={})
def squared_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over batch and classes of max(0, 1 - y·o)^2`` with one-hot targets mapped to ``y ∈ {-1, +1}``."""
    signs = torch.full_like(logits, -1.0).scatter_(1, target.unsqueeze(1), 1.0)
    return torch.clamp(1.0 - signs * logits, min=0.0).square().mean()


def get_loss(name: str) -> LossFunction:
    """The loss registered as ``name``; an unknown name raises ``ValueError`` listing the valid choices."""
    return LOSSES.get(name)
