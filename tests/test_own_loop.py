"""Bring your own loop, data and model: update policies as optimizer step hooks, the trainer on any Dataset or
DataLoader, and ``--model MODULE:CALLABLE`` for a user's architecture."""

import json
import math
import sys
import textwrap
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lowbit
from lowbit.cli import main
from lowbit.data import SeededBatches
from lowbit.errors import CheckpointError, ConfigError
from lowbit.models import build_model
from lowbit.runs import Checkpoint, load_checkpoint
from lowbit.train import GridWeights, LatentWeights, PolicyOptimizer, TrainConfig, Trainer, TrainingStep, attach_policy
from model_zoo import build


def mlp():
    torch.manual_seed(0)
    return build_model("mlp", (1, 4, 4), 3, hidden=16, depth=2)


def on_binary_grid(model):
    return all(
        set(layer.weight.unique().tolist()) <= {-layer.weight_quantizer.scale, layer.weight_quantizer.scale}
        for _, layer in lowbit.quantized_layers(model)
    )


# ------------------------------------------------------------------------------------------ policy as a step hook
def test_plain_loop_with_sgd_steplr_and_the_sr_grid_policy_keeps_weights_on_the_grid():
    model = lowbit.quantize(mlp(), "sr-adam", seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    handle = GridWeights(model).attach(optimizer)  # start(): onto the grid before the first step
    assert on_binary_grid(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)  # needs a real Optimizer
    before = [layer.weight.clone() for _, layer in lowbit.quantized_layers(model)]
    for _ in range(6):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        assert on_binary_grid(model)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5**3)
    after = [layer.weight for _, layer in lowbit.quantized_layers(model)]
    assert sum(int((a != b).sum()) for a, b in zip(after, before)) > 0  # SR moved some weights
    handle.remove()  # detached: the next step leaves the weights off the grid
    optimizer.zero_grad()
    model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
    optimizer.step()
    assert not on_binary_grid(model)


def test_grad_scaler_pattern_on_cpu_applies_the_policy_and_skips_it_with_the_step():
    model = lowbit.quantize(mlp(), "bc-det")
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    attach_policy(optimizer, LatentWeights(model))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for _ in range(3):
        optimizer.zero_grad()
        scaler.scale(model(torch.randn(8, 1, 4, 4)).pow(2).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        assert all(layer.weight.abs().max() <= 1.0 for _, layer in lowbit.quantized_layers(model))
    # an inf gradient: the scaler skips the step, and with it the policy (the weights are left exactly as they were)
    layer = next(layer for _, layer in lowbit.quantized_layers(model))
    with torch.no_grad():
        layer.weight[0, 0] = 3.0  # outside [-1, 1]: a policy run would clip it
    optimizer.zero_grad()
    scaler.scale(model(torch.randn(8, 1, 4, 4)).pow(2).sum()).backward()
    layer.weight.grad[0, 0] = math.inf
    scaler.step(optimizer)
    scaler.update()
    assert layer.weight[0, 0].item() == 3.0


def test_attach_refuses_twice_and_an_optimizer_of_the_float_model():
    float_model = mlp()
    model = lowbit.quantize(float_model, "sr-adam")  # a copy: new parameters
    policy = GridWeights(model)
    with pytest.raises(ConfigError, match="none of the quantized weights"):
        policy.attach(torch.optim.SGD(float_model.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy.attach(optimizer)
    with pytest.raises(ConfigError, match="already attached"):
        policy.attach(optimizer)


def test_policy_optimizer_is_a_deprecated_alias_returning_the_optimizer():
    model = lowbit.quantize(mlp(), "sr-adam")
    adam = torch.optim.Adam(model.parameters(), lr=0.3)
    with pytest.warns(DeprecationWarning, match="policy.attach"):
        optimizer = PolicyOptimizer(adam, GridWeights(model))
    assert optimizer is adam
    optimizer.zero_grad()
    model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
    optimizer.step()
    assert on_binary_grid(model)


def test_training_step_applies_its_policy_through_the_optimizer_hook():
    model = lowbit.quantize(mlp(), "sr-adam", seed=1)
    step = TrainingStep.from_recipe(model, "sr-adam", torch.randn(4, 1, 4, 4))
    assert step.policy.is_attached(step.optimizer)
    step.policy.start()
    step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert on_binary_grid(model)


# -------------------------------------------------------------------------------------------------- own data
def test_seeded_batches_are_a_pure_function_of_seed_and_epoch():
    def order(seed, epoch):
        return list(SeededBatches(17, 8, shuffle=True, seed=seed, epoch=epoch))

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)
    assert [len(b) for b in order(0, 3)] == [8, 9]  # a last batch of one merged into the one before
    assert sorted(i for b in order(0, 3) for i in b) == list(range(17))


def tokens(n, vocab=50, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    return TensorDataset(x, x[:, 0] % 4)


@pytest.mark.slow
def test_trainer_on_a_token_dataset_with_the_zoo_transformer(tmp_path, capsys):
    model, _ = build("transformer")
    train, val, test = tokens(48), tokens(16, seed=1), tokens(16, seed=2)
    config = TrainConfig(recipe="lsq-w4a4", epochs=2, pretrain_epochs=0, batch_size=16, out=str(tmp_path), quiet=True)
    result = Trainer(config, model=model, train_data=train, val_data=val, test_data=test).fit()
    assert len(list(lowbit.quantized_layers(result.model))) > 0
    assert all(math.isfinite(r["loss"]) for r in result.files.read_history())
    assert result.metrics["dataset"] == "TensorDataset"
    checkpoint = load_checkpoint(tmp_path, which="last")
    assert checkpoint.data.user and checkpoint.data.input_dtype == "int64" and checkpoint.data.input_shape == [12]
    # evaluation needs the user's data again: one line from the CLI, the same accuracy in Python
    assert main(["eval", str(tmp_path)]) == 2
    assert "trained on your own data (TensorDataset)" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="your own data"):
        Trainer.from_checkpoint(checkpoint)
    again = Trainer.from_checkpoint(checkpoint, model=build("transformer")[0], test_data=test)
    assert again.evaluate(again.splits.test)["acc"] == result.metrics["test_accuracy"]


@pytest.mark.slow
def test_trainer_on_a_dataloader_of_sequences_with_the_zoo_conv1d_net():
    model, _ = build("conv1d")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, 32, generator=g), torch.randint(0, 5, (30,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True)  # its own batch size and order
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])) if m.training else None)
    config = TrainConfig(recipe="sr-adam", epochs=1, pretrain_epochs=0, batch_size=16, quiet=True)
    result = Trainer(config, model=model, train_data=loader, val_data=DataLoader(TensorDataset(x, y))).fit()
    assert math.isfinite(result.metrics["val_accuracy"])
    assert math.isnan(result.metrics["test_accuracy"])  # no test split given
    assert sizes[-5:] == [6] * 5  # the epoch: the loader's batches, not the recipe's batch size
    assert on_binary_grid(result.model)


def test_own_data_needs_the_users_model():
    with pytest.raises(ConfigError, match="pass your model too"):
        Trainer(TrainConfig(quiet=True), train_data=tokens(8))


# ------------------------------------------------------------------------------------------ --model MODULE:FN
@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "pkg" / "tests_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "module.py").write_text(
        textwrap.dedent(
            """
            import math
            from torch import nn

            def build_model(input_shape, num_classes, *, hidden=16):
                return nn.Sequential(
                    nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield "tests_pkg.module:build_model"
    for name in ("tests_pkg.module", "tests_pkg"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_cli_train_eval_summary_export_with_a_users_model(tmp_path, user_package, capsys):
    out = str(tmp_path / "run")
    train = ["train", "--model", user_package, "--model-option", "hidden=8", "--recipe", "sr-adam", "--epochs", "1"]
    assert main([*train, "--pretrain-epochs", "0", "--train-subset", "200", "--out", out, "--no-progress"]) == 0
    spec = load_checkpoint(out).model_spec
    assert (spec.name, spec.reference, spec.options) == (None, user_package, {"hidden": 8})
    capsys.readouterr()
    # opening the run never imports the module by itself: the user names it again
    assert main(["eval", out]) == 2
    assert f"add --model {user_package}" in capsys.readouterr().err
    assert main(["eval", out, "--model", user_package, "--json"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == metrics["best_test_accuracy"]
    assert main(["summary", out, "--model", user_package]) == 0
    assert "Linear" in capsys.readouterr().out
    assert main(["export", out, "--model", user_package]) == 0
    assert main(["export", out, "--model", user_package, "--format", "onnx", "--verify"]) == 0
    assert "predict the same class" in capsys.readouterr().out
    assert main(["plot", out, "--model", user_package]) == 0
    assert (tmp_path / "run" / "weights.png").exists()


def test_a_module_that_cannot_be_imported_is_one_line_naming_it_and_pythonpath(tmp_path, capsys):
    assert main(["train", "--model", "no_such_pkg.models:build", "--out", str(tmp_path), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'no_such_pkg.models'" in err and "PYTHONPATH" in err and len(err.splitlines()) == 1


def test_bad_references_and_options_are_config_errors(user_package):
    with pytest.raises(ConfigError, match="no attribute 'missing'"):
        build_model("tests_pkg.module:missing", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="no option 'depth'"):
        build_model(user_package, (1, 8, 8), 10, depth=3)
    assert isinstance(build_model(user_package, (1, 8, 8), 10, hidden=4), torch.nn.Module)


def test_a_checkpoint_written_without_the_new_fields_still_reads(tmp_path):
    from dataclasses import asdict

    from lowbit.runs import _META_FIELDS, _STATE_FIELDS, FORMAT, VERSION, ModelSpec
    from lowbit.safe_state import write_state

    model = build_model("mlp", (1, 4, 4), 3, hidden=8, depth=1)
    checkpoint = Checkpoint(
        phase="train",
        epoch=0,
        model_spec=ModelSpec("mlp", {"hidden": 8, "depth": 1}, [1, 4, 4], 3),
        data=None,
        recipe=lowbit.load_recipe("fp32").to_dict(),
        quantized=False,
        seed=0,
        model_state=model.state_dict(),
    )
    meta = {name: getattr(checkpoint, name) for name in _META_FIELDS}
    meta["model_spec"] = {k: v for k, v in asdict(checkpoint.model_spec).items() if k != "reference"}
    meta["data"] = {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10}  # no user / input_dtype
    tree = {name: getattr(checkpoint, name) for name in _STATE_FIELDS}
    path = write_state(
        tmp_path / "old.safetensors", tree, {"format": FORMAT, "version": str(VERSION), "checkpoint": json.dumps(meta)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Checkpoint.load(path)
    assert loaded.model_spec.reference is None and loaded.data.user is False
    assert isinstance(loaded.restore_model(), torch.nn.Module)
