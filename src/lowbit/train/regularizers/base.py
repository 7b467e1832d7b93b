"""The regularizer interface and registry.

A regularizer adds a term to the task loss and may hook into the step around it. The training step and the trainer
only call these methods, so a new regularizer is one module that subclasses :class:`Regularizer` and registers itself
in :data:`REGULARIZERS` with the schema of its options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch import nn

from ...registry import Registry

__all__ = ["Regularizer", "REGULARIZERS", "build_regularizers"]

#: recipe ``train.regularizers[i].type`` -> regularizer class, constructed as ``cls(**options)``
REGULARIZERS: Registry[str] = Registry("regularizer")


class Regularizer(ABC):
    """``objective = task loss + Σ_active penalty(model)``, with hooks around each step and epoch.

    Lifecycle in a run:

    * ``bind(model, example)`` once, after quantization, before the optimizer is built (``example``: a batch);
    * ``active(epoch)`` at the start of every epoch (a staged regularizer switches on later);
    * ``penalty(model)`` in every step while active, and ``after_backward(model)`` after the backward pass;
    * after every epoch ``describe(model)`` (figures for the epoch's log record), ``log_line(record)`` (their
      fragment of the epoch's console line) and ``satisfied(model)``: only checkpoints that satisfy every
      regularizer may become the best one (a constraint such as a memory budget; always true without one).
    """

    def bind(self, model: nn.Module, example: Optional[torch.Tensor]) -> None:
        """Resolve anything that depends on the model (nothing by default)."""

    def active(self, epoch: int) -> bool:
        return True

    @abstractmethod
    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The term added to the loss (a scalar tensor carrying gradients)."""

    def after_backward(self, model: nn.Module) -> None:
        """Adjust gradients after the backward pass, before the optimizer step (nothing by default)."""

    def satisfied(self, model: nn.Module) -> bool:
        """Whether the model meets the regularizer's constraint (always, for a regularizer without one)."""
        return True

    def describe(self, model: nn.Module) -> dict:
        """Figures worth logging after an epoch (merged into the epoch's record)."""
        return {}

    def log_line(self, record: dict) -> str:
        """This regularizer's part of the epoch's console line, from the record :meth:`describe` filled in."""
        return ""


def build_regularizers(specs: list[dict]) -> list[Regularizer]:
    """The regularizers of a recipe's ``train.regularizers`` list, ``{"type": name, **options}`` each."""
    return [REGULARIZERS.build(spec) for spec in specs]
