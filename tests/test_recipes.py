"""Recipes are validated data: every shipped one loads, and a bad one names the key, the value and the choices."""

import contextlib
import json
import math
import signal
import time

import pytest

import lowbit
from lowbit.quantizers import QUANTIZERS
from lowbit.recipes import RecipeError, load_recipe, recipe_schema, safe_yaml

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
        {"name": "x", "quantize": {"weight": {"type": "no-such-family"}}},
        "quantize.weight.type",
        "'no-such-family'",
        ", ".join(QUANTIZERS),
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


# ------------------------------------------------------------------------------------- reading YAML safely
BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging: the code under test is pure Python, so SIGALRM interrupts it."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_standard_float_notation_is_a_float():
    text = "a: 1e-3\nb: 1E3\nc: .5\nd: -2.5e-4\ne: 5.\nf: 1.0e-3\ng: 3\nh: true\ni: null\nj: '1e-3'\nk: 0x10"
    assert safe_yaml.safe_load(text) == {
        "a": 0.001,
        "b": 1000.0,
        "c": 0.5,
        "d": -0.00025,
        "e": 5.0,
        "f": 0.001,
        "g": 3,
        "h": True,
        "i": None,
        "j": "1e-3",
        "k": 16,
    }
    assert type(safe_yaml.safe_load("3")) is int and type(safe_yaml.safe_load("1e3")) is float


def test_recipe_file_with_exponent_notation_loads_as_numbers(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: bc-det\ntrain:\n  optimizer: {lr: 1e-3, weight_decay: 5E-4}\n")
    optimizer = load_recipe(path).train["optimizer"]
    assert optimizer["lr"] == 0.001 and optimizer["weight_decay"] == 0.0005


def test_yaml_bomb_fails_fast_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    started = time.perf_counter()
    with time_limit(10), pytest.raises(RecipeError, match="bomb.yaml.*more than 10000 values"):
        load_recipe(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "text, fragment",
    [("a: &a [1, *a]\n", "refers to its own anchor"), ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than")],
)
def test_self_referencing_or_too_deep_yaml_is_refused(tmp_path, text, fragment):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with time_limit(10):
        check_error(path, "odd.yaml", fragment)


def test_oversized_recipe_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\n" + "# padding\n" * 200_000)
    check_error(path, "huge.yaml", "larger than")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"name: caf\xe9\n", "byte 0xe9 at offset 9"), (b"\x89PNG\r\n\x1a\n\x00\x00", "byte 0x89 at offset 0")],
)
def test_undecodable_recipe_file_is_named(tmp_path, content, fragment):
    path = tmp_path / "latin.yaml"
    path.write_bytes(content)
    check_error(path, str(path), "not UTF-8", fragment)


def test_messages_quote_values_briefly():
    long_text = "x" * 10_000
    message = check_error({"name": "x", "train": {"epochs": long_text}}, "train.epochs", "expected integer", "...")
    assert len(message) < 300
    message = check_error({"name": "x", "train": {"batch_size": list(range(100_000))}}, "train.batch_size")
    assert len(message) < 300
    message = check_error({"name": "x", "quantize": {"weight": {"type": "lsq", long_text: 1}}}, "unknown key")
    assert len(message) < 600


# --------------------------------------------------------------------------------------- finite numbers
@pytest.mark.parametrize(
    "path",
    [
        "train.optimizer.lr",
        "train.optimizer.momentum",
        "train.optimizer.weight_decay",
        "train.optimizer.betas.1",
        "train.optimizer.quantizer_lr",
        "train.grad_clip",
        "train.schedule.final_lr_ratio",
        "train.regularizers.0.strength",
        "quantize.weight.init_step",
    ],
)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected_naming_the_key(path, bad):
    recipe = load_recipe("lsq-br-w2a2")
    with pytest.raises(RecipeError) as info:
        recipe.with_changes({path: bad})
    shown = path.replace(".1", "[1]").replace(".0", "[0]")
    assert f"{shown}: {bad} is not a finite number" in str(info.value)


def test_nan_in_a_memory_budget_is_rejected():
    budget = {"type": "memory_budget", "weight_kb": math.nan}
    check_error({"name": "x", "train": {"regularizers": [budget]}}, "train.regularizers[0].weight_kb", "finite")


def test_nan_in_a_recipe_file_is_rejected(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("extends: bc-det\ntrain:\n  optimizer: {lr: .nan}\n")
    check_error(path, "nan.yaml", "train.optimizer.lr: nan is not a finite number")


# ------------------------------------------------------------------------------------------- changes
def test_errors_in_changes_name_the_change_not_the_recipe_file():
    recipe = load_recipe("bc-det")
    with pytest.raises(RecipeError) as info:
        recipe.with_changes({"train.epochs": 3, "train.optimizer.lr": "abc"}, source="--set")
    message = str(info.value)
    assert message.startswith("invalid --set train.optimizer.lr=abc (recipe bc-det): train.optimizer.lr: expected")
    assert recipe.source not in message and "train.epochs" not in message
    # an unknown key is reported on the section above it: still the change that added it
    with pytest.raises(RecipeError, match=r"^invalid --set train.optimizr.lr=0.1 \(recipe bc-det\): train: unknown"):
        recipe.with_changes({"train.optimizr.lr": 0.1, "train.epochs": 3}, source="--set")
    # a rule over several keys: the change of the section
    with pytest.raises(RecipeError, match=r"^invalid change train.schedule.type=step .*needs 'milestones'"):
        recipe.with_changes({"train.schedule.type": "step"})


def test_assigning_below_a_plain_value_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"--set train.epochs.x=1 .*train.epochs is 15, not a mapping"):
        load_recipe("bc-det").with_changes({"train.epochs.x": 1}, source="--set")
    with pytest.raises(RecipeError, match=r"--set train.regularizers.3=1 .*no list item '3'"):
        load_recipe("lsq-br-w2a2").with_changes({"train.regularizers.3": 1}, source="--set")
