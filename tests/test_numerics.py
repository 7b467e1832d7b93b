"""Numerical edge cases (issue 12, item 10): half-precision inputs, bf16 autocast, huge values, empty tensors and
non-finite initialising batches, for every quantizer family and Range BatchNorm.

Statistics and learned-parameter arithmetic run in float32 whatever the input dtype; outputs keep the input dtype;
a data-dependent initialisation from an empty or non-finite tensor is an :class:`InitializationError` that names
the module; float32 results are unchanged (checked bit for bit outside the suite, see the commit message).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.errors import ConfigError
from lowbit.models.cnn import SmallCNN
from lowbit.nn import RangeBatchNorm1d, RangeBatchNorm2d
from lowbit.quantizers import InitializationError, LSQQuantizer, MinMaxQuantizer, build_quantizer
from test_quantizer_conformance import CONFIGS

HALF_TYPES = (torch.float16, torch.bfloat16)
ALL_CASES = [(kind, case) for kind, cases in CONFIGS.items() for case in cases]
#: quantizers whose first tensor sets learned or running state (and therefore must be finite and non-empty)
DATA_INITIALISED = [
    ({"type": "lsq", "bits": 4}, "weight"),
    ({"type": "lsq", "bits": 4}, "activation"),
    ({"type": "uniform", "bits": 4}, "weight"),
    ({"type": "minmax", "bits": 8}, "activation"),
    ({"type": "parametric", "parametrization": "U3"}, "weight"),
    ({"type": "parametric", "parametrization": "U3"}, "activation"),
    ({"type": "parametric", "parametrization": "P3"}, "weight"),
]


def _initialised(kind: str, case, seed: int = 3):
    q = build_quantizer({"type": kind, **case.spec}, role=case.role, seed=seed)
    q.train()
    x = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(5)) + 0.1
    q(x.relu() if case.positive else x)
    return q


# ------------------------------------------------------------------------------------- half-precision inputs
@pytest.mark.parametrize("cast_quantizer", [False, True], ids=["float32-step", "half-step"])
def test_lsq_step_gradient_is_finite_for_half_activations_far_outside_the_range(cast_quantizer):
    q = LSQQuantizer(bits=4, signed=False, role="activation", init_step=0.01)
    if cast_quantizer:
        q.half()
    v = torch.full((4,), 700.0, dtype=torch.float16, requires_grad=True)
    y = q(v)
    y.sum().backward()
    # v / s = 70000 overflows float16; in float32 every element is clipped to Q_P = 15: ds = Q_P per element, times g
    expected = 4 * 15 / math.sqrt(4 * 15)
    assert y.dtype == torch.float16 and torch.equal(y, torch.full((4,), 0.15, dtype=torch.float16))
    assert q.step.grad.dtype == q.step.dtype and math.isfinite(float(q.step.grad))
    assert float(q.step.grad) == pytest.approx(expected, rel=1e-3)
    assert torch.equal(v.grad, torch.zeros(4, dtype=torch.float16))  # masked STE outside the range


@pytest.mark.parametrize("role", ["weight", "activation", "gradient"])
def test_minmax_range_of_large_finite_half_values_is_finite(role):
    q = MinMaxQuantizer(bits=8, role=role, rounding="nearest")
    x = torch.tensor([[-6e4, 6e4, 0.0, 1e4]], dtype=torch.float16)
    y = q(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    step = 1.2e5 / 255
    assert torch.allclose(y.float(), x.float(), atol=step)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_minmax_activation_quantizer_takes_half_inputs_after_float32_initialisation(dtype):
    q = MinMaxQuantizer(bits=8, role="activation")
    q(torch.randn(4, 3))
    y = q(torch.randn(4, 3).to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert q.running_min.dtype == torch.float32 and q.running_max.dtype == torch.float32
    q.eval()
    assert q(torch.randn(4, 3).to(dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
@pytest.mark.parametrize("estimator", ["paper", "chunked"])
def test_range_batchnorm_takes_half_inputs_and_keeps_float32_running_statistics(dtype, estimator):
    bn = RangeBatchNorm2d(3, estimator=estimator)
    bn(torch.randn(4, 3, 8, 8))
    # max - min of values up to 6e4 overflows float16
    x = (torch.randn(4, 3, 8, 8) * 2e4).clamp(-6e4, 6e4).to(dtype).requires_grad_()
    y = bn(x)
    y.float().square().sum().backward()
    assert y.dtype == dtype and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert bn.running_mean.dtype == torch.float32 and torch.isfinite(bn.running_scale).all()
    assert bn.weight.grad.dtype == torch.float32 and torch.isfinite(bn.weight.grad).all()
    bn.eval()
    assert bn(x.detach()).dtype == dtype


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_modules_cast_to_half_precision_keep_working(dtype):
    """``model.half()`` casts the quantizers' parameters and buffers too (as it does BatchNorm's running stats)."""
    q = MinMaxQuantizer(bits=8, role="activation").to(dtype)
    bn = RangeBatchNorm1d(3).to(dtype)
    lsq = LSQQuantizer(bits=4, role="activation").to(dtype)
    for _ in range(2):
        x = (torch.randn(16, 3) * 2e4).clamp(-6e4, 6e4).to(dtype)  # max - min overflows float16
        for module in (q, bn, lsq):
            y = module(x)
            assert y.dtype == dtype and torch.isfinite(y).all()
    assert q.running_min.dtype == dtype and bn.running_scale.dtype == dtype and lsq.step.dtype == dtype
    assert torch.isfinite(bn.running_scale).all() and math.isfinite(float(lsq.step.detach()))


# ----------------------------------------------------------------------------------------------- huge values
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_initialised_on_values_near_the_float32_limit_has_a_finite_step(bits):
    w = torch.full((10,), 3e38)
    w[::2] *= -1
    q = LSQQuantizer(bits=bits, role="weight")
    y = q(w)
    assert math.isfinite(q.step.item()) and q.step.item() > 0
    assert torch.isfinite(y).all()
    q.project_()
    assert math.isfinite(q.step.item())


# ------------------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("spec,role", DATA_INITIALISED, ids=lambda v: str(v))
@pytest.mark.parametrize(
    "bad,problem",
    [
        (torch.empty(0, 3), "empty"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        (torch.tensor([[1.0, -math.inf]]), "inf"),
    ],
    ids=["empty", "nan", "inf"],
)
def test_initialisation_from_an_empty_or_non_finite_tensor_is_an_error(spec, role, bad, problem):
    q = build_quantizer(spec, role=role)
    q.train()
    with pytest.raises(InitializationError, match=problem) as raised:
        q(bad)
    assert isinstance(raised.value, ConfigError)
    assert not q._is_initialized and not bool(q.initialized)
    q(torch.randn(4, 3))  # a good tensor afterwards initialises it
    assert q._is_initialized


def _nan_batch() -> torch.Tensor:
    x = torch.randn(4, 1, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    return x


def test_a_non_finite_first_batch_names_the_layer():
    model = lowbit.quantize(SmallCNN((1, 8, 8), 10, channels=(4, 8), fc=16), "lsq-w4a4")
    model.train()
    with pytest.raises(InitializationError, match=r"features\.4\.input_quantizer") as raised:
        model(_nan_batch())  # the first conv's input is left in float; the second conv's is the first learned one
    assert "NaN" in str(raised.value)


def test_a_non_finite_weight_names_the_layer_when_quantizing():
    model = SmallCNN((1, 8, 8), 10, channels=(4, 8), fc=16)
    with torch.no_grad():
        model.classifier[0].weight[0, 0] = float("inf")
    with pytest.raises(InitializationError, match=r"classifier\.0\.weight_quantizer"):
        lowbit.quantize(model, "lsq-w4a4")


def test_a_non_finite_first_batch_in_range_batchnorm_names_it():
    recipe = {"extends": "fp32", "quantize": {"batchnorm": {"type": "range"}}}
    model = lowbit.quantize(SmallCNN((1, 8, 8), 10, channels=(4, 8), fc=16), recipe)
    model.train()
    with pytest.raises(InitializationError, match=r"features\.1"):
        model(_nan_batch())


@pytest.mark.parametrize("module", ["minmax", "range_bn"])
def test_a_non_finite_batch_after_initialisation_leaves_running_statistics_finite(module):
    m = MinMaxQuantizer(bits=8, role="activation") if module == "minmax" else RangeBatchNorm2d(3)
    m(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    x = torch.randn(4, 3, 2, 2)
    x[0] = float("nan")
    m(x)
    for name, value in m.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), name
            assert torch.equal(value, before[name]), name  # a batch whose statistics are not finite is skipped


# ---------------------------------------------------------------------------------------------- empty tensors
@pytest.mark.parametrize(
    "kind,case", ALL_CASES, ids=[f"{k}-{i}" for k, cases in CONFIGS.items() for i in range(len(cases))]
)
def test_empty_tensors_pass_through_every_quantizer_after_initialisation(kind, case):
    q = _initialised(kind, case)
    state = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    for shape in ((0,), (0, 6, 3, 3), (8, 0)):
        x = torch.empty(shape, requires_grad=True)
        y = q(x)
        y.sum().backward()
        assert y.shape == x.shape and y.dtype == x.dtype and x.grad.shape == x.shape
        for p in q.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
    q.eval()
    with torch.no_grad():
        assert q(torch.empty(0, 6)).shape == (0, 6)
    for name, value in q.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("cls,shape", [(RangeBatchNorm1d, (0, 3)), (RangeBatchNorm2d, (0, 3, 4, 4))])
def test_range_batchnorm_passes_an_empty_batch_through(cls, shape):
    bn = cls(3)
    bn(torch.randn(8, *shape[1:]))
    running = bn.running_scale.clone()
    x = torch.empty(shape, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    assert y.shape == shape and torch.equal(bn.running_scale, running)


# ------------------------------------------------------------------------------------------------ hypothesis
@settings(max_examples=60, deadline=None)
@given(
    case_index=st.integers(0, len(ALL_CASES) - 1),
    dtype=st.sampled_from([*HALF_TYPES, torch.float32]),
    rows=st.sampled_from([0, 1, 3]),
    log_scale=st.floats(-3.0, 4.0),
)
def test_half_precision_and_empty_inputs_give_finite_outputs_and_gradients(case_index, dtype, rows, log_scale):
    """Finite input (up to 10^4, within float16's range) -> no NaN output, the input's dtype, finite gradients."""
    kind, case = ALL_CASES[case_index]
    q = _initialised(kind, case)
    x = torch.randn(rows, 6, 3, 3, generator=torch.Generator().manual_seed(case_index)) * 10.0**log_scale
    if case.positive:
        x = x.relu()
    x = x.to(dtype).requires_grad_()
    y = q(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert not torch.isnan(y).any()
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    for p in q.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    q.eval()
    with torch.no_grad():
        z = q(x.detach())
    assert z.dtype == dtype and not torch.isnan(z).any()


# ---------------------------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("recipe", ["lsq-w4a4", "banner-w8a8g8", "mp-u3"])
def test_bfloat16_autocast_trains_a_quantized_cnn(recipe):
    model = lowbit.quantize(SmallCNN((1, 8, 8), 10, channels=(4, 8), fc=16), recipe)
    model.train()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(6, 1, 8, 8)), torch.arange(6))
        loss.backward()
        assert math.isfinite(loss.item())
        for name, p in model.named_parameters():
            assert p.dtype == torch.float32, name
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        model.zero_grad()
    for name, buffer in model.named_buffers():
        assert not buffer.is_floating_point() or buffer.dtype == torch.float32, name
