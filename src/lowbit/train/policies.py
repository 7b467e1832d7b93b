"""Update policies: how quantized weights are stored and updated around any torch optimizer.

Li & De's comparison is three policies on one quantizer:

* ``latent`` (BinaryConnect, BC): the layer keeps float weights ``W``; the forward pass uses ``Q(W)``, the gradient
  ``dC/dQ(W)`` updates ``W``. With ``clip`` the float weights are clipped to the quantizer's range after every step
  (BinaryConnect: ``[-H, H]``), and ``lr_scale: glorot`` multiplies each binarized layer's step by
  ``1 / sqrt(1.5 / (fan_in + fan_out))`` (dense: fan_in = inputs, fan_out = units; conv: ``k_h k_w C_in`` and
  ``k_h k_w C_out``). ``init: uniform`` re-draws the float weights from ``U(lo, hi)`` over the quantizer's range
  before training (BinaryConnect: ``U(-H, H)``), so that the float weights and their binarization have similar
  scales (which matters for evaluating BC-stoch with the float weights).
* ``grid`` (R / SR): the weights themselves live on the grid. After every optimizer step they are written back as
  ``W <- Q(W)`` with the weight quantizer's own rounding (nearest: R, stochastic: SR); no float copy of the weights
  is kept, only the optimizer's moments stay float.

Both also call ``project_()`` on every quantizer (LSQ step > 0, Uhlich parameter boxes).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..convert import quantized_layers, quantizers_of

__all__ = ["UpdatePolicy", "glorot_lr_scale", "PolicyOptimizer"]


def glorot_lr_scale(weight: torch.Tensor) -> float:
    """BinaryConnect's ``W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out))`` for a Linear or Conv2d weight."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


class UpdatePolicy:
    """Applies a recipe's ``train.policy`` to a quantized model after each optimizer step."""

    def __init__(self, model: nn.Module, kind: str = "latent", clip: bool = True, lr_scale: str = "none",
                 init: str = "keep"):
        if kind not in ("latent", "grid"):
            raise ValueError(f"unknown update policy {kind!r}; valid choices: latent, grid")
        if init not in ("keep", "uniform"):
            raise ValueError(f"unknown weight init {init!r}; valid choices: keep, uniform")
        self.kind = kind
        self.clip = clip
        self.lr_scale = lr_scale
        self.init = init
        self.model = model
        layers = [layer for _, layer in quantized_layers(model) if layer.weight_quantizer is not None]
        self._weighted = [(layer.weight, layer.weight_quantizer) for layer in layers]
        for layer in layers:
            layer.weights_on_grid = kind == "grid"
        self._clip_ranges = [(w, q.clip_range()) for w, q in self._weighted] if clip and kind == "latent" else []
        self._quantizers = quantizers_of(model)

    @classmethod
    def from_recipe(cls, model: nn.Module, spec: dict) -> "UpdatePolicy":
        return cls(model, spec.get("type", "latent"), spec.get("clip", True), spec.get("lr_scale", "none"),
                   spec.get("init", "keep"))

    def step_scales(self) -> dict[int, float]:
        """Per-parameter multiplier of the learning rate (``id(param) -> scale``), for the Glorot LR scale."""
        if self.lr_scale != "glorot":
            return {}
        return {id(w): glorot_lr_scale(w) for w, _ in self._weighted}

    @torch.no_grad()
    def start(self) -> None:
        """Put the weights in their policy's state before training (re-drawn for ``init: uniform``, on the grid
        for ``grid``). Not called when a run resumes."""
        if self.init == "uniform":
            for weight, quantizer in self._weighted:
                bounds = quantizer.clip_range()
                if bounds is None:
                    raise ValueError(f"init: uniform needs a quantizer with a fixed range; {quantizer.kind} has none")
                weight.uniform_(*bounds)
        self.after_step()

    @torch.no_grad()
    def after_step(self) -> None:
        for quantizer in self._quantizers:
            quantizer.project_()
        if self.kind == "grid":
            for weight, quantizer in self._weighted:
                was_training = quantizer.training
                quantizer.train()  # the training-time rounding (stochastic for SR)
                weight.copy_(quantizer(weight))
                quantizer.train(was_training)
        for weight, bounds in self._clip_ranges:
            if bounds is not None:
                weight.clamp_(*bounds)


class PolicyOptimizer:
    """Wrap any torch optimizer so that ``step()`` also applies the update policy (for hand-written loops)::

        opt = PolicyOptimizer(torch.optim.Adam(model.parameters()), UpdatePolicy(model, "grid"))
    """

    def __init__(self, optimizer: torch.optim.Optimizer, policy: UpdatePolicy):
        self.optimizer = optimizer
        self.policy = policy
        policy.start()

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.policy.after_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list:
        return self.optimizer.param_groups

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def parameter_groups(model: nn.Module, optimizer_spec: dict, policy: UpdatePolicy) -> list[dict]:
    """Optimizer parameter groups: weight decay on weight matrices/kernels only (not on biases, BN or quantizer
    parameters), the quantizer learning rate on quantizer parameters, and per-layer LR scales (Glorot)."""
    lr = optimizer_spec["lr"]
    quantizer_lr = optimizer_spec.get("quantizer_lr") or lr
    decay = optimizer_spec.get("weight_decay", 0.0)
    quantizer_params = {id(p) for q in quantizers_of(model) for p in q.parameters(recurse=False)}
    scales = policy.step_scales()
    groups: dict[tuple, dict] = {}

    def add(param: nn.Parameter, group_lr: float, group_decay: float, tag: str) -> None:
        key = (group_lr, group_decay, tag)
        groups.setdefault(key, {"params": [], "lr": group_lr, "weight_decay": group_decay, "name": tag})
        groups[key]["params"].append(param)

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in quantizer_params:
            add(param, quantizer_lr, 0.0, "quantizer")
        elif param.dim() > 1:
            scale = scales.get(id(param), 1.0)
            add(param, lr * scale, decay, "weights" if scale == 1.0 else f"weights x{scale:.3g}")
        else:
            add(param, lr, 0.0, "biases and norms")
    return list(groups.values())


def build_optimizer(params: Iterable[dict], spec: dict) -> torch.optim.Optimizer:
    kind = spec.get("type", "adam")
    if kind == "adam":
        return torch.optim.Adam(params, lr=spec["lr"], betas=tuple(spec.get("betas", (0.9, 0.999))))
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec.get("betas", (0.9, 0.999))))
    if kind == "sgd":
        return torch.optim.SGD(params, lr=spec["lr"], momentum=spec.get("momentum", 0.9),
                               nesterov=spec.get("nesterov", False))
    raise ValueError(f"unknown optimizer {kind!r}; valid choices: adam, adamw, sgd")
