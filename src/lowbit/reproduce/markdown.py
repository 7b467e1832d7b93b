"""Markdown tables and the cell formats that several papers' results tables share.

Every value is ``mean ± sample standard deviation`` over the seeds that have it (the single value for one seed),
``–`` where there is none.
"""

from __future__ import annotations

import statistics
from typing import Optional

from .results import CellStats

__all__ = ["render_table", "mean_text", "mean_probe", "final_loss", "other_error"]


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_table(header: list, rows: list) -> str:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def mean_text(values: list, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` (the value alone for one, ``–`` for none)."""
    if not values:
        return "–"
    text = f"{statistics.fmean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def mean_probe(s: Optional[CellStats], probe: str, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """A probe's value (times ``scale``) over the cell's seeds."""
    if s is None:
        return "–"
    return mean_text([scale * v for v in s.probe_values(probe, key)], digits)


def final_loss(s: CellStats) -> str:
    """Mean training loss of the last logged epoch."""
    losses = [rec["history"][-1].get("loss") for rec in s.records if rec.get("history")]
    losses = [v for v in losses if v is not None]
    return f"{statistics.fmean(losses):.3f}" if losses else "–"


def other_error(s: CellStats, select: str) -> str:
    """The test error read the other way than the table reports it: ``final`` (after the last epoch) or, for any
    other ``select``, at the best-validation epoch."""
    values = s.final_errors if select == "final" else []
    if select != "final":
        for rec in s.records:
            acc = (rec.get("result") or {}).get("best_test_acc")
            if acc is not None:
                values.append(100 * (1 - acc))
    return mean_text(values)
