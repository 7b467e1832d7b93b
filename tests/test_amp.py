"""bfloat16 autocast (``--amp bf16``): the training forward runs in bfloat16, everything else stays float32, and
every shipped recipe trains with it (here on the CPU, which has bfloat16 kernels too)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.cli import main
from lowbit.errors import ConfigError
from lowbit.recipes import list_recipes
from lowbit.train import TrainConfig, Trainer
from lowbit.train.step import autocast_dtype


def _trainer(recipe: str, amp: str) -> Trainer:
    config = TrainConfig(
        recipe=recipe,
        data="digits",
        epochs=1,
        batch_size=32,
        train_subset=96,
        test_subset=32,
        pretrain_epochs=0,
        amp=amp,
        device="cpu",
        quiet=True,
    )
    return Trainer(config)


@pytest.mark.parametrize("recipe", [r.name for r in list_recipes()])
def test_every_shipped_recipe_trains_a_few_steps_under_bf16_with_finite_loss(recipe):
    trainer = _trainer(recipe, "bf16")
    result = trainer.fit()  # a non-finite loss would raise TrainingDiverged
    assert math.isfinite(trainer.history[-1]["loss"])
    assert math.isfinite(result["test_accuracy"])
    floats = [t for t in [*result.model.parameters(), *result.model.buffers()] if t.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in floats)  # autocast never changes what is stored


def test_bf16_runs_the_training_forward_in_bfloat16_and_the_loss_in_float32():
    trainer = _trainer("lsq-w4a4", "bf16")
    trainer.quantize_model()
    trainer._setup_phase("train", 1)
    seen = []
    last_linear = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)][-1]
    last_linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x = trainer.example_batch(8)
    y = torch.zeros(8, dtype=torch.long)
    out = trainer.step(x, y)
    assert seen == [torch.bfloat16]
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32
    trainer.evaluate(trainer.splits.test)  # evaluation measures the float32 model, as it is exported
    assert seen[-1] == torch.float32


def test_without_amp_the_forward_stays_float32():
    trainer = _trainer("lsq-w4a4", "none")
    trainer.quantize_model()
    trainer._setup_phase("train", 1)
    seen = []
    [m for m in trainer.model.modules() if isinstance(m, nn.Linear)][-1].register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype)
    )
    trainer.step(trainer.example_batch(8), torch.zeros(8, dtype=torch.long))
    assert seen == [torch.float32]


def test_amp_modes():
    assert autocast_dtype("none") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="unknown --amp 'fp16'"):
        autocast_dtype("fp16")
    assert TrainConfig().amp == "none"


def test_cli_trains_with_amp_bf16_and_refuses_an_unknown_mode(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--recipe", "lsq-w4a4", "--epochs", "1", "--train-subset", "64", "--test-subset", "32"]
    assert main([*args, "--amp", "bf16", "--device", "cpu", "--out", str(out), "--no-progress", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--amp", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
