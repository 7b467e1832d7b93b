"""Regularizers added to the task loss: Bin Regularization (Han et al. 2021) and memory budgets (Uhlich et al. 2020).

Both are built from the recipe's ``train.regularizers`` list and share one small interface: ``active(epoch)``,
``penalty(model) -> tensor`` and ``describe(model) -> dict`` of figures worth logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..convert import quantized_layers

__all__ = ["BinRegularizer", "MemoryBudget", "build_regularizers", "level_distance", "weight_memory_bits",
           "activation_memory_bits", "measure_activation_sizes", "bin_regularization"]

KB = 8 * 1024  # bits per kilobyte


def bin_regularization(weight: torch.Tensor, quantizer) -> torch.Tensor:
    """``L_BR = Σ_i over non-empty bins [(mean(B_i) - t_i)^2 + Var(B_i)]`` for one weight tensor.

    Bins are the current integer codes (same clipping as the forward quantizer), targets ``t_i`` the levels with the
    step detached (the conservative choice: BR moves the weights, not the step). With the population variance,
    ``(mean - t)^2 + Var`` is the mean squared distance to the target inside the bin, so the sum over bins is
    ``Σ_j (w_j - t_{c_j})^2 / |B_{c_j}|``: one bincount and one gather, no loop over bins.
    """
    encoded = quantizer.encode(weight)
    targets = encoded.dequantize().to(weight.dtype)
    index = encoded.indices.reshape(-1).long()
    counts = torch.bincount(index, minlength=2**encoded.bits).to(weight.dtype)
    squared_error = (weight - targets).reshape(-1).square()
    return (squared_error / counts[index]).sum()


@dataclass
class BinRegularizer:
    """``λ Σ_layers L_BR(layer)`` on quantized weights, off before ``start_epoch`` (staged strategy S2)."""

    strength: float = 0.5
    start_epoch: int = 0

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and self.strength > 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [bin_regularization(layer.weight, layer.weight_quantizer)
                 for _, layer in quantized_layers(model) if layer.weight_quantizer is not None]
        if not terms:
            raise ValueError("bin_reg needs quantized weights, but the recipe quantizes none")
        return self.strength * torch.stack(terms).sum()

    @torch.no_grad()
    def describe(self, model: nn.Module) -> dict:
        """Mean |w - Q(w)| / step and the fraction of weights within 0.05 step of a level (BR's sharpness)."""
        distances = [level_distance(layer.weight, layer.weight_quantizer)[0]
                     for _, layer in quantized_layers(model) if layer.weight_quantizer is not None]
        if not distances:
            return {}
        relative = torch.cat(distances)
        return {"br_mean_distance": float(relative.mean()), "br_near_level": float((relative <= 0.05).float().mean())}


@torch.no_grad()
def level_distance(weight: torch.Tensor, quantizer) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(|w - Q(w)| / s, w / s, bits)`` per weight (flattened), with ``s`` the quantizer's step: how far each latent
    weight sits from its quantization level, in steps (0 on a level, 1/2 on a bin edge)."""
    encoded = quantizer.encode(weight)
    step = encoded.scale.float()
    w = weight.detach().float()
    return ((w - encoded.dequantize()).abs() / step).reshape(-1), (w / step).reshape(-1), int(encoded.bits)


# ------------------------------------------------------------------------------------------ memory accounting
def measure_activation_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Activations per sample (``M_l``) entering each quantized layer, from one forward pass on ``example``."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, layer in quantized_layers(model):
        def hook(module, inputs, _name=name):
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


def activation_memory_bits(model: nn.Module, sizes: dict[str, int], reduce: str = "max",
                           differentiable: bool = False) -> torch.Tensor:
    """``S_a = Σ_l M_l b_l`` (``sum``, eq. 8b) or ``max_l M_l b_l`` (``max``, eq. 8c) over quantized layer inputs."""
    terms = [sizes[name] * _bits(layer.input_quantizer, differentiable)
             for name, layer in quantized_layers(model) if layer.input_quantizer is not None and name in sizes]
    if not terms:
        return torch.zeros(())
    stacked = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in terms])
    return stacked.sum() if reduce == "sum" else stacked.max()


def _bits(quantizer, differentiable: bool):
    if quantizer is None:
        return torch.tensor(32.0)
    if differentiable:
        return quantizer.bit_width().float()
    return torch.tensor(float(quantizer.bits))


@dataclass
class MemoryBudget:
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

    def bind(self, model: nn.Module, example: torch.Tensor) -> None:
        """Resolve homogeneous-bit budgets into KB for this model (needs one example batch)."""
        self.activation_sizes = measure_activation_sizes(model, example)
        if self.weight_bits is not None:
            n = sum(p.numel() for _, layer in quantized_layers(model) for p in (layer.weight, layer.bias)
                    if p is not None)
            self.weight_kb = n * self.weight_bits / KB
        if self.activation_bits is not None:
            sizes = [self.activation_sizes[name] for name, layer in quantized_layers(model)
                     if layer.input_quantizer is not None and name in self.activation_sizes]
            total = sum(sizes) if self.activation_reduce == "sum" else max(sizes, default=0)
            self.activation_kb = total * self.activation_bits / KB

    def active(self, epoch: int) -> bool:
        return self.strength > 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        loss = torch.zeros(())
        if self.weight_kb is not None:
            excess = torch.relu(weight_memory_bits(model, differentiable=True) / KB - self.weight_kb)
            loss = loss + excess.square()
        if self.activation_kb is not None:
            used = activation_memory_bits(model, self.activation_sizes, self.activation_reduce, differentiable=True)
            loss = loss + torch.relu(used / KB - self.activation_kb).square()
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
        weight_kb = float(weight_memory_bits(model)) / KB
        act_kb = float(activation_memory_bits(model, self.activation_sizes, self.activation_reduce)) / KB
        return {"weight_kb": weight_kb, "activation_kb": act_kb}

    def satisfied(self, model: nn.Module) -> bool:
        usage = self.usage(model)
        ok_w = self.weight_kb is None or usage["weight_kb"] <= self.weight_kb + 1e-9
        ok_a = self.activation_kb is None or usage["activation_kb"] <= self.activation_kb + 1e-9
        return ok_w and ok_a

    def describe(self, model: nn.Module) -> dict:
        usage = self.usage(model)
        return {"weight_kb": round(usage["weight_kb"], 3), "weight_budget_kb": self.weight_kb,
                "activation_kb": round(usage["activation_kb"], 3), "activation_budget_kb": self.activation_kb,
                "budget_satisfied": self.satisfied(model)}


def build_regularizers(specs: list[dict]) -> list:
    built = []
    for spec in specs:
        options = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] == "bin_reg":
            built.append(BinRegularizer(**options))
        elif spec["type"] == "memory_budget":
            built.append(MemoryBudget(**options))
        else:
            raise ValueError(f"unknown regularizer {spec['type']!r}; valid choices: bin_reg, memory_budget")
    return built

