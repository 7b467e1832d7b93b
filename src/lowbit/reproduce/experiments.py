"""The registered papers' tables in one mode: which cells a run trains, each once.

The tables themselves are the papers' (:mod:`lowbit.reproduce.papers`); this module only selects and collects them,
so nothing here names a paper. ``TABLE_KEYS`` (the papers' keys, in page order) is read from the registry each time
it is imported, so a paper registered later (a test's) is a valid ``--only`` choice too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from ..errors import ConfigError
from . import papers as registry
from .cells import Budget, Cell, Table
from .modes import MODES, Mode, mode_named
from .paper import Paper

__all__ = [
    "Cell",
    "Table",
    "Budget",
    "Mode",
    "MODES",
    "TABLE_KEYS",  # noqa: F822 (a module attribute computed on access, see __getattr__)
    "build_tables",
    "mode_named",
    "cells_of",
]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "TABLE_KEYS":
        return tuple(paper.key for paper in registry.registered())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_tables(mode: Mode, only: Optional[Sequence[str]] = None, papers: Optional[Sequence[Paper]] = None) -> list:
    """The tables of ``mode`` in the order of the results page; ``only``: a subset of the papers' keys; ``papers``:
    the papers to choose from (default: the registry)."""
    papers = tuple(papers) if papers is not None else registry.registered()
    keys = [paper.key for paper in papers]
    wanted = list(only) if only else keys
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        raise ConfigError(f"unknown table {', '.join(unknown)}; valid tables: {', '.join(keys)}")
    return [paper.table(mode) for paper in papers if paper.key in wanted]


def cells_of(tables: list) -> dict:
    """Every distinct cell of ``tables`` by id (shared cells once)."""
    found: dict[str, Cell] = {}
    for table in tables:
        for cell in table.cells:
            if cell.id in found and found[cell.id] != cell:
                raise ValueError(f"cell id {cell.id!r} is used by two different cells")
            found[cell.id] = cell
    return found
