"""Argument checks and initialisers shared by the model builders."""

from __future__ import annotations

import numbers

from torch import nn

from ..errors import ConfigError


def check_input_shape(input_shape: object) -> tuple[int, int, int]:
    """Return ``input_shape`` as ``(C, H, W)`` of positive ints, else raise ``ValueError``."""
    try:
        shape = tuple(input_shape)  # type: ignore[arg-type]
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int ``>= minimum``, else raise ``ValueError`` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"option {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise ``ValueError`` naming option ``name``."""
    if not isinstance(value, bool):
        raise ConfigError(f"option {name} must be True or False, got {value!r}")
    return value


def glorot_init(model: nn.Module) -> None:
    """Glorot/Xavier-uniform weights (``U(±sqrt(6 / (fan_in + fan_out)))``) and zero biases
    for every Linear/Conv2d, as the BinaryConnect code (Lasagne ``GlorotUniform``) uses."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def kaiming_init(model: nn.Module) -> None:
    """He et al. (2015) normal init for every Conv2d, ``std = sqrt(2 / (k² · C_out))``
    (the "fan_out" mode of the reference fb.resnet.torch / torchvision ResNets), zero conv
    biases; BatchNorm weight 1 and bias 0. Linear layers keep PyTorch's default init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
