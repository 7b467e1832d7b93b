"""lowbit.quantize leaves nothing silently in float: the conversion report, warnings and strict mode, override
patterns that match nothing, first/last by data flow, aliased modules, tied weights and subclasses."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.convert import SkippedWeightsWarning, layer_plan
from lowbit.errors import ConfigError
from lowbit.nn import QUANTIZED_LAYERS, QuantizedLayer, QuantLinear
from model_zoo import ZOO, MyLinear, build


def quantize_quietly(model: nn.Module, recipe: str, **options: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedWeightsWarning)
        return lowbit.quantize(model, recipe, **options)


def big_parameters(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.dim() > 1}


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "bc-det"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_report_lists_every_weight_once_quantized_or_skipped_with_a_reason(name, recipe):
    model, x = build(name)
    qmodel = quantize_quietly(model, recipe, example=x)
    report = qmodel.lowbit_report
    listed = [weight for row in report.layers for weight in row.weights]
    assert sorted(listed) == sorted(big_parameters(model))  # every >1-dim weight, exactly once
    for row in report.layers:
        if row.quantized:
            assert row.bits and all(isinstance(bits, int) and bits > 0 for bits in row.bits.values()), row
            assert all(
                any(isinstance(m, QuantizedLayer) for m in qmodel.get_submodule(n).modules())
                for n in (row.name, *row.aliases)
            )
        else:
            assert row.reason, row
    # a registered layer type is never reported as unsupported, and every layer it covers was converted
    n_registered = sum(1 for m in model.modules() if any(isinstance(m, t) for t in QUANTIZED_LAYERS) and m is not model)
    assert len(report.quantized) >= 1 and len(report.quantized) <= n_registered
    assert not any("unsupported type" in row.reason for row in report.skipped if row.type in ("Linear", "Conv2d"))
    assert str(report).startswith(f"recipe {recipe}: {len(report.quantized)} of {len(report.layers)}")


def test_unsupported_weights_warn_once_by_default_and_are_an_error_with_strict():
    model, x = build("oddities")
    with pytest.warns(SkippedWeightsWarning, match=r"raw \(raw parameter of Oddities") as caught:
        qmodel = lowbit.quantize(model, "lsq-w4a4")
    assert sum(issubclass(w.category, SkippedWeightsWarning) for w in caught) == 1
    row = qmodel.lowbit_report.row("raw")
    assert not row.quantized and not row.intended and row.weights == ("raw",)
    with pytest.raises(ConfigError, match=r"leaves the weights of 1 layer\(s\) in float: raw") as error:
        lowbit.quantize(model, "lsq-w4a4", strict=True)
    assert "strict=False" in str(error.value)

    class Custom(nn.Module):  # a leaf module type that nobody registered
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight.t()

    net = nn.Sequential(nn.Linear(4, 4), Custom())
    with pytest.raises(ConfigError, match=r"1 \(unsupported type Custom: register .*register_layer"):
        lowbit.quantize(net, "bc-det", strict=True)
    assert not any(isinstance(m, QuantizedLayer) for m in net.modules())  # strict refuses before changing anything


def test_skips_the_recipe_asks_for_are_reported_but_not_warned_about():
    model, _ = build("oddities")
    recipe = {
        "name": "keep-raw",
        "quantize": {"weight": {"type": "binary"}, "overrides": [{"match": ["raw", "out"], "float": True}]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedWeightsWarning)
        report = lowbit.quantize(model, recipe, strict=True).lowbit_report
        fp32 = lowbit.quantize(build("gpt2")[0], "fp32", strict=True).lowbit_report
    assert report.row("raw").reason == report.row("out").reason == "float override (match ['raw', 'out'])"
    assert report.row("first").quantized and not report.problems
    assert not fp32.quantized and {row.reason for row in fp32.layers} == {"recipe quantizes nothing"}


def test_an_override_that_matches_no_layer_is_an_error_with_the_closest_names():
    model, _ = build("resnet18")
    recipe = {
        "name": "typo",
        "quantize": {"weight": {"type": "binary"}, "overrides": [{"match": "layer1.0.conv", "float": True}]},
    }
    with pytest.raises(ConfigError, match=r"overrides\[0\]\.match 'layer1\.0\.conv' matches no layer") as error:
        lowbit.quantize(model, recipe)
    closest = str(error.value).split("closest layer names: ")[1].split(", ")
    assert {"layer1.0.conv1", "layer1.0.conv2"} <= set(closest) and len(closest) <= 3
    with pytest.raises(ConfigError, match="matches no layer"):
        layer_plan(model, recipe)
    recipe["quantize"]["overrides"][0]["match"] = "layer1.0.conv*"  # a glob that matches is fine
    assert layer_plan(model, recipe)["layer1.0.conv1"] is None


class DefinedBackwards(nn.Module):
    """Layers defined in the opposite order of the one they run in."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.middle = nn.Linear(8, 8)
        self.stem = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.middle(torch.relu(self.stem(x)))))


def test_first_and_last_follow_data_flow_on_an_example_and_definition_order_without():
    model = DefinedBackwards().train()
    x = torch.randn(5, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    qmodel = lowbit.quantize(model, "lsq-w4a4", example=x)
    report = qmodel.lowbit_report
    assert (report.first, report.last, report.order) == ("stem", "head", "data flow")
    assert qmodel.stem.weight_quantizer.bits == 8 and qmodel.stem.input_quantizer is None
    assert qmodel.head.weight_quantizer.bits == 8 and qmodel.head.input_quantizer.bits == 8
    assert qmodel.middle.weight_quantizer.bits == 4
    assert "(first = stem, last = head, data flow)" in str(report)
    # running the example changed nothing: training flags, state and the random generator
    assert model.training and all(m.training for m in qmodel.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)

    plain = lowbit.quantize(model, "lsq-w4a4").lowbit_report
    assert (plain.first, plain.last, plain.order) == ("head", "stem", "definition order")


def test_the_data_flow_probe_sees_layers_that_fused_inference_paths_skip():
    model, x = build("transformer")
    report = quantize_quietly(model.eval(), "bc-det", example=x).lowbit_report
    # (the embedding runs first; the encoder's feed-forward layers run although fused eval paths skip modules)
    assert report.first == "embed" and report.last == "head"
    assert "not called on the example input" not in report.row("encoder.layers.0.linear1").notes


def test_an_example_the_model_cannot_run_is_a_config_error():
    with pytest.raises(ConfigError, match="running the model on the example input failed"):
        lowbit.quantize(DefinedBackwards(), "lsq-w4a4", example=torch.randn(2, 7))


def test_a_module_registered_under_two_names_is_converted_once_and_set_under_both():
    model, x = build("oddities")
    qmodel = quantize_quietly(model, "lsq-w4a4", example=x)
    assert isinstance(qmodel.shared, QuantLinear) and qmodel.alias is qmodel.shared
    row = qmodel.lowbit_report.row("alias")
    assert row.name == "shared" and row.aliases == ("alias",) and row.quantized
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == 3  # first, shared (= alias), out
    qmodel(x).sum().backward()


class TiedPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(6, 6)
        self.decode = nn.Linear(6, 6)
        self.decode.weight = self.encode.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.relu(self.encode(x)))


def test_layers_sharing_a_weight_share_the_parameter_and_its_quantizer():
    model = TiedPair()
    recipe = {"name": "tied", "quantize": {"weight": {"type": "lsq", "bits": 3}}}
    qmodel = lowbit.quantize(model, recipe, example=torch.randn(2, 6))
    assert qmodel.encode.weight is qmodel.decode.weight
    assert qmodel.encode.weight_quantizer is qmodel.decode.weight_quantizer  # one grid for one tensor
    report = qmodel.lowbit_report
    assert report.row("encode").weights == ("encode.weight",) and report.row("encode").tied == ()
    assert report.row("decode").weights == () and report.row("decode").tied == ("encode.weight",)
    # each layer quantizes the shared tensor in its own forward; the gradient reaches the one latent weight
    calls = []
    qmodel.encode.weight_quantizer.register_forward_hook(lambda *_: calls.append(1))
    qmodel(torch.randn(2, 6)).sum().backward()
    assert len(calls) == 2 and qmodel.encode.weight.grad is not None
    assert len(lowbit.quantizers_of(qmodel)) == 1


def test_tied_layers_with_different_weight_specs_are_told_which_quantizer_they_share():
    recipe = {
        "name": "tied-8",
        "quantize": {"weight": {"type": "lsq", "bits": 4}, "overrides": [{"match": "decode", "weight": {"bits": 8}}]},
    }
    with pytest.warns(UserWarning, match="decode.weight is tied to encode.weight"):
        qmodel = lowbit.quantize(TiedPair(), recipe, example=torch.randn(2, 6))
    assert qmodel.decode.weight_quantizer.bits == 4
    assert "tied to encode.weight" in qmodel.lowbit_report.row("decode").describe()


def test_subclasses_of_registered_types_convert_unless_they_override_forward():
    model, x = build("oddities")
    qmodel = quantize_quietly(model, "bc-det")
    assert isinstance(model.first, MyLinear) and isinstance(qmodel.first, QuantLinear)
    assert qmodel.lowbit_report.row("first").type == "MyLinear"

    class ScaledLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * F.linear(x, self.weight, self.bias)

    with pytest.warns(SkippedWeightsWarning, match="ScaledLinear overrides forward"):
        qmodel = lowbit.quantize(nn.Sequential(nn.Linear(4, 4), ScaledLinear(4, 2)), "bc-det")
    assert type(qmodel[1]) is ScaledLinear


def test_the_most_derived_registered_class_wins():
    class Special(nn.Linear):
        pass

    class QuantSpecial(QuantLinear):
        pass

    try:
        QUANTIZED_LAYERS.register(Special, QuantSpecial, options={})
        qmodel = lowbit.quantize(nn.Sequential(Special(4, 4), nn.Linear(4, 2)), "bc-det")
        assert type(qmodel[0]) is QuantSpecial and type(qmodel[1]) is QuantLinear
    finally:
        QUANTIZED_LAYERS._components.pop(Special, None)


def test_quantizing_a_model_that_holds_quantized_layers_stays_an_error():
    qmodel = quantize_quietly(build("oddities")[0], "bc-det")
    with pytest.raises(ConfigError, match="already contains quantized layers"):
        lowbit.quantize(qmodel, "bc-det")
    # and a quantized layer is never taken for the float class it derives from
    assert lowbit.convert.registered_base(qmodel.first) is None
