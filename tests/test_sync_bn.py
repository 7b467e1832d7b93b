"""Synchronized BatchNorm and Range BN (lowbit.nn.sync_bn): on 2 gloo ranks with half the batch each they compute what
the plain layer computes on the whole batch in one process (outputs, input gradients, gamma/beta gradients summed
over the ranks, running statistics), ties of the range included; the conversion keeps the model's state; the
recipe option trains end to end and its checkpoint loads in one process."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.nn import RangeBatchNorm1d, RangeBatchNorm2d
from lowbit.nn.sync_bn import (
    SynchronizedBatchNorm2d,
    SynchronizedRangeBatchNorm2d,
    synchronize_batchnorms,
    unsynchronize_batchnorms,
)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
WORLD = 2
#: float32 statistics of a few hundred values: sums in another order differ by a few ulps of O(1) numbers
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _layer(kind: str, channels: int) -> nn.Module:
    return {
        "bn1d": lambda: nn.BatchNorm1d(channels),
        "bn2d": lambda: nn.BatchNorm2d(channels),
        "bn2d-cumulative": lambda: nn.BatchNorm2d(channels, momentum=None),
        "range1d": lambda: RangeBatchNorm1d(channels),
        "range2d": lambda: RangeBatchNorm2d(channels),
    }[kind]()


def _inputs(kind: str, steps: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step: a global batch of 8 and the fixed upstream gradient (loss = Σ y·w). For Range BN the extremes are
    placed on purpose: channel 0's max only on rank 1, channel 1's max tied between rank 0 and rank 1 (the reference
    gives the range gradient to the first, rank 0's), channel 2's min tied within rank 1 and its max on rank 0."""
    generator = torch.Generator().manual_seed(7)
    shape = (8, 3) if kind.endswith("1d") else (8, 3, 4, 4)
    batches = []
    for _ in range(steps):
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        if kind.startswith("range"):
            at = () if len(shape) == 2 else (1, 2)  # one position per sample and channel
            x[(6, 0, *at)] = 9.0  # rank 1 holds channel 0's max
            x[(1, 1, *at)] = x[(5, 1, *at)] = 7.0  # tie across ranks: samples 1 (rank 0) and 5 (rank 1)
            x[(4, 2, *at)] = x[(7, 2, *at)] = -8.0  # tie within rank 1
            x[(0, 2, *at)] = 6.0
        batches.append((x, torch.randn(shape, generator=generator)))
    return batches


def _run(layer: nn.Module, batches, shard: slice) -> dict:
    """Training steps of ``layer`` on ``shard`` of each batch: outputs, input and parameter gradients per step, the
    running statistics after each."""
    record: dict = {"y": [], "dx": [], "dgamma": [], "dbeta": [], "buffers": []}
    for x, w in batches:
        x = x[shard].clone().requires_grad_(True)
        layer.zero_grad()
        y = layer(x)
        (y * w[shard]).sum().backward()
        record["y"].append(y.detach())
        record["dx"].append(x.grad)
        record["dgamma"].append(layer.weight.grad.clone())
        record["dbeta"].append(layer.bias.grad.clone())
        record["buffers"].append({k: v.clone() for k, v in layer.state_dict().items()})
    return record


def _rank(rank: int, kind: str, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        layer = _layer(kind, 3)
        synchronize_batchnorms(layer_holder := nn.Sequential(layer))
        assert type(layer_holder[0]).__name__.startswith("Synchronized")
        half = 8 // WORLD
        record = _run(layer_holder[0], _inputs(kind), slice(rank * half, (rank + 1) * half))
        torch.save(record, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(kind: str, tmp_path: Path) -> list[dict]:
    out = str(tmp_path / "record")
    mp.spawn(_rank, args=(kind, str(tmp_path / "rendezvous"), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bn1d", "bn2d", "bn2d-cumulative", "range1d", "range2d"])
def test_two_ranks_with_half_the_batch_each_equal_one_process_with_the_whole_batch(kind, tmp_path):
    torch.manual_seed(0)
    reference = _run(_layer(kind, 3), _inputs(kind), slice(None))
    ranks = _spawn(kind, tmp_path)
    for step in range(len(reference["y"])):
        # outputs and input gradients: each rank's rows of the one-process result
        torch.testing.assert_close(torch.cat([r["y"][step] for r in ranks]), reference["y"][step], **TOLERANCE)
        torch.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), reference["dx"][step], **TOLERANCE)
        # parameter gradients: this rank's sums, whose sum over the ranks (DDP averages a per-rank mean loss) is the
        # whole batch's
        for name in ("dgamma", "dbeta"):
            torch.testing.assert_close(sum(r[name][step] for r in ranks), reference[name][step], **TOLERANCE)
        for r in ranks:  # running statistics: the global batch's, on every rank
            for key, value in reference["buffers"][step].items():
                torch.testing.assert_close(r["buffers"][step][key], value, **TOLERANCE)


@pytest.mark.slow
def test_range_gradient_goes_to_one_rank_per_extreme_with_ties(tmp_path):
    """The range term of dL/dx lands on exactly one element per extreme over both ranks, the first in the
    concatenated batch: a one-process check of the tie rule, independent of the reference above."""
    ranks = _spawn("range1d", tmp_path)
    x, w = _inputs("range1d")[0]
    dx = torch.cat([r["dx"][0] for r in ranks])
    # without the range term dL/dx = a (g - Σg/n): the residual is the range term alone
    layer = RangeBatchNorm1d(3)
    scale = (x.amax(0) - x.amin(0)) * lowbit.nn.range_bn.range_scale_constant(8) + layer.eps
    smooth = (w - w.mean(0)) / scale
    residual = (dx - smooth).abs() > 1e-4
    assert residual.sum(0).tolist() == [2, 2, 2]  # one max and one min per channel
    assert residual[6, 0]  # channel 0's max, on rank 1
    assert residual[1, 1] and not residual[5, 1]  # channel 1's tied max: rank 0's sample 1, not rank 1's sample 5
    assert residual[4, 2] and not residual[7, 2]  # channel 2's tied min: the first of rank 1's two


def test_conversion_keeps_objects_parameters_and_state_dict_keys_and_reverts():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), RangeBatchNorm2d(4))
    parameters, keys, bn = [id(p) for p in model.parameters()], list(model.state_dict()), model[1]
    x = torch.randn(4, 3, 6, 6)
    plain = model.eval()(x)
    assert synchronize_batchnorms(model) == ["1", "3"]
    assert model[1] is bn and isinstance(bn, SynchronizedBatchNorm2d) and isinstance(bn, nn.BatchNorm2d)
    assert isinstance(model[3], SynchronizedRangeBatchNorm2d) and isinstance(model[3], RangeBatchNorm2d)
    assert [id(p) for p in model.parameters()] == parameters and list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), plain)  # eval mode: the running statistics, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert synchronize_batchnorms(model) == []  # already synchronized: nothing again, no warning
    assert unsynchronize_batchnorms(model) == ["1", "3"]
    assert type(model[1]) is nn.BatchNorm2d and type(model[3]) is RangeBatchNorm2d


@pytest.mark.parametrize("plain_type", [nn.BatchNorm2d, RangeBatchNorm2d])
def test_outside_a_process_group_a_synchronized_layer_trains_as_the_plain_one(plain_type):
    plain = plain_type(3)
    synced = nn.Sequential(plain_type(3))
    synchronize_batchnorms(synced)
    x = torch.randn(6, 3, 5, 5)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.state_dict()["0.running_mean"], plain.running_mean)


def test_chunked_range_bn_is_refused_and_the_model_left_unchanged():
    model = nn.Sequential(nn.BatchNorm2d(2), RangeBatchNorm2d(2, estimator="chunked"))
    with pytest.raises(ConfigError, match="estimator 'chunked'.*estimator: paper"):
        synchronize_batchnorms(model)
    assert type(model[0]) is nn.BatchNorm2d


def test_layers_that_cannot_be_synchronized_are_named_in_a_warning():
    class MyNorm(nn.BatchNorm2d):
        pass

    with pytest.warns(UserWarning, match=r"per-rank statistics.*1 \(MyNorm\)"):
        assert synchronize_batchnorms(nn.Sequential(nn.BatchNorm2d(2), MyNorm(2))) == ["0"]
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert synchronize_batchnorms(nn.Sequential(nn.Linear(2, 2))) == []


def test_range_bn_conversion_sees_through_a_synchronized_batchnorm():
    """Float pre-training on several ranks synchronizes BatchNorm; quantizing afterwards with Range BN must still
    replace it."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    synchronize_batchnorms(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = lowbit.quantize(model, "banner-w8a8g8", example=torch.randn(2, 1, 8, 8))
    assert isinstance(quantized[1], RangeBatchNorm2d)


def test_the_option_on_one_process_says_it_has_no_effect():
    lines: list[str] = []
    config = lowbit.train.TrainConfig(
        recipe="bc-det", train_subset=64, test_subset=16, changes={"train.sync_batchnorm": True}, quiet=True
    )
    lowbit.train.Trainer(config, log=lines.append)
    assert any("train.sync_batchnorm has no effect on one process" in line for line in lines)


@pytest.mark.slow
def test_recipe_option_trains_on_two_processes_and_its_checkpoint_loads_in_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["LOWBIT_DIST_TIMEOUT"] = "60"
    command = [sys.executable, "-m", "lowbit", "train", "--recipe", "bc-det", "--nproc", "2", "--epochs", "1"]
    command += ["--train-subset", "200", "--test-subset", "50", "--no-progress", "--out", str(tmp_path / "run")]
    command += ["--set", "train.sync_batchnorm=true"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BatchNorm layers normalise over the global batch" in done.stdout
    checkpoint = lowbit.runs.load_checkpoint(str(tmp_path / "run"))
    assert checkpoint.recipe["train"]["sync_batchnorm"] is True
    model = checkpoint.restore_model()  # a plain model: the same state-dict keys
    assert not any(type(m).__name__.startswith("Synchronized") for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
