"""The papers the suite reproduces, one module each, and the registry that lists them in the order of the page.

Each module defines ``PAPER``, a :class:`lowbit.reproduce.paper.Paper`: its claim and setup text, its cells, checks,
results table, figures, probes and analyses. To add a paper, write one module like these and append its ``PAPER``
to :data:`PAPERS`; the runner, the analyses, the page and ``--only`` pick it up from here.
"""

from __future__ import annotations

from ..paper import Paper
from . import banner, binaryconnect, lide, lsq, uhlich

__all__ = ["PAPERS", "registered", "paper_named"]

#: the registry, in the order of the results page (read through :func:`registered`, so that a test can extend it)
PAPERS: tuple = (binaryconnect.PAPER, lide.PAPER, lsq.PAPER, banner.PAPER, uhlich.PAPER)


def registered() -> tuple:
    """The registered papers, in page order."""
    return tuple(PAPERS)


def paper_named(key: str) -> Paper:
    for paper in registered():
        if paper.key == key:
            return paper
    raise ValueError(f"unknown table {key}; valid tables: {', '.join(p.key for p in registered())}")
