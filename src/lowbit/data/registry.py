"""Dataset names and the :func:`load_dataset` entry point."""

from __future__ import annotations

import importlib
import os

from ..registry import Registry
from .errors import DatasetError
from .splits import DatasetSplits, check_split_args

#: Dataset name -> ``loader(data_dir, *, val_fraction, seed, train_subset, test_subset) -> DatasetSplits``; each
#: reader module registers its datasets (and their common alternative spellings) where it defines the loader.
DATASETS: Registry[str] = Registry("dataset", error=DatasetError)


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (case-insensitive, a few aliases), else ``DatasetError``."""
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {name!r}; valid choices: {', '.join(DATASETS)}")
    try:
        return DATASETS.canonical(name.strip().lower())
    except DatasetError:
        raise DatasetError(DATASETS.unknown_message(name)) from None


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` from local files into train/val/test splits; nothing is downloaded.

    Args:
        name: one of :data:`DATASETS`: ``"digits"`` (scikit-learn, embedded),
            ``"fashion-mnist"`` (default dir ``/usr/share/datasets/fashion-mnist``),
            ``"mnist"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"`` (these need ``data_dir``).
        data_dir: directory holding the dataset files (see each reader for the layouts
            accepted), or ``None`` for the default location where one exists; ignored
            for ``"digits"``.
        val_fraction: fraction in ``[0, 1)`` of the (possibly subset) official training
            set held out, stratified by class, as the validation split.
        seed: non-negative seed for the validation split and the subsets.
        train_subset: use at most this many official training samples (a seeded random
            subset; train + val together have this size). For fast experiments and tests.
        test_subset: use at most this many official test samples (a seeded random subset).

    Returns:
        :class:`DatasetSplits` with uint8 ``N×C×H×W`` images, int64 labels and the
        per-channel train mean/std in pixel units (0..255).

    Raises:
        DatasetError: unknown name, or files missing or corrupt (the message says which
            files are expected where and how to get them).
        ValueError: an invalid ``val_fraction``, ``seed`` or subset size.
    """
    loader = DATASETS[canonical_name(name)]
    check_split_args(val_fraction, seed, train_subset, test_subset)
    return loader(data_dir, val_fraction=val_fraction, seed=seed, train_subset=train_subset, test_subset=test_subset)


# The readers register their datasets when imported, which must come after DATASETS exists (they import it from
# here); imported in this order, which is the order of DATASETS.
for _reader in ("digits", "idx", "cifar", "svhn"):
    importlib.import_module(f".{_reader}", __package__)
