"""Run the cells of the reproduction tables, one (cell, seed) at a time, caching each result as raw JSON.

Layout (``OUT`` = ``--out``, default ``docs/results``; ``WORK`` = ``--work``, default ``runs/reproduce``)::

    OUT/<mode>/raw/<cell id>/seed<k>.json     the result of one run: config, metrics, per-epoch history, probes
    WORK/<mode>/<cell id>/seed<k>/            the trainer's directory: checkpoints and log (not committed)

Resuming: a (cell, seed) whose raw JSON exists with the same fingerprint (a hash of everything that determines the
result) is skipped; a run that was killed continues from its last checkpoint. ``fresh`` re-runs everything.
A fine-tuning cell needs its float parent's checkpoint (same seed); a parent whose JSON is cached but whose
checkpoint is gone is re-run first.

The runner knows no paper: a job carries its cell, which checkpoint its table reports and the probe functions its
paper registered; the time estimate reads each cell's throughput class (:attr:`lowbit.reproduce.cells.Cell.kind`).

Time: one torch thread by default. On a shared 2-core machine two threads per process were measured 3-10x slower
than one (OpenMP barriers stall when another process holds a core); one thread also leaves a core to others.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from .. import __version__
from ..runs import RunFiles
from .cells import Cell, Table
from .experiments import cells_of
from .modes import Mode
from .paper import Probe
from .probes import run_probes, selected_checkpoint
from .rawfiles import raw_path, read_raw, write_json

if TYPE_CHECKING:
    from ..data import DatasetSplits

__all__ = [
    "Job",
    "plan_jobs",
    "Runner",
    "estimate_seconds",
    "raw_path",
    "read_raw",
    "format_duration",
    "THROUGHPUT",
    "DATASET_SIZES",
]

#: official (train pool, test) sizes, for the time estimate
DATASET_SIZES = {"fashion-mnist": (60_000, 10_000), "digits": (1_438, 359)}

#: Measured training throughput (samples/s, one torch thread, 2-core AMD EPYC, a second process running) by
#: (input size, model, method = the cell's ``kind``); evaluation runs at roughly EVAL_FACTOR x the float training
#: throughput. Used by --dry-run before any cell of a mode has run; afterwards the cells' own measured times replace
#: it. A kind missing here (a new paper's) is estimated at 1000 samples/s.
THROUGHPUT = {
    ("28x28", "mlp512", "float"): 5600,
    ("28x28", "mlp512", "binary"): 4600,
    ("28x28", "mlp512", "binary-stoch"): 3200,
    ("28x28", "mlp256", "float"): 8000,
    ("28x28", "mlp256", "binary"): 7300,
    ("28x28", "mlp256", "grid"): 4200,
    ("28x28", "mlp256", "grid-big"): 29000,
    ("28x28", "cnn16", "float"): 2300,
    ("28x28", "cnn16", "binary"): 2300,
    ("28x28", "cnn16", "binary-stoch"): 2100,
    ("28x28", "cnn16", "lsq"): 1800,
    ("28x28", "cnn16", "lsq-br"): 1500,
    ("28x28", "cnn16", "rangebn"): 1900,
    ("28x28", "cnn16", "minmax"): 1000,
    ("28x28", "cnn16", "parametric"): 1000,
    ("28x28", "cnn16", "pow2"): 800,
    ("28x28", "mbv2", "float"): 1250,
    ("28x28", "mbv2", "lsq"): 800,
    ("28x28", "mbv2", "lsq-br"): 750,
    ("28x28", "mbv2", "parametric"): 600,
    ("8x8", "mbv2", "float"): 3900,
    ("8x8", "mbv2", "lsq"): 2800,
    ("8x8", "mbv2", "lsq-br"): 2450,
    ("8x8", "mbv2", "parametric"): 1750,
    ("8x8", "mlp512", "float"): 9000,
    ("8x8", "mlp512", "binary"): 7000,
    ("8x8", "mlp512", "binary-stoch"): 6000,
    ("8x8", "mlp256", "float"): 12000,
    ("8x8", "mlp256", "binary"): 10000,
    ("8x8", "mlp256", "grid"): 6000,
    ("8x8", "mlp256", "grid-big"): 30000,
    ("8x8", "cnn16", "float"): 9000,
    ("8x8", "cnn16", "binary"): 8000,
    ("8x8", "cnn16", "binary-stoch"): 7000,
    ("8x8", "cnn16", "lsq"): 6000,
    ("8x8", "cnn16", "lsq-br"): 5000,
    ("8x8", "cnn16", "rangebn"): 6000,
    ("8x8", "cnn16", "minmax"): 3500,
    ("8x8", "cnn16", "parametric"): 2800,
    ("8x8", "cnn16", "pow2"): 2200,
}
EVAL_FACTOR = 1.6
RUN_OVERHEAD_S = {"fashion-mnist": 2.0, "digits": 0.5}


@dataclass(frozen=True)
class Job:
    cell: Cell
    seed: int
    select: str  # which checkpoint the table reports (probes are taken on it)
    parent: Optional[Cell]  # the float cell this one fine-tunes from
    # name -> function of the cell's probes, from the paper that owns the cell (functions do not compare or hash)
    probes: Mapping[str, Probe] = field(default_factory=dict, compare=False)


def run_dir(work: Path, mode: Mode, cell_id: str, seed: int) -> Path:
    return Path(work) / mode.name / cell_id / f"seed{seed}"


def plan_jobs(tables: list, mode: Mode) -> list:
    """Every (cell, seed) of ``tables``, parents before the cells that fine-tune from them, each once.

    A cell shared by several tables is run as the first table that lists it says (its ``select``, its paper's
    probes). A probe name that the owning paper does not define is refused here, before anything is trained.
    """
    cells = cells_of(tables)
    owner: dict[str, Table] = {}
    for table in tables:
        for cell in table.cells:
            owner.setdefault(cell.id, table)
    missing = [c.init_from for c in cells.values() if c.init_from and c.init_from not in cells]
    if missing:
        raise ValueError(f"cells fine-tune from {', '.join(sorted(set(missing)))}, which no table defines")
    probes = {cell_id: _probes_of(cell, owner[cell_id]) for cell_id, cell in cells.items()}
    ordered = [c for c in cells.values() if not c.init_from] + [c for c in cells.values() if c.init_from]
    return [
        Job(cell, seed, owner[cell.id].select, cells.get(cell.init_from) if cell.init_from else None, probes[cell.id])
        for cell in ordered
        for seed in range(cell.seed_count(mode.seeds))
    ]


def _probes_of(cell: Cell, table: Table) -> dict:
    available = table.paper.probes
    unknown = [name for name in cell.probes if name not in available]
    if unknown:
        raise ValueError(
            f"cell {cell.id}: unknown probe {', '.join(map(repr, unknown))}; the {table.key} paper "
            f"defines: {', '.join(available) or 'none'}"
        )
    return {name: available[name] for name in cell.probes}


# ------------------------------------------------------------------------------------------------- estimate
def _model_kind(cell: Cell) -> str:
    if cell.model == "mobilenetv2-28":
        return "mbv2"
    if cell.model == "mlp":
        return f"mlp{cell.model_options.get('hidden', 1024)}"
    return "cnn16"


def estimate_seconds(cell: Cell, measured: Optional[dict] = None) -> float:
    """Expected wall time of one run of ``cell``: its own measured time when one is known, else from
    :data:`THROUGHPUT`: ``epochs * (train / train_sps + (val + test) / (EVAL_FACTOR * float_sps)) + overhead``."""
    if measured and cell.id in measured:
        return measured[cell.id]
    pool, test = DATASET_SIZES.get(cell.data, (60_000, 10_000))
    pool = min(pool, cell.train_subset or pool)
    test = min(test, cell.test_subset or test)
    size = "8x8" if cell.data == "digits" else "28x28"
    model = _model_kind(cell)
    sps = THROUGHPUT.get((size, model, cell.kind), 1000)
    eval_sps = EVAL_FACTOR * THROUGHPUT.get((size, model, "float"), 2000)
    train, val = 0.9 * pool, 0.1 * pool
    return cell.epochs * (train / sps + (val + test) / eval_sps) + RUN_OVERHEAD_S.get(cell.data, 2.0)


def measured_times(out: Path, mode: Mode, jobs: list) -> dict:
    """Mean measured wall time per cell id, from the raw JSON of ``mode`` written with the same fingerprint."""
    walls: dict = {}
    for job in jobs:
        raw = read_raw(raw_path(out, mode, job.cell.id, job.seed))
        if raw and raw.get("fingerprint") == job.cell.fingerprint(job.parent) and "timing" in raw:
            walls.setdefault(job.cell.id, []).append(raw["timing"]["wall_s"])
    return {cell_id: sum(values) / len(values) for cell_id, values in walls.items()}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


# --------------------------------------------------------------------------------------------------- runner
class Runner:
    """Runs jobs, writes raw JSON, skips finished ones; ``log`` receives one line per event."""

    def __init__(
        self, mode: Mode, out: Path, work: Path, *, fresh: bool = False, log: Callable[[str], None] = print
    ) -> None:
        self.mode = mode
        self.out = Path(out)
        self.work = Path(work)
        self.fresh = fresh
        self.log = log
        self._splits: dict = {}

    # ------------------------------------------------------------------------------------------- status
    def cached(self, job: Job) -> Optional[dict]:
        if self.fresh:
            return None
        raw = read_raw(raw_path(self.out, self.mode, job.cell.id, job.seed))
        if raw and raw.get("fingerprint") == self._fingerprint(job):
            return raw
        return None

    def _fingerprint(self, job: Job) -> str:
        return job.cell.fingerprint(job.parent)

    def _checkpoint_ready(self, cell: Cell, seed: int) -> bool:
        return RunFiles(run_dir(self.work, self.mode, cell.id, seed)).checkpoint.exists()

    def pending(self, jobs: list) -> list:
        """The jobs to run: those without a cached result, plus parents whose checkpoint a pending child needs."""
        todo = [job for job in jobs if self.cached(job) is None]
        needed = {(job.parent.id, job.seed) for job in todo if job.parent is not None}
        result = []
        for job in jobs:
            if job in todo:
                result.append(job)
            elif (job.cell.id, job.seed) in needed and not self._checkpoint_ready(job.cell, job.seed):
                result.append(job)
        return result

    # ------------------------------------------------------------------------------------------- running
    def run(self, jobs: list) -> list:
        """Run the pending jobs in order; return the raw records of all jobs (cached ones included)."""
        todo = self.pending(jobs)
        measured = {} if self.fresh else measured_times(self.out, self.mode, jobs)
        estimates = {id(j): estimate_seconds(j.cell, measured) for j in todo}
        total_estimate = sum(estimates.values())
        self.log(
            f"reproduce ({self.mode.name}): {len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to "
            f"run, estimated {format_duration(total_estimate)} with {torch.get_num_threads()} torch thread(s)"
        )
        started = time.perf_counter()
        spent_estimate = 0.0
        for i, job in enumerate(todo, 1):
            label = f"[{i:>3}/{len(todo)}] {job.cell.id} seed {job.seed}"
            record = self.run_job(job)
            spent_estimate += estimates[id(job)]
            elapsed = time.perf_counter() - started
            # scale the remaining estimate by how fast the finished runs went compared with their estimates
            pace = elapsed / spent_estimate if spent_estimate else 1.0
            remaining = pace * (total_estimate - spent_estimate)
            self.log(
                f"{label}: {self._outcome(record)} in {format_duration(record['timing']['wall_s'])} | elapsed "
                f"{format_duration(elapsed)}, remaining ~{format_duration(remaining)}"
            )
        return [self.cached(job) or read_raw(raw_path(self.out, self.mode, job.cell.id, job.seed)) for job in jobs]

    @staticmethod
    def _outcome(record: dict) -> str:
        if record.get("diverged"):
            return "diverged"
        r = record["result"]
        parts = [f"test error {100 * (1 - r['final_test_acc']):.2f}% (final)"]
        if r.get("best_test_acc") is not None:
            parts.append(f"{100 * (1 - r['best_test_acc']):.2f}% (best val)")
        return ", ".join(parts)

    def _data(self, cell: Cell, seed: int) -> DatasetSplits:
        from ..data import load_dataset

        key = (cell.data, seed, cell.train_subset, cell.test_subset)
        if key not in self._splits:
            if len(self._splits) > 4:  # a few seeds' worth; Fashion-MNIST splits are ~50 MB each
                self._splits.pop(next(iter(self._splits)))
            self._splits[key] = load_dataset(
                cell.data, seed=seed, train_subset=cell.train_subset, test_subset=cell.test_subset
            )
        return self._splits[key]

    def run_job(self, job: Job) -> dict:
        from ..runs import load_checkpoint
        from ..train import TrainConfig, Trainer, TrainingDiverged

        cell, seed = job.cell, job.seed
        directory = run_dir(self.work, self.mode, cell.id, seed)
        fingerprint = self._fingerprint(job)
        stamp = directory / "fingerprint.txt"
        resumable = (
            not self.fresh
            and stamp.exists()
            and stamp.read_text().strip() == fingerprint
            and RunFiles(directory).checkpoint.exists()
        )
        if not resumable and directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint + "\n")
        init_from = None
        if job.parent is not None:
            init_from = str(run_dir(self.work, self.mode, job.parent.id, seed))
        splits = self._data(cell, seed)
        config = TrainConfig(
            **cell.train_kwargs(),
            seed=seed,
            out=str(directory),
            resume=resumable,
            init_from=init_from,
            quiet=True,
            progress=False,
        )
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        record = {
            "cell": _cell_record(cell),
            "seed": seed,
            "mode": self.mode.name,
            "fingerprint": fingerprint,
            "select": job.select,
            "parent": job.parent.id if job.parent else None,
        }
        trainer = Trainer(config, splits=splits)
        try:
            result = trainer.fit()
        except TrainingDiverged as error:
            record.update({"diverged": True, "error": str(error), "history": _history(directory)})
        else:
            metrics = {k: v for k, v in result.metrics.items() if k != "recipe_resolved"}
            record.update(
                {
                    "diverged": False,
                    "result": {
                        "final_test_acc": metrics["test_accuracy"],
                        "best_test_acc": metrics["best_test_accuracy"],
                        "best_epoch": metrics["best_epoch"],
                        "final_val_acc": metrics["val_accuracy"],
                        "best_val_acc": metrics["best_val_accuracy"],
                    },
                    "metrics": metrics,
                    "recipe": result.metrics.get("recipe_resolved"),
                    "history": _history(directory),
                }
            )
            if cell.probes:
                which = selected_checkpoint(directory, job.select)
                model = result.model  # the last epoch's
                if which == "best":
                    model = load_checkpoint(directory, which="best").restore_model()
                record["probes"] = run_probes(job.probes, model, splits)
                record["probes"]["checkpoint"] = which
        record["data"] = {
            "name": splits.name,
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
        }
        record["timing"] = {
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": _cpu_seconds() - cpu0,
            "threads": torch.get_num_threads(),
            "resumed": resumable,
        }
        record["versions"] = {"lowbit": __version__, "torch": torch.__version__, "python": platform.python_version()}
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(raw_path(self.out, self.mode, cell.id, seed), record)
        return record


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cell_record(cell: Cell) -> dict:
    """The cell as the raw JSON stores it (the throughput class is a planning hint, not part of the result)."""
    data = asdict(cell)
    data.pop("kind")
    data["probes"] = list(cell.probes)
    return data


def _history(directory: Path) -> list:
    path = directory / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
