"""A run killed at any write boundary leaves consistent files and resumes to the same weights; a resumed run keeps
its configuration (only --epochs and --lr may change, visibly)."""

import copy
import dataclasses
import json

import pytest
import torch

import lowbit.runs
from lowbit.errors import CheckpointError
from lowbit.runs import RunFiles, load_checkpoint
from lowbit.train import TrainConfig, Trainer, run
from lowbit.train.resume import configuration_differences

pytestmark = pytest.mark.slow

#: recipes with stochastic parts (noise in the weights, the rounding or the gradients) and one with a budget
RECIPES = ["bc-stoch", "sr-adam", "big-sr-adam", "banner-w8a8g8", "mp-u3"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the boundary runs (BaseException: not caught by the trainer)."""


def _config(out, recipe, **changes):
    config = TrainConfig(
        recipe=recipe,
        data="digits",
        epochs=3,
        out=str(out),
        quiet=True,
        train_subset=160,
        test_subset=60,
        pretrain_epochs=0,
        changes={"train.batch_size": 32},
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _boundaries(monkeypatch, kill_at):
    """Count every write boundary (before and after each file write of a run); raise Killed at number ``kill_at``."""
    count = {"n": 0}

    def tick():
        count["n"] += 1
        if count["n"] == kill_at:
            raise Killed

    def wrap(owner, name):
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            tick()
            result = real(*args, **kwargs)
            tick()
            return result

        monkeypatch.setattr(owner, name, wrapped)

    wrap(lowbit.runs, "write_state")  # the checkpoint (the commit point)
    wrap(RunFiles, "append_log")
    wrap(RunFiles, "write_log")
    wrap(RunFiles, "write_metrics")
    return count


def _assert_consistent(out, trainer_config):
    """Whatever the moment of the kill: the checkpoint's best model scores what its history says."""
    files = RunFiles(out)
    if not files.checkpoint.exists():
        return
    last = load_checkpoint(out, which="last")
    assert [r["epoch"] for r in last.history] == list(range(1, last.epoch + 2))
    if last.has_best:
        best = last.view("best")
        trainer = Trainer.from_checkpoint(best)
        assert trainer.evaluate(trainer.splits.test)["acc"] == pytest.approx(last.best["test_acc"], abs=1e-12)
    metrics = files.read_metrics()
    if metrics is not None:  # written only after the last epoch's commit
        assert metrics["best_epoch"] == last.best.get("epoch") and last.epoch + 1 == trainer_config.epochs


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_kill_at_any_write_boundary_loses_nothing(recipe, tmp_path, monkeypatch):
    reference = run(_config(tmp_path / "reference", recipe))
    expected = reference.model.state_dict()
    expected_log = RunFiles(tmp_path / "reference").read_history()
    boundary = 0
    while True:
        boundary += 1
        out = tmp_path / f"kill{boundary}"
        with monkeypatch.context() as patch:
            _boundaries(patch, boundary)
            try:
                run(_config(out, recipe))
            except Killed:
                pass
            else:
                break  # every boundary has been tried
        _assert_consistent(out, _config(out, recipe))
        if RunFiles(out).checkpoint.exists():
            resumed = run(_config(out, recipe, resume=True)).model.state_dict()
        else:  # killed before the first commit: nothing to resume, start again
            resumed = run(_config(out, recipe, overwrite=True)).model.state_dict()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, resumed[key]), (boundary, key)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        timing = ("train_time_s", "samples_per_s")
        strip = [{k: v for k, v in r.items() if k not in timing} for r in expected_log]
        assert [{k: v for k, v in r.items() if k not in timing} for r in log] == strip, boundary
    assert boundary > 8  # 3 epochs x (checkpoint, log line) + metrics, before and after each


def test_the_best_epoch_is_kept_with_the_last_one(tmp_path):
    result = run(_config(tmp_path, "bc-det", epochs=4))
    last = load_checkpoint(tmp_path, which="last")
    best = load_checkpoint(tmp_path)
    assert last.epoch == 3 and best.which == "best" and best.epoch + 1 == result.metrics["best_epoch"]
    if best.epoch != last.epoch:
        assert last.best_model_state is not None and best.optimizer_state is None
    trainer = Trainer.from_checkpoint(best)
    assert trainer.evaluate(trainer.splits.test)["acc"] == pytest.approx(result.metrics["best_test_accuracy"])


def test_resume_refuses_a_different_configuration(tmp_path):
    run(_config(tmp_path, "bc-det", epochs=1))
    for change, fragment in (
        ({"changes": {"quantize.weight.rounding": "stochastic"}}, "quantize.weight.rounding"),
        ({"batch_size": 16}, "train.batch_size"),
        ({"seed": 3}, "seed: 0 then, 3 now"),
        ({"changes": {"name": "renamed"}}, "recipe.name"),
        ({"model": "mlp"}, "model.name"),
        ({"train_subset": 100}, "data.train_subset"),
    ):
        with pytest.raises(CheckpointError, match=f"different configuration.*{fragment}"):
            run(_config(tmp_path, "bc-det", epochs=1, resume=True, **change))


def test_a_checkpoint_written_before_a_new_recipe_setting_existed_still_resumes(tmp_path):
    run(_config(tmp_path, "bc-det", epochs=1))
    checkpoint = load_checkpoint(tmp_path, "last")
    older = copy.deepcopy(checkpoint.recipe)
    del older["train"]["sync_batchnorm"]  # an option added after the run was written, at its default
    assert configuration_differences(older, checkpoint.recipe)  # the raw comparison would refuse it
    assert Trainer(_config(tmp_path, "bc-det", epochs=2, resume=True))._check_resumable(
        dataclasses.replace(checkpoint, recipe=older)
    ) == {"recipe.train.epochs": (1, 2)}


def test_resume_may_extend_the_run_and_change_the_learning_rate(tmp_path):
    messages = []
    config = _config(tmp_path, "bc-det", epochs=2)
    config.changes = {**config.changes, "train.schedule": {"type": "cosine"}}
    run(config)
    config.resume, config.epochs, config.lr = (
        True,
        4,
        0.5 * load_checkpoint(tmp_path).recipe["train"]["optimizer"]["lr"],
    )
    config.quiet = False
    trainer = Trainer(config, log=messages.append)
    result = trainer.fit()
    assert result.metrics["epochs"] == 4 and [r["epoch"] for r in load_checkpoint(tmp_path, "last").history] == [
        1,
        2,
        3,
        4,
    ]
    assert any("4 epochs instead of 2" in m for m in messages) and any("learning rate" in m for m in messages)
    lrs = [r["lr"] for r in load_checkpoint(tmp_path, "last").history]
    base = lrs[0]  # epoch 1 ran at the recipe's LR (cosine factor 1), the resumed epochs at half of it
    cosine = [0.5 * (1 + torch.cos(torch.tensor(torch.pi * t / 4))).item() for t in (2, 3)]
    assert lrs[2:] == pytest.approx([0.5 * base * c for c in cosine])


def test_extending_a_cosine_run_follows_the_new_schedule(tmp_path):
    """--epochs alone: the resumed epochs run at the LRs of the longer schedule, as an uninterrupted run would."""

    def config(out, epochs, **changes):
        c = _config(out, "bc-det", epochs=epochs, **changes)
        c.changes = {**c.changes, "train.schedule": {"type": "cosine"}}
        return c

    run(config(tmp_path / "short", 2))
    run(config(tmp_path / "short", 4, resume=True))
    run(config(tmp_path / "whole", 4))
    resumed = [r["lr"] for r in load_checkpoint(tmp_path / "short", "last").history]
    whole = [r["lr"] for r in load_checkpoint(tmp_path / "whole", "last").history]
    assert resumed[2:] == pytest.approx(whole[2:]) and resumed[2] > 0


def test_resume_refuses_fewer_epochs_than_trained(tmp_path):
    run(_config(tmp_path, "bc-det", epochs=2))
    with pytest.raises(CheckpointError, match="trained 2 epochs already"):
        run(_config(tmp_path, "bc-det", epochs=1, resume=True))


def test_a_run_killed_in_its_first_epoch_can_start_again(tmp_path):
    """An empty log.jsonl (no epoch committed) is not a run to protect."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "log.jsonl").write_text("")
    run(_config(tmp_path, "bc-det", epochs=1))
    assert load_checkpoint(tmp_path, "last").epoch == 0


def test_overwrite_moves_only_the_runs_files(tmp_path):
    run(_config(tmp_path, "bc-det", epochs=1))
    (tmp_path / "notes.txt").write_text("mine")
    run(_config(tmp_path, "bc-det", epochs=1, overwrite=True))
    replaced = next(p for p in tmp_path.iterdir() if p.name.startswith("replaced-"))
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (replaced / "notes.txt").exists()
    assert (replaced / "checkpoint.safetensors").exists()


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    run(_config(tmp_path, "bc-det", epochs=1))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.safetensors", "metrics.json", "log.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_without_validation_data_no_epoch_is_best(tmp_path):
    messages = []
    config = _config(tmp_path, "bc-det", epochs=2)
    config.val_fraction = 0.0
    config.quiet = False
    result = Trainer(config, log=messages.append).fit()
    assert result.metrics["best_epoch"] is None and any("no validation data" in m for m in messages)
    assert load_checkpoint(tmp_path).epoch == 1  # the default view falls back to the last epoch


def test_an_evaluation_only_run_resumes_from_its_first_epoch(tmp_path):
    run(_config(tmp_path, "bc-det", epochs=0))
    assert load_checkpoint(tmp_path, "last").epoch == -1
    run(_config(tmp_path, "bc-det", epochs=2, resume=True))
    assert [r["epoch"] for r in load_checkpoint(tmp_path, "last").history] == [0, 1, 2]
