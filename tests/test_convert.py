"""lowbit.quantize: module swap on any tree, overrides by name, state carried over, state_dict round trip."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.models import build_model
from lowbit.nn import QuantConv2d, QuantLinear, RangeBatchNorm2d


def resnet():
    torch.manual_seed(0)
    model = build_model("resnet8", (3, 16, 16), 10, shortcut="B")
    model.eval()
    return model


HIGH_PRECISION = {
    "name": "high-precision",
    "quantize": {
        "weight": {"type": "uniform", "bits": 16},
        "input": {"type": "minmax", "bits": 16, "granularity": "tensor"},
    },
}


def test_every_linear_and_conv_of_a_resnet_is_swapped_and_outputs_stay_equal_at_16_bits():
    model = resnet()
    x = torch.randn(4, 3, 16, 16)
    quantized = lowbit.quantize(model, HIGH_PRECISION).eval()
    n_float = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    n_quant = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in quantized.modules())
    assert n_quant == n_float > 5
    reference = model(x)
    out = quantized(x)
    assert torch.allclose(out, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in quantized.modules())


def test_original_model_is_left_untouched_unless_inplace():
    model = resnet()
    lowbit.quantize(model, "lsq-w4a4")
    assert not any(isinstance(m, QuantConv2d) for m in model.modules())
    same = lowbit.quantize(model, "lsq-w4a4", inplace=True)
    assert same is model and any(isinstance(m, QuantConv2d) for m in model.modules())


def test_first_and_last_layer_overrides():
    quantized = lowbit.quantize(resnet(), "lsq-w2a2")
    layers = list(lowbit.quantized_layers(quantized))
    bits = [layer.weight_quantizer.bits for _, layer in layers]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {2}
    assert layers[0][1].input_quantizer is None  # the network input is 8-bit image data already
    assert layers[1][1].input_quantizer.bits == 2 and layers[-1][1].input_quantizer.bits == 8


def test_glob_override_and_float_layers():
    recipe = {
        "name": "partial",
        "quantize": {
            "weight": {"type": "binary"},
            "overrides": [{"match": "layer1.*", "float": True}, {"match": "last", "weight": None}],
        },
    }
    plan = lowbit.convert.layer_plan(resnet(), recipe)
    assert all(plan[name] is None for name in plan if name.startswith("layer1."))
    assert plan["fc"] is None
    assert plan["conv1"]["weight"] == {
        "type": "binary",
        "scale": 1.0,
        "rounding": "nearest",
        "eval_mode": "deterministic",
    }
    quantized = lowbit.quantize(resnet(), recipe)
    assert isinstance(quantized.fc, nn.Linear) and not isinstance(quantized.fc, QuantLinear)


def test_state_dict_round_trips_into_a_freshly_converted_model():
    model = resnet()
    x = torch.randn(4, 3, 16, 16)
    for name in ("lsq-w3a3", "mp-u3", "banner-w8a8g8", "bc-stoch"):
        trained = lowbit.quantize(model, name, seed=1).train()
        trained(x)  # initialise activation quantizers from a batch
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(0.01 * torch.randn_like(p))
        fresh = lowbit.quantize(model, name, seed=2)
        fresh.load_state_dict(trained.state_dict())  # no forward needed first
        trained.eval()
        fresh.eval()
        assert torch.equal(fresh(x), trained(x)), name


def test_stochastic_quantizers_are_reproducible_from_the_seed():
    model = resnet().train()
    x = torch.randn(2, 3, 16, 16)
    a = lowbit.quantize(model, "bc-stoch", seed=3)
    b = lowbit.quantize(model, "bc-stoch", seed=3)
    c = lowbit.quantize(model, "bc-stoch", seed=4)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


def test_noise_state_travels_in_the_state_dict():
    model = resnet().train()
    x = torch.randn(2, 3, 16, 16)
    a = lowbit.quantize(model, "bc-stoch", seed=3)
    a(x)
    state = a.state_dict()
    expected = a(x)
    b = lowbit.quantize(model, "bc-stoch", seed=99)
    b.load_state_dict(state)
    assert torch.equal(b(x), expected)


def test_range_batchnorm_replaces_batchnorm_when_the_recipe_says():
    quantized = lowbit.quantize(resnet(), "banner-w8a8g8")
    assert not any(type(m) is nn.BatchNorm2d for m in quantized.modules())
    assert any(isinstance(m, RangeBatchNorm2d) for m in quantized.modules())
    bns = [m for m in quantized.modules() if isinstance(m, RangeBatchNorm2d)]
    assert all(bn.grad_quantizer is not None for bn in bns)


def test_quantizing_twice_is_an_error():
    quantized = lowbit.quantize(resnet(), "bc-det")
    with pytest.raises(ValueError, match="already contains quantized layers"):
        lowbit.quantize(quantized, "bc-det")


def test_custom_module_tree_with_functional_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Sequential(nn.Linear(4, 4), nn.ReLU())})
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.branches["a"](x)) + self.branches["b"](x))

    quantized = lowbit.quantize(Net(), "lsq-w4a4")
    assert isinstance(quantized.branches["b"][0], QuantLinear)
    quantized(torch.randn(3, 4)).sum().backward()


def test_first_and_last_overrides_compose_on_a_one_layer_model():
    quantized = lowbit.quantize(nn.Sequential(nn.Linear(4, 3)), "lsq-w4a4")
    layer = quantized[0]
    # 'last' re-adds the input that 'first' removed
    assert layer.weight_quantizer.bits == 8 and layer.input_quantizer.bits == 8


@pytest.mark.parametrize("recipe", ["lsq-w8a8", "lsq-w4a4", "lsq-w3a3", "lsq-w2a2"])
def test_lsq_recipes_keep_the_network_input_float_and_quantize_the_last_input_to_8_bits(recipe):
    # what docs/methods.md and the reproduction notes state: first/last weights at 8 bits, the last layer's input
    # at 8 bits, the first layer's input (the image) left float
    from lowbit.quantizers.lsq import LSQQuantizer

    model = lowbit.quantize(build_model("small-cnn", (1, 28, 28), 10), recipe)
    layers = [m for m in model.modules() if getattr(m, "weight_quantizer", None) is not None]
    first, last = layers[0], layers[-1]
    assert first.input_quantizer is None
    assert first.weight_quantizer.bits == 8 and last.weight_quantizer.bits == 8
    assert isinstance(last.input_quantizer, LSQQuantizer) and last.input_quantizer.bits == 8
