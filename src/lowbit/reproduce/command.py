"""``lowbit reproduce``: run the five papers' comparisons and write the results page.

    lowbit reproduce --quick                 # digits, 1 seed, < 10 minutes
    lowbit reproduce                         # Fashion-MNIST, 3 seeds, about 2-2.5 hours on 2 cores (resumable)
    lowbit reproduce --dry-run               # the plan and its time estimate, nothing run
    lowbit reproduce --only lsq,uhlich --seeds 1
    lowbit reproduce --report-only --quick   # regenerate the page from the raw JSON

``benchmarks/reproduce.py`` is the same command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..allocator import keep_large_allocations
from ..cli.argtypes import positive_int

__all__ = ["add_reproduce_parser", "cmd_reproduce", "build_parser", "main"]

DESCRIPTION = ("Run the five papers' comparisons (BinaryConnect, Li & De, LSQ + Bin Regularization, Banner 8-bit "
               "training, Uhlich mixed precision) and write tables, figures and raw JSON under OUT/<mode>/. "
               "Finished runs are skipped, so an interrupted run resumes with the same command.")


def _table_list(text: str) -> list:
    from .experiments import TABLE_KEYS

    keys = [k.strip().lower() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TABLE_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown table {', '.join(unknown) or repr(text)}; valid tables: "
                                         f"{', '.join(TABLE_KEYS)}")
    return keys


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="sklearn digits, 1 seed, under 10 minutes on 2 cores")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny subsets, 1 epoch, two cells per table (what the tests and CI run)")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", type=_table_list, metavar="TABLE[,TABLE]",
                        help="run only these tables: bc, lide, lsq, banner, uhlich (the page shows every table "
                             "with results)")
    parser.add_argument("--seeds", type=positive_int, help="seeds 0..N-1 (default: 3 full, 1 quick)")
    parser.add_argument("--out", default="docs/results", help="results root; the mode's page, figures and raw JSON "
                                                              "go to OUT/<mode>/ (default: docs/results)")
    parser.add_argument("--work", default="runs/reproduce", help="checkpoints and training logs "
                                                                 "(default: runs/reproduce, not committed)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="fresh", action="store_false",
                        help="skip finished runs and continue interrupted ones (default)")
    resume.add_argument("--fresh", dest="fresh", action="store_true", help="re-run everything")
    parser.set_defaults(fresh=False)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate; run nothing")
    parser.add_argument("--report-only", action="store_true", help="regenerate the page from the raw JSON")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads were slower)")
    return parser


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reproduce`` command to a ``lowbit`` sub-parser collection."""
    parser = subparsers.add_parser("reproduce", help="re-run the five papers' comparisons and write the results page",
                                   description=DESCRIPTION)
    return configure_parser(parser)


def build_parser() -> argparse.ArgumentParser:
    return configure_parser(argparse.ArgumentParser(prog="reproduce", description=DESCRIPTION))


def _plan_text(jobs, runner, estimates) -> str:
    from .runner import format_duration

    lines = [f"{'cell':<34} {'seed':>4} {'epochs':>6} {'train pool':>10} {'status':>8} {'estimate':>9}"]
    for job in jobs:
        cell = job.cell
        status = "cached" if runner.cached(job) else "to run"
        lines.append(f"{cell.id:<34} {job.seed:>4} {cell.epochs:>6} {str(cell.train_subset or 'all'):>10} "
                     f"{status:>8} {format_duration(estimates[id(job)]):>9}")
    return "\n".join(lines)


def cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from .analyses import ensure_analyses
    from .experiments import build_tables, mode_named
    from .report import write_report
    from .runner import Runner, estimate_seconds, format_duration, measured_times, plan_jobs

    started = time.perf_counter()
    mode = mode_named(args.mode, args.seeds)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    tables = build_tables(mode, args.only)
    all_tables = build_tables(mode)  # the page shows every table that has results
    jobs = plan_jobs(tables, mode)
    runner = Runner(mode, out, work, fresh=args.fresh)
    if args.dry_run:
        measured = {} if args.fresh else measured_times(out, mode, jobs)
        estimates = {id(j): estimate_seconds(j.cell, measured) for j in jobs}
        todo = runner.pending(jobs)
        print(f"plan ({mode.name}: {mode.description}; {mode.seeds} seed(s), {args.threads} torch thread(s))")
        print(_plan_text(jobs, runner, estimates))
        total = sum(estimates[id(j)] for j in todo)
        everything = sum(estimates.values())
        print(f"{len(todo)} of {len(jobs)} runs to do: estimated {format_duration(total)} "
              f"(all runs from scratch: {format_duration(everything)}); per-run estimates come from measured times "
              f"of this mode's finished runs where there are any, else from the throughput table in "
              f"lowbit/reproduce/runner.py")
        return 0
    if not args.report_only:
        runner.run(jobs)
    analyses = ensure_analyses(out, mode, [t.key for t in tables], fresh=args.fresh and not args.report_only)
    run_info = None if args.report_only else {"wall_s": time.perf_counter() - started}
    page = write_report(out, mode, all_tables, analyses, command=_canonical_command(args), run_info=run_info)
    print(f"wrote {page} ({format_duration(time.perf_counter() - started)})")
    return 0


def _canonical_command(args: argparse.Namespace) -> str:
    parts = ["lowbit reproduce"]
    if args.mode != "full":
        parts.append(f"--{args.mode}")
    if args.seeds:
        parts.append(f"--seeds {args.seeds}")
    if args.out != "docs/results":
        parts.append(f"--out {shlex.quote(args.out)}")
    return " ".join(parts)


def main(argv=None) -> int:
    """Entry point of ``benchmarks/reproduce.py`` (errors as one line, like the ``lowbit`` command)."""
    args = build_parser().parse_args(argv)
    keep_large_allocations()  # as the lowbit command does for training processes (lowbit.allocator)
    try:
        return cmd_reproduce(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"reproduce: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproduce: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
