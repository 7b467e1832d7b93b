"""What a paper's reproduction consists of: :class:`Paper`, the one object a paper module defines.

The runner, the analyses and the results page only ever talk to this interface, so adding a paper is one new
module under :mod:`lowbit.reproduce.papers` plus one line in its registry. A paper gives

* its prose, as data: ``title``, ``authors``, ``claim`` (what the paper predicts) and ``setup`` (how the table was
  run), shown verbatim on the page;
* its experiments: ``budgets`` (data and epochs per mode) and ``cells(mode, budget)``, the training configurations
  of its table; ``select`` says which number a cell reports:

  - ``best_val``: the test error at the epoch with the best validation error (BinaryConnect's protocol);
  - ``final``: the test error after the last epoch (cosine schedules that end at LR 0, and Bin Regularization,
    which only acts in the second half of the fine-tune);
  - ``best_budget``: the best validation epoch among those meeting a memory budget (Uhlich's protocol);

* what it measures besides the error: ``probes`` (name -> function of the trained model, named by its cells) and
  ``analyses`` (computations without training, e.g. a convex toy);
* how it is judged and shown: ``checks(stats, analyses)`` (a list of :class:`lowbit.reproduce.claims.Check`),
  ``markdown(table, stats)`` (its results table) and ``figures(table, stats, analyses, fig_dir)``.

``stats`` is always ``cell id -> CellStats`` (:func:`lowbit.reproduce.results.collect`), ``analyses`` is
``analysis name -> result`` (a missing or not yet computed analysis is absent or ``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .cells import Budget, Table
from .modes import Mode

__all__ = ["Paper", "Analysis", "Probe", "no_figures"]

#: a measurement on a trained model: ``probe(model, splits) -> JSON-able dict`` (stored in the raw JSON)
Probe = Callable[[Any, Any], dict]


@dataclass(frozen=True)
class Analysis:
    """A computation that needs no training, stored as ``OUT/<mode>/raw/analysis/<name>.json``.

    ``request(mode)`` gives its settings; a stored result with the same request is reused, any other is recomputed
    by ``compute(request)``.
    """

    name: str
    request: Callable[[Mode], dict]
    compute: Callable[[dict], dict]


def no_figures(table: Table, stats: dict, analyses: dict, fig_dir: Path) -> list:
    """A paper without figures."""
    return []


@dataclass(frozen=True)
class Paper:
    """One paper's reproduction (see the module docstring for what each part is)."""

    key: str  # the --only name, results directory and page anchor
    title: str
    authors: str
    claim: str
    setup: str
    select: str  # best_val | final | best_budget
    budgets: Mapping[str, Budget]  # mode name -> data and epochs (smoke uses the mode's budget)
    cells: Callable[[Mode, Budget], list]  # the cells of the table, in the order of the page
    checks: Callable[[dict, dict], list]  # (stats, analyses) -> [Check]
    markdown: Callable[[Table, dict], str]  # (table, stats) -> the results table
    figures: Callable[[Table, dict, dict, Path], list] = no_figures  # -> [(caption, path)]
    columns: tuple = ("",)  # a second table dimension (BinaryConnect: MLP / CNN)
    probes: Mapping[str, Probe] = field(default_factory=dict)
    analyses: tuple = ()  # of Analysis

    def budget(self, mode: Mode) -> Budget:
        return mode.budget or self.budgets[mode.name]

    def table(self, mode: Mode) -> Table:
        """The paper's table in ``mode``; a mode with ``cells_per_table`` keeps only its first trained cells."""
        budget = self.budget(mode)
        table = Table(paper=self, cells=tuple(self.cells(mode, budget)), budget=budget)
        return _trimmed(table, mode.cells_per_table) if mode.cells_per_table else table


def _trimmed(table: Table, n: int) -> Table:
    """The first ``n`` trained cells of ``table``, plus the float cells that the table's cells fine-tune from."""
    parents = {c.init_from for c in table.cells if c.init_from}
    kept = [c for c in table.cells if c.id in parents]
    trained = [c for c in table.cells if c not in kept][:n]
    return replace(table, cells=tuple(kept + trained))
