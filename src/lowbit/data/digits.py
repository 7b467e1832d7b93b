"""scikit-learn's embedded 8×8 handwritten digits (1,797 images, no download needed).

The data has no official test split, so a fixed one is made: a stratified 20% (360
images) chosen with a constant seed that does NOT depend on ``load_dataset``'s
``seed``, so test accuracy is always measured on the same images; the validation
split is then carved from the remaining 1,437 with ``seed``.

Pixel values are the integer grey levels 0..16 multiplied by 15, i.e. 0..240 stored as
uint8: an exact linear map (no rounding), in the same uint8 pixel units as the other
datasets; ``mean``/``std`` are in those units.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..optional import require
from .registry import DATASETS
from .rng import STREAM_FIXED_TEST, numpy_rng
from .splits import DatasetSplits, make_splits, stratified_holdout

#: Fraction of the 1,797 images held out as the fixed test split.
DIGITS_TEST_FRACTION = 0.2
#: Seed of the fixed test split (part of the dataset definition, not a user choice).
DIGITS_TEST_SEED = 0
#: Grey levels 0..16 are scaled by this factor into uint8 (16 * 15 = 240 <= 255).
DIGITS_SCALE = 15
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def load_digits_dataset(
    *,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
) -> DatasetSplits:
    """Load the digits as ``N×1×8×8`` uint8 (values ``15 × 0..16``), 10 classes."""
    datasets = require("sklearn.datasets", "the digits dataset (embedded in scikit-learn)")
    images, labels = datasets.load_digits(return_X_y=True)
    x = (np.rint(images) * DIGITS_SCALE).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = labels.astype(np.int64)
    train_idx, test_idx = stratified_holdout(y, DIGITS_TEST_FRACTION, numpy_rng(DIGITS_TEST_SEED, STREAM_FIXED_TEST))
    splits = make_splits(
        "digits",
        x[train_idx],
        y[train_idx],
        x[test_idx],
        y[test_idx],
        num_classes=10,
        val_fraction=val_fraction,
        seed=seed,
        train_subset=train_subset,
        test_subset=test_subset,
        augment="none",
        classes=DIGITS_CLASSES,
        source="sklearn.datasets.load_digits",
    )
    # Report indices into the 1,797 embedded images rather than into the derived train/test parts.
    splits.train.index = _compose(train_idx, splits.train.index)
    splits.val.index = _compose(train_idx, splits.val.index)
    splits.test.index = _compose(test_idx, splits.test.index)
    return splits


def _compose(base: np.ndarray, index: torch.Tensor | None) -> torch.Tensor:
    """Map positions within ``base`` to the original positions ``base[index]``."""
    assert index is not None
    return torch.from_numpy(base[index.numpy()])


@DATASETS.register("digits", options={})
def _digits(data_dir: str | os.PathLike | None, **split_options: Any) -> DatasetSplits:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), embedded: no files needed (``data_dir`` is ignored)."""
    return load_digits_dataset(**split_options)
