"""Options shared by several ``lowbit`` commands."""

from __future__ import annotations

import argparse

__all__ = ["add_epoch_option", "add_model_reference_option", "directory"]

#: help of ``--model`` on the commands that read a run
MODEL_REFERENCE_HELP = (
    "for a run trained with --model MODULE:CALLABLE: that reference again (importing it runs the module's code, so "
    "lowbit never imports a module named by a checkpoint on its own; name it only for runs you trust)"
)


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


def add_model_reference_option(parser: argparse.ArgumentParser) -> None:
    """``--model MODULE:CALLABLE``: rebuild a run of the user's own architecture (see :data:`MODEL_REFERENCE_HELP`)."""
    parser.add_argument("--model", metavar="MODULE:CALLABLE", help=MODEL_REFERENCE_HELP)
