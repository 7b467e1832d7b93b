"""BinaryConnect binarization and Li & De's fixed grid: forward rules, probabilities, STE, encoding."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.convert import quantizers_of
from lowbit.quantizers import BinaryQuantizer, UniformQuantizer, build_quantizer


def hard_sigmoid(x):
    return torch.clamp((x + 1) / 2, 0, 1)


def test_deterministic_binarization_is_sign_with_sign_of_zero_positive():
    q = BinaryQuantizer(scale=1.0)
    w = torch.tensor([-2.0, -0.3, 0.0, 0.2, 5.0])
    assert q(w).tolist() == [-1, -1, 1, 1, 1]


@pytest.mark.parametrize("w", [-1.5, -0.8, -0.25, 0.0, 0.4, 0.9, 1.2])
def test_stochastic_binarization_hits_probability_hard_sigmoid(w):
    q = BinaryQuantizer(rounding="stochastic", seed=3)
    n = 100_000
    wb = q(torch.full((n,), w))
    p = hard_sigmoid(torch.tensor(w)).item()
    p_hat = (wb == 1).float().mean().item()
    tolerance = 5 * max((p * (1 - p) / n) ** 0.5, 1e-9)
    assert abs(p_hat - p) <= tolerance
    assert set(wb.unique().tolist()) <= {-1.0, 1.0}


def test_stochastic_binarization_with_scale_is_unbiased_inside_the_range():
    q = BinaryQuantizer(scale=0.5, rounding="stochastic", seed=0)
    w = torch.linspace(-0.5, 0.5, 11).repeat(20_000, 1)
    assert torch.allclose(q(w).mean(0), w[0], atol=0.01)


def test_binary_gradient_is_identity_without_mask():
    # BinaryConnect's STE: dC/dW := dC/dWb, even for |W| > 1 (the mask belongs to BinaryNet)
    w = torch.tensor([-3.0, -0.5, 0.5, 3.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for rounding in ("nearest", "stochastic"):
        w.grad = None
        BinaryQuantizer(rounding=rounding)(w).backward(g)
        assert torch.equal(w.grad, g)


def test_binary_eval_modes_sign_or_float_weights():
    w = torch.tensor([-0.3, 0.6])
    det = BinaryQuantizer(rounding="stochastic").eval()
    assert det(w).tolist() == [-1, 1]
    real = BinaryQuantizer(rounding="stochastic", eval_mode="float").eval()
    assert torch.equal(real(w), w)


def test_same_seed_gives_same_stochastic_binarization():
    w = torch.randn(1000)
    assert torch.equal(
        BinaryQuantizer(rounding="stochastic", seed=5)(w), BinaryQuantizer(rounding="stochastic", seed=5)(w)
    )
    assert not torch.equal(
        BinaryQuantizer(rounding="stochastic", seed=5)(w), BinaryQuantizer(rounding="stochastic", seed=6)(w)
    )


def test_binary_encoding_round_trips():
    q = BinaryQuantizer(scale=0.25)
    w = torch.randn(3, 7)
    encoded = q.encode(w)
    assert encoded.bits == 1 and encoded.indices.dtype == torch.uint8
    assert torch.equal(encoded.dequantize(), q(w))


def q_d(w, step):
    """Li & De's deterministic rounding: sign(w) * step * floor(|w|/step + 1/2)."""
    return torch.sign(w) * step * torch.floor(w.abs() / step + 0.5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=64), st.sampled_from([0.25, 0.125, 0.1]))
def test_uniform_nearest_is_li_de_deterministic_rounding(values, step):
    w = torch.tensor(values, dtype=torch.float64)
    q = UniformQuantizer(bits=8, step=step)  # range +-127 steps: no clipping for |w| <= 1
    # compare with the step as the quantizer stores it (float32): with 0.1 in double, w = 0.25 is an exact tie
    assert torch.allclose(q(w), q_d(w, float(q.step)))


def test_uniform_rounds_ties_away_from_zero():
    q = UniformQuantizer(bits=4, step=1.0)
    assert q(torch.tensor([-2.5, -0.5, 0.5, 2.5])).tolist() == [-3, -1, 1, 3]


def test_uniform_stochastic_rounding_is_unbiased_with_bounded_variance():
    step = 0.25
    q = UniformQuantizer(bits=4, step=step, rounding="stochastic", seed=2)
    w = torch.tensor([-0.61, -0.1, 0.0, 0.33, 0.74], dtype=torch.float64).repeat(100_000, 1)
    out = q(w)
    assert torch.allclose(out.mean(0), w[0], atol=3e-3)
    assert (out.var(0, unbiased=False) <= step**2 / 4 + 1e-4).all()
    on_grid = out / step
    assert torch.equal(on_grid, torch.round(on_grid))


def test_uniform_grid_is_clipped_to_its_bit_width():
    q = UniformQuantizer(bits=3, step=0.5)  # symmetric: levels -3..3 steps
    out = q(torch.tensor([-10.0, 10.0, 1.2]))
    assert out.tolist() == [-1.5, 1.5, 1.0]
    assert q.clip_range() == (-1.5, 1.5)


def test_uniform_straight_through_gradient_is_identity():
    w = torch.tensor([-10.0, 0.3, 10.0], requires_grad=True)
    UniformQuantizer(bits=3, step=0.5)(w).sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]


def test_uniform_step_from_first_tensor_and_encoding():
    q = UniformQuantizer(bits=4)
    w = torch.randn(5, 5)
    out = q(w)
    assert q.step.item() == pytest.approx(w.abs().max().item() / 7)
    encoded = q.encode(w)
    assert torch.allclose(encoded.dequantize(), out)
    assert int(encoded.indices.max()) < 2**4


# ------------------------------------------------------------------------------------- noise resolution per role
@pytest.mark.parametrize("role", ["weight", "bias", "activation", "gradient"])
def test_stochastic_rounding_noise_defaults_to_24_bits_and_16_is_an_explicit_choice(role, recwarn):
    spec = {"type": "uniform", "bits": 4, "rounding": "stochastic", "signed": True}
    assert build_quantizer(spec, role=role).noise.resolution_bits == 24
    assert build_quantizer({**spec, "noise_bits": 24}, role=role).noise.resolution_bits == 24
    assert not recwarn.list
    assert build_quantizer({**spec, "noise_bits": 16}, role=role).noise.resolution_bits == 16
    stored = role in ("weight", "bias")  # 16-bit noise on a stored value loses flips below 2^-17: warned
    warned = [str(w.message).startswith(f"noise_bits: 16 on a {role}") for w in recwarn.list]
    assert warned == ([True] if stored else [])


def test_banner_asks_for_the_fast_noise_on_its_gradients_only():
    model = lowbit.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)), "banner-w8a8g8")
    bits = {q.role: q.noise.resolution_bits for q in quantizers_of(model) if q.noise is not None}
    assert bits == {"gradient": 16}


def test_binary_weights_flip_with_a_probability_below_2_to_the_minus_17():
    # SR on {-H, +H}: a weight 1e-5 H above -H becomes +H with probability 5e-6 (< 2^-17): 20 flips in 4M draws
    # with the weight role's 24-bit default, none with the 16-bit source
    w = torch.full((4_000_000,), -1.0 + 1e-5)
    counts = {}
    for bits in (24, 16):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 16 bits on a weight is warned about: the point of this test
            q = build_quantizer({"type": "binary", "rounding": "stochastic", "noise_bits": bits}, role="weight", seed=3)
        counts[bits] = int((q.train()(w) > 0).sum())
    assert abs(counts[24] - 20) < 4 * 20**0.5 and counts[16] == 0


def test_noise_bits_without_stochastic_rounding_warns():
    with pytest.warns(UserWarning, match="noise_bits: 16 has no effect"):
        build_quantizer({"type": "binary", "noise_bits": 16}, role="weight")
