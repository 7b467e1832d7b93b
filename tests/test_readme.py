"""The README's commands as CI checks them (.ci/readme_commands.py runs them after the README's install): the parts
that can be checked in a second: CI runs the README's test command as written, every command-line line parses as
written and as CI adapts it, and the ONNX line names the extra it needs."""

import importlib.util
import shlex
from pathlib import Path

import pytest

from lowbit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_readmes_setup_and_test_command_as_written(readme_commands):
    setup, tests = (block.strip() for block in readme_commands.bash_blocks(README)[:2])
    assert "pip install -q -e . &&" in setup and ".[" not in setup  # the first command installs no extras
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_every_command_line_of_the_readme_parses_as_written_and_as_ci_runs_it(readme_commands, tmp_path):
    lines = [line for line in readme_commands.command_line_block(README).splitlines() if line.strip()]
    assert len(lines) >= 10
    parser = build_parser()
    for line in lines:
        words, comment = readme_commands.split_comment(line)
        assert words[0] == "lowbit" and comment, line
        for variant in (words, readme_commands.adapt(words, tmp_path)):
            args = parser.parse_args(variant[1:])
            assert args.command == words[1]
        # the ONNX line, and only it, says which extra it needs (CI then expects the one-line message)
        assert bool(readme_commands.EXTRA.search(comment)) == ("onnx" in words), line
    adapted = readme_commands.adapt(shlex.split("lowbit reproduce --quick"), tmp_path)
    assert "--smoke" in adapted and "--quick" not in adapted and str(tmp_path) in " ".join(adapted)
    trained = readme_commands.adapt(shlex.split("lowbit train --epochs 5 --out runs/bc --resume"), tmp_path)
    assert trained[trained.index("--epochs") + 1] == "2" and trained.count("--epochs") == 1
