"""The ``lowbit`` command line: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

Errors of the user's input (:class:`lowbit.errors.LowbitError`) exit with one line on stderr (``lowbit: error: ...``)
and the error's exit status (2, or 3 for a diverged run), never a traceback; any other exception is a bug in lowbit
and shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from ..allocator import keep_large_allocations
from ..errors import LowbitError, TrainingDiverged
from . import convert_checkpoint, evaluate, export, plot, recipes, reproduce, summary, train

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_USAGE = 2
#: the commands, in the order ``lowbit --help`` lists them
COMMANDS = (train, evaluate, recipes, summary, plot, export, reproduce, convert_checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Train, compare, inspect and export 1- to 8-bit neural networks (PyTorch)."
    )
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run, allocates=getattr(command, "ALLOCATES", False))
    return parser


def _print_error(prefix: str, message: str) -> None:
    lines = message.strip().splitlines() or [""]
    print(f"lowbit: {prefix}{lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"lowbit:   {line.strip()}", file=sys.stderr)


def _leave(code: int) -> int:
    """``code``, or, for a rank of a distributed run that failed on its own, the end of the process now (the other
    ranks may be inside a collective: an ordinary exit would wait on the process group)."""
    from ..distributed import abandoned, stop

    if abandoned():
        stop(code)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as given (lowbit train --nproc)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.allocates:
        keep_large_allocations()  # reuse freed tensor memory instead of fresh pages every step (lowbit.allocator)
    try:
        return args.run(args)
    except TrainingDiverged as error:
        _print_error("training stopped: ", str(error))
        return _leave(error.exit_code)
    except LowbitError as error:
        _print_error("error: ", str(error) or type(error).__name__)
        from ..distributed import DistributedError, stop

        if isinstance(error, DistributedError):
            stop(error.exit_code)  # (an ordinary exit can abort in gloo's threads once a peer died)
        return _leave(error.exit_code)
    except BrokenPipeError:  # output piped into head, less, ...: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"lowbit: interrupted; {getattr(args, 'interrupt_hint', 'run the command again')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
