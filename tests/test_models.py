"""Tests for lowbit.models: shapes, gradients, paper parameter counts, swappable modules."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.models import MODELS, PadShortcut, build_model

# (model, input shape, num_classes, options): the inputs each architecture is meant for.
CASES = [
    ("mlp", (1, 28, 28), 10, {}),
    ("mlp", (1, 8, 8), 10, {"hidden": 64, "depth": 2}),
    ("small-cnn", (1, 28, 28), 10, {}),
    ("small-cnn", (1, 8, 8), 10, {}),
    ("small-cnn", (3, 32, 32), 10, {}),
    ("bc-vgg", (3, 32, 32), 10, {}),
    ("bc-vgg", (3, 32, 32), 10, {"width": 0.5}),
    ("resnet8", (3, 32, 32), 100, {}),
    ("resnet8", (1, 28, 28), 10, {"shortcut": "B"}),
    ("resnet20", (3, 32, 32), 10, {}),
    ("resnet56", (3, 32, 32), 10, {"shortcut": "B"}),
    ("mobilenetv2-28", (1, 28, 28), 10, {}),
    ("mobilenetv2-28", (1, 8, 8), 10, {}),
    ("mobilenetv2-28", (3, 32, 32), 10, {"width": 4, "head": 32}),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}-{opts}" for name, shape, _, opts in CASES]
WEIGHTED = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_covers_the_required_models():
    assert {"mlp", "small-cnn", "bc-vgg", "resnet8", "resnet20", "resnet56"} <= set(MODELS)
    for _name, (builder, description) in MODELS.items():
        assert callable(builder) and isinstance(description, str) and description


@pytest.mark.parametrize("name,shape,classes,options", CASES, ids=IDS)
def test_forward_backward(name, shape, classes, options):
    torch.manual_seed(0)
    model = build_model(name, shape, classes, **options)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, classes) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.arange(4) % classes).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, classes)  # eval mode works with a single sample


@pytest.mark.parametrize("name,shape,classes,options", CASES, ids=IDS)
def test_every_module_is_used_exactly_once(name, shape, classes, options):
    model = build_model(name, shape, classes, **options)
    all_modules = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len({id(m) for m in all_modules}) == len(all_modules), "a module object is registered twice"
    calls: Counter = Counter()
    handles = [m.register_forward_hook(lambda mod, *_: calls.update([id(mod)])) for m in model.modules()]
    model(torch.randn(2, *shape))
    for h in handles:
        h.remove()
    for mname, module in model.named_modules():
        if not list(module.children()):  # leaves: every weighted layer and activation
            assert calls[id(module)] == 1, f"{mname} ({type(module).__name__}) ran {calls[id(module)]} times"
    # Layers with weights are the standard module types (what a quantizing converter swaps out).
    for mname, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, WEIGHTED), f"{mname} is a {type(module).__name__}"


def test_layers_found_by_named_modules_are_what_forward_uses():
    """Zeroing every Linear/Conv2d weight found by named_modules() leaves only the fc bias:
    no weight is applied through a functional call that bypasses the modules."""
    model = build_model("resnet8", (3, 16, 16), 10).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.zero_()
    after = model(x)
    fc_bias = model.fc.bias.expand(2, -1)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fc_bias)  # with all weights zero, only the fc bias remains


@pytest.mark.parametrize("name,paper", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_resnet_parameter_counts_match_the_paper(name, paper):
    model = build_model(name, (3, 32, 32), 10, shortcut="A")
    assert abs(n_params(model) - paper) / paper < 0.02
    projection = build_model(name, (3, 32, 32), 10, shortcut="B")
    assert n_params(projection) > n_params(model)  # B adds 1x1 conv + BN at the two stage changes


def test_resnet_structure():
    model = build_model("resnet20", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20  # "20 weighted layers"
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.Conv2d) for m in build_model("resnet56", (3, 32, 32), 10).modules()) == 55
    # He-normal init, fan_out: std = sqrt(2 / (9 * C_out)).
    weights = torch.cat([c.weight.detach().flatten() for c in convs if c.out_channels == 64])
    assert float(weights.std()) == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)


def test_pad_shortcut():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0
    assert not list(PadShortcut(16, 32, 2).parameters())


def test_mlp_structure():
    model = build_model("mlp", (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1024), (1024, 1024), (1024, 1024), (1024, 10)]
    assert [m.num_features for m in bns] == [1024, 1024, 1024, 10]  # the last one is the output BN
    bound = math.sqrt(6 / (784 + 1024))  # Glorot uniform
    assert float(linears[0].weight.detach().abs().max()) <= bound
    plain = build_model("mlp", (1, 28, 28), 10, output_bn=False, depth=1, hidden=32)
    assert not any(isinstance(m, nn.BatchNorm1d) and m.num_features == 10 for m in plain.modules())
    assert plain.classifier.bias is not None


def test_bc_vgg_structure():
    model = build_model("bc-vgg", (3, 32, 32), 10)
    layers = list(model.features)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 256, 256, 512, 512]
    for i, layer in enumerate(layers):  # conv -> maxpool -> BN -> ReLU where a pool follows
        if isinstance(layer, nn.MaxPool2d):
            assert isinstance(layers[i - 1], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8192, 1024), (1024, 1024), (1024, 10)]
    assert isinstance(model.output_bn, nn.BatchNorm1d)
    svhn = build_model("bc-vgg", (3, 32, 32), 10, width=0.5)
    assert [c.out_channels for c in svhn.modules() if isinstance(c, nn.Conv2d)] == [64, 64, 128, 128, 256, 256]
    assert [m.out_features for m in svhn.modules() if isinstance(m, nn.Linear)] == [1024, 1024, 10]


def test_small_cnn_flattened_size_follows_input():
    for shape, flat in (((1, 28, 28), 64 * 7 * 7), ((1, 8, 8), 64 * 2 * 2), ((3, 32, 32), 64 * 8 * 8)):
        model = build_model("small-cnn", shape, 10)
        first_fc = next(m for m in model.modules() if isinstance(m, nn.Linear))
        assert first_fc.in_features == flat


def test_errors_name_the_problem():
    with pytest.raises(ValueError) as info:
        build_model("alexnet", (3, 32, 32), 10)
    for name in MODELS:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="'depht'.*valid options: hidden, depth, output_bn"):
        build_model("mlp", (1, 28, 28), 10, depht=2)
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", (1, 28, 28), 10, hidden=0)
    with pytest.raises(ValueError, match="shortcut"):
        build_model("resnet20", (3, 32, 32), 10, shortcut="C")
    with pytest.raises(ValueError, match="width"):
        build_model("bc-vgg", (3, 32, 32), 10, width=-1)
    with pytest.raises(ValueError, match="at least 8"):
        build_model("bc-vgg", (3, 4, 4), 10)
    with pytest.raises(ValueError, match="at least 4"):
        build_model("small-cnn", (1, 2, 2), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", (28, 28), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (1, 28, 28), 0)


def test_mobilenetv2_28_is_depthwise_separable_and_converts_at_2_bits():
    """Every inverted residual has a depthwise 3x3 conv (groups = channels) between 1x1 convs; the residual is used
    exactly where the shape is unchanged; lsq-w2a2 quantizes every conv and the Linear (2 bits inside, 8 at the
    ends) and the quantized net runs forward and backward."""
    import lowbit
    from lowbit.convert import quantized_layers
    from lowbit.models.mobilenet import InvertedResidual

    torch.manual_seed(0)
    model = build_model("mobilenetv2-28", (1, 28, 28), 10)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == len(blocks) >= 5
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (3, 3)
    for block in blocks:
        first = next(m for m in block.modules() if isinstance(m, nn.Conv2d))
        last = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
        same_shape = first.in_channels == last.out_channels and all(c.stride == (1, 1) for c in [first, last])
        strided = any(c.stride != (1, 1) for c in block.modules() if isinstance(c, nn.Conv2d))
        assert block.residual == (same_shape and not strided)
    assert any(b.residual for b in blocks) and not all(b.residual for b in blocks)
    sizes = [c.weight.numel() for c in convs]
    assert max(sizes) >= 10 * min(c.weight.numel() for c in depthwise)  # layers of very different size

    x = torch.randn(8, 1, 28, 28)
    qmodel = lowbit.quantize(model, "lsq-w2a2", example=x)
    layers = dict(quantized_layers(qmodel))
    assert len(layers) == len(convs) + 1  # every conv and the classifier
    bits = [layer.weight_quantizer.bits for layer in layers.values()]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {2}
    out = qmodel(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in qmodel.parameters() if p.grad is not None)


def test_mobilenetv2_28_options_are_checked():
    with pytest.raises(ConfigError, match="even"):
        build_model("mobilenetv2-28", (1, 28, 28), 10, width=5)
    with pytest.raises(ConfigError, match="width"):
        build_model("mobilenetv2-28", (1, 28, 28), 10, width=0)
    with pytest.raises(ConfigError, match="head"):
        build_model("mobilenetv2-28", (1, 28, 28), 10, head=0)
