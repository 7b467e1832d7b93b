"""The three sizes of a reproduction run (:data:`MODES`): which data set, how many seeds, how the page introduces it.

* ``full``: Fashion-MNIST, 3 seeds; every paper sizes its subsets and epochs so that the whole run takes about
  2-2.5 h on 2 CPU cores with one torch thread (see :func:`lowbit.reproduce.runner.estimate_seconds`);
* ``quick``: sklearn ``digits``, 1 seed, under 10 minutes;
* ``smoke``: ``digits`` with tiny subsets, 1 epoch and two cells per table, for the tests and CI -- one budget for
  every paper, so a new paper needs no smoke settings of its own.

The data and epochs of a paper's table in the full and quick modes are the paper's own
(:attr:`lowbit.reproduce.paper.Paper.budgets`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .cells import Budget

__all__ = ["Mode", "MODES", "mode_named"]


@dataclass(frozen=True)
class Mode:
    name: str
    data: str
    seeds: int
    description: str
    cells_per_table: Optional[int] = None  # smoke: only the first few cells of each table
    budget: Optional[Budget] = None  # smoke: this budget for every paper instead of the paper's own
    page_note: str = ""  # a paragraph at the top of the mode's results page


MODES = {
    "full": Mode(
        name="full",
        data="fashion-mnist",
        seeds=3,
        description="Fashion-MNIST, seeded subsets of the training and test sets, 3 seeds",
    ),
    "quick": Mode(
        name="quick",
        data="digits",
        seeds=1,
        description="sklearn digits (1,294 train / 144 validation / 359 test images of 8x8 pixels), 1 seed",
        page_note="**This is the quick run**: sklearn `digits` (8×8 images, 359 test images), **one seed**, minutes "
        "of CPU. Its numbers are noisy (one test image = 0.28 points) and the dataset is easy; the full run "
        "on Fashion-MNIST over 3 seeds (`lowbit reproduce`) is the one to quote.",
    ),
    "smoke": Mode(
        name="smoke",
        data="digits",
        seeds=1,
        description="smoke test: digits subsets, 1 epoch, two cells per table",
        cells_per_table=2,
        budget=Budget(epochs=1, train_subset=400, test_subset=100, pretrain_epochs=1),
    ),
}


def mode_named(name: str, seeds: Optional[int] = None) -> Mode:
    try:
        mode = MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}") from None
    return replace(mode, seeds=seeds) if seeds else mode
