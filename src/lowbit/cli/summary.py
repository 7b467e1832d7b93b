"""``lowbit summary``: per-layer bit widths, parameters, memory and MACs of a trained run or of a recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_epoch_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("summary", help="per-layer bit widths, parameters, memory and MACs")
    parser.add_argument("target", help="checkpoint, run directory, or recipe name/path")
    parser.add_argument(
        "--model",
        help="model for a recipe (default: the dataset's default); for a run trained with --model MODULE:CALLABLE, "
        "that reference again (importing it runs the module's code: name it only for runs you trust)",
    )
    parser.add_argument("--data", default=None, help="dataset that fixes the input shape (default: digits)")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", action="store_true")
    add_epoch_option(parser)
    return parser


def _is_checkpoint(target: str) -> bool:
    path = Path(target)
    return path.is_dir() or (path.is_file() and path.suffix not in (".yaml", ".yml"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..runs import load_checkpoint
    from ..summary import model_summary
    from ..train import TrainConfig, Trainer

    if _is_checkpoint(args.target):
        checkpoint = load_checkpoint(args.target, which=args.epoch)
        if checkpoint.data is not None and checkpoint.data.user:  # the user's data: an input of its shape and dtype
            model = checkpoint.restore_model(reference=args.model)
            dtype = getattr(torch, checkpoint.data.input_dtype, torch.float32)
            example = torch.zeros((1, *checkpoint.data.input_shape), dtype=dtype)
        else:
            trainer = Trainer.from_checkpoint(checkpoint, data_dir=args.data_dir, reference=args.model)
            model, example = trainer.model, trainer.example_batch()
    else:
        trainer = Trainer(
            TrainConfig(
                recipe=args.target,
                data=args.data,
                data_dir=args.data_dir,
                model=args.model,
                quiet=True,
                train_subset=512,
                test_subset=64,
            )
        )
        example = trainer.example_batch()
        model = trainer.quantize_model()
        model.train()
        model(example)  # initialise data-dependent quantizers (activation ranges, LSQ steps) from real data
    summary = model_summary(model, example=example)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0
