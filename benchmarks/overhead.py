"""Cost of quantization-aware training: median milliseconds per training step, as a ratio to float32 in the same run.

Models: ``small-cnn`` (the peers' reference setting, the default): conv32-BN-ReLU-pool, conv64-BN-ReLU-pool,
fc256-ReLU, fc10 on 1×28×28 Fashion-MNIST batches, batch 128; ``resnet20``: ResNet-20 on random CIFAR-sized
3×32×32 batches (the GPU setting, batch 256). Adam, cross-entropy. A step is what the trainer does: forward, loss
(plus regularizers), backward, optimizer step, and the recipe's update policy (e.g. SR-ADAM's stochastic rounding
back onto the grid).

One process, all configurations interleaved round by round (so load and frequency changes hit all of them alike),
the first steps of each configuration excluded as warm-up. Peers (Brevitas, torch.ao) are measured on the same model
and data when installed (``pip install -e ".[bench]"``).

    python benchmarks/overhead.py [--rounds 12] [--steps 5] [--warmup 30] [--compile]
    python benchmarks/overhead.py --device cuda --model resnet20 --batch 256 --recipes all --compile --tag cuda

On CUDA every timed step ends with ``torch.cuda.synchronize()`` (the kernels are asynchronous: without it the timer
measures only the launch).

Writes docs/results/overhead.json and docs/results/overhead.md (``--tag`` suffixes the file names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.devices import resolve_device
from lowbit.models import build_model
from lowbit.train import TrainingStep
from timing import stable_allocator

LOWBIT_RECIPES = ["lsq-w8a8", "lsq-w4a4", "bc-det", "bc-stoch", "sr-adam", "banner-w8a8g8", "mp-u3"]
TARGETS = {
    "lsq-w8a8": 1.15,
    "lsq-w4a4": 1.15,
    "bc-det": 1.05,
    "bc-stoch": 1.15,
    "sr-adam": 1.15,
    "banner-w8a8g8": 1.5,
    "mp-u3": 1.25,
}
# which peers do "the same kind of quantization" as each lowbit recipe. No peer library binarizes stochastically
# (bc-stoch) or stores weights on the grid (sr-adam), so those two have no same-kind peer; the deterministic binary
# peer is still shown for scale.
KIND = {
    "lsq-w8a8": "int8 W+A",
    "lsq-w4a4": "int8 W+A",
    "banner-w8a8g8": "int8 W+A",
    "mp-u3": "int8 W+A",
    "bc-det": "binary W",
    "bc-stoch": "stochastic binary W",
    "sr-adam": "binary W on the grid (SR)",
}
#: the hand-written fixed-scale fake-quant is a reference (what the cheapest unfused STE costs), not a peer library
REFERENCE_KIND = "reference (fixed scale)"


#: model name -> (input shape, build options); small-cnn is the shape the peers' hand-built models copy
MODELS = {"small-cnn": ((1, 28, 28), {"fc_bn": False}), "resnet20": ((3, 32, 32), {})}
MODEL = "small-cnn"  # set by main() from --model
DEVICE = torch.device("cpu")  # set by main() from --device


def float_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    shape, options = MODELS[MODEL]
    return build_model(MODEL, shape, 10, **options).to(DEVICE)


def data(batch: int, batches: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches on the benchmark's device: real Fashion-MNIST for the small CNN when installed (value statistics
    matter for range-based quantizers), random CIFAR-sized data for ResNet-20."""
    return [(x.to(DEVICE), y.to(DEVICE)) for x, y in _host_data(batch, batches)]


def _host_data(batch: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = MODELS[MODEL][0]
    if MODEL != "small-cnn":
        gen = torch.Generator().manual_seed(0)
        return [
            (torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(batches)
        ]
    try:
        from lowbit.data import BatchLoader, load_dataset

        splits = load_dataset("fashion-mnist", train_subset=batch * batches, val_fraction=0.0)
        loader = BatchLoader(splits.train, batch, shuffle=True, normalize=(splits.mean, splits.std), drop_last=True)
        return list(loader)[:batches]
    except Exception:  # no dataset: synthetic data of the same shape
        gen = torch.Generator().manual_seed(0)
        return [
            (torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(batches)
        ]


class Config:
    """A named training step over a fixed list of batches."""

    def __init__(self, name: str, kind: str, step: Callable[[torch.Tensor, torch.Tensor], object]):
        self.name, self.kind, self.step = name, kind, step
        self.samples: list[float] = []
        self.position = 0

    def run(self, batches, count: int, record: bool) -> None:
        for _ in range(count):
            x, y = batches[self.position % len(batches)]
            self.position += 1
            start = time.perf_counter()
            self.step(x, y)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize(DEVICE)
            if record:
                self.samples.append(time.perf_counter() - start)


def plain_step(model: nn.Module, lr: float = 1e-3) -> Callable:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def lowbit_step(recipe_name: str, example: torch.Tensor, compile_model: bool) -> Callable:
    recipe = lowbit.load_recipe(recipe_name)
    model = lowbit.quantize(float_model(), recipe).to(DEVICE)
    model.train()
    model(example)  # data-dependent initialisation, as the trainer's first batch does
    runner = TrainingStep.from_recipe(
        model, recipe, example, optimizer_spec={**recipe.train["optimizer"], "type": "adam", "lr": 1e-3}
    )
    runner.policy.start()
    if compile_model:
        runner.model = torch.compile(model)
    return lambda x, y: runner(x, y)


# ------------------------------------------------------------------------------------------------ peers
def brevitas_models() -> dict[str, nn.Module]:
    try:
        import brevitas.nn as qnn
        from brevitas.quant import (
            Int8ActPerTensorFloat,
            Int8WeightPerTensorFloat,
            SignedBinaryWeightPerTensorConst,
            Uint8ActPerTensorFloat,
        )
    except ImportError:
        return {}

    def cnn(weight_quant, act: bool) -> nn.Module:
        torch.manual_seed(0)
        relu = (lambda: qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=False)) if act else nn.ReLU
        layers = [qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=False)] if act else []
        layers += [
            qnn.QuantConv2d(1, 32, 3, padding=1, bias=False, weight_quant=weight_quant),
            nn.BatchNorm2d(32),
            relu(),
            nn.MaxPool2d(2),
            qnn.QuantConv2d(32, 64, 3, padding=1, bias=False, weight_quant=weight_quant),
            nn.BatchNorm2d(64),
            relu(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            qnn.QuantLinear(64 * 7 * 7, 256, bias=True, weight_quant=weight_quant),
            relu(),
            qnn.QuantLinear(256, 10, bias=True, weight_quant=weight_quant),
        ]
        return nn.Sequential(*layers)

    if MODEL != "small-cnn":
        print(f"note: the Brevitas peers are written for small-cnn only; no Brevitas rows for {MODEL}", flush=True)
        return {}
    return {
        "Brevitas int8 W+A": cnn(Int8WeightPerTensorFloat, act=True).to(DEVICE),
        "Brevitas binary W": cnn(SignedBinaryWeightPerTensorConst, act=False).to(DEVICE),
    }


def torch_ao_models() -> dict[str, nn.Module]:
    from torch.ao import quantization as tq
    from torch.ao.quantization import _learnable_fake_quantize as lfq

    models = {}
    qat = float_model()
    qat.train()
    qat.qconfig = tq.get_default_qat_qconfig("fbgemm")
    models["torch.ao QAT (fbgemm)"] = tq.prepare_qat(qat, inplace=False)

    learnable = float_model()
    learnable.train()
    act = lfq._LearnableFakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        scale=0.1,
        zero_point=0.0,
        use_grad_scaling=True,
    )
    weight = lfq._LearnableFakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        scale=0.1,
        zero_point=0.0,
        qscheme=torch.per_tensor_symmetric,
        use_grad_scaling=True,
    )
    learnable.qconfig = tq.QConfig(activation=act, weight=weight)
    models["torch.ao learnable fake-quant (LSQ)"] = tq.prepare_qat(learnable, inplace=False)
    return {name: model.to(DEVICE) for name, model in models.items()}


class MinimalSTE(nn.Module):
    """The unfused reference: ``w + (round(w / s) * s - w).detach()`` on weights and activations, 8 bits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.register_forward_pre_hook(self._quantize_input)
                torch.nn.utils.parametrize.register_parametrization(module, "weight", _STEWeight())

    @staticmethod
    def _quantize_input(module, inputs):
        (x,) = inputs
        scale = x.detach().abs().max().clamp_min(1e-8) / 127
        return (x + (torch.round(x / scale).clamp(-128, 127) * scale - x).detach(),)

    def forward(self, x):
        return self.model(x)


class _STEWeight(nn.Module):
    def forward(self, w):
        scale = w.detach().abs().max().clamp_min(1e-8) / 127
        return w + (torch.round(w / scale).clamp(-128, 127) * scale - w).detach()


# ------------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=12,
        help="interleaved rounds; short rounds keep every configuration close in time to float32",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per configuration before round 1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="small-cnn")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    parser.add_argument(
        "--recipes",
        default=",".join(LOWBIT_RECIPES),
        help="comma-separated recipes, or 'all' for every shipped quantized recipe",
    )
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd float32 and lowbit")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    args = parser.parse_args(argv)

    global MODEL, DEVICE
    MODEL = args.model
    DEVICE = resolve_device(args.device)  # a one-line error for cuda on a machine without it
    allocator = stable_allocator()
    torch.set_num_threads(args.threads)
    batches = data(args.batch)
    example = batches[0][0]
    recipes = (
        [recipe.name for recipe in lowbit.list_recipes() if recipe.name != "fp32"]
        if args.recipes == "all"
        else [r for r in args.recipes.split(",") if r]
    )

    configs = [Config("float32", "float", plain_step(float_model()))]
    for name in recipes:
        configs.append(Config(f"lowbit {name}", KIND.get(name, "other"), lowbit_step(name, example, False)))
    if args.compile:
        compiled_float = torch.compile(float_model())
        configs.append(Config("float32 (compiled)", "float", plain_step(compiled_float)))
        for name in recipes:
            configs.append(
                Config(f"lowbit {name} (compiled)", KIND.get(name, "other"), lowbit_step(name, example, True))
            )
    if not args.no_peers:
        for name, model in brevitas_models().items():
            configs.append(Config(name, "int8 W+A" if "int8" in name else "binary W", plain_step(model)))
        for name, model in torch_ao_models().items():
            configs.append(Config(name, "int8 W+A", plain_step(model)))
        configs.append(Config("minimal unfused STE (int8 W+A)", REFERENCE_KIND, plain_step(MinimalSTE(float_model()))))

    for config in configs:
        started = time.perf_counter()
        config.run(batches, args.warmup, record=False)
        print(f"warm-up {config.name:<42} {time.perf_counter() - started:6.1f} s", flush=True)
    for round_index in range(args.rounds):
        for config in configs:
            config.run(batches, args.steps, record=True)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    reference = {"float": statistics.median(configs[0].samples)}
    compiled_float = next((c for c in configs if c.name == "float32 (compiled)"), None)
    rows = []
    for config in configs:
        ms = 1000 * statistics.median(config.samples)
        base = compiled_float if config.name.endswith("(compiled)") and compiled_float else configs[0]
        # the ratio of each round (to float32 timed seconds earlier in the same round), then the median over
        # rounds: on a shared machine the speed drifts by 10-20 % over a minute, which a ratio of two overall
        # medians would attribute to whichever configuration ran in the slow period
        ratio = statistics.median(
            _round_median(config, i, args.steps) / _round_median(base, i, args.steps) for i in range(args.rounds)
        )
        recipe = config.name.removeprefix("lowbit ").removesuffix(" (compiled)")
        rows.append(
            {
                "config": config.name,
                "kind": config.kind,
                "ms_per_step": ms,
                "ratio": ratio,
                "reference": base.name,
                "target": TARGETS.get(recipe) if config.name.startswith("lowbit") else None,
                "per_round_ms": [1000 * _round_median(config, i, args.steps) for i in range(args.rounds)],
            }
        )
    peers = [r for r in rows if not r["config"].startswith(("lowbit", "float32")) and r["kind"] != REFERENCE_KIND]
    for row in rows:
        if row["config"].startswith("lowbit"):
            same_kind = [p["ratio"] for p in peers if p["kind"] == row["kind"]]
            row["faster_than_peers"] = all(row["ratio"] < r for r in same_kind) if same_kind else None
            row["meets_target"] = row["target"] is None or row["ratio"] <= row["target"]

    print()
    print(f"{'configuration':<42} {'ms/step':>8} {'x float':>8} {'target':>7}  round medians (ms)")
    for row in rows:
        target = f"<={row['target']:.2f}" if row["target"] else ""
        rounds = f"{min(row['per_round_ms']):.1f}-{max(row['per_round_ms']):.1f}"
        print(f"{row['config']:<42} {row['ms_per_step']:8.1f} {row['ratio']:8.2f} {target:>7}  {rounds}")

    given = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python benchmarks/overhead.py", *map(shlex.quote, given)]),
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "stable_allocator": allocator,
        "torch": torch.__version__,
        "model": MODEL,
        "device": str(DEVICE),
        "device_name": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else platform.processor(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "reference_float_ms": 1000 * reference["float"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (out / f"overhead{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"overhead{suffix}.md").write_text(markdown(result))
    print(f"wrote {out / f'overhead{suffix}.json'} and {out / f'overhead{suffix}.md'}")
    return result


def _round_median(config: Config, index: int, steps: int) -> float:
    return statistics.median(config.samples[index * steps : (index + 1) * steps])


def markdown(result: dict) -> str:
    model = result.get("model", "small-cnn")
    described = (
        "Small CNN (conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc256, fc10)"
        if model == "small-cnn"
        else f"{model} on random 3×32×32 data"
    )
    where = (
        f"on {result['device_name']}"
        if str(result.get("device", "cpu")).startswith("cuda")
        else f"{result['threads']} threads"
    )
    lines = [
        "# Training-step overhead of quantization",
        "",
        f"{described}, batch {result['batch']}, {where}, torch {result['torch']}; median ms per training step over "
        f"{result['rounds']} interleaved rounds of {result['steps_per_round']} steps after "
        f"{result['warmup_steps']} warm-up steps per configuration. Ratios are to float32 in the same process "
        f"(compiled rows to compiled float32): the median over rounds of each round's ratio, which cancels the "
        f"machine's drift in speed between rounds. Generated by `{result['command']}`. Same-kind peers: Brevitas and "
        "torch.ao configurations quantizing the same tensors; the minimal unfused STE (a fixed-scale int8 "
        "fake-quant written by hand, no learned parameters) is a reference for the cheapest possible unfused "
        "quantizer, not a peer. The last column, the range of the per-round medians, shows the machine's drift.",
        "",
        "| configuration | kind | ms/step | × float32 | target | meets target | faster than same-kind peers | "
        "round medians (ms) |",
        "| --- | --- | ---: | ---: | ---: | :---: | :---: | --- |",
    ]
    for row in result["rows"]:
        target = f"≤ {row['target']:.2f}" if row.get("target") else ""
        meets = {True: "yes", False: "**no**", None: ""}[row.get("meets_target")]
        faster = {True: "yes", False: "**no**", None: ""}[row.get("faster_than_peers")]
        if row["config"].startswith("lowbit") and row.get("faster_than_peers") is None:
            faster = "no same-kind peer"
        lines.append(
            f"| {row['config']} | {row['kind']} | {row['ms_per_step']:.1f} | {row['ratio']:.3f} | "
            f"{target} | {meets} | {faster} | {min(row['per_round_ms']):.1f}-{max(row['per_round_ms']):.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
