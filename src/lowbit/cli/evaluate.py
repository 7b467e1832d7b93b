"""``lowbit eval``: test accuracy and model size of a checkpoint (the best one of a run directory)."""

from __future__ import annotations

import argparse
import json

from .options import add_epoch_option, add_model_reference_option

ALLOCATES = True


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint on its test split")
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    add_epoch_option(parser)
    add_model_reference_option(parser)
    parser.add_argument("--data-dir", help="dataset directory, if it moved since training")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..runs import load_checkpoint
    from ..summary import model_summary
    from ..train import Trainer

    checkpoint = load_checkpoint(args.checkpoint, which=args.epoch)
    trainer = Trainer.from_checkpoint(checkpoint, data_dir=args.data_dir, reference=args.model)
    test, val = trainer.evaluate(trainer.splits.test), trainer.evaluate(trainer.splits.val)
    summary = model_summary(trainer.model, tuple(trainer.splits.input_shape))
    result = {
        "checkpoint": str(checkpoint.path),
        "recipe": checkpoint.recipe_name,
        "dataset": trainer.splits.name,
        "epoch": checkpoint.epoch + 1,
        "test_accuracy": test["acc"],
        "val_accuracy": val["acc"],
        "model_size_kb": summary.memory_kb,
        "compression": summary.compression,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['recipe']} on {result['dataset']} (epoch {result['epoch']}): test accuracy "
            f"{100 * test['acc']:.2f}%, validation {100 * val['acc']:.2f}%, model size "
            f"{summary.memory_kb:.2f} KB ({summary.compression:.1f}x smaller than float32)"
        )
    return 0
