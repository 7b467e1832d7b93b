"""MNIST and Fashion-MNIST: readers for the IDX file format, gzipped or not.

IDX layout (all integers big-endian): two zero bytes, one type byte (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte with the
number of dimensions ``d``, then ``d`` uint32 sizes, then the data in C order.
Image files are 3-D uint8 (magic 0x00000803, ``N×28×28``), label files 1-D uint8
(magic 0x00000801, ``N``).
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError, check_labels, corrupt
from .registry import DATASETS
from .splits import DatasetSplits, make_splits

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The four files of an MNIST-style dataset, (train images, train labels, test images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != _GZIP_MAGIC:
            return f.read()
        # Detected by content, not by name, so a gunzipped file keeping ".gz" still works.
        try:
            with gzip.GzipFile(fileobj=f) as gz:
                return gz.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise corrupt(path, f"gzip stream is damaged or truncated ({exc})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a native-endian NumPy array.

    Raises ``DatasetError`` naming the file if it is missing, has a wrong magic number,
    is truncated, or has trailing bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise corrupt(path, f"only {len(raw)} bytes, too short for an IDX header")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise corrupt(path, f"bad IDX magic number 0x{raw[:4].hex()} (expected 0x000008NN)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt(path, f"truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    # Python integers: np.prod in int64 wraps around for a damaged header such as 65536^3 x 32768 and reports a
    # nonsensical size (negative, or "trailing bytes")
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) < expected:
        raise corrupt(path, f"truncated: header promises shape {shape} ({expected} bytes) but the file has {len(raw)}")
    if len(raw) > expected:
        raise corrupt(path, f"{len(raw) - expected} unexpected trailing bytes after shape {shape}")
    # bytearray makes the array writable (torch.from_numpy warns on read-only buffers).
    data = np.frombuffer(bytearray(raw[header:]), dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _resolve(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_files(candidates: list[Path]) -> tuple[list[Path] | None, list[str]]:
    """Return the four IDX paths from the first candidate directory holding all of them,
    else ``(None, names missing from the first candidate)``."""
    first_missing: list[str] | None = None
    for directory in candidates:
        found = [_resolve(directory, stem) for stem in IDX_FILES]
        if all(p is not None for p in found):
            return [p for p in found if p is not None], []
        if first_missing is None:
            first_missing = [f"{stem}[.gz]" for stem, p in zip(IDX_FILES, found) if p is None]
    return None, first_missing or [f"{stem}[.gz]" for stem in IDX_FILES]


def _hint(name: str) -> str:
    files = ", ".join(f"{stem}.gz" for stem in IDX_FILES)
    if name == "fashion-mnist":
        return (
            f"Fashion-MNIST needs the four IDX files {files} (gzipped or not). Get them with "
            f"`apt-get install dataset-fashion-mnist` (installs into {FASHION_MNIST_DEFAULT_DIR}), "
            f"or download them from https://github.com/zalandoresearch/fashion-mnist (data/fashion) "
            f"into DIR and pass --data-dir DIR (data_dir=DIR). Nothing is downloaded automatically."
        )
    return (
        f"MNIST needs the four IDX files {files} (gzipped or not). Download them from "
        f"http://yann.lecun.com/exdb/mnist/ (or a mirror such as "
        f"https://ossci-datasets.s3.amazonaws.com/mnist/) into DIR and pass --data-dir DIR "
        f"(data_dir=DIR). Nothing is downloaded automatically."
    )


def _candidates(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is None:
        if name == "fashion-mnist":
            return [Path(FASHION_MNIST_DEFAULT_DIR)]
        raise DatasetError(f"MNIST has no default location; no data_dir was given. {_hint(name)}")
    base = Path(data_dir)
    # The directory itself, a per-dataset subfolder, or torchvision's raw/ layout.
    subdirs = ("fashion-mnist", "FashionMNIST/raw") if name == "fashion-mnist" else ("mnist", "MNIST/raw")
    return [base] + [base / sub for sub in subdirs]


def load_idx_pair(images_path: Path, labels_path: Path, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels IDX pair; images become ``N×1×H×W`` uint8, labels int64."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise corrupt(images_path, f"expected 3-D uint8 images, got {images.dtype} shape {images.shape}", hint)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise corrupt(labels_path, f"expected 1-D uint8 labels, got {labels.dtype} shape {labels.shape}", hint)
    if images.shape[0] != labels.shape[0]:
        raise corrupt(
            labels_path,
            f"{labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images",
            hint,
        )
    check_labels(labels, num_classes, labels_path, hint)
    return images[:, None, :, :], labels.astype(np.int64)


def load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
) -> DatasetSplits:
    """Load ``"mnist"`` or ``"fashion-mnist"`` (official 60k train / 10k test, 1×28×28).

    Looked up in ``data_dir`` (or, for Fashion-MNIST without ``data_dir``, in
    ``/usr/share/datasets/fashion-mnist``), then in its ``mnist/`` or ``MNIST/raw/``
    (``fashion-mnist/`` or ``FashionMNIST/raw/``) subfolder. Each file may be gzipped.
    """
    hint = _hint(name)
    candidates = _candidates(name, data_dir)
    paths, missing = find_idx_files(candidates)
    if paths is None:
        where = str(candidates[0])
        if not candidates[0].is_dir():
            problem = f"directory {where} does not exist"
        else:
            problem = f"missing {', '.join(missing)} in {where}"
        also = ""
        if len(candidates) > 1:
            also = f" (also looked in {', '.join(str(c) for c in candidates[1:])})"
        raise DatasetError(f"{name} not found: {problem}{also}. {hint}")
    train_x, train_y = load_idx_pair(paths[0], paths[1], 10, hint)
    test_x, test_y = load_idx_pair(paths[2], paths[3], 10, hint)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise corrupt(paths[2], f"test images are {test_x.shape[2:]} but training images are {train_x.shape[2:]}", hint)
    return make_splits(
        name,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=10,
        val_fraction=val_fraction,
        seed=seed,
        train_subset=train_subset,
        test_subset=test_subset,
        augment="none",
        classes=FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES,
        source=str(paths[0].parent),
    )


# load_dataset(name, data_dir, **split options) calls loader(data_dir, **split options)
DATASETS.register(
    "fashion-mnist",
    functools.partial(load_idx_dataset, "fashion-mnist"),
    options={},
    aliases=("fashion_mnist", "fashionmnist"),
    description="Fashion-MNIST: 60k/10k 1x28x28 clothing images, 10 classes (IDX files)",
)
DATASETS.register(
    "mnist",
    functools.partial(load_idx_dataset, "mnist"),
    options={},
    description="MNIST: 60k/10k 1x28x28 handwritten digits, 10 classes (IDX files)",
)
