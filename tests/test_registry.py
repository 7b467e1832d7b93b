"""The component registries: declared options match the constructors, the schema and the errors come from them."""

import inspect

import pytest
import torch
from torch import nn

import lowbit  # noqa: F401  (imports every module that registers components)
import lowbit.train  # noqa: F401
from lowbit.data import DATASETS, DatasetError, canonical_name
from lowbit.nn import QUANTIZED_LAYERS, QuantConv2d, QuantLinear
from lowbit.quantizers import QUANTIZERS, build_quantizer
from lowbit.recipes import recipe_schema
from lowbit.registry import Registry, declared_keywords, registries
from lowbit.train.losses import LOSSES, get_loss
from lowbit.train.optimizers import OPTIMIZERS
from lowbit.train.policies import POLICIES, GridWeights, LatentWeights
from lowbit.train.regularizers import REGULARIZERS, BinRegularizer, MemoryBudget
from lowbit.train.schedule import SCHEDULES


def _plain(value):
    """Tuples and lists are the same JSON array (signature defaults are tuples, schema defaults lists)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


COMPONENTS = [(registry.kind, component) for registry in registries() for component in registry.components()]


def test_every_kind_of_component_has_a_registry():
    kinds = {registry.kind for registry in registries()}
    assert {
        "quantizer type",
        "loss",
        "optimizer",
        "schedule",
        "update policy",
        "regularizer",
        "dataset",
        "quantized layer type",
    } <= kinds


@pytest.mark.parametrize("kind, component", COMPONENTS, ids=[f"{k}:{c.name}" for k, c in COMPONENTS])
def test_declared_options_are_constructor_keywords_with_the_same_defaults(kind, component):
    keywords = declared_keywords(component)
    for option, schema in component.options.items():
        assert option in keywords, f"{kind} {component.name}: option {option!r} is no constructor keyword"
        if "default" in schema:
            parameter = keywords[option]
            assert parameter.default is not inspect.Parameter.empty, (
                f"{kind} {component.name}: {option!r} has a schema default but the constructor requires it"
            )
            assert _plain(schema["default"]) == _plain(parameter.default), (
                f"{kind} {component.name}: {option!r} defaults to {schema['default']!r} in the schema but to "
                f"{parameter.default!r} in the constructor"
            )


@pytest.mark.parametrize("kind, component", COMPONENTS, ids=[f"{k}:{c.name}" for k, c in COMPONENTS])
def test_every_component_describes_itself_in_one_line(kind, component):
    assert component.description and "\n" not in component.description


def test_schema_enums_are_the_registered_names():
    train = recipe_schema()["properties"]["train"]["properties"]
    assert train["loss"]["enum"] == list(LOSSES)
    assert train["optimizer"]["properties"]["type"]["enum"] == list(OPTIMIZERS)
    assert train["schedule"]["properties"]["type"]["enum"] == list(SCHEDULES)
    assert train["policy"]["properties"]["type"]["enum"] == list(POLICIES)
    assert train["regularizers"]["items"]["properties"]["type"]["enum"] == list(REGULARIZERS)
    weight = recipe_schema()["properties"]["quantize"]["properties"]["weight"]["anyOf"][1]
    assert weight["properties"]["type"]["enum"] == list(QUANTIZERS)


def test_schema_defaults_come_from_the_registered_options():
    train = recipe_schema()["properties"]["train"]["properties"]
    branches = {
        b["if"]["properties"]["type"]["const"]: b["then"]["properties"] for b in train["regularizers"]["items"]["allOf"]
    }
    assert branches["bin_reg"]["strength"]["default"] == BinRegularizer().strength
    assert branches["memory_budget"]["strength"]["default"] == MemoryBudget().strength
    assert train["optimizer"]["properties"]["momentum"]["default"] == 0.9


def test_unknown_names_list_the_valid_choices_with_a_suggestion():
    with pytest.raises(
        ValueError,
        match=r"unknown loss 'squared_hinj' \(did you mean 'squared_hinge'\?\); "
        r"valid choices: cross_entropy, squared_hinge",
    ):
        get_loss("squared_hinj")
    with pytest.raises(ValueError, match="unknown quantizer type 'lsqq'.*did you mean 'lsq'.*binary, lsq, minmax"):
        build_quantizer({"type": "lsqq"}, role="weight")
    with pytest.raises(DatasetError, match="unknown dataset 'cifar1'.*valid choices: digits"):
        canonical_name("cifar1")


def test_aliases_resolve_to_the_registered_name():
    assert canonical_name("CIFAR-10") == "cifar10"
    assert "cifar-10" not in DATASETS and list(DATASETS)[0] == "digits"


def test_registries_read_like_the_mappings_they_replace():
    assert dict(QUANTIZERS.items())["lsq"] is QUANTIZERS["lsq"] is QUANTIZERS.get("lsq")
    assert "binary" in QUANTIZERS and len(QUANTIZERS) == len(list(QUANTIZERS))
    assert QUANTIZED_LAYERS[nn.Linear] is QuantLinear and QUANTIZED_LAYERS[nn.Conv2d] is QuantConv2d
    assert nn.Bilinear not in QUANTIZED_LAYERS


def test_a_new_component_gets_its_schema_branch_and_refuses_a_second_registration():
    registry = Registry("widget")

    @registry.register("knob", options={"turns": {"type": "integer", "default": 3}})
    def knob(*, turns: int = 3):
        """A knob."""
        return turns

    assert registry.build({"type": "knob", "turns": 5}) == 5
    schema = registry.spec_schema()
    assert schema["properties"]["type"]["enum"] == ["knob"]
    assert schema["allOf"][0]["then"]["properties"]["turns"] == {"type": "integer", "default": 3}
    assert registry.component("knob").description == "A knob."
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("knob", knob)


def test_shared_options_of_a_flat_section_must_agree():
    registry = Registry("gadget")
    registry.register("a", lambda: None, options={"x": {"type": "integer"}}, description="a")
    registry.register("b", lambda: None, options={"x": {"type": "number"}}, description="b")
    with pytest.raises(ValueError, match="option 'x'"):
        registry.merged_options()


def test_policies_are_built_from_the_recipe_with_their_own_options():
    from lowbit.models import build_model
    from lowbit.train import build_policy

    torch.manual_seed(0)
    model = lowbit.quantize(build_model("mlp", (1, 4, 4), 3, hidden=8, depth=1), "sr-adam")
    grid = build_policy(model, {"type": "grid", "clip": True, "lr_scale": "none", "init": "keep"})
    assert type(grid) is GridWeights and all(layer.weights_on_grid for _, layer in lowbit.quantized_layers(model))
    latent = build_policy(model, {"clip": False})
    assert type(latent) is LatentWeights and not latent.clip
    assert not any(layer.weights_on_grid for _, layer in lowbit.quantized_layers(model))
    with pytest.raises(ValueError, match="unknown update policy 'shadow'.*latent, grid"):
        build_policy(model, {"type": "shadow"})
