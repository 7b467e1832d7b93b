"""Options shared by several ``lowbit`` commands."""

from __future__ import annotations

import argparse

__all__ = ["add_epoch_option", "directory"]


def add_epoch_option(parser: argparse.ArgumentParser) -> None:
    """``--epoch best|last``: which model of a run's checkpoint a command reads."""
    parser.add_argument(
        "--epoch",
        choices=("best", "last"),
        default="best",
        help="the model of the best validation epoch (default; the last one when none qualified) or of the last epoch",
    )


def directory(text: str) -> str:
    """A directory path to write into: not empty (``--out ""`` would write nowhere)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give the directory to write into")
    return text
