"""Quantized layers work under torch.compile and match eager outputs and gradients."""

import copy

import pytest
import torch

import lowbit
from lowbit.models import build_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "mp-u3", "bc-det"])
def test_compiled_quantized_model_matches_eager(recipe):
    # resnet8 has no max pooling: with quantized inputs and weights, max-pool windows contain exact ties, and the
    # compiled kernel may route the gradient to another (equally valid) maximum than the eager one
    torch.manual_seed(0)
    model = lowbit.quantize(build_model("resnet8", (1, 12, 12), 10), recipe, seed=1).train()
    x = torch.randn(16, 1, 12, 12)
    model(x)  # data-dependent initialisation happens eagerly
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin)
    eager_out, compiled_out = model(x), compiled(x)
    assert torch.allclose(eager_out, compiled_out, atol=1e-5)
    upstream = torch.randn_like(eager_out)
    eager_out.backward(upstream)
    compiled_out.backward(upstream)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-4), name


def test_stochastic_gradient_quantization_stays_fresh_and_unbiased_when_compiled():
    from lowbit.nn import QuantLinear
    from lowbit.quantizers import MinMaxQuantizer

    torch.manual_seed(0)
    layer = QuantLinear(8, 3, grad_quantizer=MinMaxQuantizer(bits=2, role="gradient", seed=0))
    compiled = torch.compile(layer)
    x = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(4, 3)
    grads = []
    for _ in range(200):
        x.grad = None
        compiled(x).backward(upstream)
        grads.append(x.grad.clone())
    exact = upstream @ layer.weight.detach()
    assert len({tuple(g.flatten().tolist()) for g in grads[:20]}) > 10  # new noise every backward
    assert torch.allclose(torch.stack(grads).mean(0), exact, atol=0.05)
