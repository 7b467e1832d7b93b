"""Packed model files: every shipped recipe round-trips to bit-identical eval outputs, the file is the size of its
bits, and bad input fails with a clear message."""

import json
import struct

import pytest
import torch

import lowbit
from lowbit.cli import main as lowbit_main
from lowbit.data import BatchLoader, load_dataset
from lowbit.errors import CheckpointError
from lowbit.export import (
    ExportError,
    FrozenCodes,
    PackedFileError,
    export_checkpoint,
    load_packed,
    packed_info,
    read_packed_header,
    save_packed,
)
from lowbit.export.bitpack import packed_nbytes
from lowbit.export.encode import as_exported
from lowbit.export.packed import VERSION
from lowbit.runs import load_checkpoint
from lowbit.train import TrainConfig, run

QUANTIZING = [r.name for r in lowbit.list_recipes() if r.name != "fp32"]


def train_briefly(recipe, out, **overrides):
    options = dict(
        recipe=recipe,
        data="digits",
        epochs=1,
        pretrain_epochs=0,
        train_subset=300,
        batch_size=64,
        quiet=True,
        out=str(out),
    )
    options.update(overrides)
    run(TrainConfig(**options))
    return out


@pytest.fixture(scope="module")
def digits_test():
    splits = load_dataset("digits")
    return torch.cat([x for x, _ in BatchLoader(splits.test, 512, normalize=(splits.mean, splits.std))])


@pytest.mark.parametrize("recipe", QUANTIZING)
def test_every_recipe_round_trips_bit_for_bit(recipe, tmp_path, digits_test):
    run_dir = train_briefly(recipe, tmp_path / "run")
    result = export_checkpoint(run_dir, "packed")
    trained = as_exported(
        load_checkpoint(run_dir).restore_model()
    )  # BC-stoch: the sign(W) network it ships (see the notes)
    rebuilt = load_packed(result.path)
    with torch.no_grad():
        assert torch.equal(trained(digits_test), rebuilt(digits_test))
    assert not rebuilt.training
    # the rebuilt model reports the same bit widths, and its weight slots hold the stored codes
    assert lowbit.model_summary(rebuilt).per_layer_bits() == lowbit.model_summary(trained).per_layer_bits()
    for _, layer in lowbit.quantized_layers(rebuilt):
        assert layer.weight_quantizer is None or isinstance(layer.weight_quantizer, FrozenCodes)

    info = packed_info(result.path)
    header = read_packed_header(result.path)
    entries = header["quantized"].values()
    assert all(e["stored"] == "codes" for e in entries), result.notes
    # codes are packed at their own bit width: ⌈n·b/8⌉ bytes per tensor
    assert info.code_bytes == sum(packed_nbytes(torch.Size(e["shape"]).numel(), e["bits"]) for e in entries)
    # everything but the header is within 5% of Σ bits/8 + the float state
    ideal = info.code_bits / 8 + info.float_bytes + info.param_bytes
    assert info.file_bytes - info.header_bytes <= 1.05 * ideal
    assert info.header_bytes < 16 * 1024
    if recipe == "bc-stoch":
        assert any("eval_mode: float" in note for note in result.notes)


def test_binaryconnect_weights_are_32x_smaller(tmp_path):
    result = export_checkpoint(train_briefly("bc-det", tmp_path / "run"), "packed", tmp_path / "bc.safetensors")
    info = result.info
    assert info.code_bits == info.quantized_params  # one bit per weight
    assert info.weight_compression == pytest.approx(32, rel=0.01)
    assert info.compression > 10  # whole file, BatchNorm and metadata included, against float32


def test_mixed_precision_tensors_keep_their_own_widths(tmp_path):
    result = export_checkpoint(train_briefly("lsq-w2a2", tmp_path / "run"), "packed")
    bits = {name: e["bits"] for name, e in read_packed_header(result.path)["quantized"].items()}
    assert bits["features.0.weight"] == 8 and bits["classifier.3.weight"] == 8  # first and last layer
    assert bits["features.4.weight"] == 2 and bits["classifier.0.weight"] == 2


def test_custom_model_needs_the_float_model(tmp_path, digits_test):
    torch.manual_seed(0)
    float_model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    qmodel = lowbit.quantize(float_model, "lsq-w4a4")
    qmodel.train()
    qmodel(digits_test[:64])  # initialise the activation steps from data
    qmodel.eval()
    path = tmp_path / "custom.safetensors"
    save_packed(qmodel, path, recipe=lowbit.load_recipe("lsq-w4a4"))
    with pytest.raises(PackedFileError, match="model=MyNet"):
        load_packed(path)
    rebuilt = load_packed(path, model=float_model)
    with torch.no_grad():
        assert torch.equal(qmodel(digits_test), rebuilt(digits_test))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with pytest.raises(PackedFileError, match="does not fit"):
        load_packed(path, model=other)


def test_float_checkpoints_are_refused_with_the_fix(tmp_path):
    run_dir = train_briefly("fp32", tmp_path / "fp32")
    with pytest.raises(ExportError, match="quantizes nothing.*train with a quantizing recipe"):
        export_checkpoint(run_dir, "packed")
    checkpoint = load_checkpoint(run_dir)
    checkpoint.quantized, checkpoint.phase = False, "pretrain"
    checkpoint.save(tmp_path / "pretrain.safetensors")
    with pytest.raises(ExportError, match="float pre-training"):
        export_checkpoint(tmp_path / "pretrain.safetensors", "onnx")
    with pytest.raises(ExportError, match="no quantized layers"):
        save_packed(load_checkpoint(run_dir).restore_model(), tmp_path / "x.safetensors", recipe={})


def test_checkpoints_of_another_version_are_refused(tmp_path, monkeypatch):
    checkpoint = load_checkpoint(train_briefly("bc-det", tmp_path / "run"))
    monkeypatch.setattr("lowbit.runs.VERSION", 99)
    checkpoint.save(tmp_path / "future.safetensors")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format version 99"):
        export_checkpoint(tmp_path / "future.safetensors", "packed")


def _rewrite_header(path, change):
    """Rewrite the lowbit JSON of a packed file (same tensors)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    lowbit_header = json.loads(header["__metadata__"]["lowbit"])
    change(lowbit_header)
    header["__metadata__"]["lowbit"] = json.dumps(lowbit_header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def test_foreign_and_other_version_packed_files_are_refused(tmp_path):
    result = export_checkpoint(train_briefly("lsq-w4a4", tmp_path / "run"), "packed")
    path = tmp_path / "run" / "model.packed.safetensors"
    assert result.path == str(path)
    _rewrite_header(path, lambda h: h.update(version=VERSION + 1))
    with pytest.raises(PackedFileError, match=f"format version {VERSION + 1}.*reads version {VERSION}"):
        load_packed(path)
    with pytest.raises(PackedFileError, match="not a lowbit packed file"):
        load_packed(tmp_path / "run" / "checkpoint.safetensors")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(PackedFileError, match="not a lowbit packed file"):
        load_packed(tmp_path / "empty")
    with pytest.raises(PackedFileError, match="does not exist"):
        load_packed(tmp_path / "missing.safetensors")


def _cli(argv):
    return lowbit_main(argv)


def test_command_line_writes_and_verifies(tmp_path, capsys):
    run_dir = train_briefly("mp-u3", tmp_path / "run")
    out = tmp_path / "mp.safetensors"
    assert _cli(["export", str(run_dir), "--out", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "identical on 359/359" in printed
    assert _cli(["export", str(run_dir / "checkpoint.safetensors"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["path"].endswith("checkpoint.packed.safetensors") and payload["format"] == "packed"
    assert _cli(["export", str(out)]) == 2
    assert "packed file already" in capsys.readouterr().err
