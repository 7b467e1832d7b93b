"""A small two-conv CNN for MNIST-sized (and smaller) grey-scale or colour images."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .common import check_bool, check_int


def _pooled(size: int, pools: int) -> int:
    for _ in range(pools):
        size //= 2  # MaxPool2d(2) floors odd sizes
    return size


class SmallCNN(nn.Module):
    """``[conv3x3(c) → BN → ReLU → maxpool2] × 2 → flatten → fc → (BN1d) → ReLU → fc``.

    Convolutions use padding 1 so only the pools shrink the image; the flattened size
    is ``channels[1] · ⌊H/4⌋ · ⌊W/4⌋`` (28×28 → 7×7, 8×8 → 2×2). PyTorch default init.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: tuple[int, int] = (32, 64),
        fc: int = 256,
        fc_bn: bool = True,
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        flat = c2 * _pooled(h, 2) * _pooled(w, 2)
        head: list[nn.Module] = [nn.Linear(flat, fc, bias=not fc_bn)]
        if fc_bn:
            head.append(nn.BatchNorm1d(fc))
        head += [nn.ReLU(), nn.Linear(fc, num_classes, bias=not output_bn)]
        if output_bn:  # BinaryConnect's BN'd output: keeps binary-weight logits at a trainable scale
            head.append(nn.BatchNorm1d(num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def build_small_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: tuple[int, int] = (32, 64),
    fc: int = 256,
    fc_bn: bool = True,
    output_bn: bool = False,
) -> SmallCNN:
    """Options: ``channels`` of the two convs ((32, 64)), ``fc`` hidden units (256),
    ``fc_bn`` BatchNorm1d after the hidden fc (True), ``output_bn`` BatchNorm1d on the
    logits (False; BinaryConnect's L2-SVM output). Needs H, W >= 4."""
    try:
        c1, c2 = channels
    except (TypeError, ValueError):
        raise ConfigError(f"option channels must be a pair of ints, got {channels!r}") from None
    channels = (check_int("channels", c1), check_int("channels", c2))
    _, h, w = input_shape
    if _pooled(h, 2) < 1 or _pooled(w, 2) < 1:
        raise ConfigError(f"small-cnn pools twice by 2 and needs inputs of at least 4×4, got {h}×{w}")
    return SmallCNN(
        input_shape,
        num_classes,
        channels=channels,
        fc=check_int("fc", fc),
        fc_bn=check_bool("fc_bn", fc_bn),
        output_bn=check_bool("output_bn", output_bn),
    )
