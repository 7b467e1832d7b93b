"""ONNX export: checker-valid QDQ graphs with integer weights and folded BatchNorm, whose onnxruntime outputs give
the same predicted class as the PyTorch fake-quantized model on every test sample (digits, Fashion-MNIST), and that
onnxruntime runs on integer kernels."""

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lowbit
from lowbit.data import BatchLoader, load_dataset
from lowbit.export import ExportError, export_checkpoint, export_onnx, onnx_parity, runtime_kernels
from lowbit.export.verify import compare_logits, onnx_logits, torch_logits
from lowbit.nn import QuantLinear
from lowbit.quantizers import build_quantizer
from lowbit.recipes import list_recipes
from lowbit.runs import load_checkpoint
from lowbit.train import TrainConfig, run
from model_zoo import build

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
# one recipe per family and grid: binary (deterministic, stochastic-trained, grid policy), LSQ at 2/4/8 bits,
# min-max per channel with Range BN, Uhlich uniform and power-of-two grids
PARITY = [
    "bc-det",
    "bc-stoch",
    "sr-adam",
    "lsq-w2a2",
    "lsq-w4a4",
    "lsq-w8a8",
    "banner-w8a8g8",
    "mp-u1",
    "mp-u3",
    "mp-p3",
]


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits")
    x = torch.cat([x for x, _ in BatchLoader(splits.test, 512, normalize=(splits.mean, splits.std))])
    return splits, x


def trained(recipe, out, **overrides):
    """A few epochs on digits: well enough trained that test samples are not near decision ties."""
    options = dict(recipe=recipe, data="digits", epochs=3, pretrain_epochs=0, batch_size=64, quiet=True, out=str(out))
    options.update(overrides)
    return run(TrainConfig(**options)).model.eval()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """``digits_run(recipe) -> (model, run directory)``, trained once per recipe in this module."""
    cache = {}

    def get(recipe):
        if recipe not in cache:
            out = tmp_path_factory.mktemp(recipe)
            cache[recipe] = trained(recipe, out), out
        return cache[recipe]

    return get


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def check_parity(model, run_dir, x, tmp_path, label):
    """The exported graph is the fake-quantized model: same class on every sample when onnxruntime runs it as
    written (float biases, no graph rewrites). The deployed graph (int32 biases, onnxruntime's fused integer kernels)
    shifts pre-activations by up to half an accumulator step: it may flip near-tie samples only."""
    expected = torch_logits(model, x)
    exact = export_checkpoint(
        run_dir / "checkpoint.safetensors", "onnx", tmp_path / "exact.onnx", integer_bias=False, which="last"
    )
    as_written = compare_logits(expected, onnx_logits(exact.path, x, optimization="none"))
    deployed = export_checkpoint(run_dir / "checkpoint.safetensors", "onnx", tmp_path / "model.onnx", which="last")
    onnx.checker.check_model(onnx.load(deployed.path), full_check=True)
    got = onnx_logits(deployed.path, x)
    fused = compare_logits(expected, got, runtime_kernels(deployed.path))
    print(
        f"{label}: as written {as_written.agree}/{as_written.samples} same class, max |logit diff| "
        f"{as_written.max_abs_diff:.3g}; integer kernels {fused.agree}/{fused.samples}, max |logit diff| "
        f"{fused.max_abs_diff:.3g} (logits up to {fused.max_abs_logit:.3g}); "
        f"{sorted(k for k in fused.kernels if k.startswith('Q'))}"
    )
    assert as_written.samples == fused.samples == len(x)
    assert as_written.agree == as_written.samples
    assert as_written.max_abs_diff < 0.01 * as_written.max_abs_logit
    assert fused.agreement >= 0.99 and fused.max_abs_diff < 0.1 * fused.max_abs_logit
    top2 = np.sort(expected, axis=1)[:, -2:]
    flipped = expected.argmax(1) != got.argmax(1)
    gaps = (top2[:, 1] - top2[:, 0])[flipped]
    assert np.all(gaps <= 2 * fused.max_abs_diff), gaps  # only near-ties flip
    return as_written, fused


@pytest.mark.parametrize("recipe", PARITY)
def test_onnxruntime_predicts_the_same_classes_on_digits(recipe, tmp_path, digits, digits_run, record_property):
    _, x = digits
    model, run_dir = digits_run(recipe)
    as_written, fused = check_parity(model, run_dir, x, tmp_path, recipe)
    record_property("max_abs_logit_diff", as_written.max_abs_diff)
    record_property("max_abs_logit_diff_integer_kernels", fused.max_abs_diff)


def test_weights_are_integers_on_their_grid_and_batchnorm_is_folded(tmp_path, digits_run):
    model, _ = digits_run("lsq-w4a4")
    info = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    graph = onnx.load(info.path).graph
    inits = initializers(info.path)
    assert {o.domain for o in onnx.load(info.path).opset_import} == {""}
    assert onnx.load(info.path).opset_import[0].version >= 13
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops  # all three BatchNorms folded
    assert len(info.folded) == 3
    # 4-bit weights: int8 containers holding -8..7; 8-bit first/last layers: within int8 or uint8
    middle = inits["features.4.weight_quantized"]
    assert middle.dtype == np.int8 and middle.min() >= -8 and middle.max() <= 7
    assert info.weights["features.4.weight"] == {"bits": 4, "container": "int8", "per_channel": True}
    for name in ("features.0.weight_quantized", "classifier.3.weight_quantized"):
        assert inits[name].dtype in (np.int8, np.uint8)
    # the folded per-channel scale times the codes is BatchNorm's a times the layer's weight
    conv = model.features[0]
    bn = model.features[1]
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    decoded = (
        inits["features.0.weight_quantized"].astype(np.float64)
        - inits["features.0.weight_zero_point"].reshape(-1, 1, 1, 1)
    ) * inits["features.0.weight_scale"].reshape(-1, 1, 1, 1)
    expected = conv.weight_quantizer(conv.weight).detach().numpy() * a.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-7)
    # 4-bit unsigned activations: uint8 QDQ after a Clip to the 16-level grid
    assert any(n.op_type == "Clip" and n.name.startswith("features.4.input") for n in graph.node)
    assert inits["features.4.input.zero_point"].dtype == np.uint8


def test_binary_weights_are_plus_minus_one_codes_with_a_scale(tmp_path, digits_run):
    model, _ = digits_run("bc-det")
    info = export_onnx(model, tmp_path / "bc.onnx", input_shape=(1, 8, 8))
    inits = initializers(info.path)
    for name in ("features.0", "features.4", "classifier.0", "classifier.3"):
        codes = inits[f"{name}.weight_quantized"]
        assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
        assert np.all(inits[f"{name}.weight_zero_point"] == 0)


def test_eight_bit_model_runs_on_integer_kernels(tmp_path, digits_run):
    model, _ = digits_run("lsq-w8a8")
    info = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    kernels = runtime_kernels(info.path)
    # the recipe leaves the network input unquantized: the first conv runs in float on its int8 weights, every
    # layer with a quantized input runs as an integer kernel
    assert kernels.get("QLinearConv") == 1 and kernels.get("QGemm") == 2, kernels
    assert kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == 1 and "Gemm" not in kernels


def test_resnet_exports_with_residual_adds(tmp_path):
    torch.manual_seed(0)
    model = lowbit.quantize(lowbit.models.build_model("resnet8", (3, 16, 16), 10), "lsq-w8a8")
    x = torch.randn(64, 3, 16, 16)
    model.train()
    model(x)  # initialise the activation steps
    model.eval()
    info = export_onnx(model, tmp_path / "r.onnx", input_shape=(3, 16, 16))
    assert len(info.folded) == 7 and not info.notes  # every BatchNorm follows its conv directly
    parity = onnx_parity(model, info.path, x)
    assert parity.agree == parity.samples and parity.max_abs_diff < 0.1 * parity.max_abs_logit


def _calibrated(quantizer_spec, weight_spec=None):
    torch.manual_seed(0)
    layer = QuantLinear(
        16,
        4,
        input_quantizer=build_quantizer(quantizer_spec, role="activation"),
        weight_quantizer=build_quantizer(weight_spec or {"type": "lsq", "bits": 4}, role="weight"),
    )
    model = nn.Sequential(nn.Linear(8, 16), layer)
    x = torch.randn(256, 8)
    model.train()
    model(x)
    return model.eval(), x


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "binary"},  # sign activations: Where(x >= 0, H, -H)
        {"type": "minmax", "bits": 8, "zero_point": "exact"},  # real-valued zero point: float affine ops
        {"type": "uniform", "bits": 12, "signed": True},  # 4095 levels: more than a uint8 container holds
        {"type": "parametric", "parametrization": "P3"},  # power-of-two grid
    ],
)
def test_grids_without_a_qdq_form_become_float_ops(spec, tmp_path):
    model, x = _calibrated(spec)
    info = export_onnx(model, tmp_path / "f.onnx", example=x)
    assert any("float ops" in note for note in info.notes)
    parity = onnx_parity(model, info.path, x, optimization="none")
    assert parity.max_abs_diff < 1e-4


def test_weights_beyond_eight_bits_stay_float(tmp_path):
    model, x = _calibrated({"type": "lsq", "bits": 8}, {"type": "uniform", "bits": 12})
    info = export_onnx(model, tmp_path / "w.onnx", example=x)
    assert info.weights["1.weight"]["container"] == "float32"
    assert any("no 8-bit integer form" in note for note in info.notes)
    assert onnx_parity(model, info.path, x).max_abs_diff < 1e-4


def test_models_that_cannot_be_exported_say_why(tmp_path):
    float_model = lowbit.models.build_model("small-cnn", (1, 8, 8), 10).eval()
    with pytest.raises(ExportError, match="never quantized"):
        export_onnx(float_model, tmp_path / "f.onnx", input_shape=(1, 8, 8))
    info = export_onnx(float_model, tmp_path / "f.onnx", input_shape=(1, 8, 8), allow_float=True)
    assert onnx_parity(float_model, info.path, torch.randn(32, 1, 8, 8)).max_abs_diff < 1e-4
    fresh = lowbit.quantize(float_model, "lsq-w4a4")
    with pytest.raises(ExportError, match="never seen data"):
        export_onnx(fresh, tmp_path / "q.onnx", input_shape=(1, 8, 8))
    model, _ = _calibrated({"type": "minmax", "bits": 8, "granularity": "tensor"})
    with pytest.raises(ExportError, match="granularity 'tensor'"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(8,))
    with pytest.raises(ExportError, match="input shape"):
        export_onnx(fresh, tmp_path / "q.onnx")


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Fashion-MNIST is not installed")
def test_onnxruntime_predicts_the_same_classes_on_fashion_mnist(tmp_path, record_property):
    # the trainer evaluates a small test subset; the parity check below runs the whole test set
    trained("lsq-w8a8", tmp_path / "run", data="fashion-mnist", epochs=1, train_subset=2000, test_subset=200)
    model = load_checkpoint(tmp_path / "run").restore_model()
    splits = load_dataset("fashion-mnist")
    x = torch.cat([x for x, _ in BatchLoader(splits.test, 2000, normalize=(splits.mean, splits.std))])
    as_written, fused = check_parity(model, tmp_path / "run", x, tmp_path, "fashion-mnist lsq-w8a8")
    assert as_written.samples == 10_000
    record_property("max_abs_logit_diff", as_written.max_abs_diff)
    record_property("max_abs_logit_diff_integer_kernels", fused.max_abs_diff)


class LinearTwice(nn.Module):
    """One Linear called twice in forward, with a quantized input each time."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.shared = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.inp(x)))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.shared(x))
        return self.out(x)


@pytest.mark.parametrize("name", ["linear_twice", "oddities"])
def test_a_module_called_twice_exports_a_graph_onnxruntime_loads_and_agrees_with(name, tmp_path):
    if name == "oddities":
        model, x = build("oddities", batch=128)
    else:
        model, x = LinearTwice(), torch.randn(128, 8)
    qmodel = lowbit.quantize(model, "lsq-w4a4").train()
    with torch.no_grad():
        qmodel(x)  # initialise the activation steps
    info = export_onnx(qmodel.eval(), tmp_path / "twice.onnx", example=x)
    names = [node.name for node in onnx.load(info.path).graph.node]
    assert len(names) == len(set(names))
    expected = torch_logits(qmodel, x)
    as_written = onnx_logits(info.path, x, optimization="none")
    optimized = onnx_logits(info.path, x, optimization="all")
    assert np.array_equal(as_written.argmax(1), optimized.argmax(1))
    # int32 biases of the integer layers move logits by at most half an accumulator step: only near-ties flip
    parity = compare_logits(expected, optimized)
    assert parity.agreement >= 0.95 and parity.max_abs_diff < 0.05 * parity.max_abs_logit
    top2 = np.sort(expected, axis=1)[:, -2:]
    flipped = expected.argmax(1) != optimized.argmax(1)
    assert np.all((top2[:, 1] - top2[:, 0])[flipped] <= 2 * parity.max_abs_diff)


def _mobilenet_like(recipe):
    """The zoo's MobileNetV2 (1x28x28) with BatchNorm affines drawn as after training (gamma in [0.5, 2], beta ~
    N(0, 0.5)), quantized, its BatchNorm statistics and quantizers calibrated on two random batches; and 256 inputs."""
    model, _ = build("mobilenet_v2_28", seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0, generator=generator)
                module.bias.normal_(0.0, 0.5, generator=generator)
    x = torch.randn(256, 1, 28, 28, generator=generator)
    qmodel = lowbit.quantize(model, recipe).train()
    with torch.no_grad():
        for batch in x[:64].split(32):
            qmodel(batch)
    return qmodel.eval(), x


#: every shipped recipe that quantizes (fp32 has nothing to export); none has activation quantizers without a
#: static grid, which would raise ExportError
EXPORTABLE = [r.name for r in list_recipes() if r.name != "fp32"]


@pytest.mark.slow
def test_onnxruntime_graph_optimization_changes_no_prediction_on_a_mobilenet(tmp_path):
    """onnxruntime (ENABLE_ALL) rounds any float bias of a layer with a dequantized input onto the int32 accumulator
    grid (WeightBiasQuantization), which flipped 4.4 % of a W4A4 MobileNetV2's predictions: biases of layers that do
    not run as integer kernels are exported as a separate Add, the others as int32 on that grid."""
    worst = []
    for recipe in EXPORTABLE:
        qmodel, x = _mobilenet_like(recipe)
        info = export_onnx(qmodel, tmp_path / f"{recipe}.onnx", input_shape=(1, 28, 28))
        expected = torch_logits(qmodel, x)
        unoptimized = onnx_logits(info.path, x, optimization="none")
        got = onnx_logits(info.path, x, optimization="all")
        parity = compare_logits(expected, got)
        as_written = compare_logits(expected, unoptimized)
        worst.append((parity.agreement, recipe, as_written.agreement, parity.max_abs_diff / parity.max_abs_logit))
        # the optimised graph computes what the graph as written computes, up to the integer kernels' rounding
        top2 = np.sort(expected, axis=1)[:, -2:]
        gaps = top2[:, 1] - top2[:, 0]
        clear = gaps > 0.01 * parity.max_abs_logit
        assert np.mean(expected[clear].argmax(1) == got[clear].argmax(1)) >= 0.995, (recipe, parity)
        assert parity.max_abs_diff < 0.1 * parity.max_abs_logit, (recipe, parity)
    print(sorted(worst))
    assert np.mean([agreement for agreement, *_ in worst]) >= 0.995, sorted(worst)


def test_token_models_export_with_an_example_of_their_input(tmp_path):
    """Models fed token ids (Embedding first) trace on an integer example; a float dummy is a one-line ExportError."""
    import warnings

    from lowbit.export import ExportError, export_onnx
    from lowbit.export.verify import ort_session
    from model_zoo import build

    model, tokens = build("transformer", 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(model, "lsq-w4a4", example=tokens)
    qmodel.train()
    qmodel(tokens)
    qmodel.eval()
    with pytest.raises(ExportError, match="pass an example batch of the model's real input"):
        export_onnx(qmodel, tmp_path / "float.onnx", input_shape=list(tokens.shape[1:]))
    export_onnx(qmodel, tmp_path / "tokens.onnx", input_shape=list(tokens.shape[1:]), input_dtype=torch.long)
    session = ort_session(tmp_path / "tokens.onnx")
    got = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0]
    with torch.no_grad():
        expected = qmodel(tokens).numpy()
    assert (got.argmax(1) == expected.argmax(1)).all() and abs(got - expected).max() < 0.01
