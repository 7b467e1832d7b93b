"""Read the raw JSON of a mode back and aggregate it per cell: the numbers every table, figure and verdict uses.

The reported error of a cell is ``100 (1 - accuracy)`` on the test split, read as its table's ``select`` says:
``best_val`` / ``best_budget`` -> the trainer's ``best_test_accuracy`` (test accuracy at the selected epoch; for a
memory budget only epochs meeting the budget are eligible, and a run that never met it has no number), ``final`` ->
the test accuracy after the last epoch. Mean and sample standard deviation over seeds; the standard error of the
mean is the larger of ``std / sqrt(n)`` and the binomial ``sqrt(p (1 - p) / (n n_test))`` of the pooled test images
(for a single seed, the only noise estimate there is).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .cells import Cell, Table
from .modes import Mode
from .rawfiles import raw_path, read_raw

__all__ = ["CellStats", "collect", "error_of", "by_role"]


@dataclass
class CellStats:
    cell: Cell
    errors: list = field(default_factory=list)  # reported test error (%) per finished seed
    final_errors: list = field(default_factory=list)
    records: list = field(default_factory=list)  # raw JSON of every seed found
    diverged: int = 0
    unmet: int = 0  # runs that never met their memory budget
    test_n: int = 0

    @property
    def n(self) -> int:
        return len(self.errors)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.errors) if self.errors else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.errors) if len(self.errors) > 1 else None

    @property
    def se(self) -> Optional[float]:
        """Standard error of the mean: the larger of the seeds' ``std / sqrt(n)`` and the binomial
        ``sqrt(p (1 - p) / (n * n_test))`` of the pooled test images (one seed has only the latter)."""
        if not self.errors:
            return None
        p = min(max(self.mean / 100, 0.0), 1.0)
        binomial = 100 * math.sqrt(max(p * (1 - p), 1e-12) / max(self.test_n * len(self.errors), 1))
        seeds = self.std / math.sqrt(len(self.errors)) if len(self.errors) > 1 else 0.0
        return max(seeds, binomial)

    def probe_values(self, probe: str, key: str) -> list:
        return [
            r["probes"][probe][key] for r in self.records if r.get("probes", {}).get(probe, {}).get(key) is not None
        ]

    def format(self, digits: int = 2) -> str:
        """``mean ± std`` (or the single value), with the number of seeds when some did not finish."""
        if not self.errors:
            if self.diverged:
                return "diverged"
            if self.unmet:
                return "budget never met"
            return "–"
        text = f"{self.mean:.{digits}f}"
        if self.std is not None:
            text += f" ± {self.std:.{digits}f}"
        missing = len(self.records) - self.n
        if missing:
            text += f" ({self.n}/{len(self.records)} seeds)"
        return text


def error_of(record: dict, select: str) -> Optional[float]:
    result = record.get("result") or {}
    acc = result.get("final_test_acc") if select == "final" else result.get("best_test_acc")
    return None if acc is None else 100.0 * (1.0 - acc)


def collect(out: Path, mode: Mode, table: Table) -> dict:
    """``cell id -> CellStats`` for one table, from the raw JSON of every seed of ``mode`` found on disk."""
    stats = {}
    by_id = {c.id: c for c in table.cells}
    for cell in table.cells:
        s = CellStats(cell)
        expected = cell.fingerprint(by_id.get(cell.init_from) if cell.init_from else None)
        for seed in range(cell.seed_count(mode.seeds)):
            record = read_raw(raw_path(out, mode, cell.id, seed))
            if record is None or record.get("fingerprint") != expected:
                continue  # not run yet, or run with another configuration (stale)
            s.records.append(record)
            s.test_n = record.get("data", {}).get("test", s.test_n)
            if record.get("diverged"):
                s.diverged += 1
                continue
            error = error_of(record, table.select)
            if error is None:
                s.unmet += 1
            else:
                s.errors.append(error)
            final = error_of(record, "final")
            if final is not None:
                s.final_errors.append(final)
        stats[cell.id] = s
    return stats


def by_role(stats: dict, column: str = "") -> dict:
    """``role -> CellStats`` for the cells of one column (BinaryConnect: MLP / CNN), or of every column."""
    return {s.cell.role: s for s in stats.values() if not column or s.cell.column == column}
