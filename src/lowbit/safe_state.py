"""Nested training state (dicts, lists, tuples, tensors, NumPy arrays, plain values) in a safetensors file, no pickle.

``torch.save`` pickles, and unpickling a file can run any code its author put in it. lowbit's files hold only data:
the tensors go into a safetensors file, and the structure around them (a state dict's keys, an optimizer's param
groups, RNG states, the training history) into JSON in the file's metadata. Reading rebuilds tensors, lists, dicts,
tuples, numbers and strings, nothing else.

JSON encoding of the structure (every other value is stored as itself):

* tensor → ``{"$tensor": "t12"}`` (the tensor is stored under that name);
* NumPy array → ``{"$ndarray": [dtype, shape, flat values]}`` (small arrays only: RNG states);
* tuple → ``{"$tuple": [...]}``;
* dict whose keys are not all strings, or has a key starting with ``$`` → ``{"$dict": [[key, value], ...]}``.

A SHA-256 over every tensor's bytes (in name order) is stored beside the structure and checked on reading, so a
damaged file is refused instead of loading silently changed weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = [
    "set_default_mode",
    "write_state",
    "read_state",
    "read_metadata",
    "StateFileError",
    "is_safetensors_file",
    "tensor_checksum",
]

PathLike = Union[str, os.PathLike]
_MARKERS = ("$tensor", "$ndarray", "$tuple", "$dict")
#: safetensors: an 8-byte little-endian header length, then the JSON header; larger headers are not ours
_MAX_HEADER = 100 * 1024 * 1024


class StateFileError(ValueError):
    """A file that is not a readable state file (not safetensors, damaged, or with a malformed structure)."""


# ------------------------------------------------------------------------------------------------- encoding
def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses sharing
        return {"$tensor": name}
    if isinstance(value, np.ndarray):
        return {"$ndarray": [value.dtype.str, list(value.shape), value.reshape(-1).tolist()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        return {
            "$dict": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]
        }
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    raise TypeError(
        f"cannot store {type(value).__name__} at {where or 'the top level'} in a state file: only "
        f"tensors, NumPy arrays, numbers, strings, lists, tuples and dicts are stored"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$tensor":
            if inner not in tensors:
                raise StateFileError(f"the structure names tensor {inner!r}, which the file does not hold")
            return tensors[inner]
        if key == "$ndarray":
            dtype, shape, flat = inner
            return np.asarray(flat, dtype=np.dtype(dtype)).reshape(shape)
        if key == "$tuple":
            return tuple(_decode(v, tensors) for v in inner)
        if key == "$dict":
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every tensor in name order: ``name:dtype:shape;`` then its raw bytes. Any change of a
    name, dtype, shape or byte changes it; packed model files store it too (:mod:`lowbit.export.packed`)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ the files
def set_default_mode(path: PathLike) -> None:
    """The permissions an ordinary ``open()`` would give (``0o666`` less the umask): ``mkstemp`` makes temporary
    files private, and a renamed checkpoint would otherwise stay unreadable to the rest of a team."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_state(path: PathLike, tree: Any, metadata: dict[str, str]) -> Path:
    """Write ``tree`` to ``path`` atomically: a unique temporary file in the same directory, flushed to disk, then
    renamed over ``path`` (a crash leaves the previous file or the new one, never a mixture)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors, "")
    header = {**metadata, "structure": json.dumps(structure), "tensor_sha256": tensor_checksum(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        try:
            save_file(tensors, tmp, metadata=header)
        except Exception as error:  # safetensors reports I/O failures (a full disk) as its own error type
            if isinstance(error, OSError):
                raise
            raise OSError(f"{type(error).__name__}: {error}") from error
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_safetensors_file(path: PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (a plausible header length, then ``{``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= _MAX_HEADER and head[8:9] == b"{"


def read_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, without reading its tensors."""
    from safetensors import safe_open

    if not is_safetensors_file(path):
        raise StateFileError(f"{str(path)!r} is not a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as error:  # safetensors raises its own types for damaged headers
        raise StateFileError(f"{str(path)!r} cannot be read: {error}") from None


def read_state(path: PathLike) -> tuple[Any, dict[str, str]]:
    """``(tree, metadata)`` of a file written by :func:`write_state`; :class:`StateFileError` if it is damaged."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    if "structure" not in metadata:
        raise StateFileError(f"{str(path)!r} is a safetensors file without a lowbit state structure")
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise StateFileError(f"{str(path)!r} cannot be read: {error}") from None
    if tensor_checksum(tensors) != metadata.get("tensor_sha256"):
        raise StateFileError(f"{str(path)!r} is damaged: its tensor data does not match the checksum written with it")
    try:
        tree = _decode(json.loads(metadata.pop("structure")), tensors)
    except (ValueError, TypeError, KeyError) as error:
        raise StateFileError(f"{str(path)!r} has a malformed structure: {error}") from None
    metadata.pop("tensor_sha256", None)
    return tree, metadata
