"""The command line: the main job, eval/summary/plot/recipes, and one-line errors without tracebacks."""

import argparse
import json
import subprocess
import sys

import pytest

from lowbit.cli import main
from lowbit.cli.argtypes import assignment

pytestmark = pytest.mark.slow


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, timeout=300)


def test_train_then_eval_summary_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "bc-det", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "model size" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "bc-det" and metrics["epochs"] == 2

    assert main(["eval", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(metrics["best_test_accuracy"])

    assert main(["summary", str(out)]) == 0
    table = capsys.readouterr().out
    assert "QuantConv2d" in table and "x smaller" in table

    assert main(["plot", str(out)]) == 0
    for name in ("curves.png", "bits.png", "weights.png"):
        assert (out / name).stat().st_size > 1000


def test_summary_of_a_recipe_and_recipe_listing(capsys):
    assert main(["summary", "mp-u3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compression"] > 4 and summary["macs"] > 0
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "bc-stoch" in listing and "Courbariaux" in listing
    assert main(["recipes", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "lowbit recipe"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["train", "--data", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["train", "--epochs", "-3"], "must be >= 0"),
        (["train", "--set", "quantize.weight.bits=99"], "quantize.weight.bits"),
        (["train", "--set", "a=[1,"], "argument --set: 'a=[1,': the value is not valid YAML"),
        (["train", "--set", "train.epochs.x=1"], "train.epochs.x=1"),
        (["train", "--lr", "inf"], "must be a finite number"),
        (["eval", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(args, fragment):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and fragment in error_lines[0]


def test_set_values_are_read_as_recipes_are():
    assert assignment("train.optimizer.lr=1e-3") == ("train.optimizer.lr", 0.001)
    assert assignment(" quantize.weight.bits = 4") == ("quantize.weight.bits", 4)
    assert assignment("train.pretrain=null") == ("train.pretrain", None)
    assert assignment("x=[16, 32]") == ("x", [16, 32])
    with pytest.raises(argparse.ArgumentTypeError, match="refers to its own anchor"):
        assignment("x=&a [*a]")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        assignment("=3")


def test_a_bug_is_not_disguised_as_a_usage_error(monkeypatch):
    """Only lowbit's own errors become one-line messages; anything else is a bug and keeps its traceback."""
    from lowbit.cli import recipes

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(recipes, "run", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["recipes"])


def test_python_dash_m_lowbit_runs_the_command_line():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("lowbit ")
