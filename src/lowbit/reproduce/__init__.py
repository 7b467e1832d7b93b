"""Reproduce the five papers' claims on real data: tables, figures and raw JSON under ``docs/results/``.

``lowbit reproduce`` (or ``python benchmarks/reproduce.py``) runs it. Each paper is one module of
:mod:`.papers` (its experiments, checks, results table, figures, probes, analyses and claim text); everything else
is generic over the registered papers, each piece one job:

* :mod:`.paper` — what a paper module provides (:class:`Paper`, :class:`Analysis`);
* :mod:`.cells` — a training configuration (:class:`Cell`, its fingerprint), a paper's :class:`Table` in a mode;
* :mod:`.modes` — full / quick / smoke; :mod:`.experiments` — the registered papers' tables in a mode;
* :mod:`.runner` — runs (cell, seed) pairs through :func:`lowbit.train.run`, caches raw JSON, resumes, estimates time;
* :mod:`.rawfiles` — the raw JSON layout; :mod:`.analyses` — the papers' computations that need no training;
* :mod:`.probes` — measurements on trained models; :mod:`.toy` and :mod:`.gradients` — the computations behind
  Li & De's convex toy and Uhlich's gradient magnitudes;
* :mod:`.results` — aggregates raw JSON per cell; :mod:`.claims` — the rules that turn predictions into checks;
* :mod:`.markdown`, :mod:`.figures` and :mod:`.report` — tables, PNG figures and the Markdown results page;
* :mod:`.suite` — :func:`~.suite.run_suite`, what ``lowbit reproduce`` runs (its options: :mod:`lowbit.cli.reproduce`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .experiments import MODES, TABLE_KEYS, Cell, Mode, Table, build_tables, mode_named
from .gradients import gradient_magnitudes
from .paper import Analysis, Paper
from .papers import PAPERS
from .runner import Runner, estimate_seconds, plan_jobs
from .toy import run_toy

__all__ = [
    "MODES",
    "TABLE_KEYS",
    "Cell",
    "Mode",
    "Table",
    "Paper",
    "Analysis",
    "PAPERS",
    "build_tables",
    "mode_named",
    "Runner",
    "plan_jobs",
    "estimate_seconds",
    "run_toy",
    "gradient_magnitudes",
    "reproduce",
]


def reproduce(
    mode: str = "quick",
    *,
    only: Optional[Sequence[str]] = None,
    seeds: Optional[int] = None,
    out: str = "docs/results",
    work: str = "runs/reproduce",
    fresh: bool = False,
    threads: int = 1,
) -> str:
    """Run a mode and write its results page; returns the page's path (the Python form of the command)."""
    from pathlib import Path

    from .suite import SuiteOptions, run_suite

    run_suite(
        SuiteOptions(mode=mode, seeds=seeds, only=only, out=str(out), work=str(work), fresh=fresh, threads=threads)
    )
    return str(Path(out) / mode / "README.md")
