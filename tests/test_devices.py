"""Device selection and what follows the model's device, checked on the CPU (tests/test_cuda.py runs on a GPU)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn

from lowbit.cli.train import add_parser
from lowbit.devices import on_cpu, resolve_device
from lowbit.errors import ConfigError
from lowbit.rounding import NoiseSource
from lowbit.train import TrainConfig


def test_auto_is_the_default_device_and_picks_cuda_only_when_available():
    assert TrainConfig().device == "auto"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["train", "--recipe", "fp32"]).device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="not available") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)


def test_noise_keeps_one_generator_per_device_and_checkpoints_each():
    noise = NoiseSource(seed=7, resolution_bits=24)
    noise.uniform_like(torch.empty(5))
    elsewhere = torch.Generator().get_state()  # stands for another device's generator state (a CPU byte tensor)
    noise.load_state({**noise.state(), "generators": {**noise.state()["generators"], "cuda:0": elsewhere}})
    state = noise.state()
    assert set(state["generators"]) == {"cpu", "cuda:0"}  # a device not used since the restore keeps its state
    assert torch.equal(state["generators"]["cuda:0"], elsewhere)


def test_noise_resumes_exactly_and_reads_the_old_single_generator_state():
    noise = NoiseSource(seed=3, resolution_bits=24)
    noise.uniform_like(torch.empty(4))
    saved = noise.state()
    expected = noise.uniform_like(torch.empty(6))
    fresh = NoiseSource(seed=99, resolution_bits=24)
    fresh.load_state(saved)
    assert torch.equal(fresh.uniform_like(torch.empty(6)), expected)
    old_format = {"seed": 3, "generator": saved["generators"]["cpu"], "words": None, "resolution_bits": 24}
    legacy = NoiseSource(seed=0, resolution_bits=24)
    legacy.load_state(old_format)
    assert torch.equal(legacy.uniform_like(torch.empty(6)), expected)


def test_a_deep_copy_of_the_noise_continues_where_the_original_is():
    noise = NoiseSource(seed=5, resolution_bits=24)
    noise.uniform_like(torch.empty(3))
    twin = copy.deepcopy(noise)
    assert torch.equal(twin.uniform_like(torch.empty(8)), noise.uniform_like(torch.empty(8)))
    assert twin._generators["cpu"] is not noise._generators["cpu"]


def test_on_cpu_returns_a_cpu_model_itself():
    model = nn.Linear(2, 2)
    assert on_cpu(model) is model
