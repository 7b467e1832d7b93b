"""What a resumed run may change, and applying those changes to the restored optimizer and schedule.

``--resume`` continues a run exactly, so the resumed run's resolved configuration (recipe, data, model, seed) is
compared with the one saved in the checkpoint. Two values may change, visibly:

* ``train.epochs``: the run trains to the new number of epochs; the LR schedule is recomputed for the new total
  (as if the run had been planned with it), so a finished cosine run extended from 3 to 5 epochs continues at the
  LR that epoch 4 of a 5-epoch schedule has, not at 0;
* ``train.optimizer.lr`` (``--lr``, the fix the divergence message advises): every parameter group's base LR is
  scaled by ``new / old``, so per-group ratios (quantizer LR, Glorot scales) are kept.

Any other difference is refused with a one-line error naming the differing keys.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["RESUMABLE_CHANGES", "configuration_differences", "scale_learning_rates", "ABSENT"]


class _Absent:
    """A value one configuration has and the other lacks (shown as ``(absent)`` in messages)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()

#: dotted keys that may differ on resume, and what happens when they do
RESUMABLE_CHANGES = {
    "recipe.train.epochs": "the schedule is recomputed for the new number of epochs",
    "recipe.train.optimizer.lr": "the base learning rate of every parameter group is scaled by new / old",
}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def configuration_differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` for every value that differs between two nested dicts."""
    old, new = _flatten(saved, "", {}), _flatten(current, "", {})
    missing = object()
    differences = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            differences[key] = (ABSENT if a is missing else a, ABSENT if b is missing else b)
    return differences


def scale_learning_rates(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, ratio: float
) -> None:
    """Multiply every group's base LR by ``ratio`` and set its current LR from the (restored) schedule position."""
    scheduler.base_lrs = [base * ratio for base in scheduler.base_lrs]
    for group, base, multiplier in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * multiplier(scheduler.last_epoch)
