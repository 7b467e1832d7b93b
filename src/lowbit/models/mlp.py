"""BinaryConnect's permutation-invariant MLP (Courbariaux, Bengio & David, NeurIPS 2015)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import check_bool, check_int, glorot_init


class MLP(nn.Module):
    """``flatten → [Linear → BatchNorm1d → ReLU] × depth → Linear → BatchNorm1d``.

    The paper's MNIST net has 3 hidden layers of 1024 units and an "L2-SVM" output
    layer whose pre-activations are batch-normalised (``output_bn``); the network is
    trained with a squared hinge loss on those outputs. Weights use Glorot-uniform
    init as in the paper's code. Layers followed by BatchNorm have no bias (BN's mean
    subtraction cancels it). BatchNorm is PyTorch's, ``(x - μ) / sqrt(σ² + eps)`` with
    the default ``eps = 1e-5``, where the original Lasagne code adds its epsilon
    (1e-4) to the standard deviation instead; the difference is negligible.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, hidden: int = 1024, depth: int = 3, output_bn: bool = True
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes, bias=not output_bn)
        self.output_bn = nn.BatchNorm1d(num_classes) if output_bn else nn.Identity()
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_bn(self.classifier(self.features(self.flatten(x))))


def build_mlp(
    input_shape: tuple[int, int, int], num_classes: int, *, hidden: int = 1024, depth: int = 3, output_bn: bool = True
) -> MLP:
    """Options: ``hidden`` units per layer (1024), ``depth`` hidden layers (3, may be 0),
    ``output_bn`` batch-normalised outputs (True)."""
    return MLP(
        math.prod(input_shape),
        num_classes,
        hidden=check_int("hidden", hidden),
        depth=check_int("depth", depth, minimum=0),
        output_bn=check_bool("output_bn", output_bn),
    )
