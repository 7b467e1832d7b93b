"""Min-max (GEMMLOWP / Banner) quantization: agreement with torch's fake-quantize, ranges, stochastic gradients."""

import pytest
import torch

from lowbit.quantizers import MinMaxQuantizer
from lowbit.quantizers.minmax import affine_params


def test_deterministic_8bit_agrees_with_torch_fake_quantize_per_tensor():
    x = torch.randn(64, 33) * 3 + 0.7
    q = MinMaxQuantizer(bits=8, granularity="tensor")
    scale, zero_point = affine_params(x.min(), x.max(), 255)
    expected = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero_point.item()), 0, 255)
    assert torch.equal(q(x), expected)


def test_per_channel_agrees_with_torch_fake_quantize_per_channel():
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 3, 16).reshape(-1, 1, 1, 1)
    q = MinMaxQuantizer(bits=8, granularity="channel")
    low, high = torch.aminmax(w.reshape(16, -1), dim=1)
    scale, zero_point = affine_params(low, high, 255)
    expected = torch.fake_quantize_per_channel_affine(w, scale, zero_point.to(torch.int32), 0, 0, 255)
    assert torch.equal(q(w), expected)


def test_zero_is_exactly_representable_and_range_is_covered():
    x = torch.rand(1000) * 5 + 1  # all positive: the range is widened to include zero
    out = MinMaxQuantizer(bits=4, granularity="tensor")(torch.cat([x, torch.zeros(1)]))
    assert out[-1].item() == 0.0
    assert (out[:-1] - x).abs().max() <= 6 / 15 / 2 + 1e-6


def test_activation_ranges_are_per_sample_means_with_running_estimate_in_eval():
    q = MinMaxQuantizer(bits=8, role="activation", momentum=0.1)
    batch = torch.stack([torch.linspace(-1, 1, 50), torch.linspace(-3, 3, 50)])
    q(batch)
    assert q.running_min.item() == pytest.approx(-2.0) and q.running_max.item() == pytest.approx(2.0)
    q(batch * 2)  # new batch mean range [-4, 4]: running = 0.9 * 2 + 0.1 * 4
    assert q.running_max.item() == pytest.approx(2.2)
    q.eval()
    big = torch.tensor([[10.0, -10.0]])
    assert q(big)[0].tolist() == pytest.approx([2.2, -2.2], abs=0.02)  # clipped to the running range


def test_stochastic_gradient_rounding_is_unbiased():
    q = MinMaxQuantizer(bits=4, role="gradient", seed=1)
    assert q.rounding.value == "stochastic"
    g = torch.linspace(-1, 1, 7).repeat(50_000, 1)
    assert torch.allclose(q(g).mean(0), g[0], atol=3e-3)


def test_identity_straight_through_estimator():
    x = torch.randn(20, requires_grad=True)
    MinMaxQuantizer(bits=2)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(20))


def test_encoding_matches_forward_per_channel():
    q = MinMaxQuantizer(bits=6, granularity="channel")
    w = torch.randn(4, 9)
    encoded = q.encode(w)
    assert encoded.axis == 0 and int(encoded.indices.max()) <= 63
    assert torch.allclose(encoded.dequantize(), q(w))


def _gradient_with_small_entries() -> torch.Tensor:
    """A gradient-like tensor: a few large entries set the global range [-1, 3], most entries are far smaller than
    one 8-bit step (4/255)."""
    g = torch.full((1000,), 1e-4)
    g[::2] = -3e-4
    g[0], g[1] = -1.0, 3.0
    return g


def test_integer_zero_point_rounds_small_gradients_to_exactly_zero():
    q = MinMaxQuantizer(bits=8, role="gradient", rounding="nearest", zero_point="integer")
    out = q(_gradient_with_small_entries())
    assert torch.all(out[2:] == 0)


def test_exact_zero_point_without_a_zero_level_biases_small_gradients_under_nearest_rounding():
    # why the deterministic ablation needs the integer zero point: -m/Δ = 255/4 = 63.75 is no integer, so 0 is not a
    # level and every small entry lands on the same non-zero level (a constant bias of about a quarter step)
    q = MinMaxQuantizer(bits=8, role="gradient", rounding="nearest", zero_point="exact")
    out = q(_gradient_with_small_entries())[2:]
    assert torch.all(out == out[0]) and out[0] != 0
    step = 4.0 / 255
    assert abs(float(out[0])) == pytest.approx(0.25 * step, rel=1e-4)
