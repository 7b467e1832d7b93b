"""The packed model file: integer codes bit-packed at their own bit width, everything else in float32, one file.

The file is a `safetensors <https://github.com/huggingface/safetensors>`_ file (8-byte little-endian header length,
JSON header, raw tensor bytes), so any safetensors reader can list it. Its tensors:

* ``codes/<param>``: ``uint8``, the codes of a quantized weight or bias, :func:`~lowbit.export.bitpack.pack_bits`
  at the tensor's bit width (``⌈n·b/8⌉`` bytes for ``n`` codes of ``b`` bits);
* ``params/<param>/scale`` (``zero_point``, ``table``): per-channel quantization parameters (single values are
  written in the JSON header instead);
* ``state/<key>``: every other entry of the model's ``state_dict`` in its own dtype (float32 for BatchNorm, biases of
  float slots, activation-quantizer steps and ranges, ...), except the replaced weight/bias quantizers and the
  random-generator state of stochastic rounding (training only).

The safetensors metadata holds one JSON document under ``"lowbit"`` (see :data:`FORMAT`, :data:`VERSION`) and two
SHA-256 checksums: ``"lowbit_sha256"`` of that document's UTF-8 text, ``"tensor_sha256"`` of every tensor
(:func:`~lowbit.safe_state.tensor_checksum`: names, dtypes, shapes and bytes). Reading verifies both, then checks
every field before using it (:mod:`~lowbit.export.packed_checks`), so a damaged or malformed file raises
:class:`~lowbit.export.errors.PackedFileError` instead of loading changed weights. The JSON document: lowbit
version, model spec, resolved recipe, seed, data normalisation, notes, and per quantized tensor its layer, slot,
shape, bits, ``qmin``, lookup ``table``, ``axis`` and ``scale``/``zero_point`` (shape and values; float32 values
written as JSON numbers round-trip exactly). A parameter shared by two layers (tied weights) whose slots encode it
identically is stored once: the second entry is ``stored: tied`` with ``tied_to`` naming the first, and loading
makes both layers hold one parameter again (encoded differently, each is stored and loading unties them).
Decoding follows :class:`~lowbit.quantizers.codes.QuantizedTensor`::

    q = table[code] if table else code + qmin,        x = scale · (q − zero_point)

:func:`load_packed` rebuilds the architecture, quantizes it with the stored recipe, loads the float state, writes the
decoded values into the weights and puts :class:`~lowbit.export.frozen.FrozenCodes` in the weight/bias slots, so
the eval outputs equal the trained model's bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ..devices import on_cpu
from ..errors import LowbitError
from ..nn.layers import QuantizedLayer
from ..nn.slots import SLOTS
from ..quantizers.codes import QuantizedTensor, index_dtype
from ..safe_state import tensor_checksum
from .bitpack import pack_bits, unpack_bits
from .encode import EncodedSlot, encode_model
from .errors import ExportError, PackedFileError
from .frozen import FrozenCodes
from .packed_checks import (
    CODES,
    DTYPES,
    PARAMS,
    STATE,
    TensorEntry,
    check_header,
    check_quantization,
    check_tensor_index,
)

__all__ = [
    "save_packed",
    "load_packed",
    "read_packed_header",
    "packed_info",
    "PackedInfo",
    "FORMAT",
    "VERSION",
    "is_packed_file",
]

FORMAT = "lowbit-packed"
#: 2: SHA-256 checksums of the lowbit header and of the tensors; version-1 files (no checksums) are refused
VERSION = 2
#: safetensors metadata keys: the lowbit JSON header, SHA-256 of its UTF-8 text, SHA-256 of the tensors
METADATA_KEY, HEADER_SHA256, TENSOR_SHA256 = "lowbit", "lowbit_sha256", "tensor_sha256"
_MAX_HEADER = 100 << 20  # safetensors headers larger than this are not ours


@dataclass
class PackedInfo:
    """Sizes of a packed file, in bytes, and what an all-float32 file would take."""

    path: str
    file_bytes: int
    header_bytes: int  # safetensors length prefix + JSON header (tensor index and lowbit metadata)
    code_bytes: int  # the bit-packed codes
    param_bytes: int  # per-channel scales / zero points / tables stored as tensors
    float_bytes: int  # the float state (and tensors kept as float)
    code_bits: int  # Σ n·b over the packed tensors: the ideal size of the codes, in bits
    quantized_params: int  # values stored as codes
    float32_bytes: int  # every stored tensor at 32 bits per value
    notes: list[str] = field(default_factory=list)

    @property
    def weight_compression(self) -> float:
        """float32 size of the packed tensors / size of their codes (≈ 32 / bits)."""
        return 4 * self.quantized_params / self.code_bytes if self.code_bytes else float("nan")

    @property
    def compression(self) -> float:
        """float32 size of the whole model / file size."""
        return self.float32_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weight_compression": self.weight_compression, "compression": self.compression}


# ------------------------------------------------------------------------------------------------------- writing
def _array_entry(tensor: torch.Tensor, key: str, tensors: dict[str, torch.Tensor]) -> dict:
    """A scale, zero point or table: one value inline in the JSON, longer arrays (per-channel) as a tensor ``key``
    (4 bytes a value instead of ~20 characters of JSON)."""
    t = tensor.detach().cpu()
    entry = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if t.numel() == 1:
        entry["values"] = t.reshape(-1).tolist()
    else:
        entry["tensor"] = key
        tensors[key] = t.reshape(-1).contiguous().clone()
    return entry


def _same_encoding(a: EncodedSlot, b: EncodedSlot) -> bool:
    """Whether two slots store the same thing: equal codes and quantization parameters, or equal float values."""
    if a.codes is None or b.codes is None:
        return a.codes is None and b.codes is None and torch.equal(a.values, b.values)
    x, y = a.codes, b.codes
    tables = (x.table is None and y.table is None) or (
        x.table is not None and y.table is not None and torch.equal(x.table, y.table)
    )
    return (
        (x.bits, x.qmin, x.axis) == (y.bits, y.qmin, y.axis)
        and tables
        and torch.equal(x.indices, y.indices)
        and torch.equal(torch.as_tensor(x.scale), torch.as_tensor(y.scale))
        and torch.equal(torch.as_tensor(x.zero_point), torch.as_tensor(y.zero_point))
    )


def _code_entry(
    slot: EncodedSlot, tensor: torch.Tensor, tensors: dict[str, torch.Tensor], tied_to: Optional[str] = None
) -> dict:
    entry: dict[str, Any] = {
        "layer": slot.layer,
        "slot": slot.slot,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "bits": int(slot.quantizer.bits),
        "signed": bool(slot.quantizer.signed),
        "quantizer": type(slot.quantizer).__name__,
    }
    if tied_to is not None:
        entry.update({"stored": "tied", "tied_to": tied_to})
        return entry
    codes = slot.codes
    if codes is None:
        entry["stored"] = "float"
        return entry
    key = PARAMS + slot.param_name
    entry.update(
        {
            "stored": "codes",
            "bits": int(codes.bits),
            "qmin": int(codes.qmin),
            "axis": codes.axis,
            "scale": _array_entry(codes.scale, key + "/scale", tensors),
            "zero_point": _array_entry(codes.zero_point, key + "/zero_point", tensors),
            "table": None if codes.table is None else _array_entry(codes.table, key + "/table", tensors),
        }
    )
    return entry


def _state_to_store(model: nn.Module, encoded: list[EncodedSlot]) -> dict[str, torch.Tensor]:
    replaced = {slot.param_name for slot in encoded}
    prefixes = tuple(slot.quantizer_prefix for slot in encoded)
    state = {}
    for key, value in model.state_dict().items():
        # the random-generator state of stochastic rounding is for training only; it is not a tensor either
        if key in replaced or key.startswith(prefixes) or key.endswith("_extra_state"):
            continue
        if isinstance(value, torch.Tensor):
            state[key] = value.detach().cpu().contiguous().clone()
    return state


def save_packed(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    recipe: Union[dict, Any],
    seed: int = 0,
    model_spec: Optional[dict] = None,
    data: Optional[dict] = None,
    source: Optional[dict] = None,
) -> PackedInfo:
    """Write the quantized ``model`` to ``path`` as a packed file and return its sizes.

    ``recipe`` (a :class:`~lowbit.recipes.Recipe` or its resolved dict) and ``seed`` are those the model was quantized
    with: :func:`load_packed` rebuilds the quantized architecture from them. ``model_spec`` (``{name, options,
    input_shape, num_classes}``) lets it rebuild a lowbit reference model by itself; without it (or with ``name:
    None``) the user passes the float model to :func:`load_packed`. ``data`` (name, mean, std) documents the input
    normalisation the model expects.
    """
    from safetensors.torch import save_file

    from .. import __version__

    if not any(isinstance(m, QuantizedLayer) for m in model.modules()):
        raise ExportError(
            "the model has no quantized layers, so there are no integer codes to pack; quantize it "
            "with a recipe (lowbit.quantize or lowbit train --recipe lsq-w4a4) first"
        )
    model = on_cpu(model)
    encoded = encode_model(model)
    if not encoded:
        raise ExportError(
            "no layer of the model quantizes its weights, so there are no integer codes to pack; "
            "use a recipe with a weight quantizer"
        )
    recipe_dict = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    first_use: dict[int, EncodedSlot] = {}  # id of a parameter -> the first slot that stores it
    for slot in encoded:
        tensor = getattr(model.get_submodule(slot.layer), slot.slot)
        first = first_use.setdefault(id(tensor), slot)
        if first is not slot and _same_encoding(first, slot):  # tied weights: stored once
            entries[slot.param_name] = _code_entry(slot, tensor, tensors, tied_to=first.param_name)
            continue
        entries[slot.param_name] = _code_entry(slot, tensor, tensors)
        if slot.codes is None:
            tensors[STATE + slot.param_name] = slot.values.detach().cpu().contiguous().clone()
        else:
            packed = pack_bits(slot.codes.indices.cpu().numpy(), slot.codes.bits)
            tensors[CODES + slot.param_name] = torch.from_numpy(packed.copy())
    state = _state_to_store(model, encoded)
    tensors.update({STATE + key: value for key, value in state.items()})
    header = {
        "format": FORMAT,
        "version": VERSION,
        "lowbit_version": __version__,
        "model_spec": model_spec,
        "recipe": recipe_dict,
        "seed": int(seed),
        "data": data,
        "source": source,
        "notes": [slot.note for slot in encoded if slot.note],
        "quantized": entries,
        "state": sorted(state),
    }
    report = getattr(model, "lowbit_report", None)
    if report is not None and report.first is not None:  # rebuild with the same first/last overrides
        header["layer_ends"] = [report.first, report.last]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(header, separators=(",", ":"))
    metadata = {METADATA_KEY: text, HEADER_SHA256: _sha256(text), TENSOR_SHA256: tensor_checksum(tensors)}
    save_file(tensors, str(tmp), metadata=metadata)
    umask = os.umask(0)  # safetensors writes 0600; give the file the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return packed_info(path)


# ------------------------------------------------------------------------------------------------------- reading
@dataclass
class _PackedFile:
    """A packed file's header after its checksum and field checks, with the tensor index and safetensors metadata."""

    path: Path
    header: dict
    index: dict[str, TensorEntry]
    metadata: dict
    header_bytes: int  # the 8-byte length prefix + the safetensors JSON header


def _raw_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header (tensor index + metadata) and its length, read without loading the tensors."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError("file shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(os.path.getsize(path) - 8, _MAX_HEADER):
                raise ValueError("header length out of range")
            raw = json.loads(f.read(length))
    except FileNotFoundError:
        raise PackedFileError(f"packed file {str(path)!r} does not exist") from None
    except (ValueError, UnicodeDecodeError, OSError) as error:
        raise PackedFileError(f"{str(path)!r} is not a lowbit packed file ({error})") from None
    if not isinstance(raw, dict):
        raise PackedFileError(f"{str(path)!r} is not a lowbit packed file (its header is not a JSON object)")
    return raw, length


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _damaged(path: Path, what: str) -> PackedFileError:
    return PackedFileError(
        f"packed file {str(path)!r} is damaged: {what} does not match the checksum written with it; "
        f"export it again from its checkpoint"
    )


def _read(path: Union[str, os.PathLike]) -> _PackedFile:
    """Read and check everything but the tensor data: the header's checksum, format, version and every field."""
    path = Path(path)
    if path.is_dir():
        raise PackedFileError(f"{str(path)!r} is a directory, not a packed file")
    raw, length = _raw_header(path)
    metadata = raw.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise PackedFileError(
            f"{str(path)!r} is a safetensors file without lowbit metadata, not a lowbit packed "
            f"file; write one with 'lowbit export CHECKPOINT --format packed'"
        )
    # format and version come before the checksums: another version may checksum differently, or not at all
    text, written_sha = metadata[METADATA_KEY], metadata.get(HEADER_SHA256)
    try:
        header = json.loads(text)
    except ValueError as error:
        if written_sha is not None and written_sha != _sha256(text):
            raise _damaged(path, "its lowbit header") from None
        raise PackedFileError(f"packed file {str(path)!r} has a lowbit header that is not JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise PackedFileError(f"{str(path)!r} is not a lowbit packed file (format {found!r})")
    if header.get("version") != VERSION:
        raise PackedFileError(
            f"packed file {str(path)!r} has format version {header.get('version')!r}, this lowbit "
            f"reads version {VERSION}; export it again from its checkpoint, or use the lowbit "
            f"release that wrote it ({header.get('lowbit_version', 'unknown')})"
        )
    for key in (HEADER_SHA256, TENSOR_SHA256):
        if not isinstance(metadata.get(key), str):
            raise PackedFileError(
                f"packed file {str(path)!r} has no {key!r} checksum in its metadata, which every version-{VERSION} "
                f"file has; it was changed or not written by lowbit: export it again from its checkpoint"
            )
    if written_sha != _sha256(text):
        raise _damaged(path, "its lowbit header")
    index = check_tensor_index(raw, str(path), os.path.getsize(path) - 8 - length)
    check_header(header, index, str(path))
    return _PackedFile(path, header, index, metadata, 8 + length)


def is_packed_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a file carrying lowbit packed metadata (any version, damaged or not)."""
    try:
        metadata = _raw_header(Path(path))[0].get("__metadata__")
    except PackedFileError:
        return False
    return isinstance(metadata, dict) and METADATA_KEY in metadata


def read_packed_header(path: Union[str, os.PathLike]) -> dict:
    """The lowbit JSON header of a packed file, after checking its checksum, format tag, version and every field
    (:func:`~lowbit.export.packed_checks.check_header`); the tensor data is checked by :func:`load_packed`.

    Raises :class:`PackedFileError` for anything else than a packed file this lowbit writes.
    """
    return _read(path).header


def packed_info(path: Union[str, os.PathLike]) -> PackedInfo:
    """Sizes of a packed file (see :class:`PackedInfo`)."""
    packed = _read(path)
    code_bytes = param_bytes = float_bytes = code_bits = quantized = float32_bytes = 0
    for key, tensor in packed.index.items():
        if key.startswith(CODES):
            code_bytes += tensor.nbytes
        elif key.startswith(PARAMS):
            param_bytes += tensor.nbytes
        else:
            float_bytes += tensor.nbytes
            float32_bytes += 4 * math.prod(tensor.shape)
    for entry in packed.header["quantized"].values():
        if entry["stored"] == "codes":  # tensors kept as float were counted with the state above
            numel = math.prod(entry["shape"])
            quantized += numel
            code_bits += numel * entry["bits"]
            float32_bytes += 4 * numel
    return PackedInfo(
        path=str(packed.path),
        file_bytes=packed.path.stat().st_size,
        header_bytes=packed.header_bytes,
        code_bytes=code_bytes,
        param_bytes=param_bytes,
        float_bytes=float_bytes,
        code_bits=code_bits,
        quantized_params=quantized,
        float32_bytes=float32_bytes,
        notes=list(packed.header["notes"]),
    )


def _tensor(entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if "tensor" in entry:
        return tensors[entry["tensor"]].reshape(entry["shape"])
    return torch.tensor(entry["values"], dtype=DTYPES[entry["dtype"]][0]).reshape(entry["shape"])


def _decode(name: str, entry: dict, tensors: dict[str, torch.Tensor], path: Path) -> QuantizedTensor:
    """The stored codes of tensor ``name``, checked (:func:`check_quantization`); sizes were checked with the
    header, so unpacking cannot fail."""
    shape = entry["shape"]
    codes = unpack_bits(tensors[CODES + name].numpy(), entry["bits"], math.prod(shape))
    indices = torch.from_numpy(codes.astype(np.int64)).to(index_dtype(entry["bits"])).reshape(shape)
    table = None if entry["table"] is None else _tensor(entry["table"], tensors)
    scale, zero_point = _tensor(entry["scale"], tensors), _tensor(entry["zero_point"], tensors)
    check_quantization(name, entry, scale, zero_point, table, indices, str(path))
    return QuantizedTensor(
        indices=indices,
        bits=entry["bits"],
        scale=scale,
        zero_point=zero_point,
        qmin=entry["qmin"],
        table=table,
        axis=entry["axis"],
    )


def _build_described_model(spec: dict, packed: _PackedFile) -> nn.Module:
    """The float model of ``model_spec``, first built without memory (``meta`` device) to check that its size
    matches the file: a hand-edited spec must not allocate a model far larger than the tensors stored for it."""
    from ..runs import ModelSpec

    stored = sum(math.prod(e["shape"]) for e in packed.header["quantized"].values()) + sum(
        math.prod(t.shape) for key, t in packed.index.items() if key.startswith(STATE)
    )
    spec = ModelSpec(**spec)
    with torch.device("meta"):
        described = sum(t.numel() for t in spec.build().state_dict().values())
    if described > 2 * stored + (1 << 20):
        raise PackedFileError(
            f"{str(packed.path)!r} does not fit its model description: model_spec describes {described:,} values, "
            f"the file stores {stored:,}"
        )
    return spec.build()


def _float_model(packed: _PackedFile, model: Optional[nn.Module]) -> nn.Module:
    if model is not None:
        return model
    from ..errors import CustomModelError

    path = packed.path
    try:
        return _build_described_model(packed.header["model_spec"] or {"name": None}, packed)
    except CustomModelError as error:
        raise PackedFileError(f"{str(path)!r}: {error} (lowbit.load_packed(path, model=MyNet()))") from None
    except PackedFileError:
        raise
    except (LowbitError, TypeError, ValueError, RuntimeError) as error:
        # the builders reject bad names and options with ConfigError; torch rejects impossible layer sizes
        raise PackedFileError(f"{str(path)!r} has a model_spec that cannot be built: {error}") from None


def _quantized_model(header: dict, float_model: nn.Module, path: Path) -> nn.Module:
    from ..convert import quantize
    from ..recipes import load_recipe

    try:
        recipe = load_recipe(header["recipe"])
        return quantize(float_model, recipe, seed=header["seed"], ends=header.get("layer_ends"))
    except LowbitError as error:
        raise PackedFileError(f"{str(path)!r} has a recipe that cannot quantize its model: {error}") from None


def _check_state_fits(state: dict[str, torch.Tensor], qmodel: nn.Module, path: Path) -> None:
    expected = qmodel.state_dict()
    for key, value in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise PackedFileError(
                f"{str(path)!r} does not fit this model: state {key!r} has shape {list(value.shape)}, the model's "
                f"has {list(expected[key].shape)}"
            )


def _quantized_target(qmodel: nn.Module, name: str, entry: dict, path: Path) -> tuple[QuantizedLayer, torch.Tensor]:
    """The quantized layer and parameter that a ``quantized`` entry of the header is written into."""
    try:
        layer = qmodel.get_submodule(entry["layer"])
        target = getattr(layer, entry["slot"])
    except AttributeError:
        raise PackedFileError(f"{str(path)!r} does not fit this model: it has no quantized tensor {name!r}") from None
    if not isinstance(layer, QuantizedLayer) or target is None or list(target.shape) != entry["shape"]:
        raise PackedFileError(
            f"{str(path)!r} does not fit this model: {name!r} should be a quantized tensor of shape {entry['shape']}"
        )
    return layer, target


def load_packed(path: Union[str, os.PathLike], model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild the quantized model stored in a packed file, in eval mode.

    ``model``: the float model to quantize, required for a custom architecture (the file then has no model name);
    it is copied, not changed. The result's eval outputs equal those of the model that was saved, bit for bit.

    Raises :class:`PackedFileError` (and nothing else) for a file that is missing, damaged (its header or tensor
    data does not match the SHA-256 written with it), of another format version, malformed (a field of the wrong
    type or range, scales that are not finite and positive, ...), or written for another model.
    """
    from safetensors.torch import load_file

    packed = _read(path)
    path, header = packed.path, packed.header
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for truncated files
        raise PackedFileError(f"packed file {str(path)!r} cannot be read ({error}); it may be truncated") from None
    if tensor_checksum(tensors) != packed.metadata[TENSOR_SHA256]:
        raise _damaged(path, "its tensor data")
    qmodel = _quantized_model(header, _float_model(packed, model), path)
    allowed_missing: set[str] = set()
    restored: dict[str, tuple[nn.Parameter, Optional[QuantizedTensor]]] = {}  # name -> its parameter and codes
    written: dict[int, torch.Tensor] = {}  # id of a parameter -> the values written into it
    # stored tensors first, then the entries tied to them
    for name, entry in sorted(header["quantized"].items(), key=lambda item: item[1]["stored"] == "tied"):
        layer, target = _quantized_target(qmodel, name, entry, path)
        if entry["stored"] == "tied":
            parameter, codes = restored[entry["tied_to"]]
            if target is not parameter:  # restore the tie the saved model had
                setattr(layer, entry["slot"], parameter)
        else:
            if entry["stored"] == "codes":
                codes = _decode(name, entry, tensors, path)
                values = codes.dequantize().reshape(entry["shape"])
            else:
                codes, values = None, tensors[STATE + name]
            values = values.to(target.dtype)
            if id(target) in written and not torch.equal(written[id(target)], values):
                # a parameter the rebuilt model shares, saved with two different encodings: untie it
                target = nn.Parameter(values.clone(), requires_grad=target.requires_grad)
                setattr(layer, entry["slot"], target)
            with torch.no_grad():
                target.copy_(values)
            written[id(target)] = values
            restored[name] = (target, codes)
        attribute = SLOTS[entry["slot"]].attribute
        role = "bias" if entry["slot"] == "bias" else "weight"
        setattr(layer, attribute, FrozenCodes(codes, bits=entry["bits"], signed=entry["signed"], role=role))
        allowed_missing.add(name)
        prefix = (entry["layer"] + "." if entry["layer"] else "") + attribute + "."
        allowed_missing.update(k for k in qmodel.state_dict() if k.startswith(prefix))
    state = {key: tensors[STATE + key] for key in header["state"]}
    _check_state_fits(state, qmodel, path)
    result = qmodel.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in allowed_missing and not k.endswith("_extra_state")]
    if result.unexpected_keys or missing:
        raise PackedFileError(
            f"{str(path)!r} does not fit this model: unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}"
        )
    return qmodel.eval()
