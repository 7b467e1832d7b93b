"""End to end on the embedded digits data (seconds each): every recipe trains, runs resume exactly, NaN stops."""

import json
import math

import pytest
import torch

import lowbit
from lowbit.data import load_dataset
from lowbit.runs import load_checkpoint
from lowbit.train import TrainConfig, Trainer, TrainingDiverged, run

pytestmark = pytest.mark.slow

CHANCE = 0.1
# BC-stoch is evaluated with its float weights (as in the paper's code), which needs the latent weights to saturate:
# it gets more steps than the others.
LONGER = {"bc-stoch": 15}


@pytest.mark.parametrize("recipe", [r.name for r in lowbit.list_recipes()])
def test_every_shipped_recipe_trains_well_above_chance(recipe, tmp_path):
    config = TrainConfig(
        recipe=recipe,
        data="digits",
        epochs=LONGER.get(recipe, 4),
        batch_size=32,
        pretrain_epochs=2 if lowbit.load_recipe(recipe).train.get("pretrain") else None,
        out=str(tmp_path),
        quiet=True,
    )
    result = run(config)
    assert result["test_accuracy"] > 3.5 * CHANCE, result["test_accuracy"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "best_test_accuracy",
        "val_accuracy",
        "model_size_kb",
        "bits",
        "wall_time_s",
        "recipe_resolved",
    ):
        assert key in metrics
    assert metrics["recipe_resolved"]["name"] == recipe
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == config.epochs + (config.pretrain_epochs or 0)


def test_binaryconnect_latent_weights_stay_in_minus_one_one(tmp_path):
    result = run(TrainConfig(recipe="bc-det", data="digits", epochs=3, quiet=True))
    for _, layer in lowbit.quantized_layers(result.model):
        assert layer.weight.abs().max().item() <= 1.0
    assert result["compression"] > 20  # 1-bit weights: ~32x on the layers, BN kept in float


def test_sr_weights_are_on_the_grid_after_training():
    result = run(TrainConfig(recipe="sr-adam", data="digits", epochs=2, quiet=True))
    for _, layer in lowbit.quantized_layers(result.model):
        h = layer.weight_quantizer.scale  # the layer's Glorot H
        assert set(layer.weight.unique().tolist()) <= {-h, h}


@pytest.mark.parametrize("recipe, pretrain", [("sr-adam", 0), ("lsq-w3a3", 2), ("banner-w8a8g8", 0), ("mp-u3", 1)])
def test_resume_after_a_kill_gives_the_same_final_weights(recipe, pretrain, tmp_path, monkeypatch):
    def config(out):
        return TrainConfig(
            recipe=recipe,
            data="digits",
            epochs=3,
            pretrain_epochs=pretrain,
            out=str(out),
            seed=5,
            quiet=True,
            train_subset=600,
        )

    reference = run(config(tmp_path / "straight")).model.state_dict()

    original = Trainer._run_epoch
    calls = {"n": 0}

    def killed_after_two_epochs(self, epoch):
        if calls["n"] == pretrain + 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "killed"))
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    resumed_config = config(tmp_path / "killed")
    resumed_config.resume = True
    resumed = run(resumed_config).model.state_dict()
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed[key]), key
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert len(log) == pretrain + 3


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(TrainConfig(recipe="bc-det", data="digits", epochs=3, out=str(tmp_path), quiet=True))
    real_loss = trainer.loss_fn
    state = {"calls": 0}

    def loss_that_explodes(logits, target):
        state["calls"] += 1
        value = real_loss(logits, target)
        return value * math.nan if state["calls"] > 20 else value  # epoch 1 has 13 steps

    trainer.loss_fn = loss_that_explodes
    with pytest.raises(TrainingDiverged, match="loss became nan in train epoch 2") as info:
        trainer.fit()
    assert "last good checkpoint" in str(info.value) and "--lr" in str(info.value)
    kept = load_checkpoint(tmp_path, which="last")
    assert kept.epoch == 0  # the epoch-1 checkpoint, intact
    assert all(
        torch.isfinite(v).all()
        for v in kept.model_state.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


def test_python_api_trains_a_user_model():
    from lowbit.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, hidden=64, depth=2)
    result = Trainer(
        TrainConfig(recipe="lsq-w4a4", data="digits", epochs=2, pretrain_epochs=1, quiet=True), model=model
    ).fit()
    assert result["test_accuracy"] > 0.5
    assert result["model"] == "MLP"


def test_fine_tuning_starts_from_a_float_checkpoint(tmp_path):
    float_run = run(TrainConfig(recipe="fp32", data="digits", epochs=2, out=str(tmp_path / "float"), quiet=True))
    tuned = Trainer(
        TrainConfig(recipe="lsq-w4a4", data="digits", epochs=0, init_from=str(tmp_path / "float"), quiet=True)
    )
    float_weights = float_run.model.state_dict()
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(value, float_weights[name])
    assert tuned.recipe.train["pretrain"] is None  # the given float model replaces pre-training
    with pytest.raises(ValueError, match="needs a float checkpoint"):
        quantized = run(TrainConfig(recipe="bc-det", data="digits", epochs=1, out=str(tmp_path / "q"), quiet=True))
        Trainer(TrainConfig(recipe="lsq-w4a4", data="digits", init_from=str(quantized.out), quiet=True))


def test_an_epoch_ending_with_a_single_sample_trains_a_batchnorm_model():
    """90 training samples in batches of 89 leave one: it joins the batch before instead of crashing BatchNorm."""
    config = TrainConfig(recipe="bc-det", data="digits", epochs=1, batch_size=89, train_subset=100, quiet=True)
    assert len(load_dataset("digits", train_subset=100).train) % 89 == 1
    result = run(config)
    assert result.metrics["epochs"] == 1 and math.isfinite(result.metrics["val_accuracy"])
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
