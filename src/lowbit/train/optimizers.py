"""Optimizers from the recipe's ``train.optimizer``: parameter groups, then the registered torch optimizer.

Parameter groups put weight decay on weight matrices and kernels only, the quantizer learning rate on quantizer
parameters (LSQ steps, Uhlich ranges) and the update policy's per-layer LR scales (BinaryConnect's Glorot scale) on
the weights. Each optimizer is a function ``(groups, *, lr, **options) -> torch.optim.Optimizer`` registered in
:data:`OPTIMIZERS` with the schema of its own options; ``lr``, ``weight_decay`` and ``quantizer_lr`` apply to all
(:data:`COMMON_OPTIONS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..convert import quantizers_of
from ..registry import Registry
from .policies import UpdatePolicy

__all__ = ["OPTIMIZERS", "COMMON_OPTIONS", "build_optimizer", "parameter_groups"]

#: recipe ``train.optimizer.type`` -> ``f(parameter groups, *, lr, **options)``
OPTIMIZERS: Registry[str] = Registry("optimizer")

#: options of ``train.optimizer`` that apply to every optimizer (through the parameter groups)
COMMON_OPTIONS = {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-3},
    "weight_decay": {"type": "number", "minimum": 0, "default": 0.0},
    "quantizer_lr": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "default": None,
        "description": "learning rate of quantizer parameters (step sizes, ranges); null: lr",
    },
}
BETAS_OPTION = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "default": [0.9, 0.999]}


@OPTIMIZERS.register("adam", options={"betas": BETAS_OPTION})
def adam(groups: Iterable[dict], *, lr: float, betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba); weight decay, where a group has it, is added to the gradient (L2)."""
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))


@OPTIMIZERS.register("adamw", options={"betas": BETAS_OPTION})
def adamw(groups: Iterable[dict], *, lr: float, betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay (the groups' ``weight_decay``)."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


@OPTIMIZERS.register(
    "sgd",
    options={
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9},
        "nesterov": {"type": "boolean", "default": False},
    },
)
def sgd(groups: Iterable[dict], *, lr: float, momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD with (optionally Nesterov) momentum."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


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

    for _name, param in model.named_parameters():
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
    """The optimizer ``spec["type"]`` (default ``adam``) over ``params`` with its own options from ``spec``."""
    optimizer = OPTIMIZERS.component(spec.get("type", "adam"))
    return optimizer.factory(params, lr=spec["lr"], **optimizer.option_values(spec))
