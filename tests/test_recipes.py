"""Recipes are validated data: every shipped one loads, and a bad one names the key, the value and the choices."""

import json

import pytest

import lowbit
from lowbit.recipes import RecipeError, load_recipe, recipe_schema

REQUIRED = [
    "fp32",
    "bc-det",
    "bc-stoch",
    "r-adam",
    "sr-adam",
    "big-sr-adam",
    "lsq-w8a8",
    "lsq-w4a4",
    "lsq-w3a3",
    "lsq-w2a2",
    "lsq-br-w2a2",
    "lsq-br-w3a3",
    "banner-w8a8g8",
    "mp-u1",
    "mp-u2",
    "mp-u3",
    "mp-p3",
]


def test_every_method_has_a_shipped_recipe_with_a_summary_and_a_paper():
    shipped = {r.name: r for r in lowbit.list_recipes()}
    assert set(REQUIRED) <= set(shipped)
    for recipe in shipped.values():
        assert recipe.summary and recipe.paper


def test_recipes_are_data_differences_between_methods():
    assert load_recipe("bc-stoch").quantize["weight"]["rounding"] == "stochastic"
    assert load_recipe("bc-stoch").quantize["weight"]["eval_mode"] == "float"
    assert load_recipe("bc-det").quantize["weight"]["eval_mode"] == "deterministic"
    assert load_recipe("sr-adam").train["policy"]["type"] == "grid"
    assert load_recipe("big-sr-adam").train["batch_size"] > load_recipe("sr-adam").train["batch_size"]
    assert load_recipe("lsq-br-w2a2").train["regularizers"][0]["type"] == "bin_reg"
    assert load_recipe("mp-p3").quantize["weight"]["parametrization"] == "P3"


def check_error(recipe, *fragments):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_key_names_the_key_and_the_valid_keys():
    check_error(
        {"name": "x", "quantize": {"weight": {"type": "lsq", "bitz": 4}}},
        "quantize.weight",
        "'bitz'",
        "did you mean 'bits'",
        "valid keys: type, bits",
    )
    check_error({"name": "x", "train": {"epochz": 3}}, "train", "'epochz'", "epochs")


def test_bit_width_out_of_range_names_the_value_and_the_range():
    check_error(
        {"name": "x", "quantize": {"weight": {"type": "lsq", "bits": 9}}}, "quantize.weight.bits", "9", "2 <= bits <= 8"
    )
    check_error(
        {
            "name": "x",
            "quantize": {"weight": {"type": "lsq"}, "overrides": [{"match": "first", "weight": {"bits": 0}}]},
        },
        "quantize.overrides[0].weight.bits",
        "0 is out of range",
    )


def test_unknown_quantizer_lists_the_families():
    check_error(
        {"name": "x", "quantize": {"weight": {"type": "ternary"}}},
        "quantize.weight.type",
        "'ternary'",
        "binary, lsq, minmax, parametric, uniform",
    )


def test_training_side_is_validated_too():
    check_error({"name": "x", "train": {"optimizer": {"type": "adan"}}}, "did you mean 'adam'", "adam, adamw, sgd")
    check_error({"name": "x", "train": {"policy": {"type": "shadow"}}}, "train.policy.type", "latent, grid")
    check_error({"name": "x", "train": {"regularizers": [{"type": "bin_reg", "strenght": 1}]}}, "'strength'")
    check_error({"name": "x", "train": {"epochs": -1}}, "train.epochs", "-1")
    check_error({"name": "x", "train": {"schedule": {"type": "step"}}}, "milestones")
    check_error({"name": "x", "train": {"regularizers": [{"type": "memory_budget"}]}}, "weight_kb")


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nquantize:\n  weight: {type: lsq, bits: 4\n")
    check_error(path, "not valid YAML", "line")


def test_unknown_recipe_name_suggests_and_lists(tmp_path):
    check_error("lsq-w4a5", "unknown recipe 'lsq-w4a5'", "did you mean", "bc-det")
    check_error(str(tmp_path / "missing.yaml"), "does not exist")


def test_extends_merges_and_detects_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nextends: a.yaml\n")
    check_error(tmp_path / "a.yaml", "cycle")
    (tmp_path / "mine.yaml").write_text("name: mine\nextends: lsq-w4a4\nquantize:\n  weight: {bits: 3}\n")
    mine = load_recipe(tmp_path / "mine.yaml")
    assert mine.quantize["weight"] == {**load_recipe("lsq-w4a4").quantize["weight"], "bits": 3}


def test_defaults_are_filled_and_with_changes_revalidates():
    recipe = load_recipe({"name": "x"})
    assert recipe.train["optimizer"]["type"] == "adam" and recipe.train["epochs"] == 10
    changed = load_recipe("lsq-w4a4").with_changes({"train.epochs": 2, "quantize.weight.bits": 3})
    assert changed.train["epochs"] == 2 and changed.quantize["weight"]["bits"] == 3
    with pytest.raises(RecipeError, match="quantize.weight.bits"):
        load_recipe("lsq-w4a4").with_changes({"quantize.weight.bits": 12})


def test_schema_is_plain_json():
    schema = recipe_schema()
    assert json.loads(json.dumps(schema)) == schema


def test_partial_override_needs_a_recipe_quantizer_to_modify():
    check_error(
        {"name": "x", "quantize": {"overrides": [{"match": "first", "input": {"bits": 8}}]}},
        "quantize.overrides[0].input",
        "add a type",
    )
