"""Inspecting a model does not change it: the summary leaves every quantizer and BatchNorm state as it was, counts
a parameter shared by two layers once, and a packed file stores tied weights once and rebuilds them tied."""

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.export import load_packed, packed_info, read_packed_header, save_packed
from lowbit.nn.layers import QUANTIZED_LAYERS
from lowbit.recipes import list_recipes
from model_zoo import build

RECIPES = [r.name for r in list_recipes()]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def snapshot(model: nn.Module) -> dict:
    """Every state-dict entry (tensors cloned; extra states such as random-generator states as they are), and
    whether each quantizer is initialised."""
    state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else repr(v) for k, v in model.state_dict().items()}
    flags = {name: getattr(m, "initialized", None) for name, m in model.named_modules()}
    return {"state": state, "flags": flags}


def assert_same(before: dict, after: dict) -> None:
    assert before["flags"] == after["flags"]
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after["state"][key]), key
        else:
            assert value == after["state"][key], key


@pytest.mark.parametrize("recipe", RECIPES)
def test_summary_leaves_the_model_untouched(recipe):
    qmodel = lowbit.quantize(small_cnn(), recipe)
    for mode in ("train", "eval"):  # the README calls it right after quantizing; also on a model in eval mode
        qmodel.train(mode == "train")
        before = snapshot(qmodel)
        summary = lowbit.model_summary(qmodel, (1, 8, 8))
        assert_same(before, snapshot(qmodel))
        assert qmodel.training == (mode == "train")
        assert summary.macs > 0
    example = torch.randn(4, 1, 8, 8)
    before = snapshot(qmodel)
    lowbit.model_summary(qmodel, example=example)
    assert_same(before, snapshot(qmodel))


def test_uninitialised_activation_quantizers_report_their_bits():
    qmodel = lowbit.quantize(small_cnn(), "lsq-w4a4")
    quantizer = qmodel[3].input_quantizer
    assert not quantizer.initialized
    step = quantizer.step.detach().clone()
    summary = lowbit.model_summary(qmodel, (1, 8, 8))
    assert summary.per_layer_bits()["3"] == {"weight": 4, "input": 4}
    assert not quantizer.initialized and torch.equal(quantizer.step, step)


class TwoHeads(nn.Module):
    """Two Linear layers sharing one weight (and bias) Parameter, as a tied LM head shares the embedding's; neither
    is the first or last layer, so a recipe gives both the same quantizer settings."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head_a = nn.Linear(8, 8)
        self.head_b = nn.Linear(8, 8)
        self.head_b.weight = self.head_a.weight
        self.head_b.bias = self.head_a.bias
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.out(torch.relu(self.head_a(h) + self.head_b(torch.relu(h - 0.1))))


def unique_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared Parameter once


@pytest.mark.parametrize("recipe", [None, "lsq-w4a4", "bc-det"])
def test_tied_weights_are_counted_once(recipe):
    model = TwoHeads()
    if recipe is not None:
        model = lowbit.quantize(model, recipe)
    summary = lowbit.model_summary(model, (6,))
    assert summary.total_params == unique_parameters(model)
    rows = {r.name: r for r in summary.rows}
    assert rows["head_b"].params == 0 and rows["head_a"].params == 8 * 8 + 8
    assert rows["head_b"].macs == rows["head_a"].macs == 64  # the MACs are per call, not per parameter
    assert any("head_b.weight is shared with head_a.weight" in note for note in summary.notes)
    untied = TwoHeads()
    untied.head_b.weight, untied.head_b.bias = (
        nn.Parameter(untied.head_a.weight.clone()),
        nn.Parameter(untied.head_a.bias.clone()),
    )
    if recipe is not None:
        untied = lowbit.quantize(untied, recipe)
    assert summary.memory_kb < lowbit.model_summary(untied, (6,)).memory_kb


def test_the_gpt2_models_tied_head_is_counted_once():
    model, tokens = build("gpt2")
    qmodel = lowbit.quantize(model, "lsq-w4a4")
    summary = lowbit.model_summary(qmodel, example=tokens)
    assert summary.total_params == unique_parameters(qmodel)


def _packed_round_trip(qmodel: nn.Module, x: torch.Tensor, path, float_model: nn.Module) -> nn.Module:
    with torch.no_grad():
        qmodel.train()(x)  # initialise the activation quantizers
    qmodel.eval()
    save_packed(qmodel, path, recipe=lowbit.load_recipe("lsq-w4a4"))
    loaded = load_packed(path, model=float_model)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))  # bit-exact
    return loaded


def test_packed_file_stores_tied_weights_once_and_restores_the_tie(tmp_path):
    torch.manual_seed(0)
    float_model = TwoHeads()
    qmodel = lowbit.quantize(float_model, "lsq-w4a4")
    loaded = _packed_round_trip(qmodel, torch.randn(32, 6), tmp_path / "tied.lowbit", float_model)
    header = read_packed_header(tmp_path / "tied.lowbit")
    assert header["quantized"]["head_b.weight"] == {**header["quantized"]["head_b.weight"], "stored": "tied"}
    assert header["quantized"]["head_b.weight"]["tied_to"] == "head_a.weight"
    assert header["quantized"]["head_a.weight"]["stored"] == "codes"
    assert loaded.head_b.weight is loaded.head_a.weight
    # the file is as large as that of a model with one head
    one_head = lowbit.quantize(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)), "lsq-w4a4")
    with torch.no_grad():
        one_head.train()(torch.randn(32, 6))
    info = save_packed(one_head.eval(), tmp_path / "one.lowbit", recipe=lowbit.load_recipe("lsq-w4a4"))
    tied_info = packed_info(tmp_path / "tied.lowbit")
    assert tied_info.code_bytes == info.code_bytes


def test_packed_file_keeps_outputs_exact_when_tied_weights_were_quantized_differently(tmp_path):
    torch.manual_seed(0)
    float_model = TwoHeads()
    qmodel = lowbit.quantize(float_model, "lsq-w4a4")
    assert qmodel.head_b.weight_quantizer is qmodel.head_a.weight_quantizer  # tied weights share their quantizer
    qmodel.head_b.weight_quantizer = copy.deepcopy(qmodel.head_a.weight_quantizer)  # a user gives each its own
    with torch.no_grad():
        qmodel.head_b.weight_quantizer.step.mul_(1.5)
    loaded = _packed_round_trip(qmodel, torch.randn(32, 6), tmp_path / "two.lowbit", float_model)
    header = read_packed_header(tmp_path / "two.lowbit")
    assert header["quantized"]["head_b.weight"]["stored"] == "codes"
    assert loaded.head_b.weight is not loaded.head_a.weight


@pytest.mark.skipif(nn.Embedding not in QUANTIZED_LAYERS, reason="nn.Embedding is not a quantized layer type yet")
def test_packed_gpt2_round_trip_keeps_the_tied_head(tmp_path):
    model, tokens = build("gpt2")
    qmodel = lowbit.quantize(model, "lsq-w4a4")
    loaded = _packed_round_trip(qmodel, tokens, tmp_path / "gpt2.lowbit", model)
    tied = [(n, m) for n, m in loaded.named_modules() if getattr(m, "weight", None) is loaded.lm_head.weight]
    assert len(tied) == 2
