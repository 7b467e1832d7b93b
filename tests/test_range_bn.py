"""Range BatchNorm (Banner et al. 2018): equals BN up to a constant on Gaussian input, worse on heavy tails."""

import math

import pytest
import torch
from torch import nn

from lowbit.nn import RangeBatchNorm1d, RangeBatchNorm2d
from lowbit.nn.range_bn import range_scale_constant, scale_per_std


def test_c_of_n():
    assert range_scale_constant(1000) == pytest.approx(1 / math.sqrt(2 * math.log(1000)))


@pytest.mark.parametrize("estimator, expected_ratio", [("paper", (0.5, 0.62)), ("chunked", (0.95, 1.15))])
def test_range_bn_matches_batchnorm_up_to_a_constant_on_gaussian_input(estimator, expected_ratio):
    torch.manual_seed(0)
    x = torch.randn(64, 8, 12, 12) * torch.linspace(0.5, 4, 8).reshape(1, -1, 1, 1) + 3
    bn = nn.BatchNorm2d(8, affine=False)(x)
    rbn = RangeBatchNorm2d(8, affine=False, estimator=estimator)(x)
    for c in range(8):
        ratio = (rbn[:, c].std() / bn[:, c].std()).item()
        assert expected_ratio[0] < ratio < expected_ratio[1]
        # same up to that constant: the ratio is the same for every element
        assert torch.allclose(rbn[:, c], bn[:, c] * ratio, atol=1e-4)


def test_paper_bound_on_the_scale_for_gaussian_input():
    # 0.325 sigma <= C(n) range <= 2 sigma
    torch.manual_seed(0)
    for n in (200, 5_000, 100_000):
        x = torch.randn(n, 1) * 2.5
        bn = RangeBatchNorm1d(1, affine=False)
        bn(x)
        scale = bn.running_scale.item()  # first batch from a start of 1: 0.9 * 1 + 0.1 * s
        s = (scale - 0.9) / 0.1
        assert 0.325 * 2.5 <= s <= 2 * 2.5


def test_heavy_tailed_input_is_normalised_worse_than_gaussian():
    torch.manual_seed(0)
    gaussian = torch.randn(4096, 1)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((4096, 1))
    cauchy = torch.distributions.StudentT(1.5).sample((4096, 1))

    def output_std(x):
        return RangeBatchNorm1d(1, affine=False)(x).std().item()

    # the output std collapses when a few extreme values inflate the range
    assert output_std(cauchy) < output_std(laplace) < output_std(gaussian)


def test_running_statistics_are_used_in_eval():
    bn = RangeBatchNorm2d(3, momentum=1.0)
    x = torch.randn(8, 3, 5, 5) + 2
    train_out = bn(x)
    bn.eval()
    assert torch.allclose(bn(x), train_out, atol=1e-5)  # momentum 1: running stats = this batch's


@pytest.mark.parametrize("estimator", ["paper", "chunked"])
def test_conversion_from_a_trained_batchnorm_computes_the_same_function(estimator):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    for _ in range(50):  # trained statistics far from the defaults (mean 0, variance 1)
        bn(torch.randn(64, 4, 8, 8) * torch.tensor([0.5, 2.0, 3.0, 7.0])[:, None, None] + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    rbn = RangeBatchNorm2d.from_batchnorm(bn, estimator=estimator)
    k = scale_per_std(estimator)
    # running scale from running_var with the estimator's range/σ relation (k σ), gamma absorbing the same k
    torch.testing.assert_close(rbn.running_scale + rbn.eps, k * torch.sqrt(bn.running_var + bn.eps))
    torch.testing.assert_close(rbn.weight, k * bn.weight)
    assert torch.equal(rbn.running_mean, bn.running_mean) and torch.equal(rbn.bias, bn.bias)
    x = torch.randn(256, 4, 4, 4) * torch.tensor([0.5, 2.0, 3.0, 7.0])[:, None, None] + 1  # n = 4096 per channel
    bn.eval(), rbn.eval()
    torch.testing.assert_close(rbn(x), bn(x), atol=1e-5, rtol=1e-5)  # eval: BN's output exactly
    bn.train(), rbn.train()
    with torch.no_grad():
        ratio = rbn(x).sub(rbn.bias[:, None, None]).std() / bn(x).sub(bn.bias[:, None, None]).std()
    assert abs(float(ratio) - 1) < 0.05  # training: the batch scale is k σ on Gaussian data


@pytest.mark.parametrize(("estimator", "n", "low", "high"), [("paper", 200, 1.65, 1.72), ("paper", 100000, 1.8, 1.85)])
def test_scale_per_std_matches_a_gaussian_simulation(estimator, n, low, high):
    # ALGORITHMS.md 4.3: C(n)·range ≈ 1.70–1.82 σ for n = 200 … 1e5
    assert low < scale_per_std(estimator, n) < high
    torch.manual_seed(0)
    samples = torch.randn(200, n, dtype=torch.float64)
    simulated = float(((samples.amax(1) - samples.amin(1)) * range_scale_constant(n)).mean())
    assert scale_per_std(estimator, n) == pytest.approx(simulated, rel=0.01)


def test_wrong_input_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="expects a 4-d input"):
        RangeBatchNorm2d(3)(torch.randn(2, 3))


@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (16, 6), (8, 3, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_closed_form_backward_equals_autograd_through_mean_max_and_min(shape, affine):
    torch.manual_seed(0)
    cls = RangeBatchNorm2d if len(shape) == 4 else RangeBatchNorm1d
    bn = cls(shape[1], affine=affine).double()
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*shape, dtype=torch.float64)
    y = bn(x)
    y.backward(upstream)
    fused = [x.grad.clone()] + ([bn.weight.grad.clone(), bn.bias.grad.clone()] if affine else [])
    # reference: the formula written with autograd ops (gradients through mean, amax and amin)
    x.grad = None
    params = [p.detach().clone().requires_grad_() for p in (bn.weight, bn.bias)] if affine else []
    dims = [0] + list(range(2, x.dim()))
    n = x.numel() // shape[1]
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dims)
    sigma = (x.amax(dims) - x.amin(dims)) / math.sqrt(2 * math.log(n)) + bn.eps
    reference = (x - mean.reshape(view)) / sigma.reshape(view)
    if affine:
        reference = reference * params[0].reshape(view) + params[1].reshape(view)
    reference.backward(upstream)
    assert torch.allclose(y, reference)
    for got, expected in zip(fused, [x.grad] + [p.grad for p in params]):
        assert torch.allclose(got, expected, atol=1e-12)
