"""One training step of a (quantized) model, shared by the trainer and the speed benchmarks.

``step(x, y)``: forward, task loss plus the active regularizers, backward, the active regularizers' gradient hooks
(the memory budget's gradient clipping), optional gradient-norm clipping, optimizer step. The update policy (clipping
latent weights, rounding on-grid weights back onto the grid, keeping quantizer parameters in their boxes) runs as the
optimizer's step post-hook, attached by the constructor without ``start()``
(:meth:`~lowbit.train.policies.UpdatePolicy.attach`): call ``step.policy.start()`` once before the first step of a new
run, never after restoring a checkpoint (the trainer does so).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..recipes import Recipe, load_recipe
from .losses import get_loss
from .optimizers import build_optimizer, parameter_groups
from .policies import LatentWeights, UpdatePolicy, build_policy
from .regularizers import Regularizer, build_regularizers

__all__ = ["TrainingStep", "StepOutput", "NonFiniteLoss", "autocast_dtype", "AMP_MODES"]

AMP_MODES = ("none", "bf16")


def autocast_dtype(amp: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp``: ``None`` for ``none`` (float32 throughout), ``torch.bfloat16`` for ``bf16``.

    Under bf16 autocast, matrix products and convolutions run in bfloat16 (float32 accumulation on GPUs); parameters,
    optimizer state, the loss and everything outside the forward pass stay float32. Quantizers compute their
    statistics (LSQ's initial step, min-max ranges, Uhlich's d/q_max) in float32 for half-precision inputs
    (``quantizers/numerics.py``). Float16 is not offered: it needs loss scaling, bfloat16 does not.
    """
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    raise ConfigError(f"unknown --amp {amp!r}; use one of {', '.join(AMP_MODES)}")


class NonFiniteLoss(ArithmeticError):
    """The objective became NaN or infinite; raised before the optimizer touches the weights."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss became {value}")
        self.value = value


@dataclass
class StepOutput:
    loss: torch.Tensor  # task loss (detached)
    regularizer: torch.Tensor  # sum of the active regularizers (detached)
    logits: torch.Tensor  # detached


class TrainingStep:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        policy: UpdatePolicy,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        regularizers: Sequence[Regularizer] = (),
        grad_clip: Optional[float] = None,
        amp: str = "none",
    ) -> None:
        self.model = model
        self.autocast_dtype = autocast_dtype(amp)
        self.optimizer = optimizer
        self.policy = policy
        self.loss_fn = loss_fn
        self.regularizers = list(regularizers)
        self.grad_clip = grad_clip
        self.active = list(self.regularizers)
        if not policy.is_attached(optimizer):  # the policy runs as the optimizer's step post-hook
            policy.attach(optimizer, start=False)

    @classmethod
    def from_recipe(
        cls,
        model: nn.Module,
        recipe: Union[Recipe, str, os.PathLike, Mapping],
        example: Optional[torch.Tensor] = None,
        *,
        optimizer_spec: Optional[dict] = None,
        pretrain: bool = False,
        loss_fn: Optional[Callable] = None,
        amp: str = "none",
    ) -> TrainingStep:
        """The step the recipe's ``train`` section describes, for an already converted ``model``.

        ``example`` (a batch) is passed to every regularizer's ``bind`` (memory budgets measure activation sizes on
        it). With ``pretrain`` the step is the recipe's float pre-training step: no policy, no regularizers.
        ``amp``: ``none`` or ``bf16`` (the forward pass under bfloat16 autocast; see :func:`autocast_dtype`).
        """
        recipe = load_recipe(recipe) if not isinstance(recipe, Recipe) else recipe
        train = recipe.train
        spec = dict(optimizer_spec or train["optimizer"])
        if pretrain:
            policy, regularizers = LatentWeights(model, clip=False), []
        else:
            policy = build_policy(model, train["policy"])
            regularizers = build_regularizers(train["regularizers"])
            for reg in regularizers:  # before the optimizer exists: binding may run the model once
                reg.bind(model, example)
        optimizer = build_optimizer(parameter_groups(model, spec, policy), spec)
        loss_fn = loss_fn or get_loss(train["loss"])
        return cls(model, optimizer, policy, loss_fn, regularizers, train.get("grad_clip"), amp=amp)

    def set_epoch(self, epoch: int) -> None:
        """Staged regularizers (Bin Regularization's start epoch) switch on here."""
        self.active = [r for r in self.regularizers if r.active(epoch)]

    def forward_context(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """The context the training forward runs in: bfloat16 autocast under ``--amp bf16``, else nothing (also for
        a forward outside the step that must see what the step's forward sees, e.g. a quantizer's initialisation)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        with self.forward_context(x):
            logits = self.model(x)
        if self.autocast_dtype is not None:
            logits = logits.float()  # the loss, its gradient's start and the reported logits in float32
        loss = self.loss_fn(logits, y)
        objective = loss
        regularizer = torch.zeros((), device=loss.device)
        for reg in self.active:
            regularizer = regularizer + reg.penalty(self.model)
        if self.active:
            objective = loss + regularizer
        if not torch.isfinite(objective):
            raise NonFiniteLoss(float(objective.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        for reg in self.active:
            reg.after_backward(self.model)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()  # then the update policy, attached as a step hook
        return StepOutput(loss.detach(), regularizer.detach(), logits.detach())
