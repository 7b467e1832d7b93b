"""Memory budgets (Uhlich et al. 2020): a penalty on weight and activation memory above a budget, with the bit widths
of the learned quantizers inferred through a straight-through estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ...convert import quantized_layers
from ...errors import ConfigError
from ...summary import BITS_PER_KB
from .base import REGULARIZERS, Regularizer

if TYPE_CHECKING:
    from ...quantizers.base import Quantizer

__all__ = ["MemoryBudget", "weight_memory_bits", "activation_memory_bits", "measure_activation_sizes"]


def measure_activation_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Activations per sample (``M_l``) entering each quantized layer, from one forward pass on ``example``."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, layer in quantized_layers(model):

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _name: str = name) -> None:
            x = inputs[0]
            sizes[_name] = x[0].numel()

        hooks.append(layer.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def weight_memory_bits(model: nn.Module, differentiable: bool = False) -> torch.Tensor:
    """``S_w = Σ_l N_l b_l`` over quantized layers: weights at the weight quantizer's bits, biases at the bias
    quantizer's bits (32 when a slot is left in float). With ``differentiable`` the bits carry their STE."""
    total = torch.zeros(())
    for _, layer in quantized_layers(model):
        for param, quantizer in ((layer.weight, layer.weight_quantizer), (layer.bias, layer.bias_quantizer)):
            if param is None:
                continue
            total = total + param.numel() * _bits(quantizer, differentiable)
    return total


def activation_memory_bits(
    model: nn.Module, sizes: dict[str, int], reduce: str = "max", differentiable: bool = False
) -> torch.Tensor:
    """``S_a = Σ_l M_l b_l`` (``sum``, eq. 8b) or ``max_l M_l b_l`` (``max``, eq. 8c) over quantized layer inputs."""
    terms = [
        sizes[name] * _bits(layer.input_quantizer, differentiable)
        for name, layer in quantized_layers(model)
        if layer.input_quantizer is not None and name in sizes
    ]
    if not terms:
        return torch.zeros(())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # fixed bit widths live on the CPU
    stacked = torch.stack([torch.as_tensor(t, dtype=torch.float32, device=device) for t in terms])
    return stacked.sum() if reduce == "sum" else stacked.max()


def _bits(quantizer: Optional[Quantizer], differentiable: bool) -> torch.Tensor:
    if quantizer is None:
        return torch.tensor(32.0)
    if differentiable:
        return quantizer.bit_width().float()
    return torch.tensor(float(quantizer.bits))


@REGULARIZERS.register(
    "memory_budget",
    options={
        "weight_kb": {"type": "number", "exclusiveMinimum": 0, "description": "weight memory budget in KB"},
        "weight_bits": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 32,
            "description": "budget = memory of the same net at this homogeneous weight bit width",
        },
        "activation_kb": {"type": "number", "exclusiveMinimum": 0, "description": "activation memory budget in KB"},
        "activation_bits": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 32,
            "description": "budget = activation memory at this homogeneous bit width",
        },
        "activation_reduce": {
            "enum": ["sum", "max"],
            "default": "max",
            "description": "total (8b) or largest single layer (8c) activation memory",
        },
        "strength": {"type": "number", "minimum": 0, "default": 0.1, "description": "lambda of the squared excess"},
        "clip_grads": {
            "type": "boolean",
            "default": True,
            "description": "clip d / q_max gradients to [-d, d] while the budget is on",
        },
    },
)
@dataclass
class MemoryBudget(Regularizer):
    """``λ relu(S_w[KB] - S_w0)^2 + λ relu(S_a[KB] - S_a0)^2`` with bits inferred through an STE.

    Budgets are given in KB or as the memory of the same network at a homogeneous bit width (``weight_bits: 2``
    means "no more than the 2-bit homogeneous net"). While active, the gradients of the learned quantizer scalars
    are clipped to ``[-d, d]`` (Uhlich's rule) and only checkpoints that satisfy every budget may become "best".
    """

    weight_kb: Optional[float] = None
    weight_bits: Optional[float] = None
    activation_kb: Optional[float] = None
    activation_bits: Optional[float] = None
    activation_reduce: str = "max"
    strength: float = 0.1
    clip_grads: bool = True
    activation_sizes: dict = field(default_factory=dict)

    def bind(self, model: nn.Module, example: Optional[torch.Tensor]) -> None:
        """Resolve homogeneous-bit budgets into KB for this model (needs one example batch)."""
        if example is None:
            raise ConfigError("a memory budget needs an example batch to measure activation sizes")
        self.activation_sizes = measure_activation_sizes(model, example)
        if self.weight_bits is not None:
            n = sum(
                p.numel() for _, layer in quantized_layers(model) for p in (layer.weight, layer.bias) if p is not None
            )
            self.weight_kb = n * self.weight_bits / BITS_PER_KB
        if self.activation_bits is not None:
            sizes = [
                self.activation_sizes[name]
                for name, layer in quantized_layers(model)
                if layer.input_quantizer is not None and name in self.activation_sizes
            ]
            total = sum(sizes) if self.activation_reduce == "sum" else max(sizes, default=0)
            self.activation_kb = total * self.activation_bits / BITS_PER_KB

    def active(self, epoch: int) -> bool:
        return self.strength > 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        loss = torch.zeros(())
        if self.weight_kb is not None:
            excess = torch.relu(weight_memory_bits(model, differentiable=True) / BITS_PER_KB - self.weight_kb)
            loss = loss + excess.square()
        if self.activation_kb is not None:
            used = activation_memory_bits(model, self.activation_sizes, self.activation_reduce, differentiable=True)
            loss = loss + torch.relu(used / BITS_PER_KB - self.activation_kb).square()
        return self.strength * loss

    def after_backward(self, model: nn.Module) -> None:
        if not self.clip_grads:
            return
        for module in model.modules():
            clip = getattr(module, "clip_param_grads_", None)
            if clip is not None:
                clip()

    @torch.no_grad()
    def usage(self, model: nn.Module) -> dict:
        weight_kb = float(weight_memory_bits(model)) / BITS_PER_KB
        act_kb = float(activation_memory_bits(model, self.activation_sizes, self.activation_reduce)) / BITS_PER_KB
        return {"weight_kb": weight_kb, "activation_kb": act_kb}

    def satisfied(self, model: nn.Module) -> bool:
        usage = self.usage(model)
        ok_w = self.weight_kb is None or usage["weight_kb"] <= self.weight_kb + 1e-9
        ok_a = self.activation_kb is None or usage["activation_kb"] <= self.activation_kb + 1e-9
        return ok_w and ok_a

    def describe(self, model: nn.Module) -> dict:
        usage = self.usage(model)
        return {
            "weight_kb": round(usage["weight_kb"], 3),
            "weight_budget_kb": self.weight_kb,
            "activation_kb": round(usage["activation_kb"], 3),
            "activation_budget_kb": self.activation_kb,
            "budget_satisfied": self.satisfied(model),
        }

    def log_line(self, record: dict) -> str:
        return f"  weights {record['weight_kb']:.2f} KB" if "weight_kb" in record else ""
