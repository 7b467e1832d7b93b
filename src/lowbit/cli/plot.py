"""``lowbit plot``: PNG figures of a run (training curves, bit widths, weight histograms with their levels)."""

from __future__ import annotations

import argparse

from .options import add_model_reference_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("plot", help="write PNG figures of a run (curves, bit widths, weight histograms)")
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="directory for the PNG files (default: the run directory)")
    add_model_reference_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_run

    for path in plot_run(args.run_dir, args.out, reference=args.model):
        print(f"wrote {path}")
    return 0
