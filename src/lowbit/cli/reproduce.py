"""``lowbit reproduce``: the five papers' comparisons (the command's options live with the suite)."""

from __future__ import annotations

import argparse

ALLOCATES = True


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..reproduce.command import add_reproduce_parser

    parser = add_reproduce_parser(subparsers)
    parser.set_defaults(interrupt_hint="run the same command again: finished runs are skipped")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..reproduce.command import cmd_reproduce

    return cmd_reproduce(args)
