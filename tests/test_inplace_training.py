"""Item 4 of issue 13: every shipped recipe trains torchvision-style CNNs, whose activations after BatchNorm are
in place (``ReLU(inplace=True)``, ``ReLU6``, ``SiLU``), for a few steps with a finite loss."""

import math

import pytest
import torch

import lowbit
from lowbit.nn.range_bn import RangeBatchNorm2d
from lowbit.quantizers import build_quantizer
from lowbit.train import TrainingStep
from model_zoo import ZOO, build

CNNS = ("resnet18", "mobilenet_v2", "efficientnet_b0")


@pytest.mark.parametrize("estimator", ["paper", "chunked"])
@pytest.mark.parametrize("grad", [False, True])
def test_range_bn_output_can_be_modified_in_place(estimator, grad):
    # the output of a custom autograd Function must not be a view, or an in-place ReLU after it is refused
    grad_quantizer = build_quantizer({"type": "uniform", "bits": 8}, role="gradient") if grad else None
    bn = RangeBatchNorm2d(4, estimator=estimator, grad_quantizer=grad_quantizer)
    x = torch.randn(8, 4, 6, 6)
    in_place, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.relu_(bn(in_place)).sum().backward()
    torch.relu(bn(reference)).sum().backward()
    torch.testing.assert_close(in_place.grad, reference.grad)  # in place or not, the same gradient


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r.name for r in lowbit.list_recipes()])
@pytest.mark.parametrize("name", CNNS)
def test_every_recipe_trains_torchvision_style_cnns(name, recipe):
    model, x = build(name, batch=4)
    y = torch.randint(0, ZOO[name][2], (x.shape[0],))
    qmodel = lowbit.quantize(model, recipe)
    step = TrainingStep.from_recipe(qmodel, recipe, x)
    for _ in range(3):
        loss = step(x, y).loss.item()
        assert math.isfinite(loss), f"{name} with {recipe}: loss {loss}"
