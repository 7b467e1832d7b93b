"""Integer inference in onnxruntime: float32 ONNX against the exported int8 QDQ ONNX, and the file sizes.

    python benchmarks/inference.py [--threads 2] [--rounds 5] [--repeats 20] [--train-subset 10000]

Two models:

* small-cnn on Fashion-MNIST (1x28x28), trained briefly with ``lsq-w8a8`` (1 float pre-training epoch + 1
  quantized epoch on a training subset); its test accuracy in PyTorch and in onnxruntime, and their agreement, are
  reported too;
* ResNet-20 (3x32x32, 10 classes), freshly quantized with ``lsq-w8a8`` from its He-initialised weights, LSQ steps
  initialised from one batch of 256 N(0, 1) inputs (no CIFAR-10 on this machine; latency does not depend on the
  weight values).

The float32 model is the same network with the quantizers removed (its float latent weights), exported by the same
pipeline (BatchNorm folded). Both run in onnxruntime on the CPU with ``--threads`` intra-op threads, all graph
optimisations, batch 1 and 256; the latency is the median over ``--rounds`` interleaved rounds (float32 and int8
alternate) of the median of ``--repeats`` calls. The integer kernels onnxruntime actually runs are read from its
optimised graph. Writes docs/results/inference.json and docs/results/inference.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import lowbit
from lowbit.data import BatchLoader, load_dataset
from lowbit.export import export_onnx, runtime_kernels, save_packed
from lowbit.export.verify import INTEGER_KERNELS, compare_logits, onnx_logits, ort_session, torch_logits
from lowbit.models import build_model
from lowbit.train import TrainConfig, run
from timing import stable_allocator, time_call

RECIPE = "lsq-w8a8"
SIZE_RECIPES = ("lsq-w8a8", "lsq-w4a4", "bc-det")  # packed sizes at 8, 4 (8-bit first/last layer) and 1 bit


def float_copy(qmodel: torch.nn.Module, name: str, input_shape, num_classes: int, **options) -> torch.nn.Module:
    """The architecture without quantizers, holding the quantized model's float (latent) weights and BatchNorm."""
    model = build_model(name, input_shape, num_classes, **options)
    model.load_state_dict(qmodel.state_dict(), strict=False)
    return model.eval()


def calibrate(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Initialise data-dependent quantizers (LSQ activation steps) with one train-mode batch, then eval."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def small_cnn(args):
    config = TrainConfig(
        recipe=RECIPE,
        data="fashion-mnist",
        epochs=1,
        pretrain_epochs=1,
        train_subset=args.train_subset,
        test_subset=1000,
        batch_size=64,
        quiet=True,
    )
    result = run(config)
    splits = load_dataset("fashion-mnist")
    test = BatchLoader(splits.test, 1000, normalize=(splits.mean, splits.std))
    shape, classes = tuple(splits.input_shape), splits.num_classes
    qmodel = result.model.eval()
    fresh = {
        r: calibrate(lowbit.quantize(build_model("small-cnn", shape, classes), r, seed=0), next(iter(test))[0])
        for r in SIZE_RECIPES
        if r != RECIPE
    }
    note = (
        f"trained with {RECIPE}: 1 float pre-training epoch and 1 quantized epoch on {args.train_subset} "
        f"Fashion-MNIST training images"
    )
    return {
        "name": "small-cnn",
        "input_shape": shape,
        "qmodel": qmodel,
        "float": float_copy(qmodel, "small-cnn", shape, classes),
        "sized": {RECIPE: qmodel, **fresh},
        "test": test,
        "how": note,
    }


def resnet20(args):
    shape, classes = (3, 32, 32), 10
    torch.manual_seed(0)
    float_model = build_model("resnet20", shape, classes).eval()
    x = torch.randn(256, *shape)
    sized = {r: calibrate(lowbit.quantize(float_model, r, seed=0), x) for r in SIZE_RECIPES}
    note = (
        f"freshly quantized with {RECIPE} from He-initialised weights; LSQ steps from one batch of 256 N(0,1) "
        f"inputs (no CIFAR-10 here; latency does not depend on the weight values)"
    )
    return {
        "name": "resnet20",
        "input_shape": shape,
        "qmodel": sized[RECIPE],
        "float": float_model,
        "sized": sized,
        "test": None,
        "how": note,
    }


def sizes(entry, tmp: Path) -> dict:
    out = {}
    recipe_of = {RECIPE: lowbit.load_recipe(RECIPE)}
    for recipe, model in entry["sized"].items():
        path = tmp / f"{entry['name']}-{recipe}.packed.safetensors"
        info = save_packed(model, path, recipe=recipe_of.get(recipe) or lowbit.load_recipe(recipe))
        out[f"packed_{recipe}"] = info.file_bytes
        out[f"packed_{recipe}_weight_compression"] = info.weight_compression
    return out


#: onnxruntime's QDQ propagation moves a QuantizeLinear in front of the max-pooling after a float layer, where
#: onnxruntime pools uint8 NCHW tensors slowly; lowbit already places the QuantizeLinear where fusion needs it
NO_PROPAGATION = ["QDQPropagationTransformer"]
FLOAT_LAYERS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul")


def latency(variants: dict[str, tuple[str, list]], shape, threads: int, batches, rounds: int, repeats: int) -> dict:
    sessions = {
        name: ort_session(path, threads=threads, disabled_optimizers=disabled)
        for name, (path, disabled) in variants.items()
    }
    inputs = {b: np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32) for b in batches}
    calls = {
        (name, b): (lambda s=s, x=inputs[b]: s.run(None, {s.get_inputs()[0].name: x}))
        for name, s in sessions.items()
        for b in batches
    }
    for call in calls.values():
        time_call(call, 0, warmup=3)
    samples = {key: [] for key in calls}
    for _ in range(rounds):  # interleaved: float32 and int8 see the same background load and clock
        for key, call in calls.items():
            samples[key].append(time_call(call, repeats if key[1] == 1 else max(repeats // 4, 3), warmup=1))
    return {f"{name}_batch{b}_ms": 1000 * statistics.median(samples[(name, b)]) for name, b in calls}


def benchmark(entry, args, tmp: Path) -> dict:
    name, shape = entry["name"], entry["input_shape"]
    fp32 = export_onnx(entry["float"], tmp / f"{name}-fp32.onnx", input_shape=shape, allow_float=True)
    int8 = export_onnx(entry["qmodel"], tmp / f"{name}-int8.onnx", input_shape=shape)
    kernels = runtime_kernels(int8.path)
    row = {
        "model": name,
        "input_shape": list(shape),
        "how": entry["how"],
        "fp32_onnx_bytes": fp32.file_bytes,
        "int8_onnx_bytes": int8.file_bytes,
        **sizes(entry, tmp),
        "int8_kernels": {k: v for k, v in kernels.items() if k in INTEGER_KERNELS},
        "int8_float_layers": {k: v for k, v in kernels.items() if k in FLOAT_LAYERS},
        "int8_runtime_graph": kernels,
        "int8_noprop_runtime_graph": runtime_kernels(int8.path, disabled_optimizers=NO_PROPAGATION),
        "fp32_kernels": {k: v for k, v in runtime_kernels(fp32.path).items() if k in FLOAT_LAYERS},
        "weight_containers": sorted({w["container"] for w in int8.weights.values()}),
        "folded_batchnorm": len(int8.folded),
        "int32_biases": len(int8.integer_biases),
    }
    variants = {"fp32": (fp32.path, []), "int8": (int8.path, []), "int8_noprop": (int8.path, NO_PROPAGATION)}
    row.update(latency(variants, shape, args.threads, args.batches, args.rounds, args.repeats))
    for b in args.batches:
        row[f"ratio_batch{b}"] = row[f"int8_batch{b}_ms"] / row[f"fp32_batch{b}_ms"]
        row[f"ratio_noprop_batch{b}"] = row[f"int8_noprop_batch{b}_ms"] / row[f"fp32_batch{b}_ms"]
    if entry["test"] is not None:
        expected = torch_logits(entry["qmodel"], entry["test"])
        got = onnx_logits(int8.path, entry["test"], threads=args.threads)
        labels = np.concatenate([y.numpy() for _, y in entry["test"]])
        parity = compare_logits(expected, got)
        row.update(
            {
                "test_samples": parity.samples,
                "torch_accuracy": float(np.mean(expected.argmax(1) == labels)),
                "onnx_int8_accuracy": float(np.mean(got.argmax(1) == labels)),
                "agree": parity.agree,
                "max_abs_logit_diff": parity.max_abs_diff,
                "max_abs_logit": parity.max_abs_logit,
            }
        )
    print(json.dumps({k: v for k, v in row.items() if k != "how"}), flush=True)
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Integer inference in onnxruntime",
        "",
        f"float32 ONNX against the exported {RECIPE} QDQ ONNX (int8/uint8 weights and activations), onnxruntime "
        f"{result['onnxruntime']} on the CPU, {result['threads']} intra-op threads, all graph optimisations; median "
        f"of {result['rounds']} interleaved rounds. Machine: {result['cpu']}.",
        f"Generated by `{result['command']}`.",
        "",
        "| model | batch | float32 ms | int8 ms | int8 / float32 | int8, no QDQ propagation: ms | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        for b in result["batches"]:
            lines.append(
                f"| {row['model']} | {b} | {row[f'fp32_batch{b}_ms']:.3f} | {row[f'int8_batch{b}_ms']:.3f} | "
                f"**{row[f'ratio_batch{b}']:.2f}** | {row[f'int8_noprop_batch{b}_ms']:.3f} | "
                f"{row[f'ratio_noprop_batch{b}']:.2f} |"
            )
    lines += [
        "",
        "int8 is the default onnxruntime session; the last two columns disable onnxruntime's "
        '`QDQPropagationTransformer` (`disabled_optimizers=["QDQPropagationTransformer"]`), which otherwise '
        "moves the QuantizeLinear in front of a max-pooling that follows a float layer (the unquantized first "
        "convolution), where onnxruntime pools uint8 NCHW tensors slowly.",
    ]
    lines += [
        "",
        "File sizes (bytes):",
        "",
        "| model | float32 ONNX | int8 ONNX | packed 8-bit | packed 4-bit | packed 1-bit (BC) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['fp32_onnx_bytes']:,} | {row['int8_onnx_bytes']:,} | "
            f"{row['packed_lsq-w8a8']:,} | {row['packed_lsq-w4a4']:,} | {row['packed_bc-det']:,} |"
        )
    lines += [
        "",
        "Packed 4-bit is `lsq-w4a4` (first and last layer at 8 bits), 1-bit is `bc-det`; packed files hold "
        "BatchNorm and quantizer parameters in float32.",
        "",
        "What onnxruntime runs (from its optimised graph):",
        "",
    ]
    for row in result["rows"]:
        integer = ", ".join(f"{v} {k}" for k, v in sorted(row["int8_kernels"].items())) or "none"
        floats = ", ".join(f"{v} {k}" for k, v in sorted(row["int8_float_layers"].items())) or "none"
        lines.append(
            f"* {row['model']}: integer kernels {integer}; float layers left {floats} "
            f"(float32 model: {', '.join(f'{v} {k}' for k, v in sorted(row['fp32_kernels'].items()))}). "
            f"{row['folded_batchnorm']} BatchNorm folded, {row['int32_biases']} int32 biases, weight "
            f"containers {', '.join(row['weight_containers'])}."
        )
    for row in result["rows"]:
        if "agree" in row:
            lines.append(
                f"* {row['model']} on the Fashion-MNIST test set: PyTorch (fake-quantized) accuracy "
                f"{100 * row['torch_accuracy']:.2f}%, onnxruntime int8 {100 * row['onnx_int8_accuracy']:.2f}%; "
                f"same class on {row['agree']}/{row['test_samples']} samples, max |logit difference| "
                f"{row['max_abs_logit_diff']:.3g} (logits up to {row['max_abs_logit']:.3g})."
            )
    lines += ["", "Models:", ""] + [f"* {row['model']}: {row['how']}." for row in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per round at batch 1 (1/4 at 256)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    allocator = stable_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for build in (small_cnn, resnet20):
            rows.append(benchmark(build(args), args, Path(tmp)))
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    argv = " ".join(sys.argv[1:])
    result = {
        "command": f"python benchmarks/inference.py{' ' + argv if argv else ''}",
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "batches": args.batches,
        "stable_allocator": allocator,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "lowbit": lowbit.__version__,
        "cpu": cpu,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(result, indent=2))
    (out / "inference.md").write_text(markdown(result))
    print(f"wrote {out / 'inference.json'} and {out / 'inference.md'}")


if __name__ == "__main__":
    main()
