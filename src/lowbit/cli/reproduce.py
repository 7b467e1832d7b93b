"""``lowbit reproduce``: the registered papers' comparisons, written as tables, figures and raw JSON."""

from __future__ import annotations

import argparse

from .argtypes import positive_int

ALLOCATES = True


def _description() -> str:
    from ..reproduce.papers import registered

    titles = "; ".join(paper.title for paper in registered())
    return (
        f"Run the papers' comparisons ({titles}) and write tables, figures and raw JSON under OUT/<mode>/. "
        f"Finished runs are skipped, so an interrupted run resumes with the same command."
    )


def _table_list(text: str) -> list:
    from ..reproduce.experiments import TABLE_KEYS

    keys = [k.strip().lower() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TABLE_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown table {', '.join(unknown) or repr(text)}; valid tables: {', '.join(TABLE_KEYS)}"
        )
    return keys


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options (also used by ``benchmarks/reproduce.py``)."""
    from ..reproduce.experiments import TABLE_KEYS

    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        dest="mode",
        const="quick",
        help="sklearn digits, 1 seed, under 10 minutes on 2 cores",
    )
    size.add_argument(
        "--smoke",
        action="store_const",
        dest="mode",
        const="smoke",
        help="tiny subsets, 1 epoch, two cells per table (what the tests and CI run)",
    )
    parser.set_defaults(mode="full")
    parser.add_argument(
        "--only",
        type=_table_list,
        metavar="TABLE[,TABLE]",
        help=f"run only these tables: {', '.join(TABLE_KEYS)} (the page shows every table with results)",
    )
    parser.add_argument("--seeds", type=positive_int, help="seeds 0..N-1 (default: 3 full, 1 quick)")
    parser.add_argument(
        "--out",
        default="docs/results",
        help="results root; the mode's page, figures and raw JSON go to OUT/<mode>/ (default: docs/results)",
    )
    parser.add_argument(
        "--work",
        default="runs/reproduce",
        help="checkpoints and training logs (default: runs/reproduce, not committed)",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="fresh",
        action="store_false",
        help="skip finished runs and continue interrupted ones (default)",
    )
    resume.add_argument("--fresh", dest="fresh", action="store_true", help="re-run everything")
    parser.set_defaults(fresh=False)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate; run nothing")
    parser.add_argument("--report-only", action="store_true", help="regenerate the page from the raw JSON")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads were slower)",
    )
    parser.set_defaults(interrupt_hint="run the same command again: finished runs are skipped")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "reproduce", help="re-run the papers' comparisons and write the results page", description=_description()
    )
    return configure(parser)


def run(args: argparse.Namespace) -> int:
    from ..reproduce.suite import SuiteOptions, run_suite

    return run_suite(
        SuiteOptions(
            mode=args.mode,
            seeds=args.seeds,
            only=args.only,
            out=args.out,
            work=args.work,
            fresh=args.fresh,
            dry_run=args.dry_run,
            report_only=args.report_only,
            threads=args.threads,
        )
    )
