"""Do Li & De's R/SR weights move? Flips of the stored binary weights and test accuracy on digits.

Trains the Li & De MLP (input-256-256-10, BatchNorm after every layer) with each recipe on the embedded digits data
and counts, after every ADAM step, the weights whose stored value changed sign (grid policy only: BC's stored
weights are its float copy). ``--unit-grid`` trains on the {-1, +1} grid without the Glorot LR scale, the setting the
recipes had before, where R never flips a weight (a net of fixed random weights with trained BatchNorm).

    PYTHONPATH=src python benchmarks/lide_flips.py --epochs 3
    PYTHONPATH=src python benchmarks/lide_flips.py --epochs 3 --unit-grid
    PYTHONPATH=src python benchmarks/lide_flips.py --data fashion-mnist --train-subset 5000 --epochs 2 --lr 0.006

Flips are counted per layer: an R update crosses a level of the grid {-H, +H} (H = sqrt(1.5 / (fan_in + fan_out)),
LR scale 1/H) only where ``lr / H >= H`` at ADAM's largest normalised step, i.e. ``lr >= 1.5 / (fan_in + fan_out)``.
"""

from __future__ import annotations

import argparse

import torch

from lowbit.train import GridWeights, TrainConfig, run

MLP = {"hidden": 256, "depth": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--recipes", default="r-adam,sr-adam,bc-adam")
    parser.add_argument("--unit-grid", action="store_true", help="H = 1 and no Glorot LR scale (the old recipes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="ADAM's LR (default: the recipe's)")
    args = parser.parse_args()

    flips: dict[int, int] = {}
    last: dict[int, torch.Tensor] = {}
    update = GridWeights.update_weights

    def counting(policy: GridWeights) -> None:
        update(policy)
        for i, (weight, _) in enumerate(policy._weighted):
            if i in last:
                flips[i] = flips.get(i, 0) + int((last[i] != weight).sum())
            last[i] = weight.detach().clone()

    GridWeights.update_weights = counting
    changes = {"quantize.weight.scale": 1.0, "train.policy.lr_scale": "none"} if args.unit_grid else {}
    for recipe in args.recipes.split(","):
        flips.clear()
        last.clear()
        config = TrainConfig(
            recipe=recipe,
            data=args.data,
            train_subset=args.train_subset,
            test_subset=2000 if args.train_subset else None,
            lr=args.lr,
            model="mlp",
            model_options=dict(MLP),
            epochs=args.epochs,
            seed=args.seed,
            quiet=True,
            changes=changes,
        )
        result = run(config)
        grid = "unit grid" if args.unit_grid else "recipe grid"
        per_layer = ", ".join(str(flips.get(i, 0)) for i in range(len(last)))
        moved = f"{sum(flips.values())} weight flips (per layer: {per_layer})" if "bc" not in recipe else "(float copy)"
        print(f"{recipe:10s} {grid}: test accuracy {result['test_accuracy']:.3f}, {moved}", flush=True)


if __name__ == "__main__":
    main()
