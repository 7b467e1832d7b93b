"""The device a run trains on: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available, else CPU)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["resolve_device", "on_cpu"]


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``; a :class:`ConfigError` for an unknown name or a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {name!r} is not available ({why}); use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device type {device.type!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when all its parameters and buffers are on the CPU, else a CPU copy (exports encode, trace and
    pack on the CPU: ONNX and packed files hold CPU tensors, and a user's GPU model stays where it is)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()
