"""Batched data augmentation on image tensors, driven by an explicit ``torch.Generator``.

* ``"crop"``: pad each image with ``padding`` zero pixels on every side and cut out a
  window of the original size at a uniformly random offset ``(dy, dx)`` in
  ``[0, 2 * padding]²`` (SVHN; 4-pixel padding as in the papers' CIFAR/SVHN setups).
* ``"crop-flip"``: the crop above, then a horizontal mirror with probability 1/2 (CIFAR).
* ``"none"``: the batch is returned unchanged.

The loader applies these to the raw uint8 pixels before normalisation, so the padding
is black (pixel value 0), as with the usual pad-then-normalise pipelines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

AUGMENTATIONS = ("none", "crop-flip", "crop")
DEFAULT_PADDING = 4


def check_augment(kind: str) -> str:
    """Return ``kind`` if it names an augmentation, else raise ``ValueError`` listing them."""
    if kind not in AUGMENTATIONS:
        raise ConfigError(f"unknown augment {kind!r}; valid values: {', '.join(AUGMENTATIONS)}")
    return kind


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad ``x`` (``N×C×H×W``) by ``padding`` and take a random ``H×W`` window per image."""
    if padding <= 0 or x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # N×H
    cols = dx[:, None] + torch.arange(w)  # N×W
    # One advanced-indexing gather for the whole batch (no per-image Python loop).
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of ``x`` left-right with probability ``p``."""
    if x.shape[0] == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(
    x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = DEFAULT_PADDING
) -> torch.Tensor:
    """Apply augmentation ``kind`` (one of :data:`AUGMENTATIONS`) to a batch; shape is kept."""
    check_augment(kind)
    if kind == "none":
        return x
    x = random_crop(x, padding, generator)
    if kind == "crop-flip":
        x = random_hflip(x, generator)
    return x
