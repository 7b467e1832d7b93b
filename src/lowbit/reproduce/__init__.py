"""Reproduce the five papers' claims on real data: tables, figures and raw JSON under ``docs/results/``.

``lowbit reproduce`` (or ``python benchmarks/reproduce.py``) runs it; the pieces, each one job:

* :mod:`.experiments` — the comparisons as data (tables of cells; the full / quick / smoke modes);
* :mod:`.runner` — runs (cell, seed) pairs through :func:`lowbit.train.run`, caches raw JSON, resumes, estimates time;
* :mod:`.probes` — measurements on trained models (BC-stoch with sign(W), weights near LSQ levels, weight memory);
* :mod:`.toy` — Li & De's convex least-squares toy; :mod:`.gradients` — Uhlich's U1/U2/U3 gradient magnitudes;
* :mod:`.analyses` — stores those two as raw JSON;
* :mod:`.results` — aggregates raw JSON per cell; :mod:`.claims` — the papers' predictions as explicit checks;
* :mod:`.figures` and :mod:`.report` — PNG figures and the Markdown results page;
* :mod:`.command` — the command line.
"""

from .experiments import MODES, TABLE_KEYS, Cell, Mode, Table, build_tables, mode_named
from .gradients import gradient_magnitudes
from .runner import Runner, estimate_seconds, plan_jobs
from .toy import run_toy

__all__ = ["MODES", "TABLE_KEYS", "Cell", "Mode", "Table", "build_tables", "mode_named", "Runner", "plan_jobs",
           "estimate_seconds", "run_toy", "gradient_magnitudes", "reproduce"]


def reproduce(mode: str = "quick", *, only=None, seeds=None, out: str = "docs/results", work: str = "runs/reproduce",
              fresh: bool = False, threads: int = 1) -> str:
    """Run a mode and write its results page; returns the page's path (the Python form of the command)."""
    from .command import build_parser, cmd_reproduce

    argv = [] if mode == "full" else [f"--{mode}"]
    argv += ["--out", str(out), "--work", str(work), "--threads", str(threads)]
    if only:
        argv += ["--only", ",".join(only)]
    if seeds:
        argv += ["--seeds", str(seeds)]
    if fresh:
        argv.append("--fresh")
    cmd_reproduce(build_parser().parse_args(argv))
    from pathlib import Path

    return str(Path(out) / mode / "README.md")
