"""Quantized layers: slots, Banner's gradient bifurcation, activation quantizer module."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn import QuantAct, QuantConv2d, QuantLinear, quantize_gradient
from lowbit.quantizers import BinaryQuantizer, LSQQuantizer, MinMaxQuantizer, Quantizer


class Halve(Quantizer):
    """A deterministic stand-in 'gradient quantizer' whose effect is easy to predict: Q(g) = g / 2."""

    @property
    def bits(self):
        return 8

    @property
    def signed(self):
        return True

    def forward(self, g):
        return g / 2


def test_linear_bifurcation_propagates_quantized_gradient_and_keeps_weight_gradient_precise():
    torch.manual_seed(0)
    float_layer = nn.Linear(6, 4)
    layer = QuantLinear.from_float(float_layer, grad=Halve(role="gradient"))
    x = torch.randn(5, 6, requires_grad=True)
    upstream = torch.randn(5, 4)
    layer(x).backward(upstream)
    assert torch.allclose(x.grad, (upstream / 2) @ float_layer.weight.detach())
    assert torch.allclose(layer.weight.grad, upstream.t() @ x.detach())
    assert torch.allclose(layer.bias.grad, upstream.sum(0))


def test_without_bifurcation_the_weight_gradient_also_sees_the_quantized_gradient():
    layer = QuantLinear(6, 4, grad_quantizer=Halve(role="gradient"), bifurcate=False)
    x = torch.randn(5, 6, requires_grad=True)
    upstream = torch.randn(5, 4)
    layer(x).backward(upstream)
    assert torch.allclose(layer.weight.grad, (upstream / 2).t() @ x.detach())


@pytest.mark.parametrize("padding, padding_mode", [(1, "zeros"), ("same", "zeros"), (1, "reflect"), (0, "zeros")])
def test_conv_bifurcation_matches_the_two_halves_of_the_float_backward(padding, padding_mode):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=padding, padding_mode=padding_mode, stride=1)
    layer = QuantConv2d.from_float(conv, grad=Halve(role="gradient"))
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    out = layer(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    # reference: the float conv's own backward with g/2 for the input and g for the weight
    x_ref = x.detach().clone().requires_grad_()
    w_ref = conv.weight.detach().clone().requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_()
    ref = F.conv2d(
        F.pad(
            x_ref, conv._reversed_padding_repeated_twice, mode="constant" if padding_mode == "zeros" else padding_mode
        ),
        w_ref,
        b_ref,
    )
    assert torch.allclose(out, ref, atol=1e-6)
    (grad_x,) = torch.autograd.grad(ref, x_ref, upstream / 2, retain_graph=True)
    grad_w, grad_b = torch.autograd.grad(ref, (w_ref, b_ref), upstream)
    assert torch.allclose(x.grad, grad_x, atol=1e-5)
    assert torch.allclose(layer.weight.grad, grad_w, atol=1e-5)
    assert torch.allclose(layer.bias.grad, grad_b, atol=1e-5)


def test_strided_grouped_conv_bifurcation():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False)
    layer = QuantConv2d.from_float(conv, grad=Halve(role="gradient"))
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    layer(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    conv(x_ref).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad / 2, atol=1e-6)
    assert torch.allclose(layer.weight.grad, conv.weight.grad, atol=1e-5)


def test_banner_8bit_stochastic_gradient_quantizer_is_unbiased_through_the_layer():
    torch.manual_seed(0)
    layer = QuantLinear(8, 3, grad_quantizer=MinMaxQuantizer(bits=8, role="gradient", seed=0))
    x = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(4, 3)
    grads = []
    for _ in range(400):
        x.grad = None
        layer(x).backward(upstream)
        grads.append(x.grad.clone())
    mean = torch.stack(grads).mean(0)
    exact = upstream @ layer.weight.detach()
    assert torch.allclose(mean, exact, atol=2e-3)
    assert not torch.allclose(grads[0], grads[1])  # fresh noise every backward


def test_quantize_gradient_is_identity_forward():
    x = torch.randn(10, requires_grad=True)
    y = quantize_gradient(x, Halve(role="gradient"))
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((10,), 0.5))


def test_slots_weight_input_bias_are_applied():
    layer = QuantLinear(
        3,
        2,
        weight_quantizer=BinaryQuantizer(),
        input_quantizer=LSQQuantizer(bits=2, role="activation", signed=False, init_step=1.0),
    )
    x = torch.tensor([[0.2, 0.9, 3.7]])
    expected = F.linear(torch.tensor([[0.0, 1.0, 3.0]]), torch.where(layer.weight >= 0, 1.0, -1.0), layer.bias)
    assert torch.allclose(layer(x), expected)
    assert layer.weight_quantizer.bits == 1 and layer.input_quantizer.bits == 2
    assert set(layer.quantizers()) == {"weight", "input"}


def test_float_parameters_are_shared_and_state_dict_keys_kept():
    float_layer = nn.Linear(4, 4)
    layer = QuantLinear.from_float(float_layer, weight=BinaryQuantizer())
    assert layer.weight is float_layer.weight
    keys = set(layer.state_dict())
    assert {"weight", "bias"} <= keys


def test_quant_act_requires_an_activation_quantizer():
    QuantAct(LSQQuantizer(bits=4, role="activation"))
    with pytest.raises(ValueError, match="role='activation'"):
        QuantAct(LSQQuantizer(bits=4, role="weight"))


def test_bias_quantizer_on_layer_without_bias_is_an_error():
    with pytest.raises(ValueError, match="without bias"):
        QuantLinear(3, 2, bias=False, bias_quantizer=LSQQuantizer(bits=8))
