"""Training on several processes (lowbit.distributed, the trainer's DDP path): 2 gloo processes on CPU end with
bit-identical state on every rank for every shipped recipe, only rank 0 prints and writes, 2 ranks × B/2 match one
process × B on a model without BatchNorm, a distributed run resumes exactly (and at another world size),
unsupported setups are refused in one line."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distributed_worker import (
    MATCHED_RECIPES,
    RESUMED_RECIPES,
    matched_config,
    no_batchnorm_mlp,
    resume_config,
    user_dataset,
)
from lowbit.cli.train import _without_nproc
from lowbit.convert import quantize, quantizers_of
from lowbit.distributed import shard_batches
from lowbit.errors import ConfigError
from lowbit.quantizers import build_quantizer
from lowbit.recipes import list_recipes
from lowbit.rounding import NoiseSource
from lowbit.runs import load_checkpoint
from lowbit.train import Trainer
from lowbit.train.rank_noise import per_rank_quantizers, restart_rank_noise
from lowbit.train.trainer import _initialize_quantizers

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
WORKER = TESTS / "distributed_worker.py"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["LOWBIT_DIST_TIMEOUT"] = "60"
    return env


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "size,world,batch", [(64, 2, 16), (65, 2, 16), (70, 4, 16), (3, 2, 16), (33, 2, 16), (64, 2, 4)]
)
def test_shards_are_disjoint_and_cover_every_sample(size, world, batch):
    x = torch.arange(size)
    batches = [(x[i : i + batch], x[i : i + batch]) for i in range(0, size, batch)]
    shards = [list(shard_batches(batches, r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    seen = torch.cat([b[0] for s in shards for b in s])
    assert sorted(seen.tolist()) == list(range(size))
    assert all(len(b[0]) >= 1 for s in shards for b in s)  # no rank gets an empty batch
    # only a small last batch is merged: every other step is one global batch
    assert len(shards[0]) == len(batches) - (len(batches) > 1 and len(batches[-1][1]) < 2 * world)


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
    done = _torchrun(str(WORKER), "one", recipe, str(out), str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(report.read_text())
    assert len(ranks) == 2
    assert ranks[0]["state"] == ranks[1]["state"]  # parameters, buffers, quantizer state: bit-identical
    assert ranks[0]["flags"] == ranks[1]["flags"] and all(ranks[0]["flags"])
    assert ranks[0]["history"] == ranks[1]["history"]
    assert all(r["one_process_model"] for r in ranks)
    assert [r["wrote"] for r in ranks] == [True, False]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.safetensors",
        "log.jsonl",
        "metrics.json",
    ]


@pytest.mark.slow
def test_every_shipped_recipe_keeps_two_ranks_bit_identical(tmp_path):
    """One launch trains every shipped recipe for a few steps on 2 gloo processes. Parameters, buffers, quantizer
    state, the noise of weight quantizers, the logged records (losses, Bin Regularization, memory budgets and whether
    they are met, bit widths) and the best-epoch choice agree bit for bit. The generators of quantizers that act on
    per-rank data (gradients, activations) differ by design (lowbit.train.rank_noise), and do differ."""
    report = tmp_path / "report.json"
    done = _torchrun(str(WORKER), "recipes", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(report.read_text())
    assert sorted(first) == sorted(r.name for r in list_recipes())
    for name in first:
        a, b = first[name], second[name]
        for key in ("state", "shared_noise", "flags", "history", "best"):
            assert a[key] == b[key], f"{name}: {key} differs between the ranks"
        assert all(x != y for x, y in zip(a["per_rank_noise"], b["per_rank_noise"])), name
    assert first["banner-w8a8g8"]["per_rank_noise"]  # the per-rank case is exercised
    assert first["bc-stoch"]["shared_noise"] and first["sr-adam"]["shared_noise"]  # and the shared one
    for name in ("lsq-br-w2a2", "lsq-br-w3a3"):  # Bin Regularization was on and logged
        assert first[name]["history"][-1]["regularizer"] > 0
    for name in ("mp-u1", "mp-u2", "mp-u3", "mp-p3"):  # the memory budget was logged
        assert "budget_satisfied" in first[name]["history"][-1]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One 2-process launch (distributed_worker.py resume): each of RESUMED_RECIPES trained 2 epochs, and 1 epoch then
    resumed to 2; MATCHED_RECIPES on the MLP without BatchNorm."""
    root = tmp_path_factory.mktemp("two-ranks")
    done = _torchrun(str(WORKER), "resume", str(root / "runs"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs"


def _same(a: object, b: object) -> bool:
    """Bit-equality of nested states (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RESUMED_RECIPES)
def test_a_resumed_two_rank_run_ends_where_the_uninterrupted_one_does(two_rank_runs, recipe):
    """Same world size: 1 epoch then --resume --epochs 2 ends with the weights, quantizer state, noise generators
    (weight noise from the checkpoint, per-rank noise restarted from (seed, step, rank)) and optimizer state of 2
    epochs in one go."""
    full = load_checkpoint(two_rank_runs / recipe / "full", which="last")
    resumed = load_checkpoint(two_rank_runs / recipe / "cut", which="last")
    assert (full.epoch, resumed.epoch) == (1, 1)
    bad = [k for k in full.model_state if not _same(full.model_state[k], resumed.model_state.get(k))]
    assert not bad, f"differ after the resume: {bad[:5]}"
    assert _same(full.optimizer_state, resumed.optimizer_state)


@pytest.mark.slow
def test_a_two_rank_run_resumes_on_one_process(two_rank_runs, tmp_path):
    """World size 2 -> 1: the checkpoint of a 2-process epoch resumes in a single process and trains on."""
    out = tmp_path / "one"
    shutil.copytree(two_rank_runs / RESUMED_RECIPES[0] / "to-one-rank", out)
    saved = load_checkpoint(out, which="last")
    Trainer(resume_config(RESUMED_RECIPES[0], out, 2, resume=True)).fit()
    resumed = load_checkpoint(out, which="last")
    assert resumed.epoch == 1 and resumed.history[0] == saved.history[0]
    assert not _same(resumed.model_state, saved.model_state)  # it trained on


@pytest.mark.slow
def test_a_one_process_run_resumes_on_two_ranks(tmp_path):
    """World size 1 -> 2: a single process's checkpoint resumes on 2 gloo processes."""
    out = tmp_path / "run"
    Trainer(resume_config(RESUMED_RECIPES[0], out, 1)).fit()
    saved = load_checkpoint(out, which="last")
    done = _torchrun(str(WORKER), "resume-one", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = load_checkpoint(out, which="last")
    assert resumed.epoch == 1 and resumed.history[0] == saved.history[0]
    assert not _same(resumed.model_state, saved.model_state)


#: float32 weights of size <= 1 after 4 steps: summation-order differences stay a few ulps (1.2e-7 each)
MATCH_TOLERANCE = 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("recipe", MATCHED_RECIPES)
def test_two_ranks_with_half_batches_match_one_process(two_rank_runs, recipe):
    """2 ranks × batch B/2 against 1 process × batch B on a model without BatchNorm: the quantizers start from the
    whole first batch on both (the ranks gather it), DDP's average of the two half-batch mean gradients is the
    full-batch mean gradient, and LSQ's activation gradient scale counts the global batch; so the runs agree up to
    the order of float summation (within MATCH_TOLERANCE, none of the 4 steps' roundings flipped).

    A model with BatchNorm differs beyond that unless the BatchNorm is synchronized: each rank normalises with its
    half batch's mean and variance, which are not the full batch's, and the running statistics follow rank 0's half.
    (A min-max quantizer with per-sample ranges likewise averages the ranges of its rank's samples only.)"""
    two = load_checkpoint(two_rank_runs / f"match-{recipe}.safetensors", which="last")
    trainer = Trainer(matched_config(recipe), model=no_batchnorm_mlp())
    one = trainer.fit().model.state_dict()
    floats = {k: v for k, v in one.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    assert floats and any(k.endswith("input_quantizer.step") for k in floats) == (recipe == "lsq-w4a4")
    for key, value in floats.items():
        assert (value - two.model_state[key]).abs().max() <= MATCH_TOLERANCE, key
    # the epoch's loss: a sum over every rank's samples, the same mean as one process's
    assert two.history[0]["loss"] == pytest.approx(trainer.history[0]["loss"], rel=1e-6)


@pytest.mark.slow
def test_your_own_dataset_trains_on_two_ranks_with_its_batch_as_the_global_batch(two_rank_runs):
    """A map-style Dataset of the user's: lowbit batches it in the seeded order on every rank and cuts each batch of
    batch_size among the ranks, so 2 ranks match one process as for the built-in data (MATCH_TOLERANCE)."""
    two = load_checkpoint(two_rank_runs / "user-data.safetensors", which="last").model_state
    one = Trainer(matched_config("lsq-w4a4"), model=no_batchnorm_mlp(), train_data=user_dataset()).fit()
    for key, value in one.model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert (value - two[key]).abs().max() <= MATCH_TOLERANCE, key


def test_your_own_dataloader_is_refused_on_several_processes(monkeypatch):
    loader = torch.utils.data.DataLoader(user_dataset(), batch_size=16, shuffle=True)
    trainer = Trainer(matched_config("lsq-w4a4"), model=no_batchnorm_mlp(), train_data=loader)
    monkeypatch.setattr("lowbit.distributed.world_size", lambda: 2)
    with pytest.raises(ConfigError, match="your own DataLoader or IterableDataset on several processes"):
        trainer._check_distributable()
    trainer = Trainer(matched_config("lsq-w4a4"), model=no_batchnorm_mlp(), train_data=user_dataset())
    trainer._check_distributable()  # a map-style Dataset is accepted


@pytest.mark.slow
def test_cli_nproc_trains_and_refuses_odd_batches_and_compile(tmp_path):
    base = [sys.executable, "-m", "lowbit", "train", "--train-subset", "200", "--test-subset", "50", "--nproc", "2"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [*base, *extra], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    done = run("--recipe", "bc-stoch", "--epochs", "1", "--out", str(tmp_path / "ok"), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ok" / "metrics.json").exists()
    assert done.stdout.count("recipe bc-stoch on digits") == 1  # only rank 0 prints
    amp = run("--recipe", "banner-w8a8g8", "--amp", "bf16", "--epochs", "1", "--pretrain-epochs", "0", "--quiet")
    assert amp.returncode == 0 and "test accuracy" in amp.stdout, amp.stderr[-3000:]  # bf16 autocast under DDP
    odd = run("--recipe", "bc-det", "--batch-size", "63", "--out", str(tmp_path / "odd"))
    assert odd.returncode != 0 and "must divide among the 2 processes" in odd.stderr
    compiled = run("--recipe", "bc-det", "--compile", "--out", str(tmp_path / "compiled"))
    assert compiled.returncode != 0 and "--compile with several processes is not supported" in compiled.stderr


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


# ---------------------------------------------------------------------------------- the noise policy, in one process
def _stochastic(role: str, seed: int = 5):
    return build_quantizer({"type": "minmax", "bits": 4, "rounding": "stochastic"}, role=role, seed=seed)


def test_a_restarted_noise_source_draws_what_a_fresh_one_from_that_seed_draws():
    x = torch.zeros(64)
    source = NoiseSource(seed=3)
    source.uniform_like(x)
    source.restart(99)
    assert source.seed == 3  # the quantizer's own seed, which later restarts derive from, is kept
    assert torch.equal(source.uniform_like(x), NoiseSource(seed=99).uniform_like(x))
    saved = source.state()
    copy = NoiseSource(seed=0)
    copy.load_state(saved)  # the restarted stream travels in the state
    assert torch.equal(copy.uniform_like(x), source.uniform_like(x))
    fresh = NoiseSource(seed=3)
    fresh.restart(7)
    twin = NoiseSource(seed=0)
    twin.load_state(fresh.state())  # restarted, nothing drawn yet: the stream seed itself is kept
    assert torch.equal(twin.uniform_like(x), NoiseSource(seed=7).uniform_like(x))


def test_per_rank_noise_differs_by_rank_and_step_and_repeats_weight_noise_is_left_alone():
    model = nn.ModuleList([_stochastic(role) for role in ("weight", "bias", "gradient", "activation")])
    assert per_rank_quantizers(model) == [model[2], model[3]]
    x = torch.zeros(256)

    def draws(step: int, rank: int) -> list:
        restart_rank_noise(per_rank_quantizers(model), "train", 0, step, rank)
        return [q.noise.uniform_like(x) for q in model]

    rank0, rank1, again = draws(0, 0), draws(0, 1), draws(0, 0)
    assert not torch.equal(rank0[2], rank1[2]) and not torch.equal(rank0[3], rank1[3])
    assert torch.equal(draws(0, 1)[2], rank1[2])  # a pure function of (seed, phase, epoch, step, rank)
    assert not torch.equal(draws(1, 0)[2], again[2])  # a new step, new numbers
    assert model[0].noise.stream_seed == model[0].noise.seed == 5  # never restarted: one continuing stream
    assert not torch.equal(again[0], rank0[0])  # it went on drawing, whatever the restarts of the others
    alone = NoiseSource(seed=5)  # the weight quantizer's draws are those of its stream without any restarts
    assert torch.equal(alone.uniform_like(x), rank0[0]) and torch.equal(alone.uniform_like(x), rank1[0])


def test_lsq_activation_gradient_scale_counts_the_global_batch():
    activation = build_quantizer({"type": "lsq", "bits": 4}, role="activation")
    weight = build_quantizer({"type": "lsq", "bits": 4}, role="weight")
    x = torch.ones(8, 5)
    alone = activation.gradient_scale(x)
    activation.batch_shards = weight.batch_shards = 4
    assert activation.gradient_scale(x) == pytest.approx(1 / math.sqrt(4 * 40 * activation.q_p))
    assert activation.gradient_scale(x) == pytest.approx(alone / 2)
    assert weight.gradient_scale(x) == pytest.approx(1 / math.sqrt(40 * weight.q_p))  # no batch in a weight


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "bc-stoch"])
def test_the_initialising_forward_leaves_statistics_and_noise_as_they_were(recipe):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(32, 16)
    model = quantize(model, recipe)
    model.eval()
    noise = {id(q): q.noise.state() for q in quantizers_of(model) if q.noise is not None}
    statistics = model[2].running_mean.clone()
    _initialize_quantizers(model, x)
    assert all(q._is_initialized for q in quantizers_of(model) if q.kind == "lsq")
    assert torch.equal(model[2].running_mean, statistics) and not model.training
    for q in quantizers_of(model):
        if q.noise is not None:
            assert _same(q.noise.state(), noise[id(q)])
    if recipe == "lsq-w4a4":  # the last layer's input step from the whole batch: 2 mean|v| / sqrt(Q_P)
        last = model[4].input_quantizer
        with torch.no_grad():
            model.train()
            v = model[3](model[2](model[1](x.flatten(1))))
        assert last.step.item() == pytest.approx(2 * v.abs().mean().item() / math.sqrt(last.q_p), rel=1e-5)


def _launched_as(monkeypatch, local_rank: int, local_world: int, gpus: int) -> list:
    for name, value in {"RANK": local_rank, "WORLD_SIZE": local_world, "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    from lowbit.distributed import device_of_this_rank

    chosen = _launched_as(monkeypatch, local_rank=1, local_world=2, gpus=2)
    assert device_of_this_rank(torch.device("cuda")) == torch.device("cuda", 1) and chosen == [1]
    assert device_of_this_rank(torch.device("cpu")) == torch.device("cpu")  # gloo processes share the CPU


def test_a_gpu_index_or_too_few_gpus_under_torchrun_is_one_clear_error(monkeypatch):
    from lowbit.distributed import device_of_this_rank
    from lowbit.errors import ConfigError

    _launched_as(monkeypatch, local_rank=0, local_world=2, gpus=2)
    with pytest.raises(ConfigError, match="every process on one GPU.*CUDA_VISIBLE_DEVICES"):
        device_of_this_rank(torch.device("cuda", 0))
    _launched_as(monkeypatch, local_rank=2, local_world=3, gpus=2)
    with pytest.raises(ConfigError, match="LOCAL_RANK 2 has no GPU of its own: 2 CUDA device"):
        device_of_this_rank(torch.device("cuda"))


def test_without_a_launch_the_device_is_left_as_given(monkeypatch):
    from lowbit.distributed import device_of_this_rank

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert device_of_this_rank(torch.device("cuda", 1)) == torch.device("cuda", 1)


FAILS_ON_RANK_1 = """
import os, sys
import torch
from lowbit import distributed, train
from lowbit.errors import ConfigError


def training(config):  # rank 1 fails on its own while rank 0 waits in a collective (as in a DDP step)
    distributed.setup(torch.device("cpu"))
    if distributed.rank() == 1:
        raise ConfigError("a failure of rank 1 alone (simulated)")
    distributed.sum_across([1.0], torch.device("cpu"))


train.run = training
from lowbit.cli import main

sys.exit(main(["train", "--recipe", "bc-det", "--train-subset", "64", "--test-subset", "32", "--no-progress"]))
"""


@pytest.mark.slow
def test_a_rank_that_fails_alone_ends_the_run_without_waiting_for_the_timeout(tmp_path):
    import time

    script = tmp_path / "fails_on_rank_1.py"
    script.write_text(FAILS_ON_RANK_1)
    env = {**_env(), "LOWBIT_DIST_TIMEOUT": "90"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.perf_counter() - started
    assert done.returncode != 0
    assert "error: a failure of rank 1 alone (simulated)" in done.stderr
    # without distributed.abandon, rank 1 waits at the teardown barrier for the whole timeout (90 s) and torchrun,
    # which stops the others only once a worker has exited, waits with it
    assert elapsed < 60, f"took {elapsed:.0f} s: the failed rank waited for the others"


def test_a_failed_rank_skips_the_teardown_barrier_and_leaves_through_stop(monkeypatch):
    from lowbit import cli, distributed

    calls = []
    monkeypatch.setattr(distributed, "_abandoned", False)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.abandon()
    distributed.teardown()
    assert calls == [] and distributed.abandoned()

    def stop(code):
        calls.append(("stop", code))
        raise SystemExit(code)

    monkeypatch.setattr(distributed, "stop", stop)
    with pytest.raises(SystemExit):
        cli._leave(2)
    assert calls == [("stop", 2)]
