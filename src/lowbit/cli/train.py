"""``lowbit train``: train a model with a recipe (with no options: the default recipe on the embedded digits data)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from ..data import DATASETS
from ..models import MODELS
from .argtypes import assignment, non_negative_int, positive_float, positive_int
from .options import directory

ALLOCATES = True  # large tensors allocated and freed every step


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model with a recipe",
        description="Train with a recipe; with no options: the default recipe on the embedded digits data.",
    )
    parser.add_argument(
        "--recipe",
        default="lsq-w4a4",
        help="shipped recipe name or path to a .yaml (default: lsq-w4a4; see 'lowbit recipes')",
    )
    parser.add_argument("--data", help=f"{', '.join(DATASETS)} (default: digits)")
    parser.add_argument("--data-dir", help="directory holding the dataset files")
    parser.add_argument(
        "--model",
        help=f"{', '.join(MODELS)} (default: small-cnn for 28x28 / 8x8 data, resnet20 for 32x32), or your own "
        f"architecture as MODULE:CALLABLE, called as CALLABLE(input_shape, num_classes, **options) (the module must "
        f"be importable: put its directory on PYTHONPATH)",
    )
    parser.add_argument(
        "--model-option",
        type=assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. hidden=512 (repeatable)",
    )
    parser.add_argument("--epochs", type=non_negative_int, help="training epochs after quantization")
    parser.add_argument(
        "--pretrain-epochs",
        type=non_negative_int,
        help="float pre-training epochs (0 disables the recipe's pre-training)",
    )
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from the float weights of this checkpoint (an fp32 run) instead of the recipe's pre-training",
    )
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--lr", type=positive_float, help="learning rate")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=directory, default="runs/latest", help="output directory (default: runs/latest)")
    run_dir = parser.add_mutually_exclusive_group()
    run_dir.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint")
    run_dir.add_argument(
        "--overwrite",
        action="store_true",
        help="OUT holds an earlier run: move it into OUT/replaced-<time>/ and start a new one",
    )
    parser.add_argument(
        "--set",
        dest="changes",
        type=assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a recipe value, e.g. quantize.weight.bits=3 (repeatable)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default: CUDA when available, else CPU), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default="none",
        help="bf16: run the training forward pass under bfloat16 autocast (default none: float32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (compiles during "
        "the first steps; on a CPU measured no faster than "
        "eager, see docs/training.md)",
    )
    parser.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train on N processes of this machine (launches the same command through torchrun; the batch size is "
        "the global batch; see docs/distributed.md)",
    )
    parser.add_argument("--train-subset", type=positive_int, help="use only this many training samples")
    parser.add_argument("--test-subset", type=positive_int, help="use only this many test samples")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    parser.set_defaults(interrupt_hint="resume the run with the same command and --resume")
    return parser


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line with its ``--nproc N`` (or ``--nproc=N``) removed."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``lowbit`` with ``argv`` (``train ...``, without ``--nproc``) on ``nproc`` processes of this machine through
    torchrun (``torch.distributed.run``), and return its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "lowbit", *_without_nproc(argv)])


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..errors import ConfigError
    from ..train import TrainConfig

    if args.nproc is not None and args.nproc > 1:
        if distributed.launched():
            raise ConfigError("--nproc inside a torchrun launch: give the number of processes to torchrun only")
        return launch(args.nproc, args.argv)
    from ..train import run as train

    config = TrainConfig(
        recipe=args.recipe,
        data=args.data,
        data_dir=args.data_dir,
        model=args.model,
        model_options=dict(args.model_option),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        changes=dict(args.changes),
        device=args.device,
        amp=args.amp,
        progress=False if args.no_progress else None,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        pretrain_epochs=args.pretrain_epochs,
        init_from=args.init_from,
        compile=args.compile,
        quiet=args.quiet,
    )
    try:
        with distributed.collective_errors():
            result = train(config)
        main_process = distributed.is_main()
    except BaseException:
        distributed.abandon()  # no barrier: the other ranks may be waiting in a collective that never comes
        raise
    distributed.teardown()
    if not main_process:  # only rank 0 reports
        return 0
    if args.quiet:
        m = result.metrics
        print(
            f"test accuracy {100 * m['test_accuracy']:.2f}%  model size {m['model_size_kb']:.2f} KB "
            f"({m['compression']:.1f}x smaller than float32)"
        )
    files = result.files
    print(f"wrote {files.metrics}, {files.log.name}, {files.checkpoint.name}")
    return 0
