"""LSQ (Esser et al. 2020): eq. 3 with its gradient scale, initialisation, sign, positivity of the step."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quantizers import LSQQuantizer


def grad_scale(x, g):
    return g * x + (x - g * x).detach()


def round_pass(x):
    return x + (torch.round(x) - x).detach()


def reference_lsq(v, s, q_n, q_p, g):
    """The reimplementations' pattern: grad_scale on s, then round_pass(clamp(v / s)) * s."""
    s_g = grad_scale(s, g)
    return round_pass(torch.clamp(v / s_g, -q_n, q_p)) * s_g


def closed_form(v, s, q_n, q_p, g, upstream):
    """Paper eq. 3 times the gradient scale g, and the masked STE for v."""
    x = v / s
    inside = (x > -q_n) & (x < q_p)
    dv = upstream * inside
    ds_elementwise = torch.where(inside, torch.round(x) - x, torch.where(x <= -q_n, -float(q_n), float(q_p)))
    return dv, g * (upstream * ds_elementwise).sum()


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    signed=st.booleans(),
    seed=st.integers(0, 10_000),
    step=st.floats(0.01, 2.0),
    spread=st.floats(0.1, 20.0),
)
def test_lsq_gradients_equal_eq3_times_gradient_scale(bits, signed, seed, step, spread):
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randn(257, generator=gen, dtype=torch.float64) * spread).requires_grad_()
    upstream = torch.randn(257, generator=gen, dtype=torch.float64)
    q = LSQQuantizer(bits=bits, signed=signed, init_step=step).double()
    out = q(v)
    out.backward(upstream)
    q_n, q_p = q.q_n, q.q_p
    g = 1 / math.sqrt(v.numel() * q_p)
    s = q.step.detach().clone()
    dv, ds = closed_form(v.detach(), s, q_n, q_p, g, upstream)
    assert torch.allclose(v.grad, dv)
    assert q.step.grad.item() == pytest.approx(ds.item(), rel=1e-9, abs=1e-12)
    # and the fused Function agrees with the autograd reference, forward and backward
    s_ref = s.clone().requires_grad_()
    v_ref = v.detach().clone().requires_grad_()
    ref = reference_lsq(v_ref, s_ref, q_n, q_p, g)
    ref.backward(upstream)
    # grad_scale(s) = g s + (s - g s) may differ from s by an ulp, hence allclose
    assert torch.allclose(out.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(v_ref.grad, v.grad)
    assert s_ref.grad.item() == pytest.approx(q.step.grad.item(), rel=1e-9, abs=1e-12)


def test_both_clip_regions_give_minus_qn_and_plus_qp():
    q = LSQQuantizer(bits=2, signed=True, init_step=1.0, grad_scale="none")  # levels -2, -1, 0, 1
    v = torch.tensor([-5.0, 5.0], requires_grad=True)
    q(v)[0].backward()
    assert q.step.grad.item() == -2.0  # -Q_N below the range
    q.step.grad = None
    q(v)[1].backward()
    assert q.step.grad.item() == 1.0  # +Q_P above the range
    assert v.grad.tolist() == [0.0, 0.0]  # masked STE outside


def test_levels_are_asymmetric_for_signed_two_bits():
    q = LSQQuantizer(bits=2, signed=True, init_step=0.5)
    assert sorted(q(torch.linspace(-3, 3, 101)).unique().tolist()) == [-1.0, -0.5, 0.0, 0.5]


def test_step_initialisation_from_weights():
    w = torch.randn(64, 64)
    q = LSQQuantizer(bits=4)
    q(w)
    assert q.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-6)


def test_activation_sign_is_decided_from_the_first_batch():
    relu_out = LSQQuantizer(bits=4, role="activation")
    relu_out(torch.rand(8, 16))
    assert not relu_out.signed and relu_out.q_p == 15
    raw_input = LSQQuantizer(bits=4, role="activation")
    raw_input(torch.randn(8, 16))
    assert raw_input.signed and (raw_input.q_n, raw_input.q_p) == (8, 7)


def test_sign_and_step_survive_state_dict_round_trip():
    a = LSQQuantizer(bits=3, role="activation")
    a(torch.randn(4, 10))
    b = LSQQuantizer(bits=3, role="activation")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 10)
    assert b.signed and torch.equal(a(x), b(x))


def test_step_is_kept_positive():
    q = LSQQuantizer(bits=4, init_step=0.1)
    with torch.no_grad():
        q.step.fill_(-0.3)
    q.project_()
    assert q.step.item() > 0


def test_gradient_scale_choices():
    x = torch.randn(32, 100)
    q = LSQQuantizer(bits=4, role="activation", signed=False)
    assert q.gradient_scale(x) == pytest.approx(1 / math.sqrt(3200 * 15))
    q.grad_scale = "per_sample"
    assert q.gradient_scale(x) == pytest.approx(1 / math.sqrt(100 * 15))
    q.grad_scale = "none"
    assert q.gradient_scale(x) == 1.0


def test_encoding_matches_forward():
    q = LSQQuantizer(bits=3)
    w = torch.randn(10, 10)
    assert torch.equal(q.encode(w).dequantize(), q(w).detach())


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    bits=st.sampled_from([2, 4, 8]),
    signed=st.booleans(),
    seed=st.integers(0, 10_000),
    step=st.floats(0.001, 2.0),
    log_spread=st.floats(-2.0, 4.0),
    n=st.sampled_from([0, 1, 257]),
)
def test_lsq_in_half_precision_is_lsq_in_float32_on_the_same_values(dtype, bits, signed, seed, step, log_spread, n):
    """float16/bfloat16 inputs are quantized (and the step gradient computed) in float32: the same step gradient as
    for the float32 copy of the input, bit for bit, and the float32 output rounded to the input's dtype."""
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randn(n, generator=gen) * 10.0**log_spread).clamp(-6e4, 6e4).to(dtype).requires_grad_()
    upstream = torch.randn(n, generator=gen).to(dtype)
    q = LSQQuantizer(bits=bits, signed=signed, init_step=step)
    out = q(v)
    out.backward(upstream)
    v32 = v.detach().float().requires_grad_()
    q32 = LSQQuantizer(bits=bits, signed=signed, init_step=step)
    out32 = q32(v32)
    out32.backward(upstream.float())
    assert out.dtype == dtype and torch.equal(out, out32.to(dtype))
    assert v.grad.dtype == dtype and torch.equal(v.grad, v32.grad.to(dtype))
    assert torch.isfinite(q.step.grad) and torch.equal(q.step.grad, q32.step.grad)
