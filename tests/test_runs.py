"""The run directory and checkpoint format: safe to open (no pickle), damage detected, old files refused with the
fix, and everything a resumed run needs round-trips exactly."""

import contextlib
import os
import pickle
import random

import numpy as np
import pytest
import torch

from lowbit.cli import main
from lowbit.errors import CheckpointError, ConfigError, CustomModelError
from lowbit.runs import Checkpoint, RunFiles, capture_rng, convert_legacy_checkpoint, load_checkpoint, restore_rng
from lowbit.safe_state import StateFileError, read_state, write_state
from lowbit.train import TrainConfig, Trainer, run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(
        TrainConfig(
            recipe="sr-adam", data="digits", epochs=1, out=str(out), quiet=True, train_subset=300, test_subset=60
        )
    )
    return out


def test_nested_state_round_trips_exactly(tmp_path):
    tree = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": [1, 2.5, None, "x", True],
        "c": (torch.tensor(3), {"nested": torch.zeros(0)}),
        4: "int key",
        "$odd": torch.tensor([True, False]),
        "np": np.arange(5, dtype=np.uint32),
        "bf16": torch.ones(3, dtype=torch.bfloat16),
        "big": 2**100,
        "nan": float("nan"),
    }
    write_state(tmp_path / "s.safetensors", tree, {"kind": "test"})
    back, meta = read_state(tmp_path / "s.safetensors")
    assert meta == {"kind": "test"}
    assert torch.equal(back["a"], tree["a"]) and back["b"] == tree["b"] and back[4] == "int key"
    assert isinstance(back["c"], tuple) and torch.equal(back["c"][0], torch.tensor(3))
    assert back["c"][1]["nested"].shape == (0,) and torch.equal(back["$odd"], tree["$odd"])
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3, 4]
    assert back["bf16"].dtype == torch.bfloat16 and back["big"] == 2**100 and back["nan"] != back["nan"]


def test_objects_that_are_not_data_are_refused_when_writing(tmp_path):
    with pytest.raises(TypeError, match="cannot store object at .x"):
        write_state(tmp_path / "s.safetensors", {"x": object()}, {})
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_checkpoint_round_trips_every_field(run_dir):
    checkpoint = load_checkpoint(run_dir, which="last")
    assert checkpoint.phase == "train" and checkpoint.epoch == 0 and checkpoint.quantized
    assert checkpoint.recipe_name == "sr-adam" and checkpoint.model_spec.name == "small-cnn"
    assert checkpoint.data.name == "digits" and checkpoint.data.train_subset == 300
    assert checkpoint.history and checkpoint.best["epoch"] == 1
    assert set(checkpoint.rng) == {"torch", "python", "numpy"}
    # the optimizer's state and the stochastic quantizers' noise states come back as they were saved
    assert isinstance(checkpoint.optimizer_state["state"][0]["exp_avg"], torch.Tensor)
    noise = [v for k, v in checkpoint.model_state.items() if k.endswith("_extra_state") and v.get("noise")]
    assert noise and all(n["noise"]["seed"] is not None for n in noise)


def test_global_generators_are_restored_exactly():
    state = capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(state)
    assert (
        torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    )


def test_a_pickle_payload_is_never_executed(tmp_path):
    """An old-format (pickled) file, malicious here, is refused before anything is unpickled."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, writer in (
        ("zip.pt", lambda p: torch.save({"x": Payload()}, p)),
        ("bare.pt", lambda p: p.write_bytes(pickle.dumps({"x": Payload()}))),
    ):
        path = tmp_path / name
        writer(path)
        with pytest.raises(CheckpointError, match="pickle format.*lowbit convert-checkpoint"):
            load_checkpoint(path)
    legacy_run = tmp_path / "legacy"
    legacy_run.mkdir()
    torch.save({"x": Payload()}, legacy_run / "last.pt")
    with pytest.raises(CheckpointError, match="pickle format"):
        load_checkpoint(legacy_run)
    assert not marker.exists()


def test_damaged_tensor_data_is_detected(run_dir, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    raw = bytearray((run_dir / "checkpoint.safetensors").read_bytes())
    for i in range(64):  # flip bytes in the tensor data (behind the header)
        raw[-1 - 97 * i] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(damaged)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    with pytest.raises(StateFileError):
        read_state(truncated)


def test_a_trusted_old_checkpoint_converts_to_the_same_model(run_dir, tmp_path, capsys):
    current = load_checkpoint(run_dir, which="last")
    old = {
        "format": "lowbit-checkpoint",
        "version": 1,
        "lowbit_version": "0.1.0",
        "phase": current.phase,
        "epoch": current.epoch,
        "model_spec": {k: v for k, v in vars(current.model_spec).items() if k != "class_name"},
        "data": vars(current.data),
        "recipe": current.recipe,
        "quantized": True,
        "seed": current.seed,
        "model_state": current.model_state,
        "optimizer_state": current.optimizer_state,
        "scheduler_state": current.scheduler_state,
        "rng": current.rng,
        "history": current.history,
        "best": current.best,
    }
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(old, legacy / "last.pt")
    assert main(["convert-checkpoint", str(legacy)]) == 0
    assert "checkpoint.safetensors" in capsys.readouterr().out
    converted = load_checkpoint(legacy, which="last")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(converted.restore_model()(x), current.restore_model()(x))
    with pytest.raises(CheckpointError, match="not a lowbit 0.1 checkpoint"):
        convert_legacy_checkpoint(legacy / "checkpoint.safetensors")


def test_a_custom_model_needs_the_users_float_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    Trainer(
        TrainConfig(
            recipe="bc-det", data="digits", epochs=1, out=str(tmp_path), quiet=True, train_subset=200, test_subset=50
        ),
        model=model,
    ).fit()
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.model_spec.class_name == "Sequential"
    with pytest.raises(CustomModelError, match="custom architecture \\(Sequential\\).*restore_model\\(model="):
        checkpoint.restore_model()
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    restored = checkpoint.restore_model(fresh)
    assert restored is fresh
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(CheckpointError, match="does not fit the model Sequential"):
        checkpoint.restore_model(wrong)


def test_run_files_name_the_layout(run_dir):
    files = RunFiles(run_dir)
    assert files.checkpoint.exists() and files.read_metrics()["recipe"] == "sr-adam"
    assert [r["epoch"] for r in files.read_history()] == [1]
    with pytest.raises(CheckpointError, match="no training log"):
        RunFiles(run_dir / "missing").read_history()
    assert isinstance(load_checkpoint(run_dir), Checkpoint)


def _small(out, **changes):
    config = TrainConfig(
        recipe="bc-det", data="digits", epochs=1, out=str(out), quiet=True, train_subset=200, test_subset=50
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_a_new_run_never_writes_over_an_earlier_one(tmp_path):
    run(_small(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(CheckpointError, match="already holds a run.*--resume.*--overwrite"):
        run(_small(tmp_path, seed=1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"} == before
    run(_small(tmp_path, seed=1, overwrite=True))
    replaced = [p for p in tmp_path.iterdir() if p.name.startswith("replaced-")]
    assert len(replaced) == 1 and {p.name: p.read_bytes() for p in replaced[0].iterdir()} == before
    assert load_checkpoint(tmp_path).seed == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run(_small(tmp_path / "empty", resume=True))


def test_a_second_process_is_refused_while_a_run_directory_is_in_use(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with RunFiles(tmp_path).locked():  # (flock: a second open of the lock file conflicts, even in one process)
        with pytest.raises(CheckpointError, match=f"in use by another lowbit process \\(pid {os.getpid()}\\)"):
            run(_small(tmp_path))
    run(_small(tmp_path))  # released


def test_an_unusable_out_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot use .* as the run directory"):
        run(_small(tmp_path / "file"))
    with pytest.raises(CheckpointError, match="cannot use .* as the run directory"):
        run(_small(tmp_path / "file" / "sub"))


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    run(_small(tmp_path, epochs=1))
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    real_save = safetensors.torch.save_file

    def disk_full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)  # the partial file exists, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device; the checkpoint of the previous epoch is kept"):
        run(_small(tmp_path, epochs=2, resume=True))
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--out", ""], "argument --out: an empty path"),
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--device", "cuda:3"], "device 'cuda:3'"),
    ],
)
def test_bad_run_options_are_one_line(args, fragment, capsys):
    with pytest.raises(SystemExit) if args[0] == "--out" else contextlib.nullcontext():
        code = main(["train", "--epochs", "0", *args])
        assert code == 2
    assert fragment in capsys.readouterr().err


class _Reversed(torch.nn.Module):
    """Layers defined in the reverse of the order they run in: first/last by data flow differ from definition
    order."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(32, 10)
        self.middle = torch.nn.Linear(32, 32)
        self.stem = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.head(torch.relu(self.middle(torch.relu(self.stem(x.flatten(1))))))


def test_a_restored_or_rebuilt_model_gets_the_overrides_it_was_trained_with(tmp_path):
    """lsq-w4a4 keeps the first layer's input in float and the last layer at 8 bits: the first and last layers found
    by data flow in training are stored, so restoring and the packed file rebuild the same conversion."""
    from lowbit.export import export_checkpoint, load_packed

    torch.manual_seed(0)
    config = TrainConfig(
        recipe="lsq-w4a4",
        data="digits",
        epochs=1,
        out=str(tmp_path / "run"),
        quiet=True,
        train_subset=200,
        test_subset=50,
        pretrain_epochs=0,
    )
    trained = Trainer(config, model=_Reversed()).fit().model
    assert trained.lowbit_report.first == "stem" and trained.lowbit_report.last == "head"
    checkpoint = load_checkpoint(tmp_path / "run", which="last")
    assert checkpoint.layer_ends == ["stem", "head"]
    restored = checkpoint.restore_model(_Reversed())
    assert restored.stem.input_quantizer is None and restored.head.weight_quantizer.bits == 8
    x = torch.randn(5, 1, 8, 8)
    trained.eval()
    with torch.no_grad():
        assert torch.equal(restored(x), trained(x))
    result = export_checkpoint(tmp_path / "run", "packed", model=_Reversed(), which="last")
    with torch.no_grad():
        assert torch.equal(load_packed(result.path, model=_Reversed())(x), restored(x))


def test_opening_a_file_never_imports_the_module_it_names(run_dir, tmp_path):
    """A model name that is a MODULE:CALLABLE reference in a checkpoint is refused, not imported (packed files:
    test_packed_integrity.py's model-reference-name variant)."""
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(*a, **k): pass\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        checkpoint = load_checkpoint(run_dir, which="last")
        checkpoint.model_spec.name = "evilmod:build"
        checkpoint.save(tmp_path / "evil.safetensors")
        with pytest.raises(CheckpointError, match="not one of lowbit's models"):
            load_checkpoint(tmp_path / "evil.safetensors").restore_model()
        assert not marker.exists()
    finally:
        sys.path.remove(str(tmp_path))


def test_a_recipe_cannot_make_lowbit_import_a_module(tmp_path):
    recipe = {"name": "r", "model": "evilmod:build", "quantize": {}}
    with pytest.raises(ConfigError, match="imports a builder only when you name it"):
        run(TrainConfig(recipe=recipe, data="digits", epochs=1, quiet=True, train_subset=100, test_subset=20))


def test_an_export_never_writes_over_the_run(run_dir, capsys):
    for target in ("checkpoint.safetensors", "metrics.json"):
        assert main(["export", str(run_dir), "--out", str(run_dir / target)]) == 2
        assert "would overwrite" in capsys.readouterr().err
    assert load_checkpoint(run_dir).recipe_name == "sr-adam"


def test_plot_takes_a_checkpoint_file_and_creates_nothing_for_a_typo(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir / "checkpoint.safetensors"), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "curves.png").exists()
    assert main(["plot", str(tmp_path / "typo")]) == 2
    assert not (tmp_path / "typo").exists()
