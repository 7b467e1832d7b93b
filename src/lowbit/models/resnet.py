"""CIFAR ResNets (He, Zhang, Ren & Sun, "Deep Residual Learning", CVPR 2016, section 4.2).

Depth ``6n + 2``: a 3×3 conv with 16 channels, then three stages of ``n`` basic blocks
with 16, 32 and 64 channels on 32×32, 16×16 and 8×8 maps (the first block of stages 2
and 3 has stride 2), global average pooling and a fully connected layer. With the
parameter-free shortcut "A" and 10 classes, ResNet-20 (n = 3) has 0.27M and ResNet-56
(n = 9) 0.85M parameters (Table 6 of the paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .common import check_bool, kaiming_init

SHORTCUTS = ("A", "B")
STAGE_CHANNELS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option A shortcut: parameter-free. Keeps every ``stride``-th pixel and zero-pads
    the channel dimension from ``in_channels`` to ``out_channels`` (half of the new
    channels before, half after the existing ones)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra > 0:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`` with 3×3 convs.

    The shortcut is the identity when the shape is unchanged; otherwise
    :class:`PadShortcut` (option A) or a 1×1 strided conv + BatchNorm projection (B).
    """

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR-sized inputs; works for any input size (global pooling).

    Convs use He-normal init (:func:`~lowbit.models.common.kaiming_init`); the final
    fc keeps PyTorch's default init.
    """

    def __init__(
        self,
        n: int,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        shortcut: str = "A",
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], STAGE_CHANNELS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_CHANNELS[0])
        self.relu = nn.ReLU()
        prev = STAGE_CHANNELS[0]
        stages = []
        for i, ch in enumerate(STAGE_CHANNELS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(prev, ch, stride, shortcut))
                prev = ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes, bias=not output_bn)
        # optional BN on the logits (BinaryConnect's L2-SVM output), for binary-weight training
        self.out_bn = nn.BatchNorm1d(num_classes) if output_bn else nn.Identity()
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.out_bn(self.fc(self.flatten(self.pool(x))))


def _resnet_builder(n: int) -> Callable[..., CifarResNet]:
    def build(
        input_shape: tuple[int, int, int], num_classes: int, *, shortcut: str = "A", output_bn: bool = False
    ) -> CifarResNet:
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"option shortcut must be one of {', '.join(map(repr, SHORTCUTS))}, got {shortcut!r}")
        return CifarResNet(n, input_shape, num_classes, shortcut=shortcut, output_bn=check_bool("output_bn", output_bn))

    build.__name__ = f"build_resnet{6 * n + 2}"
    build.__doc__ = (
        f'ResNet-{6 * n + 2} (n = {n}). Option ``shortcut``: "A" (parameter-free zero padding, '
        f'default) or "B" (1×1 conv + BN projection where the shape changes); ``output_bn`` adds a '
        f"BatchNorm1d on the logits (default False)."
    )
    return build


build_resnet8 = _resnet_builder(1)
build_resnet20 = _resnet_builder(3)
build_resnet56 = _resnet_builder(9)
