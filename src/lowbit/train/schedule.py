"""Learning-rate schedules, one value per epoch, as multipliers of each parameter group's initial LR.

* ``constant``;
* ``cosine``: ``0.5 (1 + cos(π t / T))`` (LSQ, Uhlich), no restarts;
* ``exponential``: ``(LR_fin / LR_start)^(t / T)`` (BinaryConnect's per-epoch decay; ``final_lr_ratio``);
* ``step``: multiplied by ``gamma`` at each milestone epoch.

An optional linear warm-up over the first ``warmup_epochs`` epochs multiplies any of them.
"""

from __future__ import annotations

import bisect
import math

import torch

__all__ = ["lr_multiplier", "build_scheduler"]


def lr_multiplier(spec: dict, epoch: int, total_epochs: int) -> float:
    kind = spec.get("type", "cosine")
    t, total = epoch, max(total_epochs, 1)
    if kind == "constant":
        factor = 1.0
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    elif kind == "exponential":
        factor = spec["final_lr_ratio"] ** (min(t, total) / total)
    elif kind == "step":
        factor = spec.get("gamma", 0.1) ** bisect.bisect_right(sorted(spec["milestones"]), t)
    else:
        raise ValueError(f"unknown schedule {kind!r}; valid choices: constant, cosine, exponential, step")
    warmup = spec.get("warmup_epochs", 0)
    if warmup and t < warmup:
        factor *= (t + 1) / (warmup + 1)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, spec: dict, total_epochs: int):
    """A ``LambdaLR`` stepped once per epoch (its state is checkpointed with the optimizer)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_multiplier(spec, epoch, total_epochs))
