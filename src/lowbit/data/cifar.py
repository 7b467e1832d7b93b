"""CIFAR-10 and CIFAR-100, "python version": pickled batches, extracted or in the .tar.gz.

Each batch file is a pickled dict with ``b"data"`` (``N×3072`` uint8; per row 1024 red,
then 1024 green, then 1024 blue values, each a 32×32 image in row-major order, so a
plain reshape gives ``N×3×32×32``) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100; the 20 coarse labels are ignored). CIFAR-10 has ``data_batch_1..5`` (50k)
and ``test_batch`` (10k) in ``cifar-10-batches-py/``; CIFAR-100 has ``train`` (50k)
and ``test`` (10k) in ``cifar-100-python/``.

The files are unpickled with an allow-list (NumPy array reconstruction only), so a
tampered file cannot run code.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError, check_labels, corrupt
from .registry import DATASETS
from .splits import DatasetSplits, make_splits

_SPECS = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": ("batches.meta", b"label_names"),
        "label_key": b"labels",
        "num_classes": 10,
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ("train",),
        "test": ("test",),
        "meta": ("meta", b"fine_label_names"),
        "label_key": b"fine_labels",
        "num_classes": 100,
    },
}

# (module, name) pairs a CIFAR pickle may reference: NumPy's array/scalar
# reconstruction, and _codecs.encode which protocol-2 pickles written by Python 3 use
# for bytes.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core."):
            # NumPy 2 renamed numpy.core to numpy._core (the old name warns); NumPy 1 has only the old one.
            try:
                return getattr(importlib.import_module("numpy._core." + module.split(".", 2)[2]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def _unpickle(raw: bytes, path: object) -> dict:
    try:
        # The original batches were pickled by Python 2: their str keys arrive as bytes.
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a damaged file
        raise corrupt(path, f"cannot unpickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise corrupt(path, f"expected a pickled dict, got {type(obj).__name__}")
    return obj


def _hint(name: str) -> str:
    spec = _SPECS[name]
    return (
        f"{spec['title']} needs the python version from https://www.cs.toronto.edu/~kriz/cifar.html: "
        f"put {spec['archive']} (or its extracted {spec['folder']}/ folder) into DIR and pass "
        f"--data-dir DIR (data_dir=DIR). Nothing is downloaded automatically."
    )


def _batch_arrays(name: str, batch: dict, path: object) -> tuple[np.ndarray, np.ndarray]:
    spec = _SPECS[name]
    hint = _hint(name)
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(spec["label_key"], batch.get(spec["label_key"].decode()))
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise corrupt(path, f"expected keys b'data' and {spec['label_key']!r}, found {keys}", hint)
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise corrupt(path, f"b'data' must be N×3072 uint8, got {data.dtype} shape {data.shape}", hint)
    if labels.shape != (data.shape[0],):
        raise corrupt(path, f"{labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images", hint)
    check_labels(labels, spec["num_classes"], path, hint)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_folder(name: str, folder: Path) -> dict[str, tuple[bytes, Path]]:
    spec = _SPECS[name]
    out = {}
    for member in spec["train"] + spec["test"]:
        out[member] = ((folder / member).read_bytes(), folder / member)
    meta = folder / spec["meta"][0]
    if meta.is_file():
        out[spec["meta"][0]] = (meta.read_bytes(), meta)
    return out


def _read_archive(name: str, archive: Path) -> dict[str, tuple[bytes, str]]:
    spec = _SPECS[name]
    wanted = {f"{spec['folder']}/{m}": m for m in spec["train"] + spec["test"] + (spec["meta"][0],)}
    out: dict[str, tuple[bytes, str]] = {}
    try:
        # Stream mode ("r|gz") reads the archive once front to back; random access into a
        # gzip stream would re-decompress it for every member.
        with tarfile.open(archive, "r|gz") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is not None and info.isfile():
                    handle = tar.extractfile(info)
                    if handle is not None:
                        out[member] = (handle.read(), f"{archive}:{info.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise corrupt(archive, f"cannot read the tar.gz archive ({exc})", _hint(name)) from exc
    missing = [m for m in spec["train"] + spec["test"] if m not in out]
    if missing:
        raise corrupt(archive, f"archive lacks {', '.join(spec['folder'] + '/' + m for m in missing)}", _hint(name))
    return out


def _locate(name: str, data_dir: str | os.PathLike | None) -> Path:
    spec = _SPECS[name]
    hint = _hint(name)
    if data_dir is None:
        raise DatasetError(f"{spec['title']} has no default location; no data_dir was given. {hint}")
    base = Path(data_dir)
    if base.is_file() and base.name == spec["archive"]:
        return base
    members = spec["train"] + spec["test"]
    # Preferred: the extracted folder (fast); then DIR itself being that folder; then the archive.
    for folder in (base / spec["folder"], base):
        if all((folder / m).is_file() for m in members):
            return folder
    archives = [base / spec["archive"]]
    if base.name == spec["folder"]:
        archives.append(base.parent / spec["archive"])
    for archive in archives:
        if archive.is_file():
            return archive
    folder = base / spec["folder"]
    if folder.is_dir():
        missing = [m for m in members if not (folder / m).is_file()]
        problem = f"{folder} lacks {', '.join(missing)}"
    elif not base.is_dir():
        problem = f"directory {base} does not exist"
    else:
        problem = f"neither {spec['folder']}/ (with {', '.join(members)}) nor {spec['archive']} is in {base}"
    raise DatasetError(f"{spec['title']} not found: {problem}. {hint}")


def _class_names(name: str, files: dict) -> tuple[str, ...] | None:
    """Class names from the optional meta file; ``None`` when it is absent or unusable
    (names are cosmetic, so a damaged meta file is not worth failing the load for)."""
    meta_name, meta_key = _SPECS[name]["meta"]
    if meta_name not in files:
        return None
    raw, where = files[meta_name]
    try:
        names = _unpickle(raw, where).get(meta_key)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except (DatasetError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    return names if len(names) == _SPECS[name]["num_classes"] else None


def load_cifar(
    name: str,
    data_dir: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
) -> DatasetSplits:
    """Load ``"cifar10"`` or ``"cifar100"`` as ``N×3×32×32`` uint8 (augment ``"crop-flip"``).

    ``data_dir`` may hold the extracted ``cifar-10-batches-py/`` (``cifar-100-python/``)
    folder, be that folder, hold the ``cifar-10-python.tar.gz``
    (``cifar-100-python.tar.gz``) archive or be that archive; an archive is read in
    memory in one pass, without extracting it to disk.
    """
    spec = _SPECS[name]
    source = _locate(name, data_dir)
    files = _read_archive(name, source) if source.is_file() else _read_folder(name, source)
    parts = {}
    for member in spec["train"] + spec["test"]:
        raw, where = files[member]
        parts[member] = _batch_arrays(name, _unpickle(raw, where), where)
    train_x = np.concatenate([parts[m][0] for m in spec["train"]])
    train_y = np.concatenate([parts[m][1] for m in spec["train"]])
    test_x = np.concatenate([parts[m][0] for m in spec["test"]])
    test_y = np.concatenate([parts[m][1] for m in spec["test"]])
    classes = _class_names(name, files)
    del parts, files
    return make_splits(
        name,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=spec["num_classes"],
        val_fraction=val_fraction,
        seed=seed,
        train_subset=train_subset,
        test_subset=test_subset,
        augment="crop-flip",
        classes=classes,
        source=str(source),
    )


# load_dataset(name, data_dir, **split options) calls loader(data_dir, **split options)
DATASETS.register(
    "cifar10",
    functools.partial(load_cifar, "cifar10"),
    options={},
    aliases=("cifar-10", "cifar_10"),
    description="CIFAR-10: 50k/10k 3x32x32 images, 10 classes (python pickles or their archive)",
)
DATASETS.register(
    "cifar100",
    functools.partial(load_cifar, "cifar100"),
    options={},
    aliases=("cifar-100", "cifar_100"),
    description="CIFAR-100: 50k/10k 3x32x32 images, 100 classes (python pickles or their archive)",
)
