"""Training on 1 and 2 processes of this machine: samples per second, time to accuracy and communication per step.

    python benchmarks/scaling.py                                  # lsq-w4a4 and banner-w8a8g8, Fashion-MNIST
    python benchmarks/scaling.py --recipes lsq-w4a4 --epochs 2 --train-subset 10000

Each configuration is one ``lowbit train`` command in a fresh process: on one process with every core
(``torch.get_num_threads()`` threads), and with ``--nproc 2`` (torchrun; each worker gets one thread, torchrun's
default ``OMP_NUM_THREADS=1``), the same recipe, seed, global batch and data. From each run's ``log.jsonl``:

* **samples/s**: training samples per second of training time (the epochs' ``train_time_s``, without evaluation),
  over all ranks;
* **time to accuracy**: training seconds until the validation accuracy first reaches each of ``--targets`` (and the
  epoch);
* **wall time** of the whole command (start-up, data loading, evaluation and checkpoints included).

Communication per step is computed, not measured: DistributedDataParallel all-reduces the gradient of every
trainable parameter once per step (float32, in buckets) and broadcasts rank 0's buffers (BatchNorm statistics,
quantizer state) before every forward. A ring all-reduce of ``G`` bytes sends ``2 (W - 1) / W · G`` bytes per rank;
a broadcast of ``B`` bytes sends about ``B`` per receiving rank. The epoch's two small collectives (the summed loss
and accuracy, rank 0's buffers) are left out.

Fashion-MNIST must be installed (Debian package ``dataset-fashion-mnist``, files in
``/usr/share/datasets/fashion-mnist``). Writes ``docs/results/scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from lowbit.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


def train(recipe: str, nproc: int, args: argparse.Namespace, out: Path) -> dict:
    """One run; its per-epoch records and the command's wall time."""
    command = [sys.executable, "-m", "lowbit", "train", "--recipe", recipe, "--data", args.data]
    command += ["--epochs", str(args.epochs), "--pretrain-epochs", "0", "--seed", str(args.seed)]
    command += ["--train-subset", str(args.train_subset), "--test-subset", str(args.test_subset)]
    command += ["--out", str(out), "--no-progress", "--quiet"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"epochs": [e for e in epochs if e.get("phase") == "train"], "wall_s": wall}


def time_to(epochs: list, target: float) -> Optional[dict]:
    """Training seconds (and the epoch) until the validation accuracy first reached ``target``; None if never."""
    elapsed = 0.0
    for e in epochs:
        elapsed += e["train_time_s"]
        if e["val_acc"] >= target:
            return {"epoch": e["epoch"], "train_s": elapsed}
    return None


def summarise(run: dict, targets: list[float]) -> dict:
    epochs = run["epochs"]
    train_s = sum(e["train_time_s"] for e in epochs)
    seen = sum(e["samples_per_s"] * e["train_time_s"] for e in epochs)
    return {
        "samples_per_s": seen / train_s,
        "train_s": train_s,
        "wall_s": run["wall_s"],
        "final_val_acc": epochs[-1]["val_acc"],
        "final_test_acc": epochs[-1]["test_acc"],
        "time_to_target": {str(t): time_to(epochs, t) for t in targets},
        "curve": [{"epoch": e["epoch"], "train_time_s": e["train_time_s"], "val_acc": e["val_acc"]} for e in epochs],
    }


def communication(recipe: str, args: argparse.Namespace, world: int) -> dict:
    """Bytes per training step that DDP moves for this recipe's quantized model (see the module docstring)."""
    config = TrainConfig(
        recipe=recipe, data=args.data, train_subset=256, test_subset=64, epochs=0, pretrain_epochs=0, quiet=True
    )
    model = Trainer(config).quantize_model()
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "gradient_bytes": gradients,
        "buffer_bytes": buffers,
        "sent_per_rank_bytes": 2 * (world - 1) / world * gradients + buffers,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="lsq-w4a4,banner-w8a8g8")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--targets", default="0.85,0.88,0.90", help="comma-separated validation accuracies for time to accuracy"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)

    targets = [float(t) for t in args.targets.split(",") if t]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for recipe in [r for r in args.recipes.split(",") if r]:
            comm = communication(recipe, args, world=2)
            for nproc in (1, 2):
                run = train(recipe, nproc, args, Path(scratch) / f"{recipe}-{nproc}")
                row = {"recipe": recipe, "processes": nproc, **summarise(run, targets), **comm}
                rows.append(row)
                print(
                    f"{recipe:<16} {nproc} proc  {row['samples_per_s']:8.0f} samples/s  "
                    f"{_targets_text(row, targets)}  val {100 * row['final_val_acc']:.2f}%  wall {row['wall_s']:.1f} s",
                    flush=True,
                )
    given = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python benchmarks/scaling.py", *map(shlex.quote, given)]),
        "data": args.data,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "targets": targets,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads_one_process": torch.get_num_threads(),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    (out / "scaling.md").write_text(markdown(result))
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.md'}")
    return result


def _targets_text(row: dict, targets: list[float]) -> str:
    parts = []
    for target in targets:
        reached = row["time_to_target"][str(target)]
        parts.append(f"{reached['train_s']:.1f} s ({reached['epoch']})" if reached else "not reached")
    return " / ".join(parts)


def markdown(result: dict) -> str:
    targets = result["targets"]
    shown = " / ".join(f"{100 * t:g} %" for t in targets)
    lines = [
        "# Training on 1 and 2 processes",
        "",
        f"{result['data']}, {result['train_subset']} training samples, {result['epochs']} epochs, no float "
        f"pre-training, the recipe's global batch; {result['cpu_count']} cores ({result['machine']}), torch "
        f"{result['torch']}. One process uses {result['threads_one_process']} threads, each of 2 processes one "
        f"(gloo). Samples/s: over training time only; time to accuracy: training seconds (and the epoch) until the "
        f"validation accuracy first reached {shown}. Communication per step is computed from the model "
        f"(benchmarks/scaling.py's docstring): DDP's gradient all-reduce and buffer broadcast. Generated by "
        f"`{result['command']}`.",
        "",
        f"| recipe | processes | samples/s | time to {shown} | final val acc | wall s | gradient KB/step | "
        "buffers KB/step | sent per rank KB/step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        to_target = _targets_text(row, targets)
        distributed = row["processes"] > 1
        comm = (
            f"{row['gradient_bytes'] / 1024:.1f} | {row['buffer_bytes'] / 1024:.1f} | "
            f"{row['sent_per_rank_bytes'] / 1024:.1f}"
            if distributed
            else "– | – | –"
        )
        lines.append(
            f"| {row['recipe']} | {row['processes']} | {row['samples_per_s']:.0f} | {to_target} | "
            f"{100 * row['final_val_acc']:.2f} % | {row['wall_s']:.1f} | {comm} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
