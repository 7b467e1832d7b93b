"""The zoo of users' architectures (tests/model_zoo.py) builds and runs in float: the baseline the conversion tests
start from."""

import pytest
import torch

from model_zoo import ZOO, build


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_trains_in_float(name):
    model, x = build(name)
    logits = model(x)
    assert logits.shape == (x.shape[0], ZOO[name][2]) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
