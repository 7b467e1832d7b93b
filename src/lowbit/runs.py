"""A training run on disk: the run directory's files, the checkpoint format, loading it and rebuilding its model.

A run directory (``lowbit train --out DIR``) holds::

    checkpoint.safetensors  the run's state after its last finished epoch, with the model of its best epoch
    log.jsonl               one JSON record per epoch (for people; the checkpoint's history is the record)
    metrics.json            the run's final figures, written when it finishes
    .lock               held by the process training into the directory (one writer at a time)
    replaced-<time>/    an earlier run, moved aside by ``lowbit train --overwrite``

The checkpoint file is the one commit point of a run: an epoch is committed when its checkpoint has been renamed
into place (atomically), and everything else is derived from it. It holds the model of the best validation epoch
too (when that is not the last one), so "last" and "best" can never disagree, whatever moment a run is killed at;
``log.jsonl`` is rewritten from the checkpoint's history when a run resumes.

A checkpoint is a :class:`Checkpoint`: named, versioned fields, stored with :mod:`lowbit.safe_state` (tensors in
safetensors, everything else as JSON; nothing is unpickled, so opening a checkpoint from someone else cannot run
code). Checkpoints of lowbit 0.1 (``last.pt`` / ``best.pt``, pickled by ``torch.save``) are refused with a message;
``lowbit convert-checkpoint`` converts one you trust.

This module is the one owner of the format: the trainer writes :class:`Checkpoint` objects, and evaluation, export,
summaries, plots and the reproduction read them through :func:`load_checkpoint` and
:meth:`Checkpoint.restore_model`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, CustomModelError
from .safe_state import StateFileError, is_safetensors_file, read_metadata, read_state, set_default_mode, write_state

__all__ = [
    "Checkpoint",
    "ModelSpec",
    "DataSpec",
    "RunFiles",
    "load_checkpoint",
    "capture_rng",
    "restore_rng",
    "convert_legacy_checkpoint",
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CustomModelError",
]

PathLike = Union[str, os.PathLike]
FORMAT = "lowbit-checkpoint"
#: 1: lowbit 0.1, a pickled torch.save dictionary (no longer read); 2: safetensors + JSON (this module)
VERSION = 2
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"


# ---------------------------------------------------------------------------------------------- run files
@dataclass(frozen=True)
class RunFiles:
    """The files of one run directory."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / f"checkpoint{SUFFIX}"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def read_history(self) -> list[dict]:
        """The per-epoch records of the run: the checkpoint's history (``log.jsonl`` may lack the last committed
        epoch after a kill, or hold one that was never committed)."""
        if self.checkpoint.exists():
            return Checkpoint.read_fields(self.checkpoint).get("history", [])
        if not self.log.exists():
            raise CheckpointError(
                f"no training log {str(self.log)!r}: give a directory written by 'lowbit train --out'"
            )
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def write_log(self, history: list[dict]) -> None:
        """Rewrite ``log.jsonl`` from a history (atomically)."""
        _write_text(self.log, "".join(json.dumps(record) + "\n" for record in history))

    def write_metrics(self, metrics: dict, default: Any = None) -> None:
        _write_text(self.metrics, json.dumps(metrics, indent=2, default=default))

    def read_metrics(self) -> Optional[dict]:
        """``metrics.json``, or ``None`` while the run has not finished."""
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else None

    def append_log(self, record: dict) -> None:
        with open(self.log, "a") as log:
            log.write(json.dumps(record) + "\n")

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def holds_run(self) -> bool:
        """Whether the directory holds (part of) a run: a checkpoint, a log or metrics, of this or lowbit 0.1."""
        legacy = [self.root / f"{name}{LEGACY_SUFFIX}" for name in ("last", "best")]
        log_written = self.log.exists() and self.log.stat().st_size > 0  # (a run killed in epoch 1 leaves it empty)
        return log_written or any(p.exists() for p in (self.checkpoint, self.metrics, *legacy))

    def run_outputs(self) -> list[Path]:
        """The files of the run in the directory: what lowbit wrote there (checkpoint, log, metrics, figures,
        exports; lowbit 0.1's checkpoints), not anything else a user keeps beside them."""
        names = {self.checkpoint.name, self.log.name, self.metrics.name, "curves.png", "bits.png", "weights.png"}
        names |= {f"{name}{LEGACY_SUFFIX}" for name in ("last", "best")}
        return sorted(p for p in self.root.iterdir() if p.name in names or p.name.startswith("model."))

    def move_aside(self) -> Path:
        """Move the files of the current run (:meth:`run_outputs`) into ``replaced-<time>/``; anything else in the
        directory stays where it is."""
        target = self.root / time.strftime("replaced-%Y%m%d-%H%M%S")
        while target.exists():  # two replacements within a second
            target = target.with_name(target.name + "-1")
        outputs = self.run_outputs()
        target.mkdir()
        for entry in outputs:
            entry.rename(target / entry.name)
        return target

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the run directory: a second process writing into it is refused with the
        holder's pid instead of mixing its checkpoints and log lines with the first one's."""
        import fcntl

        try:
            handle = open(self.lock_file, "a+")
        except OSError as error:  # a directory we may not write into
            raise CheckpointError(
                f"cannot use {str(self.root)!r} as the run directory: {error.strerror or error}"
            ) from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise CheckpointError(
                    f"run directory {str(self.root)!r} is in use by another lowbit process "
                    f"(pid {holder}); wait for it to finish, or train into another --out"
                ) from None
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()  # (closing releases the lock)


# ----------------------------------------------------------------------------------------------- specs
@dataclass
class ModelSpec:
    """How to rebuild the float architecture: a model of :mod:`lowbit.models` by name, a user's builder by reference
    (``--model my_pkg.my_module:build_model``), or a user's own model object.

    ``reference`` was added after format version 2 was introduced; checkpoints written without it read as ``None``.
    """

    name: Optional[str]  # None: a custom model (a reference, or a model object the user passes when restoring)
    options: dict = field(default_factory=dict)
    input_shape: list = field(default_factory=list)
    num_classes: int = 0
    class_name: Optional[str] = None  # the custom model's class, named in messages
    reference: Optional[str] = None  # MODULE:CALLABLE that built the custom model (never imported on its own)

    def build(self, reference: Optional[str] = None) -> nn.Module:
        """The float model: built-in models by name; a user's builder only from the ``reference`` the caller passes
        (``--model`` on the command line). A checkpoint names its builder, but importing a module runs its code, and
        opening a checkpoint from someone else must not, so the user names the module again to confirm it."""
        from .models import build_model
        from .models.reference import build_from_reference

        if reference is not None:
            if self.name is not None:
                raise ConfigError(
                    f"--model {reference}: this run uses lowbit's model {self.name!r}; --model names the builder of "
                    f"a run of your own architecture"
                )
            return build_from_reference(reference, self.input_shape, self.num_classes, **self.options)
        if self.reference is not None:
            raise CustomModelError(
                f"the model was built by {self.reference}; importing that module runs its code, so lowbit does it only "
                f"when you name it: add --model {self.reference} (for a run you trust; in Python: "
                f"restore_model(reference=...))"
            )
        if self.name is None:
            raise CustomModelError(
                f"the model is a custom architecture ({self.class_name or 'unknown class'}): "
                f"pass your float model, e.g. checkpoint.restore_model(model=MyNet()), "
                f"or export_checkpoint(path, model=MyNet())"
            )
        from .models import MODELS

        if self.name not in MODELS:  # never a MODULE:CALLABLE from a file: that would import (run) its code
            raise CheckpointError(
                f"the model name {self.name!r} is not one of lowbit's models ({', '.join(MODELS)}); a builder of "
                f"your own is imported only when you name it with --model"
            )
        return build_model(self.name, tuple(self.input_shape), self.num_classes, **self.options)

    @property
    def label(self) -> str:
        return self.name or self.reference or self.class_name or "custom model"


@dataclass
class DataSpec:
    """The data a run was trained on: enough to load the same splits again and normalise inputs the same way.

    ``user``: the run trained on the user's own Datasets/DataLoaders (``Trainer(train_data=...)``), which lowbit
    cannot load again; ``name`` is then only a label (the dataset's class), ``mean``/``std`` are empty (normalisation
    was the user's pipeline's) and ``input_dtype`` is the dtype of the inputs (``int64`` for tokens). Both fields read
    as their defaults from checkpoints written without them.
    """

    name: str
    data_dir: Optional[str] = None
    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)
    input_shape: list = field(default_factory=list)
    num_classes: int = 0
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    user: bool = False
    input_dtype: str = "float32"


# -------------------------------------------------------------------------------------------- checkpoint
@dataclass
class Checkpoint:
    """Everything a resumed run needs to continue bit for bit, and everything a reader needs to rebuild the model.

    ``epoch`` is the 0-based index of the last finished epoch of ``phase`` (``pretrain``: float training before
    quantization; ``train``: the recipe's training). ``model_state`` holds quantizer parameters, running ranges and
    the noise generators of stochastic quantizers; ``rng`` the global generators (torch, Python, NumPy).
    """

    phase: str
    epoch: int
    model_spec: ModelSpec
    data: Optional[DataSpec]
    recipe: dict
    quantized: bool
    seed: int
    model_state: dict
    optimizer_state: Optional[dict] = None
    scheduler_state: Optional[dict] = None
    rng: Optional[dict] = None
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_model_state: Optional[dict] = None  # the best epoch's model, when it is not this epoch's
    layer_ends: Optional[list] = None  # the first and last layer of the conversion (for 'first'/'last' overrides)
    lowbit_version: str = ""
    path: Optional[Path] = field(default=None, compare=False)  # where it was read from (not stored)
    which: str = field(default="last", compare=False)  # the view: "last" (resumable) or "best" (not stored)

    @staticmethod
    def read_fields(path: PathLike) -> dict[str, Any]:
        """The checkpoint's metadata fields (history, best, phase, epoch, ...) without reading its tensors: what
        readers of a run's record need, at the cost of the JSON header only."""
        path = Path(path)
        _check_file(path)
        try:
            meta = read_metadata(path)
        except StateFileError as error:
            raise CheckpointError(f"checkpoint {error}") from None
        return _fields(path, meta)

    @property
    def recipe_name(self) -> str:
        return str(self.recipe.get("name", "?"))

    @property
    def has_best(self) -> bool:
        """Whether an epoch qualified as best (one that met every constraint, e.g. a memory budget)."""
        return has_best_epoch(self.best)

    def view(self, which: str) -> Checkpoint:
        """``"last"``: this checkpoint. ``"best"``: the model of the best validation epoch (the last one when no
        epoch qualified, as during float pre-training or when a memory budget was never met); it cannot be
        resumed from (no optimizer state)."""
        if which not in ("last", "best"):
            raise ValueError(f"which must be 'last' or 'best', got {which!r}")
        if which == "last" or not self.has_best or self.best["epoch"] == self.epoch + 1:
            return replace(self, which=which)
        if self.best_model_state is None:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} names best epoch {self.best['epoch']} but does not hold its model"
            )
        return replace(
            self,
            epoch=self.best["epoch"] - 1,
            model_state=self.best_model_state,
            best_model_state=None,
            optimizer_state=None,
            scheduler_state=None,
            rng=None,
            which="best",
        )

    # ------------------------------------------------------------------------------------------ writing
    def save(self, path: PathLike) -> Path:
        """Write atomically (see :func:`lowbit.safe_state.write_state`)."""
        meta = {name: getattr(self, name) for name in _META_FIELDS}
        meta["model_spec"] = asdict(self.model_spec)
        meta["data"] = asdict(self.data) if self.data is not None else None
        tree = {name: getattr(self, name) for name in _STATE_FIELDS}
        return write_state(
            path, tree, {"format": FORMAT, "version": str(VERSION), "checkpoint": json.dumps(meta, default=_json_value)}
        )

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: PathLike) -> Checkpoint:
        path = Path(path)
        _check_file(path)
        try:
            tree, meta = read_state(path)
        except StateFileError as error:
            raise CheckpointError(f"checkpoint {error}") from None
        info = _fields(path, meta)
        try:
            model_spec = ModelSpec(**info.pop("model_spec"))
            data = info.pop("data")
            return cls(
                model_spec=model_spec, data=DataSpec(**data) if data is not None else None, **info, **tree, path=path
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has malformed metadata ({error}); it was not written by this lowbit version"
            ) from None

    # --------------------------------------------------------------------------------------- the model
    def restore_model(self, model: Optional[nn.Module] = None, *, reference: Optional[str] = None) -> nn.Module:
        """The trained model in eval mode: the float architecture (``model``, or rebuilt from :attr:`model_spec`; a run
        of ``--model MODULE:CALLABLE`` needs that ``reference`` again, see :meth:`ModelSpec.build`), converted by the
        recipe when the checkpoint was written after quantization, with the saved state loaded."""
        from .convert import quantize

        if model is None:
            try:
                model = self.model_spec.build(reference)
            except CustomModelError as error:
                raise CustomModelError(f"checkpoint {str(self.path)!r}: {error}") from None
        if self.phase == "train":  # the recipe's module swaps (a no-op for fp32)
            try:
                model = quantize(model, self.recipe, seed=self.seed, inplace=True, ends=self.layer_ends)
            except ConfigError as error:
                raise CheckpointError(
                    f"checkpoint {str(self.path)!r} does not fit the model {type(model).__name__}: {error}"
                ) from None
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} does not fit the model "
                f"{type(model).__name__}: {str(error).splitlines()[0]}"
            ) from None
        return model.eval()


_STATE_FIELDS = ("model_state", "optimizer_state", "scheduler_state", "rng", "best_model_state")
_META_FIELDS = tuple(
    f.name for f in fields(Checkpoint) if f.name not in _STATE_FIELDS + ("model_spec", "data", "path", "which")
)


def has_best_epoch(best: Optional[dict]) -> bool:
    """Whether a checkpoint's ``best`` record names an epoch (none qualifies during float pre-training, without
    validation data, or when a memory budget was never met)."""
    return bool(best) and best.get("epoch") is not None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not is_safetensors_file(path):
        raise _foreign(path)


def _fields(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The JSON fields of a checkpoint's metadata, after checking its format tag and version."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a lowbit checkpoint (no '{FORMAT}' format tag)")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {meta.get('version')}, this lowbit "
            f"reads version {VERSION}; use the lowbit release that wrote it"
        )
    try:
        return json.loads(meta["checkpoint"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has malformed metadata ({error}); it was not written by this lowbit version"
        ) from None


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)


def _foreign(path: Path) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
        return CheckpointError(
            f"{str(path)!r} is a checkpoint in the pickle format of lowbit 0.1, which can run arbitrary code when "
            f"opened, so lowbit no longer reads it; if you trust its source, convert it once with "
            f"'lowbit convert-checkpoint {path}'"
        )
    return CheckpointError(f"{str(path)!r} is not a lowbit checkpoint")


def load_checkpoint(path: PathLike, which: str = "best") -> Checkpoint:
    """Read a run directory's checkpoint, or a checkpoint file, as ``which`` says (see :meth:`Checkpoint.view`):
    ``"best"`` (the default: what eval, export, summary and plots use) or ``"last"`` (what a resumed run continues
    from)."""
    path = Path(path)
    if path.is_dir():
        files = RunFiles(path)
        if not files.checkpoint.exists():
            legacy = next(
                (path / f"{n}{LEGACY_SUFFIX}" for n in ("last", "best") if (path / f"{n}{LEGACY_SUFFIX}").exists()),
                None,
            )
            if legacy is not None:
                raise _foreign(legacy)
            raise CheckpointError(
                f"no checkpoint in {str(path)!r}: expected {files.checkpoint.name} written by "
                f"'lowbit train --out {path}'"
            )
        path = files.checkpoint
    return Checkpoint.load(path).view(which)


def _write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (unique temporary name, flushed, renamed)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """The global generators' states: torch (CPU), Python's ``random`` and NumPy's legacy global generator."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])


# ------------------------------------------------------------------------------------------- conversion
def convert_legacy_checkpoint(source: PathLike, target: Optional[PathLike] = None) -> Path:
    """Convert a lowbit 0.1 run directory (``last.pt`` and ``best.pt``) or one of its ``*.pt`` files (pickled) to a
    current checkpoint file.

    This unpickles the old files, which runs any code a malicious file contains: call it only on files you trust
    (your own runs). ``target`` defaults to ``DIR/checkpoint.safetensors`` for a directory, else the file's name with
    the ``.safetensors`` suffix.
    """
    source = Path(source)
    if source.is_dir():
        last, best = source / f"last{LEGACY_SUFFIX}", source / f"best{LEGACY_SUFFIX}"
        if not last.exists():
            raise CheckpointError(f"no lowbit 0.1 checkpoint (last.pt) in {str(source)!r}")
        target = Path(target) if target is not None else RunFiles(source).checkpoint
        old = _read_legacy(last)
        best_state = None
        if best.exists():
            old_best = _read_legacy(best)
            if old_best["epoch"] != old["epoch"] or old_best["phase"] != old["phase"]:
                best_state = old_best["model_state"]
        return _from_legacy(old, best_state).save(target)
    target = Path(target) if target is not None else source.with_suffix(SUFFIX)
    old = _read_legacy(source)
    best = old.get("best") or {}
    if best.get("epoch") not in (None, old["epoch"] + 1):  # a lone file: it is its own best
        old = {**old, "best": {**best, "epoch": old["epoch"] + 1}}
    return _from_legacy(old, None).save(target)


def _read_legacy(path: Path) -> dict:
    try:
        old = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{str(path)!r} cannot be read as a lowbit 0.1 checkpoint ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(old, dict) or old.get("format") != FORMAT or old.get("version") != 1:
        raise CheckpointError(f"{str(path)!r} is not a lowbit 0.1 checkpoint (format {FORMAT!r}, version 1)")
    return old


def _from_legacy(old: dict, best_model_state: Optional[dict]) -> Checkpoint:
    return Checkpoint(
        phase=old["phase"],
        epoch=old["epoch"],
        model_spec=ModelSpec(**old["model_spec"]),
        data=DataSpec(**old["data"]) if old.get("data") else None,
        recipe=old["recipe"],
        quantized=old["quantized"],
        seed=old["seed"],
        model_state=old["model_state"],
        optimizer_state=old.get("optimizer_state"),
        scheduler_state=old.get("scheduler_state"),
        rng=old.get("rng"),
        history=old.get("history", []),
        best=old.get("best", {}),
        best_model_state=best_model_state,
        lowbit_version=old.get("lowbit_version", ""),
    )
