"""Li & De's R/SR/BC share BinaryConnect's per-layer Glorot grid, on which R's updates cross a level."""

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.quantizers import build_quantizer
from lowbit.train import GridWeights, TrainConfig, run
from lowbit.train.policies import glorot_lr_scale

CHANCE = 0.1


def test_glorot_scale_is_set_from_the_weight_shape_and_saved():
    layer = lowbit.quantize(nn.Sequential(nn.Linear(64, 256, bias=False)), "r-adam")[0]
    h = math.sqrt(1.5 / (64 + 256))
    assert layer.weight_quantizer.scale == pytest.approx(h)
    assert layer.weight_quantizer.clip_range() == pytest.approx((-h, h))
    assert layer.weight_quantizer(layer.weight).unique().tolist() == pytest.approx([-h, h])
    assert glorot_lr_scale(layer.weight) == pytest.approx(1 / h)  # BinaryConnect pairs H = 'Glorot' with 1/H
    conv = build_quantizer({"type": "binary", "scale": "glorot"}, role="weight")
    conv(torch.randn(32, 16, 3, 3))
    assert conv.scale == pytest.approx(math.sqrt(1.5 / ((32 + 16) * 9)))
    fresh = build_quantizer({"type": "binary", "scale": "glorot"}, role="weight")
    fresh.load_state_dict(conv.state_dict())
    assert (
        fresh.scale == conv.scale == float(torch.tensor(conv.scale, dtype=torch.float32))
        and fresh.deterministic_grid() == conv.deterministic_grid()
    )


def test_glorot_scale_needs_a_weight():
    with pytest.raises(ConfigError, match="glorot"):
        build_quantizer({"type": "binary", "scale": "glorot"}, role="activation")
    with pytest.raises(ConfigError, match="positive number or 'glorot'"):
        build_quantizer({"type": "binary", "scale": "big"}, role="weight")


def _train_counting_flips(monkeypatch, recipe, changes=None):
    """Train ``recipe`` for one epoch on digits; count, per layer, the stored weights that change after each ADAM
    step."""
    flips, steps, last = {}, [0], {}
    update = GridWeights.update_weights

    def counting(policy):
        update(policy)
        steps[0] += 1
        for i, (weight, _) in enumerate(policy._weighted):
            flips.setdefault(i, 0)
            if i in last:
                flips[i] += int((last[i] != weight).sum())
            last[i] = weight.detach().clone()

    monkeypatch.setattr(GridWeights, "update_weights", counting)
    config = TrainConfig(
        recipe=recipe,
        data="digits",
        model="mlp",
        model_options={"hidden": 256, "depth": 2},  # the Li & De table's MLP
        epochs=1,
        train_subset=800,
        quiet=True,
        changes=changes or {},
    )
    accuracy = run(config)["test_accuracy"]
    assert steps[0] > 20  # the policy ran after every step (one epoch of 720 examples in batches of 32)
    return accuracy, [flips[i] for i in sorted(flips)]


@pytest.mark.slow
def test_r_adam_flips_weights_and_learns_on_the_glorot_grid(monkeypatch):
    accuracy, flips = _train_counting_flips(monkeypatch, "r-adam")
    # an ADAM step (normalised size up to about 1) moves a weight by lr / H = lr (fan_in + fan_out) / 1.5 units of
    # H; from -H it must travel H to round to +H. The digits MLP 64-256-256-10 at lr 3e-3: 0.64, 1.02 and 0.53 units
    # (docs/methods.md): the middle layer is the one whose steps reach a level
    lr = lowbit.load_recipe("r-adam").train["optimizer"]["lr"]
    units = [lr * fans / 1.5 for fans in (64 + 256, 256 + 256, 256 + 10)]
    assert [u >= 1 for u in units] == [False, True, False]
    assert flips[1] > 0
    assert accuracy > 2 * CHANCE  # above chance; it need not be good


@pytest.mark.slow
def test_r_adam_never_flips_a_unit_grid_at_adams_learning_rate(monkeypatch):
    # why the recipes use the Glorot grid: on {-1, +1} an ADAM step of ~3e-3 never crosses half the spacing
    _, flips = _train_counting_flips(
        monkeypatch, "r-adam", {"quantize.weight.scale": 1.0, "train.policy.lr_scale": "none"}
    )
    assert len(flips) == 3 and sum(flips) == 0
