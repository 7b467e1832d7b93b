"""SVHN, format 2 (cropped 32×32 digits): ``train_32x32.mat`` and ``test_32x32.mat``.

Each file is a MATLAB (v5) file with ``X`` of shape ``32×32×3×N`` (uint8, height ×
width × RGB × sample) and ``y`` of shape ``N×1`` with labels 1..10, where 10 stands
for the digit 0; it is mapped to 0 so labels are the digits themselves. The 531k-image
``extra_32x32.mat`` is not used. Files are read with ``scipy.io.loadmat``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..optional import require
from .errors import DatasetError, check_labels, corrupt
from .registry import DATASETS
from .splits import DatasetSplits, make_splits

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
SVHN_CLASSES = tuple(str(d) for d in range(10))

_HINT = (
    "SVHN needs the format-2 (cropped digits) files train_32x32.mat and test_32x32.mat from "
    "http://ufldl.stanford.edu/housenumbers/: put them into DIR and pass --data-dir DIR "
    "(data_dir=DIR). Nothing is downloaded automatically."
)


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN format-2 ``.mat`` file as (``N×3×32×32`` uint8, int64 labels 0..9)."""
    path = Path(path)
    scipy_io = require("scipy.io", f"reading the SVHN file {path}")
    try:
        mat = scipy_io.loadmat(path, variable_names=("X", "y"))
    except FileNotFoundError as exc:
        raise DatasetError(f"SVHN file not found: {path}. {_HINT}") from exc
    except Exception as exc:  # loadmat reports damage with many exception types
        raise corrupt(path, f"cannot read the MATLAB file ({type(exc).__name__}: {exc})", _HINT) from exc
    if "X" not in mat or "y" not in mat:
        raise corrupt(
            path, f"expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}", _HINT
        )
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise corrupt(path, f"X must be 32×32×3×N uint8, got {x.dtype} shape {x.shape}", _HINT)
    y = y.reshape(-1)
    if y.shape[0] != x.shape[3]:
        raise corrupt(path, f"{y.shape[0]} labels for {x.shape[3]} images", _HINT)
    if y.size and (y.min() < 1 or y.max() > 10 or not np.all(y == np.round(y))):
        raise corrupt(path, f"labels must be integers 1..10 (10 = digit 0), found {y.min()}..{y.max()}", _HINT)
    labels = y.astype(np.int64) % 10
    check_labels(labels, 10, path, _HINT)
    # (H, W, C, N) -> (N, C, H, W), made contiguous here once.
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels


def load_svhn(
    data_dir: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
) -> DatasetSplits:
    """Load SVHN (73,257 train / 26,032 test, ``3×32×32`` uint8, augment ``"crop"``).

    The files are looked up in ``data_dir`` and then in its ``svhn/`` or ``SVHN/`` subfolder.
    """
    if data_dir is None:
        raise DatasetError(f"SVHN has no default location; no data_dir was given. {_HINT}")
    base = Path(data_dir)
    candidates = [base, base / "svhn", base / "SVHN"]
    folder = next((c for c in candidates if all((c / f).is_file() for f in SVHN_FILES)), None)
    if folder is None:
        if not base.is_dir():
            problem = f"directory {base} does not exist"
        else:
            missing = [f for f in SVHN_FILES if not (base / f).is_file()]
            problem = f"missing {', '.join(missing)} in {base} (also looked in {candidates[1]}, {candidates[2]})"
        raise DatasetError(f"SVHN not found: {problem}. {_HINT}")
    train_x, train_y = read_svhn_mat(folder / SVHN_FILES[0])
    test_x, test_y = read_svhn_mat(folder / SVHN_FILES[1])
    return make_splits(
        "svhn",
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=10,
        val_fraction=val_fraction,
        seed=seed,
        train_subset=train_subset,
        test_subset=test_subset,
        augment="crop",
        classes=SVHN_CLASSES,
        source=str(folder),
    )


DATASETS.register(
    "svhn", load_svhn, options={}, description="SVHN: 73k/26k 3x32x32 house-number digits, 10 classes (.mat files)"
)
