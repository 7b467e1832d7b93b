"""BinaryConnect's VGG-like CIFAR-10 / SVHN network (Courbariaux, Bengio & David, 2015)."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..errors import ConfigError
from .common import check_bool, check_int, glorot_init

#: Conv channel counts at width 1.0: (2×128C3)–MP2–(2×256C3)–MP2–(2×512C3)–MP2.
BC_VGG_CHANNELS = (128, 256, 512)


class BCVGG(nn.Module):
    """``(2×128C3)–MP2–(2×256C3)–MP2–(2×512C3)–MP2–(2×1024FC)–num_classes``.

    Every hidden layer is followed by BatchNorm and ReLU. In the second conv of each
    pair the max-pool comes between the conv and its BatchNorm (conv → maxpool → BN →
    ReLU), as in the paper's code, so BN sees the pooled activations. Convs are 3×3 with
    padding 1. The output layer is batch-normalised ("L2-SVM" output, ``output_bn``).
    ``width`` scales the conv channels (0.5 gives the SVHN variant, 64/128/256); the
    fully connected layers keep ``fc`` units. Glorot-uniform init as in the paper's code;
    layers followed by BN have no bias. The flattened size is ``C₃ · ⌊H/8⌋ · ⌊W/8⌋``
    (8192 for 32×32 inputs at width 1.0).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: float = 1.0,
        fc: int = 1024,
        output_bn: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        prev = c
        for base in BC_VGG_CHANNELS:
            ch = max(1, int(round(base * width)))
            layers += [nn.Conv2d(prev, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
            layers += [nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = prev * (h // 8) * (w // 8)
        self.classifier = nn.Sequential(
            nn.Linear(flat, fc, bias=False),
            nn.BatchNorm1d(fc),
            nn.ReLU(),
            nn.Linear(fc, fc, bias=False),
            nn.BatchNorm1d(fc),
            nn.ReLU(),
            nn.Linear(fc, num_classes, bias=not output_bn),
        )
        self.output_bn = nn.BatchNorm1d(num_classes) if output_bn else nn.Identity()
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_bn(self.classifier(self.flatten(self.features(x))))


def build_bc_vgg(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: float = 1.0,
    fc: int = 1024,
    output_bn: bool = True,
) -> BCVGG:
    """Options: ``width`` conv channel multiplier (1.0; 0.5 for SVHN), ``fc`` units of the
    two hidden fully connected layers (1024), ``output_bn`` (True). Needs H, W >= 8."""
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not width > 0:
        raise ConfigError(f"option width must be a positive number, got {width!r}")
    _, h, w = input_shape
    if h < 8 or w < 8:
        raise ConfigError(f"bc-vgg max-pools three times by 2 and needs inputs of at least 8×8, got {h}×{w}")
    return BCVGG(
        input_shape,
        num_classes,
        width=float(width),
        fc=check_int("fc", fc),
        output_bn=check_bool("output_bn", output_bn),
    )
