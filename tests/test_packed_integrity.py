"""Damaged and malformed packed files: each of the tampered variants below makes ``load_packed`` raise
``PackedFileError`` (and nothing else) with a message naming the problem, and every command that reads a packed file
prints one ``lowbit: error: ...`` line instead of a traceback.

The variants start from real packed files (a small CNN quantized with LSQ, Banner's per-channel min-max and
BinaryConnect). Header edits are re-signed (their checksum recomputed, as an honest file from another lowbit version
or a hand-made header would be), so they exercise the field checks; edits that are not re-signed exercise the
checksums.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lowbit
from lowbit.cli import main as lowbit_main
from lowbit.export import PackedFileError, load_packed, packed_info, read_packed_header, save_packed
from lowbit.export.encode import as_exported
from lowbit.models import build_model
from lowbit.recipes import load_recipe
from lowbit.safe_state import tensor_checksum

SPEC = {"name": "small-cnn", "options": {"channels": [4, 8], "fc": 16}, "input_shape": [1, 8, 8], "num_classes": 10}
BASES = ("lsq-w4a4", "banner-w8a8g8", "bc-det")
FIRST, MIDDLE = "features.0.weight", "features.4.weight"  # 8-bit first layer; 4-bit with lsq-w4a4


def _quantized_small_cnn(recipe: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small-cnn", (1, 8, 8), 10, channels=(4, 8), fc=16)
    qmodel = lowbit.quantize(model, recipe)
    qmodel.train()
    qmodel(torch.randn(16, 1, 8, 8))  # initialise activation steps and ranges from data
    return qmodel.eval()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bases")
    paths = {}
    for recipe in BASES:
        paths[recipe] = folder / f"{recipe}.packed.safetensors"
        save_packed(_quantized_small_cnn(recipe), paths[recipe], recipe=load_recipe(recipe), model_spec=SPEC)
    return paths


# ------------------------------------------------------------------------------------------------ file surgery
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(path: Path, index: dict, data: bytes) -> None:
    text = json.dumps(index).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def header_edit(change: Callable[[dict], object], sign: bool = True) -> Callable[[Path, Path], None]:
    """Change the lowbit JSON header (same tensors); ``sign``: recompute its checksum."""

    def make(source: Path, target: Path) -> None:
        index, data = _split(source)
        metadata = index["__metadata__"]
        header = json.loads(metadata["lowbit"])
        change(header)
        metadata["lowbit"] = json.dumps(header)
        if sign:
            metadata["lowbit_sha256"] = _sha256(metadata["lowbit"])
        _join(target, index, data)

    return make


def metadata_edit(change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def make(source: Path, target: Path) -> None:
        index, data = _split(source)
        change(index["__metadata__"])
        _join(target, index, data)

    return make


def tensor_edit(change: Callable[[dict, dict], object], sign: bool = True) -> Callable[[Path, Path], None]:
    """Change the tensors (and the header with them); ``sign``: recompute both checksums."""

    def make(source: Path, target: Path) -> None:
        tensors = load_file(str(source))
        with safe_open(str(source), framework="pt") as f:
            metadata = dict(f.metadata())
        header = json.loads(metadata["lowbit"])
        change(tensors, header)
        if sign:
            metadata["lowbit"] = json.dumps(header)
            metadata["lowbit_sha256"] = _sha256(metadata["lowbit"])
            metadata["tensor_sha256"] = tensor_checksum(tensors)
        save_file(tensors, str(target), metadata=metadata)

    return make


def byte_edit(change: Callable[[dict, bytearray], bytes]) -> Callable[[Path, Path], None]:
    """Change the raw tensor bytes in place (checksums untouched); ``change(index, data)`` returns the new data."""

    def make(source: Path, target: Path) -> None:
        index, data = _split(source)
        _join(target, index, change(index, bytearray(data)))

    return make


def raw_edit(change: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def make(source: Path, target: Path) -> None:
        target.write_bytes(change(source.read_bytes()))

    return make


def flip(tensor_name: str, count: int = 64) -> Callable[[dict, bytearray], bytes]:
    def change(index: dict, data: bytearray) -> bytes:
        start, end = index[tensor_name]["data_offsets"]
        for i in range(min(count, end - start)):
            data[start + i] ^= 0xFF
        return bytes(data)

    return change


def _set(path: str, value: object) -> Callable[[dict], None]:
    """``header[a][b]... = value`` for ``path`` = "a/b/..."."""

    def change(header: dict) -> None:
        *parents, last = path.split("/")
        node = header
        for key in parents:
            node = node[key]
        node[last] = value

    return change


def _tie(name: str, tied_to: object) -> Callable[[dict], None]:
    """Turn the entry of ``name`` into one tied to ``tied_to`` (its codes tensor left in the file)."""

    def change(header: dict) -> None:
        entry = header["quantized"][name]
        for key in ("qmin", "axis", "scale", "zero_point", "table"):
            del entry[key]
        entry.update(stored="tied", tied_to=tied_to)

    return change


def _delete(path: str) -> Callable[[dict], None]:
    def change(header: dict) -> None:
        *parents, last = path.split("/")
        node = header
        for key in parents:
            node = node[key]
        del node[last]

    return change


def _rename_tensor(old: str, new: str) -> Callable[[dict, dict], None]:
    """Move quantized tensor ``old`` to the name ``new`` consistently (entry, codes): a file of another model."""

    def change(tensors: dict, header: dict) -> None:
        entry = header["quantized"].pop(old)
        entry["layer"] = new.rsplit(".", 1)[0]
        header["quantized"][new] = entry
        tensors[f"codes/{new}"] = tensors.pop(f"codes/{old}")

    return change


def _drop_tensor(name: str) -> Callable[[dict, dict], None]:
    def change(tensors: dict, header: dict) -> None:
        del header["quantized"][name]
        del tensors[f"codes/{name}"]

    return change


def _fill(tensor_name: str, value: float) -> Callable[[dict, dict], None]:
    def change(tensors: dict, header: dict) -> None:
        tensors[tensor_name] = torch.full_like(tensors[tensor_name], value)

    return change


def _reshape_state(key: str) -> Callable[[dict, dict], None]:
    def change(tensors: dict, header: dict) -> None:
        tensors[f"state/{key}"] = torch.zeros(3)

    return change


def _recipe(name: str) -> dict:
    return load_recipe(name).to_dict()


def _header_length(value: int) -> Callable[[bytes], bytes]:
    return lambda raw: struct.pack("<Q", value) + raw[8:]


def _garble_header(raw: bytes) -> bytes:
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[:8] + b"\x93" * length + raw[8 + length :]


def _index_edit(change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def make(source: Path, target: Path) -> None:
        index, data = _split(source)
        change(index)
        _join(target, index, data)

    return make


# ---------------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    id: str
    make: Callable[[Path, Path], None]
    match: str  # regex the PackedFileError's message must match
    base: str = "lsq-w4a4"


Q1, Q4 = f"quantized/{FIRST}", f"quantized/{MIDDLE}"
BANNER_SCALE = f"params/{FIRST}/scale"
VARIANTS = [
    # bit widths
    Variant("bits-0", header_edit(_set(f"{Q1}/bits", 0)), r"\.bits must be an int in 1\.\.16, got 0"),
    Variant("bits-3-for-4-bit-codes", header_edit(_set(f"{Q4}/bits", 3)), r"\.bits names tensor .*expected U8 of"),
    Variant("bits-99", header_edit(_set(f"{Q1}/bits", 99)), r"\.bits must be an int in 1\.\.16, got 99"),
    Variant("bits-negative", header_edit(_set(f"{Q1}/bits", -8)), r"\.bits must be an int"),
    Variant("bits-string", header_edit(_set(f"{Q1}/bits", "8")), r"\.bits must be an int.*'8'"),
    Variant("bits-float", header_edit(_set(f"{Q1}/bits", 8.0)), r"\.bits must be an int"),
    Variant("bits-bool", header_edit(_set(f"{Q1}/bits", True)), r"\.bits must be an int"),
    Variant("bits-huge", header_edit(_set(f"{Q1}/bits", 10**30)), r"\.bits must be an int"),
    # tensor names
    Variant(
        "name-not-layer-slot",
        header_edit(lambda h: h["quantized"].update({"nope.weight": h["quantized"].pop(FIRST)})),
        r"which is not 'nope\.weight'",
    ),
    Variant("unknown-layer", tensor_edit(_rename_tensor(FIRST, "features.9.weight")), r"no quantized tensor"),
    Variant(
        "entry-without-codes",
        header_edit(lambda h: h["quantized"][FIRST].update(layer="features.9")),
        r"not 'features\.0\.weight'",
    ),
    Variant("missing-entry", header_edit(_delete(Q1)), r"does not describe the file's tensor 'codes/features\.0"),
    Variant("missing-entry-and-codes", tensor_edit(_drop_tensor(FIRST)), r"does not fit.*missing.*features\.0"),
    Variant("slot-not-a-weight", header_edit(_set(f"{Q1}/slot", "input")), r"\.slot must be one of weight, bias"),
    Variant("stored-unknown", header_edit(_set(f"{Q1}/stored", "zip")), r"\.stored must be 'codes', 'float' or 'tied'"),
    Variant("tied-to-nothing", header_edit(_tie(MIDDLE, "nope.weight")), r"\.tied_to must name a stored tensor"),
    Variant("tied-to-other-shape", header_edit(_tie(MIDDLE, FIRST)), r"\.tied_to must name a stored tensor of shape"),
    Variant("tied-without-target", header_edit(_tie(MIDDLE, None)), r"\.tied_to must be a parameter name"),
    Variant("entry-not-an-object", header_edit(_set(Q1, [1, 2])), r"must be a JSON object"),
    # shapes
    Variant("shape-other-size", header_edit(_set(f"{Q1}/shape", [5, 5])), r"\.bits names tensor"),
    Variant("shape-same-size", header_edit(_set(f"{Q1}/shape", [1, 4, 3, 3])), r"should be a quantized tensor"),
    Variant("shape-not-a-list", header_edit(_set(f"{Q1}/shape", "4x1x3x3")), r"\.shape must be a list"),
    Variant("shape-huge", header_edit(_set(f"{Q1}/shape", [2**31, 2**31])), r"\.shape describes"),
    Variant("shape-negative", header_edit(_set(f"{Q1}/shape", [-4, 1, 3, 3])), r"\.shape\[0\] must be an int"),
    Variant(
        "state-shape", tensor_edit(_reshape_state("features.1.running_mean")), r"state 'features\.1\.running_mean'"
    ),
    # scales, zero points, tables
    Variant("scale-nan", header_edit(_set(f"{Q1}/scale/values", [float("nan")])), r"\.scale must be finite"),
    Variant("scale-inf", header_edit(_set(f"{Q1}/scale/values", [float("inf")])), r"\.scale must be finite"),
    Variant("scale-negative", header_edit(_set(f"{Q1}/scale/values", [-0.5])), r"\.scale must be finite and positive"),
    Variant("scale-zero", header_edit(_set(f"{Q1}/scale/values", [0.0])), r"\.scale must be finite and positive"),
    Variant("scale-string", header_edit(_set(f"{Q1}/scale/values", ["0.1"])), r"\.scale\.values\[0\] must be a number"),
    Variant(
        "scale-too-many", header_edit(_set(f"{Q1}/scale/values", [0.1, 0.2])), r"\.scale\.values must be a list of 1"
    ),
    Variant("scale-shape", header_edit(_set(f"{Q1}/scale/shape", [5])), r"\.scale\.shape \[5\] does not broadcast"),
    Variant("scale-dtype", header_edit(_set(f"{Q1}/scale/dtype", "int8")), r"\.scale\.dtype must be one of"),
    Variant("scale-missing", header_edit(_delete(f"{Q1}/scale")), r"lacks 'scale'"),
    Variant("zero-point-fraction", header_edit(_set(f"{Q1}/zero_point/values", [0.5])), r"\.zero_point must be"),
    Variant("zero-point-huge", header_edit(_set(f"{Q1}/zero_point/values", [1e6])), r"\.zero_point must be integer"),
    Variant("zero-point-nan", header_edit(_set(f"{Q1}/zero_point/values", [float("nan")])), r"\.zero_point must be"),
    Variant("qmin-huge", header_edit(_set(f"{Q1}/qmin", 10**30)), r"\.qmin must be an int"),
    Variant("axis-out-of-range", header_edit(_set(f"{Q1}/axis", 5)), r"\.axis must be an int in 0\.\.3"),
    Variant(
        "per-channel-scale-nan",
        tensor_edit(_fill(BANNER_SCALE, float("nan"))),
        r"\.scale must be finite",
        "banner-w8a8g8",
    ),
    Variant(
        "per-channel-zero-point",
        tensor_edit(_fill(f"params/{FIRST}/zero_point", 1e9)),
        r"\.zero_point must be integer",
        "banner-w8a8g8",
    ),
    Variant(
        "scale-of-another-tensor",
        header_edit(_set(f"{Q1}/scale/tensor", f"params/{MIDDLE}/scale")),
        r"belongs to another tensor|names tensor",
        "banner-w8a8g8",
    ),
    Variant(
        "table-too-short",
        header_edit(_set(f"{Q1}/table", {"shape": [1], "dtype": "float32", "values": [1.0]})),
        r"\.table has 1 levels|does not describe",
        "bc-det",
    ),
    Variant(
        "table-too-long",
        header_edit(_set(f"{Q1}/table", {"shape": [3], "dtype": "float32", "values": [-1.0, 0.0, 1.0]})),
        r"\.table\.shape must be \[n\]|does not describe",
        "bc-det",
    ),
    # recipe, model, seed
    Variant("recipe-a-name", header_edit(_set("recipe", "no-such-recipe")), r"recipe must be a resolved recipe"),
    Variant(
        "recipe-unknown-quantizer",
        header_edit(lambda h: h["recipe"]["quantize"]["weight"].update(type="bogus")),
        r"recipe that cannot quantize.*bogus",
    ),
    Variant(
        "recipe-bad-bits",
        header_edit(lambda h: h["recipe"]["quantize"]["weight"].update(bits=99)),
        r"recipe that cannot quantize",
    ),
    Variant("recipe-other-structure", header_edit(_set("recipe", _recipe("fp32"))), r"does not fit"),
    Variant("recipe-other-quantizer", header_edit(_set("recipe", _recipe("banner-w8a8g8"))), r"does not fit"),
    Variant(
        "model-reference-name",  # a MODULE:CALLABLE would be imported (run) on loading
        header_edit(_set("model_spec", {**SPEC, "name": "evilmod:build"})),
        r"not one of lowbit's models",
    ),
    Variant(
        "model-other-name",
        header_edit(_set("model_spec", {**SPEC, "name": "resnet8", "options": {}})),
        r"does not fit|not quantizable layers of this model",
    ),
    Variant(
        "model-too-large",
        header_edit(_set("model_spec", {**SPEC, "name": "mlp", "options": {}})),
        r"model_spec describes [\d,]+ values",
    ),
    Variant("model-unknown", header_edit(_set("model_spec/name", "no-such-net")), r"not one of lowbit.s models"),
    Variant("model-other-options", header_edit(_set("model_spec/options", {"channels": [8, 16]})), r"does not fit"),
    Variant("model-bad-option", header_edit(_set("model_spec/options", {"bogus": 1})), r"cannot be built.*bogus"),
    Variant("model-huge-option", header_edit(_set("model_spec/options", {"fc": 10**12})), r"model_spec describes"),
    Variant("model-negative-option", header_edit(_set("model_spec/options", {"fc": -3})), r"cannot be built"),
    Variant("model-spec-a-string", header_edit(_set("model_spec", "small-cnn")), r"model_spec must be a JSON object"),
    Variant("model-spec-extra-key", header_edit(_set("model_spec/layers", 3)), r"model_spec has unknown keys"),
    Variant("seed-huge", header_edit(_set("seed", 10**30)), r"seed must be an int"),
    Variant("seed-negative", header_edit(_set("seed", -1)), r"seed must be an int"),
    # other keys and types
    Variant("missing-state", header_edit(_delete("state")), r"lacks 'state'"),
    Variant("missing-recipe", header_edit(_delete("recipe")), r"lacks 'recipe'"),
    Variant("state-a-string", header_edit(_set("state", "all")), r"state must be a list"),
    Variant("state-unknown-key", header_edit(lambda h: h["state"].append("bogus.key")), r"'state/bogus\.key'"),
    Variant("state-twice", header_edit(lambda h: h["state"].append(h["state"][0])), r"state lists a key twice"),
    Variant("quantized-a-list", header_edit(_set("quantized", [])), r"quantized must be a JSON object"),
    Variant("quantized-empty", header_edit(_set("quantized", {})), r"quantized is empty"),
    Variant("notes-a-string", header_edit(_set("notes", "none")), r"notes must be a list"),
    Variant("data-mean-strings", header_edit(_set("data", {"name": "digits", "mean": ["a"]})), r"data\.mean\[0\]"),
    Variant("unknown-key", header_edit(_set("extra", 1)), r"has unknown keys 'extra'"),
    Variant("format-other", header_edit(_set("format", "other")), r"not a lowbit packed file \(format 'other'\)"),
    Variant("version-1", header_edit(_set("version", 1), sign=False), r"format version 1, this lowbit reads version 2"),
    Variant("header-not-an-object", metadata_edit(lambda m: m.update(lowbit="[1, 2]")), r"not a lowbit packed file"),
    # checksums
    Variant("header-edit-unsigned", header_edit(_set(f"{Q1}/bits", 4), sign=False), r"damaged: its lowbit header"),
    Variant("header-garbled-unsigned", metadata_edit(lambda m: m.update(lowbit="{]")), r"damaged: its lowbit header"),
    Variant(
        "header-not-json-signed",
        metadata_edit(lambda m: m.update(lowbit="{]", lowbit_sha256=_sha256("{]"))),
        r"lowbit header that is not JSON",
    ),
    Variant("no-header-checksum", metadata_edit(lambda m: m.pop("lowbit_sha256")), r"no 'lowbit_sha256' checksum"),
    Variant("no-tensor-checksum", metadata_edit(lambda m: m.pop("tensor_sha256")), r"no 'tensor_sha256' checksum"),
    Variant("tensor-checksum-wrong", metadata_edit(lambda m: m.update(tensor_sha256="0" * 64)), r"its tensor data"),
    Variant("no-lowbit-metadata", metadata_edit(lambda m: m.pop("lowbit")), r"without lowbit metadata"),
    # tensor data
    Variant("flipped-code-bytes", byte_edit(flip(f"codes/{MIDDLE}")), r"damaged: its tensor data"),
    Variant("flipped-scale-bytes", byte_edit(flip(BANNER_SCALE)), r"damaged: its tensor data", "banner-w8a8g8"),
    Variant("flipped-state-bytes", byte_edit(flip("state/features.1.running_var")), r"damaged: its tensor data"),
    Variant("flipped-table-bytes", byte_edit(flip(f"params/{FIRST}/table", 1)), r"damaged: its tensor data", "bc-det"),
    Variant("codes-unsigned-rewrite", tensor_edit(_fill(f"codes/{MIDDLE}", 7), sign=False), r"its tensor data"),
    Variant("truncated", raw_edit(lambda raw: raw[:-100]), r"truncated"),
    Variant("appended-bytes", raw_edit(lambda raw: raw + b"\0" * 64), r"64 bytes after its last tensor"),
    # safetensors level
    Variant("header-length-huge", raw_edit(_header_length(2**63)), r"header length out of range"),
    Variant("header-length-zero", raw_edit(_header_length(0)), r"not a lowbit packed file"),
    Variant("header-not-json", raw_edit(_garble_header), r"not a lowbit packed file"),
    Variant("header-a-list", raw_edit(lambda raw: struct.pack("<Q", 8) + b"[1,2,3] "), r"not a JSON object"),
    Variant("empty-file", raw_edit(lambda raw: b""), r"not a lowbit packed file"),
    Variant("short-file", raw_edit(lambda raw: raw[:5]), r"not a lowbit packed file"),
    Variant(
        "data-offsets-out-of-range",
        _index_edit(lambda i: i[f"codes/{FIRST}"].update(data_offsets=[0, 10**12])),
        r"data_offsets\[1\] must be an int",
    ),
    Variant(
        "data-offsets-not-a-list",
        _index_edit(lambda i: i[f"codes/{FIRST}"].update(data_offsets="0-36")),
        r"data_offsets must be \[start, end\]",
    ),
    Variant(
        "tensor-dtype-unknown", _index_edit(lambda i: i[f"codes/{FIRST}"].update(dtype="U3")), r"safetensors dtype"
    ),
    Variant("tensor-shape-lies", _index_edit(lambda i: i[f"codes/{FIRST}"].update(shape=[3])), r"takes \d+ bytes"),
]


@pytest.fixture
def tampered(request, bases, tmp_path) -> tuple[Variant, Path]:
    variant = request.param
    path = tmp_path / f"{variant.id}.packed.safetensors"
    variant.make(bases[variant.base], path)
    return variant, path


def test_there_are_at_least_40_distinct_variants():
    assert len(VARIANTS) >= 40
    assert len({v.id for v in VARIANTS}) == len(VARIANTS)


def test_the_untampered_files_rebuild_bit_for_bit(bases, tmp_path):
    x = torch.randn(32, 1, 8, 8)
    for recipe, path in bases.items():
        rebuilt = load_packed(path)
        with torch.no_grad():
            assert torch.equal(as_exported(_quantized_small_cnn(recipe))(x), rebuilt(x)), recipe
        assert packed_info(path).quantized_params > 0
        # the surgery helpers change nothing by themselves
        copy = tmp_path / f"{recipe}.copy.packed.safetensors"
        header_edit(lambda h: None)(path, copy)
        with torch.no_grad():
            assert torch.equal(load_packed(copy)(x), rebuilt(x))


@pytest.mark.parametrize("tampered", VARIANTS, indirect=True, ids=[v.id for v in VARIANTS])
def test_load_packed_refuses_every_tampered_file(tampered):
    variant, path = tampered
    with pytest.raises(PackedFileError, match=variant.match) as caught:
        load_packed(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    # the header readers raise the same error type, or succeed for damage only the tensor data shows
    for reader in (read_packed_header, packed_info):
        try:
            reader(path)
        except PackedFileError:
            pass


@pytest.mark.parametrize("tampered", VARIANTS, indirect=True, ids=[v.id for v in VARIANTS])
def test_onnx_export_of_a_tampered_file_is_one_error_line(tampered, capsys, tmp_path):
    _, path = tampered
    assert lowbit_main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lowbit: error: ") and captured.err.count("\n") == 1, captured.err
    assert not (tmp_path / "m.onnx").exists()


SOME = [v for v in VARIANTS if v.id in ("bits-99", "header-not-json", "flipped-code-bytes", "model-unknown")]


@pytest.mark.parametrize("tampered", SOME, indirect=True, ids=[v.id for v in SOME])
@pytest.mark.parametrize("command", [["export"], ["export", "--format", "packed"], ["summary"], ["eval"]], ids=" ".join)
def test_other_commands_reading_a_tampered_file_print_one_line(tampered, command, capsys):
    _, path = tampered
    assert lowbit_main([command[0], str(path), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("tampered", SOME[:2], indirect=True, ids=[v.id for v in SOME[:2]])
def test_command_line_process_shows_no_traceback(tampered, tmp_path):
    _, path = tampered
    env_path = str(Path(lowbit.__file__).parents[1])
    completed = subprocess.run(
        [sys.executable, "-m", "lowbit", "export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("lowbit: error: ") and completed.stderr.count("\n") == 1


def test_checksums_cover_the_header_and_every_tensor(bases):
    with safe_open(str(bases["lsq-w4a4"]), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert metadata["lowbit_sha256"] == _sha256(metadata["lowbit"])
    assert metadata["tensor_sha256"] == tensor_checksum(tensors)
    assert math.prod(tensors[f"codes/{MIDDLE}"].shape) == (8 * 4 * 3 * 3 * 4 + 7) // 8  # 4-bit codes, packed
