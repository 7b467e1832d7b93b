"""Seed derivation: independent, reproducible random streams from small integer keys; seeding the global RNGs."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import ConfigError

# Stream identifiers, so that e.g. the validation split and the test subset drawn from
# the same user seed are statistically independent of each other.
STREAM_VAL = 1
STREAM_TRAIN_SUBSET = 2
STREAM_TEST_SUBSET = 3
STREAM_FIXED_TEST = 4
STREAM_ORDER = 5
STREAM_AUGMENT = 6


def check_seed(seed: int, what: str = "seed") -> int:
    """Return ``seed`` as an int, raising ``ValueError`` unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"{what} must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ConfigError(f"{what} must be a non-negative int, got {seed}")
    return int(seed)


def derive_seed(*keys: int) -> int:
    """Hash non-negative integer ``keys`` into a 63-bit seed.

    Uses :class:`numpy.random.SeedSequence`, whose output is stable across NumPy
    versions, so ``derive_seed(seed, epoch, stream)`` names the same stream forever.
    63 bits keep the value valid for both ``torch.Generator.manual_seed`` and NumPy.
    """
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed the global random number generators from a run's seed: PyTorch's (CPU and every GPU), Python's
    :mod:`random` and NumPy's legacy global generator (``np.random.*``).

    lowbit's own random streams never read these (they use :func:`torch_generator` / :func:`numpy_rng`), but a model,
    a user's layer or a library might; seeding all three makes such code repeat from run to run as well. ``seed`` is
    a non-negative int below 2**64; NumPy, which takes 32-bit seeds, gets the seed's 32-bit words.
    """
    seed = check_seed(seed)
    if seed >= 1 << 64:
        raise ConfigError(f"seed must be below 2**64, got {seed}")
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed if seed < 1 << 32 else [seed & 0xFFFFFFFF, seed >> 32])


def numpy_rng(*keys: int) -> np.random.Generator:
    """A NumPy generator seeded from ``derive_seed(*keys)``."""
    return np.random.default_rng(derive_seed(*keys))


def torch_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(*keys)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*keys))
    return gen
