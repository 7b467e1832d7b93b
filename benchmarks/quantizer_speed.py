"""Forward + backward time of every quantizer on a 1M-element tensor, relative to two references measured in the
same process: ``x.clone()`` (a copy: the floor of any elementwise op) and the plain straight-through estimator
``x + (round(x) - x).detach()`` (the minimal fake-quantizer).

    python benchmarks/quantizer_speed.py [--numel 1000000] [--rounds 5] [--repeats 10] [--threads 2]

Writes docs/results/quantizer_speed.json and docs/results/quantizer_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from lowbit.quantizers import build_quantizer
from timing import stable_allocator, time_call

CASES = [
    ("binary, deterministic (BC-det)", {"type": "binary"}, "weight", None),
    ("binary, stochastic (BC-stoch)", {"type": "binary", "rounding": "stochastic"}, "weight", None),
    ("uniform 4-bit, nearest (R)", {"type": "uniform", "bits": 4}, "weight", None),
    ("uniform 4-bit, stochastic (SR)", {"type": "uniform", "bits": 4, "rounding": "stochastic"}, "weight", None),
    ("min-max 8-bit, per tensor", {"type": "minmax", "bits": 8}, "weight", None),
    ("min-max 8-bit, per channel", {"type": "minmax", "bits": 8, "granularity": "channel"}, "weight", (1000, 1000)),
    ("min-max 8-bit, per-sample activations", {"type": "minmax", "bits": 8}, "activation", (250, 4000)),
    ("min-max 8-bit, stochastic gradient", {"type": "minmax", "bits": 8}, "gradient", None),
    ("LSQ 4-bit weights", {"type": "lsq", "bits": 4}, "weight", None),
    ("LSQ 4-bit activations", {"type": "lsq", "bits": 4}, "activation", (250, 4000)),
    ("Uhlich U1 (b, d)", {"type": "parametric", "parametrization": "U1"}, "weight", None),
    ("Uhlich U2 (b, q_max)", {"type": "parametric", "parametrization": "U2"}, "weight", None),
    ("Uhlich U3 (d, q_max)", {"type": "parametric", "parametrization": "U3"}, "weight", None),
    ("Uhlich P1 (b, q_max), pow2", {"type": "parametric", "parametrization": "P1"}, "weight", None),
    ("Uhlich P2 (b, q_min), pow2", {"type": "parametric", "parametrization": "P2"}, "weight", None),
    ("Uhlich P3 (q_min, q_max), pow2", {"type": "parametric", "parametrization": "P3"}, "weight", None),
]


def forward_backward(op, shape, numel):
    x = torch.randn(numel).reshape(shape or (numel,)).requires_grad_()
    grad = torch.randn_like(x)

    def step():
        x.grad = None
        op(x).backward(grad)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per round (median)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    allocator = stable_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    steps = {
        "clone": forward_backward(lambda x: x.clone(), None, args.numel),
        "plain STE": forward_backward(lambda x: x + (torch.round(x) - x).detach(), None, args.numel),
    }
    for name, spec, role, shape in CASES:
        quantizer = build_quantizer(spec, role=role, seed=0).train()
        if role == "gradient":
            # a gradient quantizer runs in the backward pass on a tensor that needs no graph
            steps[name] = forward_backward(lambda x, q=quantizer: x + (q(x.detach()) - x).detach(), shape, args.numel)
        else:
            steps[name] = forward_backward(quantizer, shape, args.numel)
    # interleaved rounds, so that frequency changes and background load hit every entry alike
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        time_call(step, 0, warmup=10)
    for _ in range(args.rounds):
        for name, step in steps.items():
            samples[name].append(time_call(step, args.repeats, warmup=1))
    median = {name: statistics.median(values) for name, values in samples.items()}
    clone, plain_ste = median["clone"], median["plain STE"]
    rows = []
    for name, _, _, _ in CASES:
        seconds = median[name]
        rows.append(
            {"quantizer": name, "ms": 1000 * seconds, "vs_clone": seconds / clone, "vs_plain_ste": seconds / plain_ste}
        )
        print(
            f"{name:<40} {1000 * seconds:7.2f} ms  {seconds / clone:5.1f}x clone  "
            f"{seconds / plain_ste:5.2f}x plain STE",
            flush=True,
        )

    result = {
        "numel": args.numel,
        "threads": args.threads,
        "stable_allocator": allocator,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "clone_ms": 1000 * clone,
        "plain_ste_ms": 1000 * plain_ste,
        "rows": rows,
        "command": "python benchmarks/quantizer_speed.py",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantizer_speed.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Quantizer forward + backward time",
        "",
        f"One {args.numel:,}-element float32 tensor, forward and backward, median over {args.rounds} interleaved "
        f"rounds of the median of {args.repeats} calls, "
        f"{args.threads} threads, torch {torch.__version__}. References in the same process: `x.clone()` "
        f"{1000 * clone:.2f} ms, plain STE `x + (round(x) - x).detach()` {1000 * plain_ste:.2f} ms.",
        "Generated by `python benchmarks/quantizer_speed.py`.",
        "",
        "| quantizer | ms | × clone | × plain STE |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['quantizer']} | {r['ms']:.2f} | {r['vs_clone']:.1f} | {r['vs_plain_ste']:.2f} |" for r in rows]
    (out / "quantizer_speed.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'quantizer_speed.json'} and {out / 'quantizer_speed.md'}")


if __name__ == "__main__":
    main()
