"""Reference float architectures from the low-bit papers, built from plain PyTorch modules.

Every layer with weights is an ``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm1d`` /
``nn.BatchNorm2d`` attribute (possibly inside ``nn.Sequential``) used exactly once in
``forward``, so quantized replacements can be swapped in by walking ``named_modules()``.
Activations are ``nn.ReLU`` module instances, likewise used once each.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError
from .cnn import SmallCNN, build_small_cnn
from .common import check_input_shape
from .mlp import MLP, build_mlp
from .mobilenet import SmallMobileNetV2, build_mobilenetv2_28
from .reference import build_from_reference, is_reference
from .resnet import BasicBlock, CifarResNet, PadShortcut, build_resnet8, build_resnet20, build_resnet56
from .vgg import BCVGG, build_bc_vgg

#: name -> (builder(input_shape, num_classes, **options), one-line description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (
        build_mlp,
        "BinaryConnect permutation-invariant MLP: 3x1024 FC-BN-ReLU, BN output (Courbariaux et al. 2015)",
    ),
    "small-cnn": (build_small_cnn, "2 conv (32, 64) + fc256 CNN for 28x28 / 8x8 inputs"),
    "bc-vgg": (build_bc_vgg, "BinaryConnect VGG-like CIFAR-10 net: 2x128C3-MP-2x256C3-MP-2x512C3-MP-2x1024FC"),
    "resnet8": (build_resnet8, "CIFAR ResNet-8 (n=1), a small quick residual net"),
    "resnet20": (build_resnet20, "CIFAR ResNet-20 (He et al. 2016), 0.27M parameters"),
    "resnet56": (build_resnet56, "CIFAR ResNet-56 (He et al. 2016), 0.85M parameters"),
    "mobilenetv2-28": (
        build_mobilenetv2_28,
        "narrow MobileNetV2 (inverted residuals, depthwise 3x3 convs, ReLU6) for 28x28 inputs, 28k parameters",
    ),
}


def _options_of(builder: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def model_options(name: str) -> list[str]:
    """The keyword options model ``name`` accepts (empty for an unknown name)."""
    entry = MODELS.get(name.strip().lower() if isinstance(name, str) else name)
    return _options_of(entry[0]) if entry else []


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **options: object) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) for ``(C, H, W)`` inputs and ``num_classes`` outputs; a
    reference ``MODULE:CALLABLE`` imports that module and calls ``CALLABLE(input_shape, num_classes, **options)``
    (:mod:`lowbit.models.reference`; importing runs the module's code).

    Raises:
        ConfigError: unknown ``name`` (the message lists valid names), bad ``input_shape``
            or ``num_classes``, an option the model does not have (the message lists valid
            options) or with an invalid value, or inputs too small for the architecture.
    """
    if is_reference(name):
        return build_from_reference(name, input_shape, num_classes, **options)
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; valid names: {', '.join(MODELS)}, or your own as MODULE:CALLABLE "
            f"(e.g. my_pkg.my_module:build_model)"
        )
    shape = check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    builder, _ = MODELS[key]
    valid = _options_of(builder)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(
            f"model {key!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) if valid else '(none)'}"
        )
    return builder(shape, int(num_classes), **options)


__all__ = [
    "BCVGG",
    "BasicBlock",
    "CifarResNet",
    "MLP",
    "MODELS",
    "PadShortcut",
    "SmallCNN",
    "SmallMobileNetV2",
    "build_model",
    "model_options",
]
