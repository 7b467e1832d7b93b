#!/usr/bin/env python3
"""CI: a new user's first minutes. Every command of the README's "Command line" section works after the README's
own install, which has no extras.

In a temporary directory: a copy of the working tree; the README's first command (venv, torch==2.13.0, ``pip
install -e .``, ``lowbit train``) run as written in that copy; then ``pip install .`` (a real wheel, so files that
the package forgets to ship are noticed) into the same venv; then each line of the README's "Command line" block,
read from README.md itself, run in a scratch directory. A command passes when it exits 0 with no traceback; a
command whose README comment names an extra (``pip install "lowbit[export]"``) must instead print exactly one line,
``lowbit: error: ...`` naming that install, and exit non-zero, since the extra is not installed.

The commands are adapted only to be quick, as the README and ``--help`` allow: training runs 1 epoch (2 with
``--resume``, which the README says extends a run) after 1 pre-training epoch on ``--train-subset/--test-subset``;
``--data fashion-mnist`` becomes digits when ``/usr/share/datasets/fashion-mnist`` is absent; ``reproduce --quick``
becomes ``--smoke`` (its help: "what the tests and CI run") with its output in the scratch directory; the lowbit 0.1
run that ``convert-checkpoint`` converts is made from the first trained run, in that old format.

Usage: python3 .ci/readme_commands.py [--keep]   (--keep: leave the temporary directory and print its path)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_SUBSET, TEST_SUBSET = "300", "100"
COMMAND_TIMEOUT_S = 300
EXTRA = re.compile(r'pip install "lowbit\[(\w+)\]"')


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def command_line_block(markdown: str) -> str:
    """The first bash block of the README's "## Command line" section."""
    section = markdown.split("\n## Command line", 1)
    if len(section) != 2 or not bash_blocks(section[1]):
        sys.exit("README.md has no bash block under '## Command line'")
    return bash_blocks(section[1])[0]


def split_comment(line: str) -> tuple[list[str], str]:
    """``lowbit eval runs/bc   # what it does`` -> (["lowbit", "eval", "runs/bc"], "what it does")."""
    words = shlex.split(line, comments=True)
    comment = line.split(" #", 1)[1].strip() if " #" in line else ""
    return words, comment


def set_option(words: list[str], option: str, value: str) -> list[str]:
    """``words`` with ``option value`` replaced, or appended when absent."""
    if option in words:
        i = words.index(option)
        return words[: i + 1] + [value] + words[i + 2 :]
    return words + [option, value]


def adapt(words: list[str], scratch: Path) -> list[str]:
    """A README command, made quick (see the module docstring); nothing else changes."""
    command = words[1] if len(words) > 1 else ""
    if "--data" in words and words[words.index("--data") + 1] == "fashion-mnist" and not FASHION_DIR.is_dir():
        words = set_option(words, "--data", "digits")
    if command == "train":
        words = set_option(words, "--epochs", "2" if "--resume" in words else "1")
        words = set_option(words, "--pretrain-epochs", "1")
        words = set_option(words, "--train-subset", TRAIN_SUBSET)
        words = set_option(words, "--test-subset", TEST_SUBSET)
        words = words + ["--no-progress"]
    if command == "reproduce" and "--quick" in words:
        words = [w for w in words if w != "--quick"] + ["--smoke"]
        words = set_option(words, "--out", str(scratch / "results"))
        words = set_option(words, "--work", str(scratch / "reproduce-work"))
    return words


LEGACY_RUN = textwrap.dedent(
    """
    # a run directory of lowbit 0.1: the current checkpoint's fields, pickled with torch.save as last.pt
    import sys
    from pathlib import Path

    import torch

    from lowbit.runs import load_checkpoint

    current = load_checkpoint(sys.argv[1], which="last")
    old = {
        "format": "lowbit-checkpoint", "version": 1, "lowbit_version": "0.1.0", "phase": current.phase,
        "epoch": current.epoch, "quantized": True, "seed": current.seed, "recipe": current.recipe,
        "model_spec": {k: v for k, v in vars(current.model_spec).items() if k != "class_name"},
        "data": vars(current.data), "model_state": current.model_state, "optimizer_state": current.optimizer_state,
        "scheduler_state": current.scheduler_state, "rng": current.rng, "history": current.history,
        "best": current.best,
    }
    Path(sys.argv[2]).mkdir(parents=True)
    torch.save(old, Path(sys.argv[2]) / "last.pt")
    """
)


class Check:
    def __init__(self, venv: Path, scratch: Path, env: dict) -> None:
        self.venv, self.scratch, self.env = venv, scratch, env
        self.failures: list[str] = []
        self.passed = 0

    def run(self, words: list[str], comment: str, cwd: Path) -> None:
        words = [str(self.venv / "bin" / "lowbit")] + words[1:] if words[0].endswith("lowbit") else words
        extra = EXTRA.search(comment)
        shown = shlex.join(["lowbit"] + words[1:])
        start = time.monotonic()
        result = subprocess.run(
            words, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
        seconds = time.monotonic() - start
        problem = None
        if "Traceback" in result.stderr:
            problem = "a traceback"
        elif extra:  # the extra is not installed here: the documented one-line message, and a failure status
            lines = result.stderr.strip().splitlines()
            if result.returncode == 0 or len(lines) != 1 or not lines[0].startswith("lowbit: error: "):
                problem = f"not the one-line error (exit {result.returncode}, {len(lines)} lines on stderr)"
            elif extra.group(0) not in lines[0]:
                problem = f"the error does not name {extra.group(0)}"
        elif result.returncode != 0:
            problem = f"exit status {result.returncode}"
        status = "ok  " if problem is None else "FAIL"
        print(f"{status} {seconds:5.1f}s  {shown}" + (f"   (without the {extra.group(1)} extra)" if extra else ""))
        if problem is None:
            self.passed += 1
            return
        self.failures.append(f"{shown}: {problem}")
        print(textwrap.indent((result.stdout[-3000:] + result.stderr[-6000:]).rstrip(), "    | "))


def copy_tree(destination: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (no .venv, runs/ or build/ leftovers)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def shell(command: str, cwd: Path, env: dict, log: Path) -> None:
    """Run an install step; its output goes to ``log``, shown only when it fails."""
    with log.open("a") as out:
        out.write(f"\n$ {command}\n")
        out.flush()
        result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(log.read_text()[-6000:])
        sys.exit(f"readme commands: '{command}' failed with exit status {result.returncode}")


def main() -> int:
    keep = "--keep" in sys.argv[1:]
    started = time.monotonic()
    readme = (ROOT / "README.md").read_text()
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-readme-"))
    source, scratch, log = tmp / "lowbit", tmp / "scratch", tmp / "install.log"
    source.mkdir()
    scratch.mkdir()
    copy_tree(source)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    venv = source / ".venv"
    check = Check(venv, scratch, env)
    try:
        # 1. The README's first command, as written, in the copy: its install steps, then its `lowbit train`
        setup = bash_blocks(readme)[0].strip()
        steps = [step.strip() for step in setup.split("&&")]
        if not steps[-1].startswith(".venv/bin/lowbit") or not any(".venv/bin/pip install" in s for s in steps):
            sys.exit(f"readme commands: the README's first command is not 'install ... && lowbit ...': {setup!r}")
        print(f"readme commands: {setup}")
        shell(" && ".join(steps[:-1]), source, env, log)
        print(f"     {time.monotonic() - started:5.1f}s  installed as the README says (no extras)")
        check.run(adapt(shlex.split(steps[-1]), scratch), "", source)

        # 2. A real wheel of the package, no extras, over that install
        shell(".venv/bin/pip install -q .", source, env, log)
        print(f"     {time.monotonic() - started:5.1f}s  pip install . (wheel, no extras)")

        # 3. Every line of the "Command line" block, in the scratch directory
        first_run = None
        for line in command_line_block(readme).splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words, comment = split_comment(line)
            if words[:2] == ["lowbit", "train"] and "--out" in words and first_run is None:
                first_run = scratch / words[words.index("--out") + 1]
            if words[:2] == ["lowbit", "convert-checkpoint"] and not (scratch / words[2]).exists():
                if first_run is None:
                    sys.exit("readme commands: convert-checkpoint needs an earlier 'lowbit train --out' line")
                make = [str(venv / "bin" / "python"), "-c", LEGACY_RUN, str(first_run), str(scratch / words[2])]
                subprocess.run(make, cwd=scratch, env=env, check=True)
            check.run(adapt(words, scratch), comment, scratch)
    finally:
        if keep:
            print(f"readme commands: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    if check.failures:
        print(
            f"readme commands: {len(check.failures)} of {check.passed + len(check.failures)} failed in {elapsed:.0f}s"
        )
        for failure in check.failures:
            print(f"  {failure}")
        return 1
    print(f"readme commands: all {check.passed} work after the README's install ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
