"""A narrow MobileNetV2 (Sandler et al., CVPR 2018) for small grey-scale or colour images such as Fashion-MNIST.

MobileNetV2 is where Bin Regularization gained most (Han et al. 2021: +3.9 points for 2-bit MobileNetV2) and one of
the nets whose layers Uhlich et al. (2020) gave learned bit widths: its depthwise 3×3 convolutions have a few hundred
weights each, its pointwise 1×1 convolutions thousands, so layers differ in size and in sensitivity to low bits.

Layout: a 3×3 stem conv (stride 2), inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1 linear projection, a
residual where the shape is unchanged), a 1×1 head conv, global average pooling and a fully connected layer. Every
conv is followed by BatchNorm; ReLU6 after the stem, expand, depthwise and head convs, none after the projection (the
"linear bottleneck"). 28×28 inputs go 14×14 → 7×7 → 4×4 through the strided stages.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .common import check_int, kaiming_init

__all__ = ["InvertedResidual", "SmallMobileNetV2", "build_mobilenetv2_28", "STAGES"]

#: (expansion t, output channels as a multiple of ``width``, blocks n, stride of the first block s), MobileNetV2's
#: table cut to four stages for 28×28 inputs
STAGES = ((1, 1, 1, 1), (6, 1.5, 2, 2), (6, 2, 2, 1), (6, 3, 2, 2))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """``x + project(depthwise(expand(x)))`` when stride 1 and ``cin == cout``, else without the residual.

    ``expand`` (1×1, to ``cin · t`` channels) is left out for ``t = 1``; ``depthwise`` is a 3×3 conv with one group
    per channel; ``project`` is a 1×1 conv + BatchNorm without an activation.
    """

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [_conv_bn(cin, hidden, 1)] if expansion != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, relu6=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class SmallMobileNetV2(nn.Module):
    """Stem (3×3, stride 2, ``width`` channels), the inverted residual stages of :data:`STAGES`, a 1×1 head conv to
    ``head`` channels, global average pooling and a Linear classifier. He-normal conv init."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, width: int = 8, head: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(input_shape[0], width, 3, stride=2)]
        cin = width
        for expansion, multiple, blocks, stride in STAGES:
            cout = int(round(width * multiple))
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(_conv_bn(cin, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(head, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def build_mobilenetv2_28(
    input_shape: tuple[int, int, int], num_classes: int, *, width: int = 8, head: int = 64
) -> SmallMobileNetV2:
    """Options: ``width`` channels of the stem (8; the stages have 1, 1.5, 2 and 3 times as many, the expanded
    depthwise layers 6 times that), ``head`` channels of the 1×1 conv before pooling (64). Needs ``width >= 2`` (a
    1.5 × width stage must have a whole number of channels > 0) and any input size (global pooling)."""
    width = check_int("width", width, minimum=2)
    head = check_int("head", head)
    if width % 2:
        raise ConfigError(f"option width of mobilenetv2-28 must be even (a stage has 1.5 × width channels): {width}")
    return SmallMobileNetV2(input_shape, num_classes, width=width, head=head)
