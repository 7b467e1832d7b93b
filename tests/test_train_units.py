"""Training pieces against their closed forms: losses, LR scale, schedules, policies, regularizers."""

import math

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.models import build_model
from lowbit.train import BinRegularizer, GridWeights, LatentWeights, MemoryBudget, glorot_lr_scale
from lowbit.train.losses import squared_hinge
from lowbit.train.regularizers import bin_regularization, weight_memory_bits
from lowbit.train.schedule import lr_multiplier


def test_squared_hinge_matches_its_definition():
    logits = torch.tensor([[0.5, -2.0, 1.5], [3.0, 0.2, -0.7]])
    target = torch.tensor([2, 0])
    y = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]])
    expected = torch.clamp(1 - y * logits, min=0).square().mean()
    assert squared_hinge(logits, target).item() == pytest.approx(expected.item())


def test_glorot_lr_scale_for_dense_and_conv():
    assert glorot_lr_scale(torch.empty(512, 784)) == pytest.approx(1 / math.sqrt(1.5 / (784 + 512)))
    # conv: fan_in = k*k*C_in, fan_out = k*k*C_out
    assert glorot_lr_scale(torch.empty(64, 32, 3, 3)) == pytest.approx(1 / math.sqrt(1.5 / (9 * 32 + 9 * 64)))


def test_binaryconnect_exponential_schedule():
    spec = {"type": "exponential", "final_lr_ratio": 0.01}
    # LR_t = LR_start (LR_fin / LR_start)^(t / T)
    assert lr_multiplier(spec, 0, 10) == 1.0
    assert lr_multiplier(spec, 5, 10) == pytest.approx(0.1)
    assert lr_multiplier(spec, 10, 10) == pytest.approx(0.01)
    assert lr_multiplier({"type": "cosine"}, 5, 10) == pytest.approx(0.5)
    assert lr_multiplier({"type": "step", "milestones": [3, 6], "gamma": 0.1}, 6, 10) == pytest.approx(0.01)


def mlp():
    torch.manual_seed(0)
    return build_model("mlp", (1, 4, 4), 3, hidden=16, depth=2)


def test_latent_policy_clips_binary_weights_to_plus_minus_h_after_every_step():
    model = lowbit.quantize(mlp(), "bc-det")
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    LatentWeights(model).attach(optimizer)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
        optimizer.step()
        for _, layer in lowbit.quantized_layers(model):
            assert layer.weight.abs().max() <= 1.0
    assert any(layer.weight.abs().max() == 1.0 for _, layer in lowbit.quantized_layers(model))


@pytest.mark.parametrize("recipe", ["sr-adam", "r-adam"])
def test_grid_policy_keeps_weights_exactly_on_the_grid_after_every_step(recipe):
    model = lowbit.quantize(mlp(), recipe, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.3)
    GridWeights(model).attach(optimizer)
    for _ in range(10):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
        optimizer.step()
        for _, layer in lowbit.quantized_layers(model):
            h = layer.weight_quantizer.scale
            assert set(layer.weight.unique().tolist()) <= {-h, h}


def test_sr_moves_weights_but_r_freezes_them_at_a_small_step():
    # R rounds every small step away (|lr * g| < half a grid step); SR flips with probability ~ step / grid
    moved = {}
    for recipe in ("r-adam", "sr-adam"):
        model = lowbit.quantize(mlp(), recipe, seed=1)
        policy = GridWeights(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        policy.attach(optimizer)
        before = [layer.weight.clone() for _, layer in lowbit.quantized_layers(model)]
        for _ in range(20):
            optimizer.zero_grad()
            model(torch.randn(8, 1, 4, 4)).pow(2).sum().backward()
            optimizer.step()
        after = [layer.weight for _, layer in lowbit.quantized_layers(model)]
        moved[recipe] = sum(int((a != b).sum()) for a, b in zip(after, before))
    assert moved["r-adam"] == 0
    assert moved["sr-adam"] > 0


def test_glorot_scale_multiplies_the_layer_learning_rate():
    from lowbit.train.optimizers import parameter_groups

    model = lowbit.quantize(mlp(), "bc-det")
    policy = LatentWeights(model, lr_scale="glorot")
    groups = parameter_groups(model, {"lr": 0.01, "weight_decay": 0.0}, policy)
    first = next(layer for _, layer in lowbit.quantized_layers(model))
    group = next(g for g in groups if any(p is first.weight for p in g["params"]))
    assert group["lr"] == pytest.approx(0.01 * glorot_lr_scale(first.weight))
    bn_group = next(g for g in groups if g["name"] == "biases and norms")
    assert bn_group["lr"] == 0.01 and bn_group["weight_decay"] == 0.0


def test_bin_regularization_equals_the_per_bin_mean_and_variance_sum():
    from lowbit.quantizers import LSQQuantizer

    torch.manual_seed(0)
    w = torch.randn(300, dtype=torch.float64, requires_grad=True)
    q = LSQQuantizer(bits=2, init_step=0.6).double()
    value = bin_regularization(w, q)
    codes = torch.round(torch.clamp(w.detach() / 0.6, -2, 1))
    expected = 0.0
    for code in codes.unique():
        members = w.detach()[codes == code]
        target = code * q.step.item()
        variance = members.var(unbiased=False) if len(members) > 1 else 0.0
        expected += (members.mean() - target) ** 2 + variance
    assert value.item() == pytest.approx(float(expected), rel=1e-10)
    value.backward()
    assert w.grad.abs().sum() > 0 and q.step.grad is None  # targets use the step detached


def _two_layer_net_at_step_1(first: list, second: list) -> torch.nn.Module:
    """Two bias-free Linear layers with the given weights, 2-bit LSQ weights with step 1 (levels -2, -1, 0, 1)."""
    net = torch.nn.Sequential(torch.nn.Linear(len(first), 1, bias=False), torch.nn.Linear(1, len(second), bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([first]))
        net[1].weight.copy_(torch.tensor(second).reshape(-1, 1))
    recipe = {"name": "br-test", "quantize": {"weight": {"type": "lsq", "bits": 2, "init_step": 1.0}}}
    return lowbit.quantize(net.double(), recipe)


def test_bin_regularization_sum_and_mean_readings_in_closed_form():
    """Layer 1, w = (-2.1, -1.9, -1.2, 0.1, 0.3, 0.9) at step 1: bins -2 {-2.1, -1.9}: 0² + 0.01; -1 {-1.2}: 0.04;
    0 {0.1, 0.3}: 0.2² + 0.01; 1 {0.9}: 0.01 -> sum 0.11, mean over its 4 bins 0.0275. Layer 2, w = (0.2, -0.4): one
    bin {0.2, -0.4}: 0.1² + 0.09 = 0.10 (sum = mean). With λ = 2: "sum" = 2 (0.11 + 0.10) = 0.42, "mean" =
    2 (0.0275 + 0.10) / 2 = 0.1275. Gradient ("sum") of a weight: 2 λ (w - t) / |bin|, e.g. 2·2·0.1/2 = 0.2 for 0.1
    and 2·2·(-0.2)/1 = -0.8 for -1.2; "mean" divides it by the layer's 4 bins and the 2 layers."""
    model = _two_layer_net_at_step_1([-2.1, -1.9, -1.2, 0.1, 0.3, 0.9], [0.2, -0.4])
    first = next(layer for _, layer in lowbit.quantized_layers(model))
    assert bin_regularization(first.weight, first.weight_quantizer).item() == pytest.approx(0.11)
    assert bin_regularization(first.weight, first.weight_quantizer, "mean").item() == pytest.approx(0.0275)
    expected = {"sum": (0.42, 0.2, -0.8), "mean": (0.1275, 0.2 / 8, -0.8 / 8)}
    for reduction, (value, grad_near_0, grad_single) in expected.items():
        model.zero_grad()
        penalty = BinRegularizer(strength=2.0, reduction=reduction).penalty(model)
        assert penalty.item() == pytest.approx(value), reduction
        penalty.backward()
        grad = first.weight.grad.reshape(-1)
        assert grad[3].item() == pytest.approx(grad_near_0) and grad[2].item() == pytest.approx(grad_single)
    with pytest.raises(ConfigError, match="reduction.*sum, mean"):
        BinRegularizer(reduction="average")


def test_bin_regularizer_is_staged():
    reg = BinRegularizer(strength=0.5, start_epoch=3)
    assert not reg.active(2) and reg.active(3)


def test_memory_budget_accounting_and_penalty():
    model = lowbit.quantize(mlp(), "mp-u3")
    example = torch.randn(4, 1, 4, 4)
    model(example)
    n_params = sum(
        p.numel() for _, layer in lowbit.quantized_layers(model) for p in (layer.weight, layer.bias) if p is not None
    )
    bits = sum(
        p.numel() * q.bits
        for _, layer in lowbit.quantized_layers(model)
        for p, q in ((layer.weight, layer.weight_quantizer), (layer.bias, layer.bias_quantizer))
        if p is not None
    )
    assert weight_memory_bits(model).item() == bits
    budget = MemoryBudget(weight_bits=2, strength=0.1)
    budget.bind(model, example)
    assert budget.weight_kb == pytest.approx(n_params * 2 / 8 / 1024)
    assert not budget.satisfied(model)  # initialised at 4 bits
    penalty = budget.penalty(model)
    excess = bits / 8 / 1024 - budget.weight_kb
    assert penalty.item() == pytest.approx(0.1 * excess**2, rel=1e-5)
    penalty.backward()
    grads = [
        q.q_max.grad
        for q in lowbit.quantizers_of(model)
        if getattr(q, "q_max", None) is not None and q.role == "weight"
    ]
    assert any(g is not None and g.item() > 0 for g in grads)  # the penalty pushes q_max down


def test_activation_memory_max_and_sum():
    model = lowbit.quantize(mlp(), "mp-u3")
    example = torch.randn(4, 1, 4, 4)
    model(example)
    for reduce in ("sum", "max"):
        budget = MemoryBudget(activation_bits=4, activation_reduce=reduce)
        budget.bind(model, example)
        sizes = [budget.activation_sizes[n] for n, layer in lowbit.quantized_layers(model) if layer.input_quantizer]
        expected = (sum(sizes) if reduce == "sum" else max(sizes)) * 4 / 8 / 1024
        assert budget.activation_kb == pytest.approx(expected)
        assert budget.satisfied(model)  # activations start at 4 bits


def test_parameter_groups_keep_weight_decay_off_biases_norms_and_quantizers():
    from lowbit.train.optimizers import parameter_groups

    model = lowbit.quantize(mlp(), "lsq-w4a4")
    model(torch.randn(2, 1, 4, 4))
    groups = parameter_groups(model, {"lr": 0.1, "weight_decay": 1e-4}, LatentWeights(model))
    for group in groups:
        for p in group["params"]:
            assert (group["weight_decay"] > 0) == (p.dim() > 1)
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in model.parameters())
    assert any(g["name"] == "quantizer" for g in groups)


def test_the_step_calls_only_the_regularizer_interface():
    from lowbit.train import Regularizer, TrainingStep
    from lowbit.train.losses import get_loss

    class Counting(Regularizer):
        def __init__(self):
            self.calls = []

        def active(self, epoch):
            return epoch >= 1

        def penalty(self, model):
            self.calls.append("penalty")
            return sum(p.square().sum() for p in model.parameters())

        def after_backward(self, model):
            self.calls.append("after_backward")

    model = lowbit.quantize(mlp(), "bc-det")
    counting = Counting()
    step = TrainingStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), LatentWeights(model), get_loss("cross_entropy"), [counting]
    )
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    step.set_epoch(0)
    assert step(x, y).regularizer.item() == 0.0 and counting.calls == []
    step.set_epoch(1)
    assert step(x, y).regularizer.item() > 0 and counting.calls == ["penalty", "after_backward"]
    assert counting.satisfied(model) and counting.describe(model) == {} and counting.log_line({}) == ""


def test_regularizers_write_their_own_part_of_the_epoch_line():
    assert BinRegularizer().satisfied(None)  # no constraint
    assert BinRegularizer().log_line({"br_near_level": 0.25}) == "  near-level 25.0%"
    assert MemoryBudget().log_line({"weight_kb": 1.5}) == "  weights 1.50 KB"
    assert MemoryBudget().log_line({}) == BinRegularizer().log_line({}) == ""
