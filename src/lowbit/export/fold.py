"""BatchNorm as a per-channel affine map, for folding into the convolution or linear layer before it.

In eval mode every normalisation layer lowbit uses is ``y = a·x + b`` per channel ``c``:

* BatchNorm:        ``a = γ / sqrt(σ² + ε)``,   ``b = β − μ·a``   (running mean μ and variance σ²);
* Range BatchNorm:  ``a = γ / (r + ε)``,        ``b = β − μ·a``   (running mean μ and running range scale r).

Folded into a directly preceding layer ``z = W ⋆ x + c`` (Conv or Linear), ``a·z + b = (a ⊙ W) ⋆ x + (a·c + b)``:
the rows of ``W`` are scaled. A quantized weight ``W = s·(q − z_w)`` keeps its integer codes ``q``; only its
per-output-channel scale becomes ``a·s``. The ONNX rewrite does that folding; this module only computes ``a``, ``b``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ..nn.range_bn import _RangeBatchNorm

__all__ = ["affine_of", "is_foldable_norm"]


def is_foldable_norm(module: nn.Module) -> bool:
    """Normalisation layers with fixed statistics in eval mode (BatchNorm with running stats, Range BN)."""
    if isinstance(module, _RangeBatchNorm):
        return True
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
    )


@torch.no_grad()
def affine_of(module: nn.Module) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Per-channel ``(a, b)`` with ``module(x) = a·x + b`` in eval mode, or ``None`` for other modules.

    float64, so that the folded scales and biases can be rounded to float32 once, after the product.
    """
    if not is_foldable_norm(module):
        return None
    mean = module.running_mean.double()
    if isinstance(module, _RangeBatchNorm):
        inv = 1.0 / (module.running_scale.double() + module.eps)
    else:
        inv = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
    gamma = module.weight.double() if module.weight is not None else torch.ones_like(mean)
    beta = module.bias.double() if module.bias is not None else torch.zeros_like(mean)
    a = gamma * inv
    b = beta - mean * a
    return a.numpy(), b.numpy()
