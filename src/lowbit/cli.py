"""The ``lowbit`` command line: train, eval, recipes, summary, plot, export.

Bad input exits with status 2 and one line on stderr (``lowbit: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import yaml

from . import __version__
from .allocator import keep_large_allocations
from .argtypes import non_negative_int, positive_float, positive_int
from .export.command import add_export_parser, cmd_export
from .reproduce.command import add_reproduce_parser, cmd_reproduce

EXIT_USAGE = 2
EXIT_DIVERGED = 3
# commands that train or run models: large tensors allocated and freed over and over
ALLOCATING_COMMANDS = ("train", "eval", "reproduce")


def _assignment(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. train.optimizer.lr=0.01), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description="Train, compare, inspect and export 1- to 8-bit "
                                                                "neural networks (PyTorch).")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model with a recipe",
                           description="Train with a recipe; with no options: the default recipe on the embedded "
                                       "digits data.")
    train.add_argument("--recipe", default="lsq-w4a4", help="shipped recipe name or path to a .yaml "
                                                            "(default: lsq-w4a4; see 'lowbit recipes')")
    train.add_argument("--data", help="digits (default), fashion-mnist, mnist, cifar10, cifar100, svhn")
    train.add_argument("--data-dir", help="directory holding the dataset files")
    train.add_argument("--model", help="mlp, small-cnn, bc-vgg, resnet8, resnet20, resnet56 "
                                       "(default: small-cnn for 28x28 / 8x8 data, resnet20 for 32x32)")
    train.add_argument("--model-option", type=_assignment, action="append", default=[], metavar="KEY=VALUE",
                       help="model option, e.g. hidden=512 (repeatable)")
    train.add_argument("--epochs", type=non_negative_int, help="training epochs after quantization")
    train.add_argument("--pretrain-epochs", type=non_negative_int, help="float pre-training epochs "
                                                                         "(0 disables the recipe's pre-training)")
    train.add_argument("--init-from", metavar="CHECKPOINT", help="start from the float weights of this checkpoint "
                                                                  "(an fp32 run) instead of the recipe's pre-training")
    train.add_argument("--batch-size", type=positive_int)
    train.add_argument("--lr", type=positive_float, help="learning rate")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--set", dest="changes", type=_assignment, action="append", default=[], metavar="KEY=VALUE",
                       help="change a recipe value, e.g. quantize.weight.bits=3 (repeatable)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--compile", action="store_true", help="torch.compile the training step (compiles during "
                                                              "the first steps; on a CPU measured no faster than "
                                                              "eager, see docs/training.md)")
    train.add_argument("--train-subset", type=positive_int, help="use only this many training samples")
    train.add_argument("--test-subset", type=positive_int, help="use only this many test samples")
    train.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    train.add_argument("--quiet", action="store_true", help="print only the final line")

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on its test split")
    evaluate.add_argument("checkpoint", help="checkpoint file or run directory")
    evaluate.add_argument("--data-dir", help="dataset directory, if it moved since training")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    recipes = sub.add_parser("recipes", help="list the shipped recipes")
    recipes.add_argument("name", nargs="?", help="print this recipe, fully resolved, as YAML")
    recipes.add_argument("--schema", action="store_true", help="print the recipe JSON schema")

    summary = sub.add_parser("summary", help="per-layer bit widths, parameters, memory and MACs")
    summary.add_argument("target", help="checkpoint, run directory, or recipe name/path")
    summary.add_argument("--model", help="model for a recipe (default: the dataset's default)")
    summary.add_argument("--data", default=None, help="dataset that fixes the input shape (default: digits)")
    summary.add_argument("--data-dir")
    summary.add_argument("--json", action="store_true")

    add_export_parser(sub)
    add_reproduce_parser(sub)

    plot = sub.add_parser("plot", help="write PNG figures of a run (curves, bit widths, weight histograms)")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="directory for the PNG files (default: the run directory)")
    return parser


# --------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run

    config = TrainConfig(
        recipe=args.recipe, data=args.data, data_dir=args.data_dir, model=args.model,
        model_options=dict(args.model_option), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, out=args.out, resume=args.resume, changes=dict(args.changes), device=args.device,
        progress=False if args.no_progress else None, train_subset=args.train_subset,
        test_subset=args.test_subset, pretrain_epochs=args.pretrain_epochs, init_from=args.init_from,
        compile=args.compile, quiet=args.quiet)
    result = run(config)
    if args.quiet:
        m = result.metrics
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  model size {m['model_size_kb']:.2f} KB "
              f"({m['compression']:.1f}x smaller than float32)")
    print(f"wrote {args.out}/metrics.json, log.jsonl, last.pt, best.pt")
    return 0


def _load_for_eval(path: str, data_dir: Optional[str]):
    from .train.checkpoint import load_checkpoint
    from .train.trainer import Trainer, config_from_checkpoint, restore_model

    state = load_checkpoint(path)
    config = config_from_checkpoint(state)
    if data_dir:
        config.data_dir = data_dir
    if state["model_spec"]["name"] is None:
        raise ValueError("this checkpoint holds a custom model; evaluate it in Python with "
                         "lowbit.train.restore_model(state, model=YourFloatModel())")
    model = restore_model(state)
    config.epochs, config.pretrain_epochs = 0, 0
    trainer = Trainer(config, model=model)
    trainer.model_spec = state["model_spec"]
    return state, trainer


def cmd_eval(args: argparse.Namespace) -> int:
    from .export.summary import model_summary

    state, trainer = _load_for_eval(args.checkpoint, args.data_dir)
    test, val = trainer.evaluate(trainer.splits.test), trainer.evaluate(trainer.splits.val)
    summary = model_summary(trainer.model, tuple(trainer.splits.input_shape))
    result = {"checkpoint": state["path"], "recipe": state["recipe"]["name"], "dataset": trainer.splits.name,
              "epoch": state["epoch"] + 1, "test_accuracy": test["acc"], "val_accuracy": val["acc"],
              "model_size_kb": summary.memory_kb, "compression": summary.compression}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['recipe']} on {result['dataset']} (epoch {result['epoch']}): test accuracy "
              f"{100 * test['acc']:.2f}%, validation {100 * val['acc']:.2f}%, model size "
              f"{summary.memory_kb:.2f} KB ({summary.compression:.1f}x smaller than float32)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import list_recipes, load_recipe, recipe_schema

    if args.schema:
        print(json.dumps(recipe_schema(), indent=2))
        return 0
    if args.name:
        print(yaml.safe_dump(load_recipe(args.name).to_dict(), sort_keys=False), end="")
        return 0
    recipes = list_recipes()
    width = max(len(r.name) for r in recipes)
    for recipe in recipes:
        print(f"{recipe.name:<{width}}  {recipe.summary} [{recipe.paper}]")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export.summary import model_summary

    target = Path(args.target)
    if target.is_dir() or target.suffix == ".pt":
        _, trainer = _load_for_eval(args.target, args.data_dir)
        model, example = trainer.model, trainer._example_batch()
    else:
        from .train.trainer import TrainConfig, Trainer

        trainer = Trainer(TrainConfig(recipe=args.target, data=args.data, data_dir=args.data_dir, model=args.model,
                                      quiet=True, train_subset=512, test_subset=64))
        example = trainer._example_batch()
        trainer._quantize()
        model = trainer.model
        model.train()
        model(example)  # initialise data-dependent quantizers (activation ranges, LSQ steps) from real data
    summary = model_summary(model, example=example)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "recipes": cmd_recipes, "summary": cmd_summary, "plot": cmd_plot,
            "export": cmd_export, "reproduce": cmd_reproduce}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .data import DatasetError
    from .recipes import RecipeError
    from .train import CheckpointError, TrainingDiverged

    if args.command in ALLOCATING_COMMANDS:
        keep_large_allocations()  # reuse freed tensor memory instead of fresh pages every step (lowbit.allocator)
    try:
        return COMMANDS[args.command](args)
    except TrainingDiverged as error:
        print(f"lowbit: training stopped: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (RecipeError, DatasetError, CheckpointError, FileNotFoundError, ValueError, TypeError) as error:
        message = str(error).strip().splitlines()
        print(f"lowbit: error: {message[0] if message else type(error).__name__}", file=sys.stderr)
        for line in message[1:]:
            print(f"lowbit:   {line.strip()}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into head, less, ...: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        hint = ("run the same command again: finished runs are skipped" if args.command == "reproduce"
                else "resume a training run with the same command and --resume")
        print(f"lowbit: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
