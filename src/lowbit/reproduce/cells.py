"""What one comparison is made of: :class:`Cell` (a training configuration run over seeds), :class:`Budget` (the data
and epochs of a paper's table in one mode) and :class:`Table` (one paper's cells in one mode).

A cell is everything :func:`lowbit.train.run` needs except the seed and the output directory: a shipped recipe,
dotted ``changes`` to it, a model, the data budget and, for fine-tuning cells, the id of the float cell whose
checkpoint (same seed) it starts from. Every cell of a table on one architecture gets the same data, epochs and
schedule (only what the comparison is about differs).

Caching: a cell's :meth:`Cell.fingerprint` hashes everything that determines its result; a raw JSON file written
with another fingerprint is stale and re-run. The fingerprint covers the training keywords, the probes, the
cell's ``revision``, the parent's fingerprint and :data:`RESULTS_VERSION` -- never the labels, notes or the
throughput class, so rewording a label keeps every cached result.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # only for the annotation: a paper imports this module to describe its cells
    from .paper import Paper

__all__ = ["Budget", "Cell", "Table", "RESULTS_VERSION"]

#: bumped when a change to the library or to this package (a probe, a default) changes what a cached result would
#: contain; 2: the second faithfulness pass (issue 15: Li & De's Glorot grid, 24-bit weight noise, P3 without a zero
#: level, U1/U2 memory and clipping, Banner's integer zero point) changed every table
RESULTS_VERSION = 2


@dataclass(frozen=True)
class Budget:
    """Data and epochs of one table in one mode.

    ``train_subset`` is the size of the pool the train and validation splits are cut from (10 % validation);
    ``None`` uses the whole official training set. ``pretrain_epochs``: epochs of the shared float model that the
    fine-tuning tables start from.
    """

    epochs: int
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    pretrain_epochs: int = 0


@dataclass(frozen=True)
class Cell:
    """One row (or one row x column) of a table: a training configuration, run once per seed.

    ``probes`` name measurements taken after training; the paper that owns the cell maps each name to a function
    (:attr:`lowbit.reproduce.paper.Paper.probes`).
    """

    id: str  # unique across tables; also the directory of its results ("bc/mlp/bc-det")
    label: str  # row label
    recipe: str
    role: str  # what the checks call this cell ("float", "bc-det", ...)
    model: str
    model_options: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)
    column: str = ""  # a second table dimension (BinaryConnect: MLP / CNN)
    data: str = "digits"
    epochs: int = 1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    init_from: Optional[str] = None  # id of the float cell (same seed) this cell fine-tunes
    probes: tuple = ()
    note: str = ""  # one line shown under the table
    # at most this many seeds (0..seeds-1) whatever the mode's count: a long single run beside the table's cells
    seeds: Optional[int] = None
    # bumped when a change to the library alters this cell's results (and only this cell's), so that resuming
    # re-runs it without invalidating the rest of the cache
    revision: int = 0
    # the throughput class of the time estimate (a key of lowbit.reproduce.runner.THROUGHPUT: "float", "binary",
    # "lsq", ...); a hint for --dry-run only, so it is neither fingerprinted nor written to the raw JSON
    kind: str = ""

    def seed_count(self, mode_seeds: int) -> int:
        """How many seeds this cell runs in a mode of ``mode_seeds`` seeds."""
        return mode_seeds if self.seeds is None else min(self.seeds, mode_seeds)

    def train_kwargs(self) -> dict:
        """The :class:`lowbit.train.TrainConfig` keywords of this cell (seed, out, init_from added by the runner)."""
        return {
            "recipe": self.recipe,
            "data": self.data,
            "model": self.model,
            "model_options": copy.deepcopy(self.model_options),
            "changes": copy.deepcopy(self.changes),
            "epochs": self.epochs,
            "train_subset": self.train_subset,
            "test_subset": self.test_subset,
            "pretrain_epochs": 0,
        }

    def fingerprint(self, parent: Optional[Cell] = None) -> str:
        """A short hash of everything that determines the cell's result (and its parent's, for fine-tuning)."""
        payload = {
            "train": self.train_kwargs(),
            "probes": list(self.probes),
            "version": RESULTS_VERSION,
            "parent": parent.fingerprint() if parent is not None else None,
        }
        if self.revision:
            payload["revision"] = self.revision
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Table:
    """One paper's cells in one mode, with the budget they were built for."""

    paper: Paper
    cells: tuple
    budget: Budget

    @property
    def key(self) -> str:
        return self.paper.key

    @property
    def title(self) -> str:
        return self.paper.title

    @property
    def select(self) -> str:
        return self.paper.select

    @property
    def columns(self) -> tuple:
        return self.paper.columns
