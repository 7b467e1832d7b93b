"""Run the registered papers' comparisons and write the results page: :func:`run_suite`, behind ``lowbit reproduce``.

    lowbit reproduce --quick                 # digits, 1 seed, < 10 minutes
    lowbit reproduce                         # Fashion-MNIST, 3 seeds, about 2-2.5 hours on 2 cores (resumable)
    lowbit reproduce --dry-run               # the plan and its time estimate, nothing run
    lowbit reproduce --only lsq,uhlich --seeds 1
    lowbit reproduce --report-only --quick   # regenerate the page from the raw JSON

``benchmarks/reproduce.py`` is the same command.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .runner import Job, Runner

__all__ = ["SuiteOptions", "run_suite"]


@dataclass
class SuiteOptions:
    """What ``lowbit reproduce`` runs: ``mode`` full, quick or smoke; ``only`` a subset of the papers' keys."""

    mode: str = "full"
    seeds: Optional[int] = None
    only: Optional[Sequence[str]] = None
    out: str = "docs/results"
    work: str = "runs/reproduce"
    fresh: bool = False
    dry_run: bool = False
    report_only: bool = False
    threads: int = 1


def _plan_text(jobs: Sequence[Job], runner: Runner, estimates: Mapping[int, float]) -> str:
    from .runner import format_duration

    lines = [f"{'cell':<34} {'seed':>4} {'epochs':>6} {'train pool':>10} {'status':>8} {'estimate':>9}"]
    for job in jobs:
        cell = job.cell
        status = "cached" if runner.cached(job) else "to run"
        lines.append(
            f"{cell.id:<34} {job.seed:>4} {cell.epochs:>6} {str(cell.train_subset or 'all'):>10} "
            f"{status:>8} {format_duration(estimates[id(job)]):>9}"
        )
    return "\n".join(lines)


def run_suite(args: SuiteOptions) -> int:
    """Plan (``dry_run``), run what is not cached yet, and write the page; returns 0."""
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
        print(
            f"{len(todo)} of {len(jobs)} runs to do: estimated {format_duration(total)} "
            f"(all runs from scratch: {format_duration(everything)}); per-run estimates come from measured times "
            f"of this mode's finished runs where there are any, else from the throughput table in "
            f"lowbit/reproduce/runner.py"
        )
        return 0
    if not args.report_only:
        runner.run(jobs)
    analyses = ensure_analyses(out, mode, [t.key for t in tables], fresh=args.fresh and not args.report_only)
    run_info = None if args.report_only else {"wall_s": time.perf_counter() - started}
    page = write_report(out, mode, all_tables, analyses, command=_canonical_command(args), run_info=run_info)
    print(f"wrote {page} ({format_duration(time.perf_counter() - started)})")
    return 0


def _canonical_command(args: SuiteOptions) -> str:
    parts = ["lowbit reproduce"]
    if args.mode != "full":
        parts.append(f"--{args.mode}")
    if args.seeds:
        parts.append(f"--seeds {args.seeds}")
    if args.out != "docs/results":
        parts.append(f"--out {shlex.quote(args.out)}")
    return " ".join(parts)
