"""Users' architectures × recipes: what lowbit quantizes, whether evaluation is what it says, training, ONNX.

For each model of ``tests/model_zoo.py`` (torchvision- and HuggingFace-style block structure) and each recipe:

* weight layers quantized / total: modules holding a weight of more than one dimension, quantized by
  ``lowbit.quantize`` (its conversion report; GPT-2's ``Conv1D`` is registered with ``lowbit.register_layer``);
* eval with = without ``no_grad``: the eval-mode outputs are identical bit for bit (and, for comparison, whether the
  float model's are: PyTorch's own float LSTM runs other CPU kernels with and without ``no_grad``);
* steps trained: SGD steps with finite loss (of ``--steps``), through the recipe's own training step;
* ONNX agreement: same class from onnxruntime (graph optimization on) as from PyTorch, on the example batch.

    python benchmarks/zoo_table.py                       # writes docs/results/zoo.md and zoo.json
    python benchmarks/zoo_table.py --models gpt2,lstm --recipes lsq-w4a4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import lowbit  # noqa: E402
from lowbit.train import TrainingStep  # noqa: E402
from model_zoo import ZOO, HFConv1D, build  # noqa: E402

RECIPES = ["lsq-w4a4", "bc-det", "sr-adam", "banner-w8a8g8", "mp-u3"]


def _onnx_agreement(qmodel: torch.nn.Module, x: torch.Tensor, tmp: Path) -> str:
    from lowbit.export import export_onnx
    from lowbit.export.verify import ort_session

    try:
        export_onnx(qmodel, tmp, example=x)
        session = ort_session(tmp)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as error:  # reported in the table: export is expected to refuse some layer types
        return f"refused: {str(error).splitlines()[0][:80]}"
    with torch.no_grad():
        expected = qmodel(x).numpy()
    return f"{int((got.argmax(1) == expected.argmax(1)).sum())}/{len(x)}"


def _same_with_and_without_no_grad(model: torch.nn.Module, x: torch.Tensor) -> bool:
    model.eval()
    with torch.no_grad():
        without_grad = model(x)
    return torch.equal(model(x).detach(), without_grad)


def measure(name: str, recipe: str, steps: int, tmp: Path) -> dict:
    model, x = build(name, batch=16)
    float_same = _same_with_and_without_no_grad(model, x)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(model, recipe, example=x)
    quantized, total = qmodel.lowbit_report.weight_count()
    num_classes = ZOO[name][2]
    y = torch.randint(0, num_classes, (len(x),))
    step = TrainingStep.from_recipe(qmodel, recipe, x)
    step.policy.start()
    trained = 0
    for _ in range(steps):
        out = step(x, y)
        if not torch.isfinite(out.loss):
            break
        trained += 1
    same = _same_with_and_without_no_grad(qmodel, x)
    return {
        "model": name,
        "recipe": recipe,
        "weights_quantized": quantized,
        "weights_total": total,
        "eval_same_with_and_without_no_grad": same,
        "float_model_same": float_same,
        "steps_trained": trained,
        "steps": steps,
        "onnx_agreement": _onnx_agreement(qmodel, x, tmp / f"{name}-{recipe}.onnx"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(k for k in ZOO if k != "mobilenet_v2_28"))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args()
    lowbit.register_layer(HFConv1D)
    torch.set_num_threads(1)
    out = Path(args.out)
    tmp = out / ".zoo-onnx"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    for name in args.models.split(","):
        for recipe in args.recipes.split(","):
            row = measure(name, recipe, args.steps, tmp)
            rows.append(row)
            print(
                f"{name:<16} {recipe:<14} weights {row['weights_quantized']}/{row['weights_total']}  eval same "
                f"{row['eval_same_with_and_without_no_grad']}  steps {row['steps_trained']}/{row['steps']}  "
                f"onnx {row['onnx_agreement']}",
                flush=True,
            )
    for file in tmp.iterdir():
        file.unlink()
    tmp.rmdir()
    lines = [
        "# Users' architectures × recipes",
        "",
        f"`python benchmarks/zoo_table.py` ({time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s; "
        f"models from `tests/model_zoo.py`, random inputs, {args.steps} SGD steps with the recipe's step).",
        "",
        "| model | recipe | weight layers quantized / total | eval same with and without `no_grad` (float model) "
        "| steps trained "
        "(finite loss) | ONNX agreement (onnxruntime, optimization on) |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    yes = {True: "yes", False: "no"}
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['weights_quantized']}/{r['weights_total']} | "
            f"{yes[r['eval_same_with_and_without_no_grad']]} ({yes[r['float_model_same']]}) | "
            f"{r['steps_trained']}/{r['steps']}"
            f" | {r['onnx_agreement']} |"
        )
    (out / "zoo.md").write_text("\n".join(lines) + "\n")
    (out / "zoo.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'zoo.md'} and {out / 'zoo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
