"""Uhlich et al. 2020: the partial-derivative table of U1/U2/U3, bit-width inference, boxes, power-of-two grids."""

import math

import pytest
import torch

from lowbit.quantizers import build_quantizer
from lowbit.quantizers.parametric import make_parametric

LN2 = math.log(2)


def make(parametrization, role="weight", **values):
    options = {k: values.pop(k) for k in ("pow2_step", "with_zero", "signed") if k in values}
    q = make_parametric(parametrization=parametrization, role=role, **options).double()
    with torch.no_grad():
        for name, value in values.items():
            getattr(q, name).fill_(value)
    q.initialized.fill_(True)
    q._is_initialized = True
    return q


def points():
    # inside the range (avoiding ties and the boundary) and outside it on both sides
    return torch.tensor([-3.1, -1.13, -0.4, -0.07, 0.0, 0.21, 0.52, 1.38, 2.6, 4.0], dtype=torch.float64)


def partials(q, x):
    """Per-element partial derivatives of Q(x) w.r.t. each learned scalar (autograd, one element at a time)."""
    grads = {name: [] for name in q.learned_names}
    for i in range(len(x)):
        q.zero_grad()
        q(x)[i].backward()
        for name in q.learned_names:
            grads[name].append(getattr(q, name).grad.item())
    return {name: torch.tensor(v, dtype=torch.float64) for name, v in grads.items()}


@pytest.mark.parametrize("pow2_step", [False, True])
def test_u3_partials_match_the_table(pow2_step):
    d, q_max = 0.25, 1.75
    q = make("U3", d=d, q_max=q_max, pow2_step=pow2_step)
    x = points()
    with torch.no_grad():
        out = q(x)
    inside = x.abs() <= q_max
    got = partials(q, x)
    assert torch.allclose(got["d"], torch.where(inside, (out - x) / d, 0.0))
    assert torch.allclose(got["q_max"], torch.where(inside, 0.0, torch.sign(x)))
    assert (got["d"].abs() <= 0.5 + 1e-12).all()


def test_unsigned_u3_partials_clip_at_zero_and_q_max():
    # unsigned grid [0, q_max]: below zero nothing depends on d or q_max; above q_max only q_max (dQ/dq_max = +1)
    d, q_max = 0.25, 1.75
    q = make("U3", role="activation", signed=False, d=d, q_max=q_max)
    x = points().requires_grad_()
    with torch.no_grad():
        out = q(x)
    inside = (x.detach() >= 0) & (x.detach() <= q_max)
    got = partials(q, x.detach())
    assert torch.allclose(got["d"], torch.where(inside, (out - x.detach()) / d, 0.0))
    assert torch.equal(got["q_max"], (x.detach() > q_max).double())
    q(x).sum().backward()
    assert torch.equal(x.grad, inside.double())


@pytest.mark.parametrize("pow2_step", [False, True])
def test_u1_partials_match_the_table(pow2_step):
    b, d = 4.0, 0.25  # q_max = (2^3 - 1) d = 1.75
    q = make("U1", b=b, d=d, pow2_step=pow2_step)
    x = points()
    with torch.no_grad():
        out = q(x)
    inside = x.abs() <= 1.75
    got = partials(q, x)
    assert torch.allclose(got["b"], torch.where(inside, 0.0, torch.sign(x) * 2 ** (b - 1) * LN2 * d))
    assert torch.allclose(got["d"], torch.where(inside, (out - x) / d, torch.sign(x) * (2 ** (b - 1) - 1)))


def test_u2_partials_match_the_table():
    b, q_max = 4.0, 1.75  # d = q_max / 7 = 0.25
    q = make("U2", b=b, q_max=q_max, pow2_step=False)
    x = points()
    with torch.no_grad():
        out = q(x)
    inside = x.abs() <= q_max
    got = partials(q, x)
    factor = 2 ** (b - 1) * LN2 / (2 ** (b - 1) - 1)
    assert torch.allclose(got["b"], torch.where(inside, -factor * (out - x), 0.0), atol=1e-12)
    assert torch.allclose(got["q_max"], torch.where(inside, (out - x) / q_max, torch.sign(x)), atol=1e-12)


def test_input_gradient_is_one_inside_and_zero_outside():
    q = make("U3", d=0.25, q_max=1.75)
    x = points().requires_grad_()
    q(x).sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1.75).double())


def test_unsigned_grid_clips_negative_values_to_zero_like_a_relu():
    q = make("U3", role="activation", signed=False, d=0.125, q_max=1.875)
    out = q(torch.tensor([-1.0, 0.3, 5.0], dtype=torch.float64))
    assert out.tolist() == [0.0, 0.25, 1.875]


@pytest.mark.parametrize("signed, expected", [(True, 5), (False, 4)])
def test_bit_width_inference_example(signed, expected):
    # d = 2^-3, q_max = 1.875 -> ceil(log2(15 + 1)) = 4 magnitude bits, plus one sign bit when signed
    q = make("U3", d=2**-3, q_max=1.875, signed=signed)
    assert q.bits == expected


def test_bits_of_u1_and_u2_follow_b():
    assert make("U1", b=3.0, d=0.5).bits == 3
    assert make("U2", b=6.0, q_max=2.0, pow2_step=False).bits == 6


@pytest.mark.parametrize(
    "parametrization, values", [("U1", {"d": 0.125}), ("U2", {"q_max": 1.0}), ("P1", {"q_max": 1.0})]
)
def test_learned_b_is_charged_round_clip_b_with_a_unit_straight_through_gradient(parametrization, values):
    # the official code charges U1/U2/P1/P2 round(clip(b, 2, 8)) (weights), whatever the grid it builds
    q = make(parametrization, b=4.4, **values)
    width = q.bit_width()
    width.backward()
    assert width.item() == 4.0 and q.b.grad.item() == 1.0
    assert make(parametrization, b=9.7, **values).bits == 8 and make(parametrization, b=1.2, **values).bits == 2


def test_u2_is_charged_round_b_even_when_the_snapped_step_leaves_more_levels():
    # b = 4: d = q_max / 7 = 0.1429 snaps to 2^-3, so the grid has k = round(1 / 0.125) = 8 levels per side, which
    # round(q_max/d) inference would charge ceil(log2(9)) + 1 = 5 bits; the official accounting charges b = 4
    q = make("U2", b=4.0, q_max=1.0)
    d, q_max = q.step_and_range()
    assert d.item() == 0.125 and round(q_max.item() / d.item()) == 8
    assert q.bits == 4
    encoded = q.encode(torch.linspace(-1.5, 1.5, 101, dtype=torch.float64))
    assert encoded.bits == 5 and int(encoded.indices.max()) == 16  # the codes get the bits the grid needs


def test_bit_width_has_a_straight_through_gradient_for_memory_budgets():
    q = make("U3", d=0.125, q_max=1.875)
    q.bit_width().backward()
    # b = ceil(log2(q_max/d + 1)) + 1: d/dq_max = 1/((q_max + d) ln 2) > 0, d/dd = -q_max/(d (q_max + d) ln 2) < 0
    assert q.q_max.grad.item() == pytest.approx(1 / ((1.875 + 0.125) * LN2))
    assert q.d.grad.item() == pytest.approx(-1.875 / (0.125 * 2.0 * LN2))


def test_pow2_weights_have_no_zero_level_and_one_sign_bit():
    # official code: with_zero=False for weights; 4 exponents (q_min = 2^-3 .. q_max = 1) -> 2 bits + the sign bit
    q = make("P3", q_min=2**-3, q_max=1.0)
    assert not q.with_zero and q.bits == 3
    out = q(torch.linspace(-2, 2, 400, dtype=torch.float64))
    assert sorted(set(out.tolist())) == [-1.0, -0.5, -0.25, -0.125, 0.125, 0.25, 0.5, 1.0]  # 8 levels = 2^3
    assert q(torch.tensor([0.0, 1e-6, -1e-6], dtype=torch.float64)).abs().tolist() == [0.125] * 3
    with_zero = make("P3", q_min=2**-3, q_max=1.0, with_zero=True)  # lowbit's option: a zero code, one more bit
    assert with_zero.bits == 4
    assert sorted(set(with_zero(torch.linspace(-2, 2, 401, dtype=torch.float64)).abs().tolist())) == [
        0.0,
        0.125,
        0.25,
        0.5,
        1.0,
    ]


def test_a_collapsed_pow2_range_is_charged_the_minimum_bit_width():
    # official code: max(ceil(log2(log2(q_max/q_min) + 1) + 1), bitwidth_min); q_min = q_max leaves one magnitude
    # level, whose sign alone needs 1 bit, but the layer is charged b_box's minimum (2 bits for weights)
    q = make("P3", q_min=1.0, q_max=1.0)
    assert q.b_box[0] == 2 and q.bits == 2
    assert sorted(set(q(torch.linspace(-2, 2, 41, dtype=torch.float64)).tolist())) == [-1.0, 1.0]
    above = make("P3", q_min=2**-7, q_max=1.0)  # 8 exponents: 3 bits + sign, untouched by the floor
    assert above.bits == 4


def test_pow2_activations_keep_the_zero_level_in_their_extra_bit():
    q = make("P3", role="activation", signed=False, q_min=2**-3, q_max=1.0)
    assert q.with_zero and q.bits == 3  # 2 exponent bits + the zero code
    assert sorted(set(q(torch.linspace(-2, 2, 401, dtype=torch.float64)).tolist())) == [0.0, 0.125, 0.25, 0.5, 1.0]


def test_p3_weights_at_three_bits_initialise_to_eight_levels():
    w = torch.linspace(-1.0, 1.0, 1001)
    q = build_quantizer({"type": "parametric", "parametrization": "P3", "init_bits": 3}, role="weight")
    out = q(w)
    # n = 3 - 1 (sign) = 2 exponent bits: q_min = q_max 2^-(2^2 - 1)
    assert q.bits == 3 and q.q_min.item() == q.q_max.item() * 2**-3
    assert len(set(out.tolist())) == 2**3


def test_pow2_range_gradients_go_to_the_bound_that_clips():
    x = torch.tensor([-3.0, -0.11, 0.01, 0.3, 2.0], dtype=torch.float64)
    got = partials(make("P3", q_min=2**-3, q_max=1.0), x)  # weights: no zero level, 0.01 maps to +q_min
    assert got["q_max"].tolist() == [-1.0, 0.0, 0.0, 0.0, 1.0]
    assert got["q_min"].tolist() == [0.0, -1.0, 1.0, 0.0, 0.0]
    got = partials(make("P3", q_min=2**-3, q_max=1.0, with_zero=True), x)
    assert got["q_min"].tolist() == [0.0, -1.0, 0.0, 0.0, 0.0]  # 0.01 is in the zero region: no gradient


def test_p1_and_p2_derive_the_other_bound_from_b():
    p1 = make("P1", b=4.0, q_max=1.0)  # n = 4 - 1 (sign) = 3 -> q_min = q_max 2^-(2^3 - 1)
    assert p1.range_bounds()[0].item() == pytest.approx(2**-7)
    p2 = make("P2", b=4.0, q_min=2**-7)
    assert p2.range_bounds()[1].item() == pytest.approx(1.0)
    assert p1.bits == p2.bits == 4
    p1_zero = make("P1", b=4.0, q_max=1.0, with_zero=True)  # n = 4 - 1 (sign) - 1 (zero) = 2
    assert p1_zero.range_bounds()[0].item() == pytest.approx(2**-3) and p1_zero.bits == 4


def test_parameters_are_projected_into_their_boxes_with_d_below_q_max():
    q = make("U3", d=0.5, q_max=0.01)
    q.project_()
    assert q.q_max.item() >= q.d.item()
    with torch.no_grad():
        q.d.fill_(10.0)
        q.q_max.fill_(1e4)
    q.project_()
    assert q.d.item() == 1.0 and q.q_max.item() == 127.0


def test_weight_initialisation_follows_the_official_rule():
    w = torch.randn(100) * 0.3
    w[0] = 1.3  # max |w| = 1.3 -> d0 = 2^floor(log2(1.3 / 7)) for b0 = 4
    q = build_quantizer({"type": "parametric", "parametrization": "U3", "init_bits": 4}, role="weight")
    q(w)
    assert q.d.item() == 2.0 ** math.floor(math.log2(1.3 / 7))
    assert q.q_max.item() == pytest.approx(q.d.item() * 7)
    assert q.bits == 4


def test_activation_initialisation_and_sign():
    q = build_quantizer({"type": "parametric", "parametrization": "U3"}, role="activation")
    q(torch.rand(4, 8))
    assert q.d.item() == 0.125 and q.q_max.item() == 1.875 and not q.signed and q.bits == 4


def test_gradient_clipping_to_plus_minus_d():
    q = make("U3", d=0.125, q_max=1.875)
    q(torch.tensor([100.0, -0.3], dtype=torch.float64)).sum().mul(50).backward()
    q.clip_param_grads_()
    assert abs(q.q_max.grad.item()) <= 0.125 and abs(q.d.grad.item()) <= 0.125


def test_p3_gradients_are_clipped_to_plus_minus_q_min():
    q = make("P3", q_min=2**-3, q_max=1.0)
    q(torch.tensor([100.0, -0.01], dtype=torch.float64)).sum().mul(50).backward()
    assert q.q_max.grad.item() == 50.0 and q.q_min.grad.item() == -50.0
    q.clip_param_grads_()
    assert q.q_max.grad.item() == 0.125 and q.q_min.grad.item() == -0.125


@pytest.mark.parametrize(
    "parametrization, values",
    [
        ("U1", {"b": 4.0, "d": 0.125}),
        ("U2", {"b": 4.0, "q_max": 0.875}),
        ("P1", {"b": 4.0, "q_max": 1.0}),
        ("P2", {"b": 4.0, "q_min": 2**-7}),
    ],
)
def test_bit_width_parametrizations_are_never_gradient_clipped(parametrization, values):
    # the official clip_quant_grads touches U3 and P3 only
    q = make(parametrization, **values)
    q(torch.tensor([100.0, -0.3, 1e-4], dtype=torch.float64)).sum().mul(50).backward()
    before = {name: getattr(q, name).grad.clone() for name in q.learned_names}
    assert any(g.abs().item() > q.step_value().item() for g in before.values())  # clipping would change something
    q.clip_param_grads_()
    for name in q.learned_names:
        assert torch.equal(getattr(q, name).grad, before[name]), name


def test_encoding_round_trips_uniform_and_pow2():
    w = torch.randn(6, 5, dtype=torch.float64)
    for parametrization in ("U1", "U2", "U3", "P1", "P2", "P3"):
        q = build_quantizer({"type": "parametric", "parametrization": parametrization}, role="weight").double()
        out = q(w)
        encoded = q.encode(w)
        assert int(encoded.indices.max()) < 2**encoded.bits
        assert torch.allclose(encoded.dequantize(), out), parametrization


def test_frozen_scalars_get_no_gradient_and_keep_their_value():
    q = build_quantizer({"type": "parametric", "parametrization": "U2", "init_bits": 2, "frozen": ["b"]}, role="weight")
    q(torch.randn(100)).sum().backward()
    assert q.b.grad is None and q.q_max.grad is not None
    assert q.bits == 2
    with pytest.raises(ValueError, match="cannot freeze b"):
        build_quantizer({"type": "parametric", "parametrization": "U3", "frozen": ["b"]}, role="weight")


@pytest.mark.parametrize("pow2_step", [False, True])
@pytest.mark.parametrize(
    "d_value, q_value", [(0.3, 1.7), (2.0, 1.7), (0.001, 0.5), (0.25, 0.25), (0.3, 0.1), (0.3, 300.0)]
)
def test_fused_u3_step_and_range_matches_autograd_through_the_composition(pow2_step, d_value, q_value):
    # outside both boxes, q_max below d, a tie between q_max and d: the fused node must give autograd's gradients
    from lowbit.quantizers.base import pow2_ste
    from lowbit.quantizers.parametric import D_BOX, QMAX_BOX

    q = make("U3", d=d_value, q_max=q_value, pow2_step=pow2_step)
    d, q_max = q.step_and_range()
    (2.0 * d + 3.0 * q_max).backward()

    d_ref = torch.tensor(d_value, dtype=torch.float64, requires_grad=True)
    q_ref = torch.tensor(q_value, dtype=torch.float64, requires_grad=True)
    d_used = torch.clamp(d_ref, *D_BOX)
    d_used = pow2_ste(d_used) if pow2_step else d_used
    q_used = torch.maximum(torch.clamp(q_ref, *QMAX_BOX["weight"]), d_used)
    (2.0 * d_used + 3.0 * q_used).backward()

    assert d.item() == d_used.item() and q_max.item() == q_used.item()
    assert torch.allclose(q.d.grad, d_ref.grad) and torch.allclose(q.q_max.grad, q_ref.grad)


@pytest.mark.parametrize(
    "parametrization, values",
    [
        ("U3", {"d": 0.1, "q_max": 1.33}),
        ("U3", {"d": 0.25, "q_max": 7.9}),
        ("U3", {"d": 0.06, "q_max": 0.9}),
        ("U3", {"d": 0.7, "q_max": 2.2}),
    ],
)
def test_inferred_bits_node_matches_autograd_through_the_straight_through_composition(parametrization, values):
    from lowbit.quantizers.base import ceil_ste, round_ste

    q = make(parametrization, pow2_step=False, **values)
    q.bit_width().backward()
    got = {name: getattr(q, name).grad.clone() for name in q.learned_names}

    q.zero_grad()
    d, q_max = q.step_and_range()
    reference = ceil_ste(torch.log2(round_ste(q_max / d) + 1)) + 1
    reference.backward()
    assert q.bit_width().item() == reference.item()
    for name in q.learned_names:
        assert torch.allclose(got[name], getattr(q, name).grad), name


def _pow2_reference(x, q_min, q_max, signed, with_zero):
    """The power-of-two quantizer and nnabla's gradients written plainly with boolean masks (the specification
    the fused ``_Pow2Function`` must reproduce)."""
    x = x if signed else torch.relu(x)
    a, s = x.abs(), torch.sign(x)
    if not with_zero:
        s = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # no zero level: 0 maps to +q_min
    p = torch.exp2(torch.copysign(torch.floor(torch.log2(a).abs() + 0.5), torch.log2(a)))
    mag = torch.clamp(p, q_min, q_max)
    if with_zero:
        mag = torch.where(a < q_min * math.sqrt(0.5), 0.0, mag)
    low = a < q_min
    if with_zero:
        low = low & (a >= q_min * math.sqrt(0.5))
    high = a >= q_max
    middle = (a >= q_min) & ~high
    grad_x_factor = torch.where(middle, p / a.clamp_min(1e-30), 0.0)
    return s * mag, grad_x_factor, torch.where(low, s, 0.0), torch.where(high, s, 0.0)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("with_zero", [True, False])
def test_fused_pow2_quantizer_matches_its_plain_specification(signed, with_zero):
    from lowbit.quantizers.parametric import _Pow2Function

    torch.manual_seed(0)
    x = torch.cat(
        [
            torch.randn(5000, dtype=torch.float64) * 0.3,
            torch.tensor([0.0, 2**-3, 2**-4, 1.0, -1.0, 3.0], dtype=torch.float64),
        ]
    )
    q_min = torch.tensor(2.0**-4, dtype=torch.float64, requires_grad=True)
    q_max = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    x.requires_grad_()
    grad = torch.randn_like(x)
    out = _Pow2Function.apply(x, q_min, q_max, signed, with_zero)
    out.backward(grad)
    expected, factor, to_min, to_max = _pow2_reference(x.detach(), q_min.detach(), q_max.detach(), signed, with_zero)
    assert torch.equal(out.detach(), expected)
    assert torch.allclose(x.grad, grad * factor)
    assert torch.allclose(q_min.grad, (grad * to_min).sum()) and torch.allclose(q_max.grad, (grad * to_max).sum())
