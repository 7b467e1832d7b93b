"""Issue 13, coverage and evaluation: every layer type of the zoo's sequence, 3-d, transposed, attention and GPT-2
models is quantized with the slots of every shipped recipe, eval is the same with and without ``no_grad``, and
summary, memory budgets, packed and ONNX export cover the new types (recurrent layers: a documented refusal)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.export import export_onnx
from lowbit.export.packed import save_packed
from lowbit.export.verify import onnx_logits, torch_logits
from lowbit.nn import (
    QUANTIZED_LAYERS,
    QuantConv1d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantizedAdapter,
    QuantizedLayer,
    QuantLinear,
    QuantMultiheadAttention,
    unsupported_reason,
)
from lowbit.quantizers import build_quantizer
from lowbit.train.regularizers.memory_budget import weight_memory_bits
from model_zoo import HFConv1D, build

if HFConv1D not in QUANTIZED_LAYERS:  # the user's one call (module-level: the registry is global)
    lowbit.register_layer(HFConv1D)

RECIPES = lowbit.list_recipes()
#: zoo model -> the quantized types it must contain after lsq-w4a4
EXPECTED = {
    "conv1d": {QuantConv1d, QuantLinear},
    "conv3d": {QuantConv3d, QuantLinear},
    "autoencoder": {QuantConvTranspose1d, QuantConvTranspose2d},
    "transformer": {QuantEmbedding, QuantLinear},
    "gpt2": {QuantEmbedding, QuantLinear, QUANTIZED_LAYERS[HFConv1D]},
    "lstm": {QuantEmbedding, QuantLinear},
    "gru": {QuantEmbedding, QuantLinear},
}


def zoo(name):
    model, x = build(name)
    for module in model.modules():  # in-place ReLU after Range BN is issue 13 item 4, fixed elsewhere
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model, x


def name_of(recipe):
    return getattr(recipe, "name", recipe)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n not in ("conv3d", "autoencoder") else n for n in EXPECTED]
)
def test_every_recipe_trains_each_new_layer_type(name):
    """Forward and backward with every shipped recipe's slots: finite loss, a gradient for every weight of a
    quantized layer, and the quantized layers are of the new types."""
    for recipe in RECIPES:
        model, x = zoo(name)
        qmodel = lowbit.quantize(model, recipe).train()
        loss = qmodel(x).float().pow(2).mean()
        loss.backward()
        assert torch.isfinite(loss), name_of(recipe)
        for layer_name, layer in lowbit.quantized_layers(qmodel):
            assert layer.weight.grad is not None, (name_of(recipe), layer_name)
    kinds = {type(m) for _, m in lowbit.quantized_layers(lowbit.quantize(zoo(name)[0], "lsq-w4a4"))}
    assert EXPECTED[name] <= kinds


@pytest.mark.parametrize("name", ["conv1d", "conv3d", "autoencoder", "transformer", "gpt2"])
def test_no_weight_of_a_supported_type_is_left_float(name):
    """Every weight tensor of dimension > 1 outside LayerNorm belongs to a quantized layer, except the tied GPT-2
    head (one tensor with the embedding)."""
    qmodel = lowbit.quantize(zoo(name)[0], "lsq-w4a4")
    quantized = {id(layer.weight) for _, layer in lowbit.quantized_layers(qmodel)}
    float_weights = [n for n, p in qmodel.named_parameters() if p.dim() > 1 and id(p) not in quantized]
    assert float_weights == []


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "banner-w8a8g8", "bc-det", "mp-u3"])
@pytest.mark.parametrize("name", ["conv1d", "conv3d", "autoencoder", "transformer", "gpt2"])
def test_weights_are_what_the_quantizer_gives(name, recipe):
    qmodel = lowbit.quantize(zoo(name)[0], recipe).eval()
    for layer_name, layer in lowbit.quantized_layers(qmodel):
        q = layer.weight_quantizer
        if q is None:
            continue
        with torch.no_grad():
            expected, got = q(layer.weight), layer.quantized_weight()
        assert torch.equal(got, expected), layer_name
        assert not torch.equal(got, layer.weight), layer_name
        assert got.unique().numel() <= 2**q.bits * (got.shape[0] if got.dim() > 1 else 1), layer_name


def grad_quantizer():
    return build_quantizer(
        {"type": "minmax", "bits": 2, "granularity": "tensor", "rounding": "nearest"}, role="gradient"
    )


@pytest.mark.parametrize(
    "float_layer, shape",
    [
        (nn.Conv1d(4, 6, 3, padding=1, groups=2), (2, 4, 9)),
        (nn.Conv1d(4, 4, 3, padding="same", groups=4, padding_mode="reflect"), (2, 4, 9)),
        (nn.Conv3d(2, 4, 3, stride=2), (2, 2, 7, 7, 7)),
        (nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1, groups=2), (2, 4, 5)),
        (nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1), (2, 4, 5, 5)),
        (HFConv1D(6, 4), (2, 3, 4)),
    ],
    ids=["conv1d-groups", "conv1d-depthwise-reflect", "conv3d", "convT1d", "convT2d", "hf-conv1d"],
)
@pytest.mark.parametrize("bifurcate", [True, False])
def test_grad_slot_quantizes_the_output_gradient(float_layer, shape, bifurcate):
    """Banner's slot: the input gradient is the float layer's backward of ``Q(g)``; the weight gradient that of ``g``
    (bifurcated) or of ``Q(g)`` (not)."""
    torch.manual_seed(0)
    float_layer = copy.deepcopy(float_layer)  # the parameters are shared by the parametrizations
    layer = QUANTIZED_LAYERS[type(float_layer)].from_float(float_layer, grad=grad_quantizer(), bifurcate=bifurcate)
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    reference_x = x.detach().requires_grad_()
    reference = float_layer(reference_x)
    with torch.no_grad():
        g_q = grad_quantizer()(g)
    assert not torch.equal(g_q, g)
    (want_x,) = torch.autograd.grad(reference, reference_x, g_q, retain_graph=True)
    (want_w,) = torch.autograd.grad(reference, float_layer.weight, g if bifurcate else g_q)
    assert torch.allclose(x.grad, want_x, atol=1e-6)
    assert torch.allclose(layer.weight.grad, want_w, atol=1e-5)


def test_same_output_as_float_layers_without_quantizers():
    """With empty slots each quantized type computes exactly what its float layer does (MHA: masks, causal,
    need_weights, batch-first or not, separate k/v dimensions)."""
    torch.manual_seed(0)
    for float_layer, x in [
        (nn.Conv3d(2, 4, 3, padding="same"), torch.randn(2, 2, 5, 5, 5)),
        (nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2, dilation=2), torch.randn(2, 4, 5, 5)),
        (nn.Embedding(10, 4, padding_idx=0), torch.randint(0, 10, (3, 5))),
    ]:
        layer = QUANTIZED_LAYERS[type(float_layer)].from_float(float_layer)
        assert torch.equal(layer(x), float_layer(x))
    for batch_first, kdim in [(True, None), (False, None), (True, 6)]:
        mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
        q = torch.randn(3, 5, 8)
        kv = torch.randn(3, 7, kdim or 8)
        if not batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        padding = torch.zeros(3, 7, dtype=torch.bool)
        padding[0, -2:] = True  # (N, S) whatever the layout
        mask = torch.randn(5, 7)
        qmha = QuantMultiheadAttention.from_float(mha)
        for kwargs in [{}, {"key_padding_mask": padding, "attn_mask": mask}, {"average_attn_weights": False}]:
            want, want_w = mha(q, kv, kv, **kwargs)
            got, got_w = qmha(q, kv, kv, **kwargs)
            assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-5)
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        want = mha(q, q[..., :kdim] if kdim else q, q[..., :kdim] if kdim else q, attn_mask=causal, is_causal=True)[0]
        got = qmha(q, q[..., :kdim] if kdim else q, q[..., :kdim] if kdim else q, attn_mask=causal, is_causal=True)[0]
        assert torch.allclose(got, want, atol=1e-5)
        fresh = QuantMultiheadAttention.from_float(
            nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        )
        fresh.load_state_dict(mha.state_dict())  # a float checkpoint loads into the quantized attention
        assert torch.allclose(fresh(q, kv, kv)[0], mha(q, kv, kv)[0], atol=1e-5)


@pytest.mark.parametrize("recipe", RECIPES, ids=name_of)
def test_transformer_eval_is_the_same_with_and_without_no_grad(recipe):
    """PyTorch's fast path under no_grad would read the float weights; here it never runs on a quantized model."""
    model, x = zoo("transformer")
    qmodel = lowbit.quantize(model, recipe).eval()
    with_grad = qmodel(x)
    with torch.no_grad():
        without = qmodel(x)
    if name_of(recipe) == "fp32":  # nothing quantized: PyTorch's own float fast path, equal up to float rounding
        assert torch.allclose(with_grad, without, atol=1e-5)
    else:
        assert torch.equal(with_grad, without)


def test_nested_tensor_fast_path_is_declined_too():
    """``TransformerEncoder`` (nested tensors on by default) with a padding mask in eval under no_grad."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True
    qmodel = lowbit.quantize(model, "lsq-w4a4").eval()
    x = torch.randn(3, 6, 16)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    with_grad = qmodel(x, src_key_padding_mask=padding)
    with torch.no_grad():
        without = qmodel(x, src_key_padding_mask=padding)
    assert torch.equal(with_grad, without)


def test_attention_projections_are_quantized_layers():
    qmodel = lowbit.quantize(zoo("transformer")[0], "lsq-w4a4")
    attention = qmodel.encoder.layers[0].self_attn
    assert isinstance(attention, QuantMultiheadAttention) and isinstance(attention, nn.MultiheadAttention)
    for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = getattr(attention, projection)
        assert isinstance(layer, QuantLinear) and layer.weight_quantizer is not None
    steps = {getattr(attention, p).weight_quantizer.step.item() for p in ("q_proj", "k_proj", "v_proj")}
    assert len(steps) == 3  # each projection has its own quantizer


def test_embedding_takes_the_weight_slot_only():
    layer = QuantEmbedding.from_float(
        nn.Embedding(10, 4), weight=build_quantizer({"type": "lsq", "bits": 4}, role="weight")
    )
    assert set(layer.quantizers()) == {"weight"} and layer.bias is None
    with pytest.raises(ConfigError, match="sparse"):
        QuantEmbedding.from_float(
            nn.Embedding(10, 4, sparse=True), weight=build_quantizer({"type": "lsq", "bits": 4}, role="weight")
        )


def test_register_layer_gpt2_conv1d():
    """One call registers HuggingFace's Conv1D: every projection of the GPT-2 model is quantized, the adapter is a
    subclass of the user's class, and a second registration is refused."""
    qmodel = lowbit.quantize(zoo("gpt2")[0], "banner-w8a8g8")
    adapters = [m for _, m in lowbit.quantized_layers(qmodel) if isinstance(m, QuantizedAdapter)]
    assert len(adapters) == 8 and all(isinstance(m, HFConv1D) for m in adapters)
    assert not any(type(m) is HFConv1D for m in qmodel.modules())
    with pytest.raises(ConfigError, match="already registered"):
        lowbit.register_layer(HFConv1D)
    with pytest.raises(ConfigError, match="nn.Module"):
        lowbit.register_layer(int)


@pytest.mark.parametrize("cell", [nn.LSTM(4, 4), nn.GRU(4, 4)])
def test_recurrent_layers_are_refused_with_the_reason(cell):
    reason = unsupported_reason(cell)
    assert reason.startswith(f"nn.{type(cell).__name__}:") and "recurrent" in reason
    assert type(cell) not in QUANTIZED_LAYERS
    assert unsupported_reason(nn.Linear(2, 2)) is None


@pytest.mark.parametrize("name", ["conv1d", "conv3d", "autoencoder", "transformer", "gpt2"])
def test_summary_counts_macs_of_every_new_type(name):
    model, x = zoo(name)
    qmodel = lowbit.quantize(model, "lsq-w4a4")
    summary = lowbit.model_summary(qmodel, example=x)
    rows = {r.name: r for r in summary.rows}
    assert set(rows) == {n for n, _ in lowbit.quantized_layers(qmodel)}
    for layer_name, layer in lowbit.quantized_layers(qmodel):
        row = rows[layer_name]
        assert row.weight_bits == layer.weight_quantizer.bits
        assert (row.macs == 0) == isinstance(layer, QuantEmbedding), layer_name
    if name == "conv1d":  # output elements x weight[0].numel() for a grouped Conv1d (16 -> 32, groups 4, k 3)
        assert rows["body.6"].macs == 32 * 32 * (4 * 3)


def test_summary_macs_of_a_transposed_convolution():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2))
    qmodel = lowbit.quantize(model, "lsq-w4a4")
    row = lowbit.model_summary(qmodel, input_shape=(4, 5, 5)).rows[0]
    assert row.macs == 4 * 5 * 5 * (6 // 2) * 3 * 3  # every input element meets C_out/groups kernels


@pytest.mark.parametrize("name", ["transformer", "gpt2", "autoencoder"])
def test_memory_budget_counts_every_new_type(name):
    qmodel = lowbit.quantize(zoo(name)[0], "mp-u3")
    expected = sum(
        p.numel() * (32 if q is None else q.bits)
        for _, layer in lowbit.quantized_layers(qmodel)
        for p, q in ((layer.weight, layer.weight_quantizer), (layer.bias, layer.bias_quantizer))
        if p is not None
    )
    assert float(weight_memory_bits(qmodel)) == pytest.approx(expected)
    names = {n for n, _ in lowbit.quantized_layers(qmodel)}
    assert any("embed" in n or "wte" in n or "dec" in n for n in names)


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "banner-w8a8g8", "mp-u3"])
@pytest.mark.parametrize("name", ["conv1d", "conv3d", "autoencoder", "transformer", "gpt2"])
def test_packed_round_trip_is_bit_exact(name, recipe, tmp_path):
    model, x = zoo(name)
    qmodel = lowbit.quantize(model, recipe, seed=3)
    qmodel.train()
    qmodel(x)  # data-dependent initialisation
    qmodel.eval()
    path = tmp_path / "model.lowbit"
    save_packed(qmodel, path, recipe=lowbit.load_recipe(recipe), seed=3)
    loaded = lowbit.load_packed(path, model=zoo(name)[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


ONNX_MODELS = ["conv1d", "conv3d", "autoencoder", "transformer", "gpt2"]


@pytest.mark.parametrize("recipe", ["lsq-w8a8", "banner-w8a8g8"])
@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_export_agrees_with_onnxruntime(name, recipe, tmp_path):
    """Every new type exports (ConvTranspose, Embedding as Gather on dequantized codes, attention projections, the
    adapter's addmm) and onnxruntime gives the same classes, within float rounding."""
    model, x = zoo(name)
    qmodel = lowbit.quantize(model, recipe)
    qmodel.train()
    qmodel(x)
    qmodel.eval()
    path = tmp_path / "model.onnx"
    export_onnx(qmodel, path, example=x)
    want = torch_logits(qmodel, x)
    got = onnx_logits(path, x)
    assert np.array_equal(want.argmax(1), got.argmax(1))
    assert np.abs(want - got).max() < 0.05 * max(1.0, np.abs(want).max())


def test_functional_adapter_forward_matches_float_forward():
    """The adapter runs the user's own forward with the quantized parameters."""
    float_layer = HFConv1D(6, 4)
    weight = build_quantizer({"type": "lsq", "bits": 4}, role="weight")
    layer = QUANTIZED_LAYERS[HFConv1D].from_float(float_layer, weight=weight)
    x = torch.randn(2, 3, 4)
    want = torch.addmm(float_layer.bias, x.view(-1, 4), weight(float_layer.weight)).view(2, 3, 6)
    assert torch.equal(layer(x), want)
    assert isinstance(layer, QuantizedLayer) and "weight_quantizer" not in dict(float_layer.named_modules())
    assert F.mse_loss(layer(x), want) == 0
