"""Checks of a packed model file's contents before any of it is used: the safetensors tensor index, every field of
the lowbit header, and the quantization parameters' values.

The checksums (:mod:`lowbit.export.packed`) catch files changed after writing; these checks catch files that are
intact but wrong (written by another lowbit version, edited by hand): each field has its type and range, and every
tensor a field names exists with the dtype and size the field implies, e.g. ``codes/<param>`` holds
``⌈n·b/8⌉`` bytes for ``n`` codes of ``b`` bits (:func:`~lowbit.export.bitpack.packed_nbytes`). A problem raises
:class:`~lowbit.export.errors.PackedFileError` naming the file and the field, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .bitpack import MAX_BITS, packed_nbytes
from .encode import CODE_SLOTS, join_name
from .errors import PackedFileError

__all__ = [
    "TensorEntry",
    "check_tensor_index",
    "check_header",
    "check_quantization",
    "CODES",
    "STATE",
    "PARAMS",
    "DTYPES",
]

CODES, STATE, PARAMS = "codes/", "state/", "params/"
#: header dtype name -> (torch dtype, safetensors dtype tag) of the float tensors a packed file may hold
DTYPES = {
    "float32": (torch.float32, "F32"),
    "float64": (torch.float64, "F64"),
    "float16": (torch.float16, "F16"),
    "bfloat16": (torch.bfloat16, "BF16"),
}
#: bytes per value of the safetensors dtype tags (the tags safetensors itself writes)
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
_ITEMSIZE.update({"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8})
_MAX_DIM = 1 << 31  # one dimension of a tensor
_MAX_NUMEL = 1 << 40  # values in one tensor: far above any model lowbit trains, far below an overflow
_MAX_SEED = (1 << 63) - 1
_HEADER_KEYS = ("format", "version", "lowbit_version", "model_spec", "recipe", "seed")
_HEADER_KEYS += ("data", "source", "notes", "quantized", "state")
_OPTIONAL_HEADER_KEYS = ("layer_ends",)
_MODEL_SPEC_KEYS = ("name", "options", "input_shape", "num_classes", "class_name", "reference")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the safetensors index: dtype tag, shape and its bytes' offsets in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return "a number too large to print"
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    """Raises :class:`PackedFileError` for the file ``where``; ``field`` names the header field in messages."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> PackedFileError:
        return PackedFileError(
            f"packed file {self.where!r} is malformed: {field} {problem}; export it again from its checkpoint"
        )

    def of_type(self, value: Any, types: tuple, field: str, expected: str) -> Any:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise self.fail(field, f"must be {expected}, got {_show(value)}")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be an int in {low}..{high}, got {_show(value)}")
        return value

    def shape(self, value: Any, field: str) -> tuple[int, ...]:
        if not isinstance(value, list) or len(value) > 8:
            raise self.fail(field, f"must be a list of at most 8 dimensions, got {_show(value)}")
        shape = tuple(self.integer(d, f"{field}[{i}]", 0, _MAX_DIM) for i, d in enumerate(value))
        if math.prod(shape) > _MAX_NUMEL:
            raise self.fail(field, f"describes {math.prod(shape):.3g} values, more than any model lowbit writes")
        return shape

    def keys(self, value: Any, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        self.of_type(value, (dict,), field, "a JSON object")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(field, f"lacks {', '.join(map(repr, missing))}")
        unknown = [k for k in value if k not in required + optional]
        if unknown:
            raise self.fail(field, f"has unknown keys {', '.join(map(_show, unknown[:3]))}")
        return value

    def numbers(self, value: Any, field: str, count: int) -> list:
        if not isinstance(value, list) or len(value) != count:
            raise self.fail(field, f"must be a list of {count} numbers, got {_show(value)}")
        for i, v in enumerate(value):
            self.of_type(v, (int, float), f"{field}[{i}]", "a number")
        return value


# ------------------------------------------------------------------------------------------------ tensor index
def check_tensor_index(raw: Any, where: str, data_bytes: int) -> dict[str, TensorEntry]:
    """The safetensors JSON header (without ``__metadata__``) as :class:`TensorEntry` by name.

    The tensors must tile the data section (``data_bytes`` = file size − 8 − header length): each takes
    ``numel · itemsize`` bytes, and together they end where the file ends (no truncation, nothing appended).
    """
    check = _Checker(where)
    check.of_type(raw, (dict,), "the safetensors header", "a JSON object")
    index = {}
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        field = f"tensor {_show(name)}"
        check.keys(info, field, ("dtype", "shape", "data_offsets"))
        dtype = info["dtype"]
        if dtype not in _ITEMSIZE:
            raise check.fail(f"{field}.dtype", f"must be a safetensors dtype, got {_show(dtype)}")
        shape = check.shape(info["shape"], f"{field}.shape")
        offsets = info["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise check.fail(f"{field}.data_offsets", f"must be [start, end], got {_show(offsets)}")
        start = check.integer(offsets[0], f"{field}.data_offsets[0]", 0, data_bytes)
        end = check.integer(offsets[1], f"{field}.data_offsets[1]", start, data_bytes)
        if end - start != math.prod(shape) * _ITEMSIZE[dtype]:
            raise check.fail(field, f"takes {end - start} bytes, its dtype and shape need {math.prod(shape)} values")
        index[name] = TensorEntry(dtype, shape, start, end)
    end = max((t.end for t in index.values()), default=0)
    if end != data_bytes:
        problem = "is truncated" if end > data_bytes else f"has {data_bytes - end} bytes after its last tensor"
        raise PackedFileError(f"packed file {where!r} {problem}; export it again from its checkpoint")
    return index


# ------------------------------------------------------------------------------------------------------ header
def _broadcasts(small: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a tensor of shape ``small`` broadcasts against ``shape`` without changing it."""
    if len(small) > len(shape):
        return False
    return all(s in (1, d) for s, d in zip(reversed(small), reversed(shape)))


class _HeaderChecker(_Checker):
    def __init__(self, where: str, index: dict[str, TensorEntry]) -> None:
        super().__init__(where)
        self.index = index
        self.used: set[str] = set()

    def tensor(self, key: Any, field: str, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> None:
        if not isinstance(key, str) or key not in self.index:
            raise self.fail(field, f"names tensor {_show(key)}, which the file does not hold")
        entry = self.index[key]
        if entry.dtype not in dtypes or entry.shape != shape:
            raise self.fail(
                field,
                f"names tensor {key!r} of dtype {entry.dtype} and shape {list(entry.shape)}, expected "
                f"{'/'.join(dtypes)} of shape {list(shape)}",
            )
        self.used.add(key)

    def state_tensor(self, key: str, field: str) -> None:
        """A tensor of the float state: any dtype and shape here (the model's state dict checks them on loading)."""
        if key not in self.index:
            raise self.fail(field, f"names tensor {key!r}, which the file does not hold")
        self.used.add(key)

    def array(self, value: Any, field: str, param: str, owner: tuple[int, ...], broadcast: bool = True) -> None:
        """A scale, zero point or table: ``{shape, dtype, values}`` inline or ``{shape, dtype, tensor}``."""
        if isinstance(value, dict) and "tensor" in value:
            self.keys(value, field, ("shape", "dtype", "tensor"))
        else:
            self.keys(value, field, ("shape", "dtype", "values"))
        shape = self.shape(value["shape"], f"{field}.shape")
        if value["dtype"] not in DTYPES:
            raise self.fail(f"{field}.dtype", f"must be one of {', '.join(DTYPES)}, got {_show(value['dtype'])}")
        if broadcast and not _broadcasts(shape, owner):
            raise self.fail(f"{field}.shape", f"{list(shape)} does not broadcast against the tensor's {list(owner)}")
        if "values" in value:
            self.numbers(value["values"], f"{field}.values", math.prod(shape))
        else:
            self.tensor(value["tensor"], f"{field}.tensor", (DTYPES[value["dtype"]][1],), (math.prod(shape),))
            if not value["tensor"].startswith(PARAMS + param + "/"):
                raise self.fail(f"{field}.tensor", f"{value['tensor']!r} belongs to another tensor than {param!r}")

    def quantized(self, name: Any, entry: Any) -> None:
        field = f"quantized[{_show(name)}]"
        self.of_type(name, (str,), f"a key of 'quantized' ({_show(name)})", "a parameter name")
        common = ("layer", "slot", "shape", "dtype", "bits", "signed", "quantizer", "stored")
        stored = entry.get("stored") if isinstance(entry, dict) else None
        if stored not in ("codes", "float", "tied"):
            self.of_type(entry, (dict,), field, "a JSON object")
            raise self.fail(f"{field}.stored", f"must be 'codes', 'float' or 'tied', got {_show(stored)}")
        extra = {"codes": ("qmin", "axis", "scale", "zero_point", "table"), "float": (), "tied": ("tied_to",)}[stored]
        self.keys(entry, field, common + extra)
        self.of_type(entry["layer"], (str,), f"{field}.layer", "a module name")
        if entry["slot"] not in CODE_SLOTS:
            raise self.fail(f"{field}.slot", f"must be one of {', '.join(CODE_SLOTS)}, got {_show(entry['slot'])}")
        if join_name(entry["layer"], entry["slot"]) != name:
            raise self.fail(field, f"says layer {entry['layer']!r} slot {entry['slot']!r}, which is not {name!r}")
        shape = self.shape(entry["shape"], f"{field}.shape")
        self.of_type(entry["dtype"], (str,), f"{field}.dtype", "a dtype name")
        self.of_type(entry["quantizer"], (str,), f"{field}.quantizer", "a class name")
        self.of_type(entry["signed"], (bool,), f"{field}.signed", "true or false")
        bits = self.integer(entry["bits"], f"{field}.bits", 1, MAX_BITS)
        if stored == "float":
            self.tensor(STATE + name, f"{field} (stored as float)", tuple(t for _, t in DTYPES.values()), shape)
            return
        if stored == "tied":  # the same tensor as another entry (tied weights), stored once under that name
            self.of_type(entry["tied_to"], (str,), f"{field}.tied_to", "a parameter name")
            return
        self.tensor(CODES + name, f"{field}.bits", ("U8",), (packed_nbytes(math.prod(shape), bits),))
        self.integer(entry["qmin"], f"{field}.qmin", -(1 << bits), 1 << bits)
        if entry["axis"] is not None:
            self.integer(entry["axis"], f"{field}.axis", 0, max(len(shape) - 1, 0))
        self.array(entry["scale"], f"{field}.scale", name, shape)
        self.array(entry["zero_point"], f"{field}.zero_point", name, shape)
        if entry["table"] is not None:
            self.array(entry["table"], f"{field}.table", name, shape, broadcast=False)
            count = math.prod(entry["table"]["shape"])
            if len(entry["table"]["shape"]) != 1 or not 1 <= count <= 1 << bits:
                raise self.fail(f"{field}.table.shape", f"must be [n] with 1 <= n <= {1 << bits} for {bits} bits")

    def model_spec(self, spec: Any) -> None:
        if spec is None:
            return
        self.keys(spec, "model_spec", ("name",), _MODEL_SPEC_KEYS[1:])
        if spec["name"] is not None:
            from ..models import MODELS

            self.of_type(spec["name"], (str,), "model_spec.name", "a model name or null")
            if spec["name"] not in MODELS:  # a MODULE:CALLABLE here would be imported (run) on loading
                raise self.fail("model_spec.name", f"is not one of lowbit's models, got {_show(spec['name'])}")
        self.of_type(spec.get("options", {}), (dict,), "model_spec.options", "a JSON object")
        self.shape(spec.get("input_shape", []), "model_spec.input_shape")
        self.integer(spec.get("num_classes", 0), "model_spec.num_classes", 0, _MAX_DIM)
        if spec.get("class_name") is not None:
            self.of_type(spec["class_name"], (str,), "model_spec.class_name", "a class name or null")
        if spec.get("reference") is not None:
            self.of_type(spec["reference"], (str,), "model_spec.reference", "MODULE:CALLABLE or null")

    def data(self, data: Any) -> None:
        if data is None:
            return
        self.of_type(data, (dict,), "data", "a JSON object or null")
        if data.get("name") is not None:
            self.of_type(data["name"], (str,), "data.name", "a dataset name or null")
        for key in ("mean", "std"):
            if key in data:
                self.numbers(data[key], f"data.{key}", len(data[key]) if isinstance(data[key], list) else -1)
        if "input_shape" in data:
            self.shape(data["input_shape"], "data.input_shape")


def check_header(header: Any, index: dict[str, TensorEntry], where: str) -> None:
    """Every field of the lowbit ``header`` (format and version already checked) against the tensor ``index``.

    Checked: the keys and their types; ``seed`` in ``0..2^63−1``; per quantized tensor its name = ``layer.slot``,
    ``bits`` in ``1..16``, its codes tensor of ``⌈n·b/8⌉`` bytes, ``qmin`` in ``±2^b``, ``axis`` a dimension,
    scale / zero point shapes broadcasting against the tensor and their tensors of the declared dtype and size, a
    table of at most ``2^b`` levels; every ``state`` key a stored tensor; and no tensor in the file that no field
    names.
    """
    check = _HeaderChecker(where, index)
    check.keys(header, "the lowbit header", _HEADER_KEYS, _OPTIONAL_HEADER_KEYS)
    if "layer_ends" in header:
        ends = check.of_type(header["layer_ends"], (list,), "layer_ends", "a list of two layer names")
        if len(ends) != 2 or not all(isinstance(name, str) for name in ends):
            raise check.fail("layer_ends", f"must be a list of two layer names, got {_show(ends)}")
    check.of_type(header["lowbit_version"], (str,), "lowbit_version", "a version string")
    check.model_spec(header["model_spec"])
    check.of_type(header["recipe"], (dict,), "recipe", "a resolved recipe (JSON object)")
    check.integer(header["seed"], "seed", 0, _MAX_SEED)
    check.data(header["data"])
    if header["source"] is not None:
        check.of_type(header["source"], (dict,), "source", "a JSON object or null")
    notes = check.of_type(header["notes"], (list,), "notes", "a list of strings")
    for i, note in enumerate(notes):
        check.of_type(note, (str,), f"notes[{i}]", "a string")
    quantized = check.of_type(header["quantized"], (dict,), "quantized", "a JSON object")
    if not quantized:
        raise check.fail("quantized", "is empty: a packed file holds at least one quantized tensor")
    for name, entry in quantized.items():
        check.quantized(name, entry)
    for name, entry in quantized.items():
        if entry["stored"] == "tied":
            target = quantized.get(entry["tied_to"])
            if target is None or target["stored"] == "tied" or target["shape"] != entry["shape"]:
                raise check.fail(
                    f"quantized[{name!r}].tied_to",
                    f"must name a stored tensor of shape {entry['shape']}, got {_show(entry['tied_to'])}",
                )
    state = check.of_type(header["state"], (list,), "state", "a list of state-dict keys")
    for i, key in enumerate(state):
        check.of_type(key, (str,), f"state[{i}]", "a state-dict key")
        if key in quantized:
            raise check.fail(f"state[{i}]", f"{key!r} is also a quantized tensor")
        check.state_tensor(STATE + key, f"state[{i}]")
    if len(set(state)) != len(state):
        raise check.fail("state", "lists a key twice")
    unnamed = sorted(set(index) - check.used)
    if unnamed:
        raise check.fail("the header", f"does not describe the file's tensor {unnamed[0]!r}")


# --------------------------------------------------------------------------------------------------- values
def check_quantization(
    name: str,
    entry: dict,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    table: Optional[torch.Tensor],
    indices: torch.Tensor,
    where: str,
) -> None:
    """Values of one decoded tensor's quantization parameters: ``x = scale · (q − zero_point)`` with ``scale``
    finite and > 0, ``zero_point`` an integer level of the grid (``qmin ≤ zero_point ≤ qmin + 2^b − 1``; 0 with a
    table), table levels finite and every code a valid table index."""
    check = _Checker(where)
    field = f"quantized[{name!r}]"
    if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise check.fail(f"{field}.scale", "must be finite and positive (the step between grid levels)")
    qmin, bits = entry["qmin"], entry["bits"]
    low, high = (0, 0) if table is not None else (qmin, qmin + (1 << bits) - 1)
    zero_ok = torch.isfinite(zero_point) & (zero_point == torch.round(zero_point))
    if not bool(torch.all(zero_ok & (zero_point >= low) & (zero_point <= high))):
        raise check.fail(f"{field}.zero_point", f"must be integer levels in {low}..{high}")
    if table is not None:
        if not bool(torch.all(torch.isfinite(table))):
            raise check.fail(f"{field}.table", "must hold finite levels")
        if indices.numel() and int(indices.max()) >= table.numel():
            raise check.fail(
                f"{field}.table", f"has {table.numel()} levels, the codes index up to {int(indices.max())}"
            )
