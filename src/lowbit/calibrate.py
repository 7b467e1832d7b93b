"""Calibration: initialise the activation quantizers of a quantized model from a batch of real data.

Weight quantizers are initialised from the weights when ``lowbit.quantize`` builds them (LSQ's step from
``mean|W|``, Uhlich's ranges from ``max|W|``); activation quantizers can only be initialised from activations, and
otherwise take the first batch they see, which may be the first training batch, an all-zeros summary input or an
evaluation batch. ``calibrate(qmodel, batch)`` runs ``batch`` through the model once, in train mode and without
gradients, so that every activation quantizer (LSQ step, Uhlich ``d``/``q_max``, min-max running range) is set from
the model's real activations; nothing else changes:

* no optimizer step, so the weights are untouched;
* BatchNorm (and Range BN) statistics and every other buffer outside the quantizers are saved and restored, so the
  trained running statistics stay as they were;
* each module's train/eval mode is restored.

It also marks the model's quantized layers as holding trained weights, so that BinaryConnect's update policy keeps
them rather than re-drawing them (``train/policies.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .errors import ConfigError
from .quantizers.base import Quantizer

__all__ = ["calibrate", "activation_quantizers", "mark_trained_weights", "TRAINED_WEIGHTS"]

#: attribute set on a quantized layer whose weights come from a trained float model (read by the update policies)
TRAINED_WEIGHTS = "weights_from_trained_model"

Batch = Union[torch.Tensor, Sequence, Mapping[str, Any]]


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """The quantizers with role ``activation`` (layer inputs, ``QuantAct``), each once."""
    return [m for m in model.modules() if isinstance(m, Quantizer) and m.role == "activation"]


def mark_trained_weights(model: nn.Module) -> None:
    """Record on every layer holding a weight quantizer that its weights come from a trained model."""
    for module in model.modules():
        if isinstance(getattr(module, "weight_quantizer", None), Quantizer):
            setattr(module, TRAINED_WEIGHTS, True)


def _run(model: nn.Module, batch: Batch) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, Mapping):
        model(**batch)  # keyword inputs (HuggingFace style)
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and batch and isinstance(batch[0], torch.Tensor):
        model(batch[0])  # an (inputs, targets) pair, as a DataLoader yields it
    else:
        raise ConfigError(
            f"calibration needs a batch of inputs: a tensor, an (inputs, targets) pair or a dict of keyword inputs; "
            f"got {type(batch).__name__}"
        )


def _outside_quantizers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer not owned by a quantizer (BatchNorm and Range BN statistics, ...), by name."""
    quantizer_prefixes = tuple(
        f"{name}." for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, Quantizer)
    )
    return {
        name: buffer
        for name, buffer in model.named_buffers(remove_duplicate=False)
        if not name.startswith(quantizer_prefixes)
    }


def calibrate(model: nn.Module, batch: Batch) -> nn.Module:
    """Initialise every activation quantizer of ``model`` from ``batch`` (again, if it was set before) and return
    ``model``.

    ``batch``: a tensor of inputs, an ``(inputs, targets)`` pair or a dict of keyword inputs; use a few hundred
    samples for stable ranges. Runs in train mode under ``torch.no_grad()``; weights, BatchNorm statistics and
    modes are left as they were. Quantizers whose parameters the recipe gives explicitly keep them.
    """
    for quantizer in activation_quantizers(model):
        quantizer.forget_initialization()
    buffers = _outside_quantizers(model)
    saved = {name: buffer.clone() for name, buffer in buffers.items()}
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        with torch.no_grad():
            _run(model, batch)
    finally:
        with torch.no_grad():
            for name, buffer in buffers.items():
                buffer.copy_(saved[name])
        for module, training in modes.items():
            module.train(training)
    mark_trained_weights(model)
    return model
