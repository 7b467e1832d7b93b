"""Learning-rate schedules, one value per epoch, as multipliers of each parameter group's initial LR.

* ``constant``;
* ``cosine``: ``0.5 (1 + cos(π t / T))`` (LSQ, Uhlich), no restarts;
* ``exponential``: ``(LR_fin / LR_start)^(t / T)`` (BinaryConnect's per-epoch decay; ``final_lr_ratio``);
* ``step``: multiplied by ``gamma`` at each milestone epoch.

An optional linear warm-up over the first ``warmup_epochs`` epochs multiplies any of them. Each schedule is a function
``(t, T, **options) -> factor`` registered in :data:`SCHEDULES` with the schema of its options.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch

from ..registry import Registry

__all__ = ["lr_multiplier", "build_scheduler", "SCHEDULES", "COMMON_OPTIONS"]

#: recipe ``train.schedule.type`` -> ``f(t, T, **options)``, the LR multiplier at epoch ``t`` of ``T``
SCHEDULES: Registry[str] = Registry("schedule")

#: options of ``train.schedule`` that apply to every schedule
COMMON_OPTIONS = {
    "warmup_epochs": {"type": "integer", "minimum": 0, "default": 0},
}


@SCHEDULES.register("constant", options={})
def constant(t: int, total: int) -> float:
    """The initial LR throughout."""
    return 1.0


@SCHEDULES.register("cosine", options={})
def cosine(t: int, total: int) -> float:
    """``0.5 (1 + cos(π t / T))``, no restarts (LSQ, Uhlich)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


@SCHEDULES.register(
    "exponential",
    options={
        "final_lr_ratio": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "description": "exponential: LR_fin / LR_start reached at the last epoch "
            "(BinaryConnect: LR_t = LR_start (LR_fin/LR_start)^(t/T))",
        },
    },
)
def exponential(t: int, total: int, *, final_lr_ratio: float) -> float:
    """``(LR_fin / LR_start)^(t / T)`` (BinaryConnect's per-epoch decay)."""
    return final_lr_ratio ** (min(t, total) / total)


@SCHEDULES.register(
    "step",
    options={
        "milestones": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "gamma": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
    },
)
def step(t: int, total: int, *, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """``gamma^(number of milestones <= t)``."""
    return gamma ** bisect.bisect_right(sorted(milestones), t)


def lr_multiplier(spec: dict, epoch: int, total_epochs: int) -> float:
    """The multiplier of the schedule ``spec`` at ``epoch`` of ``total_epochs``, warm-up included:
    ``f(t, T) · (t + 1) / (warmup + 1)`` during the first ``warmup_epochs`` epochs."""
    schedule = SCHEDULES.component(spec.get("type", "cosine"))
    t, total = epoch, max(total_epochs, 1)
    factor = schedule.factory(t, total, **schedule.option_values(spec))
    warmup = spec.get("warmup_epochs", 0)
    if warmup and t < warmup:
        factor *= (t + 1) / (warmup + 1)
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: dict, total_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch (its state is checkpointed with the optimizer)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_multiplier(spec, epoch, total_epochs))
