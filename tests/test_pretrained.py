"""Item 5 of issue 13: fine-tuning a trained float model. Quantizing it (with a calibration batch) or loading its
float state dict into a quantized model sets every data-dependent quantizer parameter from the trained weights and
real activations; BinaryConnect keeps trained weights unless asked to re-draw them."""

import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.calibrate import activation_quantizers
from lowbit.errors import ConfigError
from lowbit.models import build_model
from lowbit.nn.range_bn import scale_per_std
from lowbit.train import LatentWeights, TrainConfig, Trainer, run


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 3),
    )


def trained_cnn() -> nn.Module:
    """A float model whose weights and BatchNorm statistics are far from a fresh model's."""
    model = cnn(seed=1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(5.0)
        model.train()
        for _ in range(20):
            model(torch.randn(32, 1, 6, 6) * 3 + 1)
    return model.eval()


def batch(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6) * 3 + 1


# ------------------------------------------------------------------------------------------------- calibrate
def test_calibrate_sets_activation_quantizers_from_the_batch_and_changes_nothing_else():
    model = lowbit.quantize(trained_cnn(), "lsq-w4a4")
    model.eval()
    model(torch.zeros(2, 1, 6, 6))  # as model_summary with an all-zeros input did: steps set from zeros
    weights = {k: v.clone() for k, v in model.state_dict().items() if "quantizer" not in k}
    x = batch()
    lowbit.calibrate(model, x)
    after = copy.deepcopy(model.state_dict())
    for key, value in weights.items():  # weights and BatchNorm statistics as they were
        assert torch.equal(after[key], value), key
    assert not any(m.training for m in model.modules())
    # the last layer's input quantizer (8 bits, unsigned after ReLU): s = 2 mean|x| / sqrt(Q_P) of its real input,
    # the activations of train mode (BatchNorm with the batch's statistics)
    with torch.no_grad():
        features = model[:7].train()(x)
    expected = 2 * features.abs().mean() / (2**8 - 1) ** 0.5
    torch.testing.assert_close(model[7].input_quantizer.step.detach(), expected, rtol=1e-4, atol=0)


def test_calibrate_restores_each_modules_mode():
    model = lowbit.quantize(trained_cnn(), "lsq-w4a4")
    model.train()
    model[1].eval()
    lowbit.calibrate(model, batch())
    assert model.training and not model[1].training and model[4].training


def test_quantize_with_calibration_is_quantize_then_calibrate():
    x = batch()
    direct = lowbit.quantize(trained_cnn(), "lsq-w4a4", calibration=x)
    stepwise = lowbit.calibrate(lowbit.quantize(trained_cnn(), "lsq-w4a4"), x)
    for (key, a), b in zip(direct.state_dict().items(), stepwise.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
    assert all(q._is_initialized for q in activation_quantizers(direct))


def test_calibrate_accepts_an_input_target_pair_and_refuses_anything_else():
    model = lowbit.quantize(trained_cnn(), "lsq-w4a4")
    lowbit.calibrate(model, (batch(), torch.zeros(64, dtype=torch.long)))
    assert all(q._is_initialized for q in activation_quantizers(model))
    with pytest.raises(ConfigError, match="calibration needs a batch of inputs"):
        lowbit.calibrate(model, 3)


def test_calibrate_keeps_range_batchnorm_statistics():
    model = lowbit.quantize(trained_cnn(), "banner-w8a8g8")
    before = {k: v.clone() for k, v in model.state_dict().items() if "quantizer" not in k and "running" in k}
    lowbit.calibrate(model, batch())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model[7].input_quantizer._is_initialized  # min-max running range from the batch


# ------------------------------------------------------------------------------------- load_float_state_dict
@pytest.mark.parametrize("recipe", ["lsq-w4a4", "mp-u3", "banner-w8a8g8", "bc-det"])
def test_loading_a_float_state_dict_equals_quantizing_the_trained_model(recipe):
    trained, x = trained_cnn(), batch()
    reference = lowbit.quantize(trained, recipe, calibration=x)
    loaded = lowbit.quantize(cnn(seed=7), recipe)
    loaded(torch.zeros(2, 1, 6, 6))  # activation quantizers already set (from zeros): they must be set again
    lowbit.load_float_state_dict(loaded, trained.state_dict(), calibration=x)
    expected = reference.state_dict()
    for key, value in loaded.state_dict().items():
        if isinstance(value, torch.Tensor):  # weights, BN (Range BN) state and every quantizer parameter
            torch.testing.assert_close(value, expected[key], msg=key)


def test_range_batchnorm_running_scale_comes_from_the_loaded_running_var():
    trained = trained_cnn()
    qmodel = lowbit.quantize(cnn(seed=7), "banner-w8a8g8")
    lowbit.load_float_state_dict(qmodel, trained.state_dict())
    k = scale_per_std("paper")
    bn, rbn = trained[1], qmodel[1]
    torch.testing.assert_close(rbn.running_scale + rbn.eps, k * torch.sqrt(bn.running_var + bn.eps))
    torch.testing.assert_close(rbn.weight.detach(), k * bn.weight.detach())
    assert torch.equal(rbn.running_mean, bn.running_mean)


def test_without_calibration_activation_quantizers_start_again_from_the_first_batch():
    trained = trained_cnn()
    qmodel = lowbit.quantize(cnn(seed=7), "lsq-w4a4")
    qmodel(torch.zeros(2, 1, 6, 6))
    lowbit.load_float_state_dict(qmodel, trained.state_dict())
    assert not any(q._is_initialized for q in activation_quantizers(qmodel))
    weight_steps = [layer.weight_quantizer for _, layer in lowbit.quantized_layers(qmodel)]
    assert all(q._is_initialized for q in weight_steps)


def test_a_step_given_in_the_recipe_is_kept():
    recipe = {"name": "given", "quantize": {"weight": {"type": "lsq", "bits": 4, "init_step": 0.125}}}
    qmodel = lowbit.quantize(cnn(seed=7), recipe)
    lowbit.load_float_state_dict(qmodel, trained_cnn().state_dict())
    assert all(float(layer.weight_quantizer.step.detach()) == 0.125 for _, layer in lowbit.quantized_layers(qmodel))


def test_mismatched_state_dicts_are_refused_naming_the_keys_and_nothing_changes():
    qmodel = lowbit.quantize(cnn(seed=7), "lsq-w4a4")
    before = copy.deepcopy(qmodel.state_dict())
    state = trained_cnn().state_dict()

    missing = {k: v for k, v in state.items() if k != "3.weight"}
    with pytest.raises(ConfigError, match=r"missing keys '3\.weight'"):
        lowbit.load_float_state_dict(qmodel, missing)
    with pytest.raises(ConfigError, match=r"unexpected keys 'extra\.weight'"):
        lowbit.load_float_state_dict(qmodel, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="quantized checkpoint"):
        lowbit.load_float_state_dict(qmodel, lowbit.quantize(cnn(), "lsq-w4a4").state_dict())
    wrong = {**state, "7.weight": torch.zeros(5, 288)}
    with pytest.raises(ConfigError, match=r"shape mismatches '7\.weight': \(5, 288\) in the checkpoint, \(3, 288\)"):
        lowbit.load_float_state_dict(qmodel, wrong)
    after = qmodel.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if isinstance(v, torch.Tensor))


# -------------------------------------------------------------------------------------- BinaryConnect's init
def _start(policy: LatentWeights) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy.start()
    return " ".join(str(w.message) for w in caught)


def test_binaryconnect_keeps_trained_weights_clipped_and_says_so():
    trained = trained_cnn()
    qmodel = lowbit.quantize(trained, "bc-det", calibration=batch())
    message = _start(LatentWeights(qmodel, init="uniform"))
    assert "kept the trained weights of 3 layer(s), clipped" in message
    for (_, layer), float_layer in zip(lowbit.quantized_layers(qmodel), (trained[0], trained[3], trained[7])):
        assert torch.equal(layer.weight.detach(), float_layer.weight.detach().clamp(-1, 1))


def test_binaryconnect_redraws_trained_weights_when_asked_and_fresh_weights_by_default():
    trained = trained_cnn()
    qmodel = lowbit.quantize(cnn(seed=7), "bc-det")
    lowbit.load_float_state_dict(qmodel, trained.state_dict())
    message = _start(LatentWeights(qmodel, init="uniform", reinit_trained=True))
    assert "re-drew the weights of 3 layer(s)" in message and "reinit_trained" in message
    assert not torch.equal(qmodel[0].weight.detach(), trained[0].weight.detach().clamp(-1, 1))

    fresh = lowbit.quantize(cnn(seed=7), "bc-det")
    message = _start(LatentWeights(fresh, init="uniform"))
    assert "re-drew the weights of 3 layer(s) from U(range) (not from a trained model)" in message


@pytest.mark.slow
def test_a_run_from_a_float_checkpoint_keeps_binaryconnect_weights_and_logs_it(tmp_path):
    float_config = TrainConfig(recipe="fp32", data="digits", epochs=1, train_subset=64, out=str(tmp_path / "float"))
    float_config.model_options, float_config.quiet = {"output_bn": True}, True  # bc-det's model
    run(float_config)
    lines = []
    config = TrainConfig(recipe="bc-det", data="digits", epochs=1, train_subset=64, init_from=str(tmp_path / "float"))
    run(config, log=lines.append)
    assert any("init: uniform: kept the trained weights of" in line for line in lines), lines


# ------------------------------------------------------------------------------ fine-tuning a trained small CNN
@pytest.fixture(scope="module")
def trained_small_cnn():
    """small-cnn trained in float on digits (3 epochs), an evaluator on the digits test split and a calibration
    batch of 256 normalised training images."""
    result = run(TrainConfig(recipe="fp32", data="digits", epochs=3, quiet=True))
    evaluator = Trainer(TrainConfig(recipe="fp32", data="digits", quiet=True), model=copy.deepcopy(result.model))

    def accuracy(model: nn.Module) -> float:
        evaluator.model = model
        return evaluator.evaluate(evaluator.splits.test)["acc"]

    return result.model, accuracy, evaluator.example_batch(256)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lsq-w4a4", "banner-w8a8g8"])
def test_a_quantized_trained_model_starts_near_its_float_accuracy(trained_small_cnn, recipe):
    float_model, accuracy, calibration = trained_small_cnn
    float_accuracy = accuracy(copy.deepcopy(float_model))
    assert float_accuracy > 0.8

    quantized = lowbit.quantize(float_model, recipe, calibration=calibration)
    assert accuracy(quantized) >= float_accuracy - 0.03  # step 0: before any quantized training

    torch.manual_seed(1)  # a freshly built, freshly quantized model, then the float checkpoint loaded into it
    fresh = lowbit.quantize(build_model("small-cnn", (1, 8, 8), 10), recipe)
    lowbit.load_float_state_dict(fresh, float_model.state_dict(), calibration=calibration)
    assert accuracy(fresh) >= float_accuracy - 0.03
