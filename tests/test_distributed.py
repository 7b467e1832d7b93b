"""Training on several processes (lowbit.distributed, the trainer's DDP path): 2 gloo processes on CPU end with
bit-identical state on every rank, only rank 0 prints and writes, unsupported setups are refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.cli.train import _without_nproc
from lowbit.distributed import shard_batches

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["LOWBIT_DIST_TIMEOUT"] = "60"
    return env


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("size,world", [(64, 2), (65, 2), (70, 4), (3, 2), (33, 2)])
def test_shards_are_disjoint_and_cover_every_sample(size, world):
    x = torch.arange(size)
    batches = [(x[i : i + 16], x[i : i + 16]) for i in range(0, size, 16)]
    shards = [list(shard_batches(batches, r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    seen = torch.cat([b[0] for s in shards for b in s])
    assert sorted(seen.tolist()) == list(range(size))
    assert all(len(b[0]) >= 1 for s in shards for b in s)  # no rank gets an empty batch


def test_nproc_is_removed_from_the_relaunched_command():
    assert _without_nproc(["train", "--nproc", "2", "--recipe", "bc-det", "--nproc=3"]) == [
        "train",
        "--recipe",
        "bc-det",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lsq-w4a4", "bc-det"])
def test_two_gloo_ranks_end_bit_identical_and_only_rank_0_writes(recipe, tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.json"
    done = _torchrun(str(TESTS / "distributed_worker.py"), recipe, str(out), str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(report.read_text())
    assert len(ranks) == 2
    assert ranks[0]["state"] == ranks[1]["state"]  # parameters, buffers, quantizer state: bit-identical
    assert ranks[0]["flags"] == ranks[1]["flags"] and all(ranks[0]["flags"])
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert [r["wrote"] for r in ranks] == [True, False]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.safetensors",
        "log.jsonl",
        "metrics.json",
    ]
    assert done.stdout.count(f"recipe {recipe} on digits") == 1  # only rank 0 prints


@pytest.mark.slow
def test_cli_nproc_trains_and_refuses_unchecked_recipes_and_odd_batches(tmp_path):
    base = [sys.executable, "-m", "lowbit", "train", "--train-subset", "200", "--test-subset", "50", "--nproc", "2"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [*base, *extra], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    done = run("--recipe", "bc-det", "--epochs", "1", "--out", str(tmp_path / "ok"), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ok" / "metrics.json").exists()
    refused = run("--recipe", "bc-stoch", "--out", str(tmp_path / "no"))
    assert refused.returncode != 0
    assert "error: recipe 'bc-stoch' is not yet checked for training on several processes" in refused.stderr
    odd = run("--recipe", "bc-det", "--batch-size", "63", "--out", str(tmp_path / "odd"))
    assert odd.returncode != 0 and "must divide among the 2 processes" in odd.stderr


DEAD_RANK = """
import os, sys, torch
from lowbit import distributed
distributed.setup(torch.device("cpu"))
if distributed.rank() == 1:
    os._exit(0)  # dies without a word
try:
    distributed.sum_across([1.0], torch.device("cpu"))
except distributed.DistributedError as error:
    print("ONE LINE:", error)
    distributed.stop(7)
"""


@pytest.mark.slow
def test_a_dead_rank_makes_the_other_stop_with_one_line(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **_env(),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "LOWBIT_DIST_TIMEOUT": "40",  # generous: under a loaded CI machine, process start-up alone can take seconds
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DEAD_RANK],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    out, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=120)
    assert procs[0].returncode == 7, err[-2000:]
    assert "ONE LINE: rank 0: another process of the distributed run stopped" in out
