"""``lowbit convert-checkpoint``: convert a trusted checkpoint of lowbit 0.1 (pickled ``*.pt``) to the safe format."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert-checkpoint",
        help="convert a lowbit 0.1 checkpoint (.pt) that you trust to the current format",
        description="Reads a run directory of lowbit 0.1 (last.pt and best.pt, written with torch.save) and writes "
        "its checkpoint.safetensors, or converts one .pt file to NAME.safetensors beside it. Reading the old format "
        "unpickles the file, which runs any code that a malicious file contains: convert only files you trust (your "
        "own runs).",
    )
    parser.add_argument("source", help="a .pt checkpoint, or a run directory (converts its last.pt and best.pt)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..runs import convert_legacy_checkpoint

    print(f"wrote {convert_legacy_checkpoint(Path(args.source))} (from {args.source})")
    return 0
