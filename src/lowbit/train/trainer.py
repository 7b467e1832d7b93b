"""The training loop: optional float pre-training, quantization by recipe, training with the recipe's update policy,
losses and regularizers, per-epoch validation, atomic checkpoints, resume, and the run's metrics.

Python use::

    from lowbit.train import TrainConfig, run
    result = run(TrainConfig(recipe="lsq-w4a4", data="digits", epochs=3, out="runs/lsq"))

or, with your own float model and data, ``Trainer(config, model=my_model, train_data=..., val_data=...,
test_data=...).fit()`` (Datasets or DataLoaders yielding ``(input, target)``, any input shape; see
:mod:`lowbit.data.user` for their order and what a resumed run restores). ``TrainConfig(model="my_pkg.mod:build")``
builds a user's architecture from a reference (:mod:`lowbit.models.reference`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils.data import IterableDataset

from .. import __version__
from .. import distributed as ranks
from ..calibrate import mark_trained_weights
from ..convert import quantize
from ..convert import quantizers_of as quantizers_in
from ..data import (
    BatchLoader,
    DatasetSplits,
    TensorSplit,
    UserSplit,
    UserSplits,
    load_dataset,
    seed_everything,
    user_splits,
)
from ..data.user import UserData
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError, LowbitError, TrainingDiverged
from ..models import build_model, model_options
from ..models.reference import is_reference
from ..nn.sync_bn import synchronize_batchnorms, unsynchronize_batchnorms
from ..recipes import Recipe, load_recipe
from ..runs import Checkpoint, DataSpec, ModelSpec, RunFiles, capture_rng, load_checkpoint, restore_rng
from ..summary import model_summary
from .losses import get_loss
from .progress import Progress
from .rank_noise import per_rank_quantizers, restart_rank_noise, seed_rank_globals
from .resume import RESUMABLE_CHANGES, configuration_differences, scale_learning_rates
from .schedule import build_scheduler
from .step import NonFiniteLoss, TrainingStep

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "RunResult", "run", "default_model_for"]


def _with_current_defaults(saved_recipe: dict) -> dict:
    """A checkpoint's resolved recipe with the defaults of settings added since it was written filled in (a newer
    lowbit's option, e.g. ``train.sync_batchnorm``, is absent from an older checkpoint but means its default, what the
    older version did); as saved when it no longer validates (the comparison then names what differs)."""
    try:
        return load_recipe(saved_recipe).to_dict()
    except LowbitError:
        return saved_recipe


def default_model_for(input_shape: Sequence[int]) -> str:
    """The model a run builds when neither the command line nor the recipe names one: ``resnet20`` for 32×32 colour
    images (CIFAR, SVHN), ``small-cnn`` otherwise (28×28 and 8×8 images)."""
    return "resnet20" if tuple(input_shape[-2:]) == (32, 32) else "small-cnn"


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields fall back to the recipe, then to the dataset's defaults."""

    recipe: Union[str, dict, Recipe] = "lsq-w4a4"
    data: Optional[str] = None
    data_dir: Optional[str] = None
    model: Optional[str] = None
    model_options: dict = field(default_factory=dict)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: int = 0
    out: Optional[str] = None
    resume: bool = False
    overwrite: bool = False  # a new run into a directory that holds one: move the old run aside instead of refusing
    changes: dict = field(default_factory=dict)  # dotted recipe paths -> values (the CLI's --set)
    device: str = "auto"  # CUDA when available, else CPU (devices.resolve_device)
    amp: str = "none"  # "bf16": the training forward under bfloat16 autocast (train/step.py autocast_dtype)
    progress: Optional[bool] = None  # None: a bar on a terminal, plain lines otherwise
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    pretrain_epochs: Optional[int] = None
    init_from: Optional[str] = None  # a float checkpoint (run dir or file) to start from instead of pre-training
    compile: bool = False  # torch.compile the training forward/backward (minutes of compilation, faster steps)
    quiet: bool = False

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **changes: Any) -> TrainConfig:
        """The configuration that loads the same data splits and builds the same model as ``checkpoint``'s run."""
        data, spec = checkpoint.data, checkpoint.model_spec
        if data is None:
            raise CheckpointError(f"checkpoint {str(checkpoint.path)!r} does not say which data it was trained on")
        config = cls(
            recipe=checkpoint.recipe,
            data=data.name,
            data_dir=data.data_dir,
            model=spec.name,
            model_options=dict(spec.options),
            seed=checkpoint.seed,
            val_fraction=data.val_fraction,
            train_subset=data.train_subset,
            test_subset=data.test_subset,
            quiet=True,
        )
        for key, value in changes.items():
            setattr(config, key, value)
        return config


@dataclass
class RunResult:
    metrics: dict
    model: nn.Module
    out: Optional[Path]

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    @property
    def files(self) -> Optional[RunFiles]:
        """The run directory's files (``None`` for a run without ``out``)."""
        return RunFiles(self.out) if self.out is not None else None


def resolve_recipe(config: TrainConfig) -> Recipe:
    """The recipe with the config's overrides applied (validated again, so bad values get recipe errors)."""
    recipe = load_recipe(config.recipe)
    if config.changes:
        recipe = recipe.with_changes(dict(config.changes), source="--set")
    changes = {}
    if config.epochs is not None:
        changes["train.epochs"] = config.epochs
    if config.batch_size is not None:
        changes["train.batch_size"] = config.batch_size
    if config.lr is not None:
        changes["train.optimizer.lr"] = config.lr
    if config.init_from is not None:
        changes["train.pretrain"] = None  # the float starting point is given
    elif config.pretrain_epochs is not None:
        changes["train.pretrain"] = (
            None
            if config.pretrain_epochs == 0
            else {**(recipe.train.get("pretrain") or {}), "epochs": config.pretrain_epochs}
        )
    return recipe.with_changes(changes, source="option") if changes else recipe


def _model_choice(recipe: Recipe, config: TrainConfig, input_shape: Sequence[int]) -> tuple[str, dict, list[str]]:
    """Model name and options: command line, then recipe, then the default for the data's input shape. Recipe
    options that the chosen model does not have are dropped (and reported): they describe the method's preferred
    architecture."""
    spec = recipe.data.get("model")
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    from_recipe = spec.pop("name", None)
    if config.model is None and from_recipe is not None and is_reference(from_recipe):
        raise ConfigError(
            f"recipe {recipe.name!r} names the model {from_recipe!r}, a module to import: importing runs its code, "
            f"so lowbit imports a builder only when you name it yourself, with --model {from_recipe}"
        )
    name = config.model or from_recipe or default_model_for(input_shape)
    if is_reference(name):  # the recipe's options describe a built-in architecture, not the user's
        return name, dict(config.model_options), list(spec)
    accepted = model_options(name)
    options = {k: v for k, v in spec.items() if k in accepted}
    dropped = [k for k in spec if k not in accepted]
    options.update(config.model_options)
    return name, options, dropped


class Trainer:
    """One training run. ``fit()`` returns a :class:`RunResult`; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: Optional[nn.Module] = None,
        splits: Optional[DatasetSplits] = None,
        log: Optional[Callable[[str], None]] = None,
        model_spec: Optional[ModelSpec] = None,
        train_data: UserData = None,
        val_data: UserData = None,
        test_data: UserData = None,
    ) -> None:
        self.config = config
        self.recipe = resolve_recipe(config)
        self.train_spec = self.recipe.train
        self.device = ranks.device_of_this_rank(resolve_device(config.device))  # a GPU per process
        self.distributed = ranks.setup(self.device) and ranks.world_size() > 1
        quiet = config.quiet or not ranks.is_main()  # only rank 0 prints
        self.log = log or ((lambda _msg: None) if config.quiet else (lambda msg: print(msg, flush=True)))
        if not ranks.is_main():
            self.log = lambda _msg: None
        dataset = config.data or self.recipe.data.get("data") or "digits"
        own_data = any(d is not None for d in (train_data, val_data, test_data))
        if own_data and (splits is not None or model is None):
            raise ConfigError(
                "with your own data (train_data, val_data, test_data) pass your model too, e.g. "
                "Trainer(config, model=lowbit_or_torch_model, train_data=...), and no splits"
            )
        self.splits: Union[DatasetSplits, UserSplits] = (
            splits
            if splits is not None
            else user_splits(train_data, val_data, test_data)
            if own_data
            else load_dataset(
                dataset,
                config.data_dir,
                val_fraction=config.val_fraction,
                seed=config.seed,
                train_subset=config.train_subset,
                test_subset=config.test_subset,
            )
        )
        if self.distributed:
            self._check_distributable()
        elif self.train_spec.get("sync_batchnorm"):
            self.log("note: train.sync_batchnorm has no effect on one process (its batch is the whole batch)")
        if model is None:
            name, options, dropped = _model_choice(self.recipe, config, self.splits.input_shape)
            if dropped:
                self.log(f"note: model {name!r} has no option {', '.join(dropped)} (from the recipe); ignored")
            seed_everything(config.seed)
            model = build_model(name, self.splits.input_shape, self.splits.num_classes, **options)
            shape, classes = list(self.splits.input_shape), self.splits.num_classes
            model_spec = (
                ModelSpec(None, options, shape, classes, class_name=type(model).__name__, reference=name)
                if is_reference(name)
                else ModelSpec(name, options, shape, classes)
            )
        elif model_spec is None:
            model_spec = ModelSpec(
                None, {}, list(self.splits.input_shape), self.splits.num_classes, class_name=type(model).__name__
            )
        self.model_spec = model_spec
        if config.init_from is not None:
            self._load_float_start(model, config.init_from)
        self.model = model.to(self.device)
        self.out = Path(config.out) if config.out and ranks.is_main() else None  # only rank 0 writes
        self.files = RunFiles(self.out) if self.out is not None else None
        self.loss_fn = get_loss(self.train_spec["loss"])
        self.history: list[dict] = []
        self.best: dict = {}
        self._best_state: Optional[dict] = None  # a copy of the best epoch's model state (see _commit)
        self._no_validation_noted = False
        self.progress = Progress(enabled=config.progress, quiet=quiet)
        self._ranks_model: Optional[nn.Module] = None  # the DistributedDataParallel wrapper of the current phase

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        model: Optional[nn.Module] = None,
        data_dir: Optional[str] = None,
        reference: Optional[str] = None,
        val_data: UserData = None,
        test_data: UserData = None,
    ) -> Trainer:
        """A trainer around the trained model of ``checkpoint`` and its data splits, for evaluation (``model``: your
        float model, for runs of a custom architecture; ``reference``: the ``MODULE:CALLABLE`` of a run trained with
        ``--model MODULE:CALLABLE``, named again to confirm importing it). A run on the user's own data needs that
        data again (``val_data``, ``test_data``)."""
        data = checkpoint.data
        own_data = val_data is not None or test_data is not None
        if data is not None and data.user and not own_data:
            raise CheckpointError(
                f"checkpoint {str(checkpoint.path)!r} was trained on your own data ({data.name}), which lowbit cannot "
                f"load; evaluate it in Python: Trainer.from_checkpoint(checkpoint, test_data=...) with your Dataset"
            )
        config = TrainConfig.from_checkpoint(checkpoint, epochs=0, pretrain_epochs=0)
        if data_dir:
            config.data_dir = data_dir
        restored = checkpoint.restore_model(model, reference=reference)
        return cls(config, model=restored, model_spec=checkpoint.model_spec, val_data=val_data, test_data=test_data)

    def _check_distributable(self) -> None:
        """Refuse, in one line each, what a distributed run does not support yet (see docs/distributed.md). Every
        shipped recipe is checked (tests/test_distributed.py)."""
        world = ranks.world_size()
        batch = self.train_spec["batch_size"]
        if batch % world or batch < 2 * world:
            raise ConfigError(
                f"the batch size {batch} is the global batch and must divide among the {world} processes with at "
                f"least 2 samples each (BatchNorm cannot normalise one); give --batch-size a multiple of {world} of "
                f"at least {2 * world}"
            )
        train = self.splits.train if isinstance(self.splits, UserSplits) else None
        if train is not None and (train.loader is not None or isinstance(train.dataset, IterableDataset)):
            # a loader orders its batches itself (by default from torch's global generator, which is per rank in a
            # distributed run): the ranks could cut different global batches
            raise ConfigError(
                "training on your own DataLoader or IterableDataset on several processes is not supported: its order "
                "is its own and could differ between the processes; pass the map-style Dataset (train_data=dataset), "
                "which lowbit batches in one seeded order on every process, or train on one process"
            )
        if self.config.compile:
            raise ConfigError("--compile with several processes is not supported yet; drop --compile")

    def _load_float_start(self, model: nn.Module, source: str) -> None:
        start = load_checkpoint(source, which="last")
        if start.quantized:
            raise ConfigError(
                f"--init-from needs a float checkpoint (an fp32 run or a pre-training phase); "
                f"{start.path} holds a quantized model (recipe {start.recipe_name!r})"
            )
        spec = start.model_spec
        if self.model_spec.name is not None and (spec.name, spec.options) != (
            self.model_spec.name,
            self.model_spec.options,
        ):
            raise ConfigError(
                f"--init-from {start.path} holds model {spec.name!r} {spec.options}, "
                f"but this run builds {self.model_spec.name!r} {self.model_spec.options}"
            )
        try:
            model.load_state_dict(start.model_state)
        except RuntimeError as error:  # another architecture (a custom model or a reference)
            raise ConfigError(
                f"--init-from {start.path} holds the weights of another model ({spec.label}) than this run builds "
                f"({self.model_spec.label}): {str(error).splitlines()[0]}"
            ) from None
        self.log(f"starting from the float weights of {start.path}")

    # ------------------------------------------------------------------------------------------- data
    def _loader(
        self, split: Union[TensorSplit, UserSplit], *, train: bool, epoch: int = 0, batch_size: Optional[int] = None
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(split, UserSplit):  # the user's pipeline normalises and augments
            return split.batches(
                batch_size or self.train_spec["batch_size"], shuffle=train, seed=self.config.seed, epoch=epoch
            )
        return BatchLoader(
            split,
            batch_size or self.train_spec["batch_size"],
            shuffle=train,
            seed=self.config.seed,
            epoch=epoch,
            normalize=(self.splits.mean, self.splits.std),
            augment=self.splits.augment if train else "none",
        )

    def example_batch(self, size: int = 8) -> torch.Tensor:
        """The first ``size`` training inputs, normalised, on the run's device (no augmentation; with the user's
        data: the first inputs of the first split given, as its pipeline gives them)."""
        if isinstance(self.splits, UserSplits):
            split = next(s for s in (self.splits.train, self.splits.val, self.splits.test) if s.dataset is not None)
            x, _ = next(iter(self._loader(split, train=False, batch_size=size)))
            return x[:size].to(self.device)
        x, _ = next(iter(self._loader(self.splits.train, train=False, batch_size=size)))
        return x.to(self.device)

    # ------------------------------------------------------------------------------------------- phases
    def _phases(self) -> list[tuple[str, int]]:
        phases = []
        pretrain = self.train_spec.get("pretrain")
        if pretrain and pretrain.get("epochs", 0) > 0:
            phases.append(("pretrain", pretrain["epochs"]))
        phases.append(("train", self.train_spec["epochs"]))
        return phases

    def quantize_model(self) -> nn.Module:
        """Convert the model in place as the recipe says (what ``fit()`` does after float pre-training)."""
        self.model = quantize(
            self.model, self.recipe, seed=self.config.seed, inplace=True, example=self.example_batch()
        ).to(self.device)
        if self.config.init_from is not None or any(phase == "pretrain" for phase, _ in self._phases()):
            mark_trained_weights(self.model)  # pre-trained weights: BinaryConnect keeps them (train/policies.py)
        return self.model

    def _setup_phase(self, phase: str, epochs: int) -> None:
        spec = dict(self.train_spec["optimizer"])
        if phase == "pretrain":
            spec["lr"] = self.train_spec["pretrain"].get("lr") or spec["lr"]
        self.step = TrainingStep.from_recipe(
            self.model,
            self.recipe,
            self.example_batch(),
            optimizer_spec=spec,
            pretrain=phase == "pretrain",
            loss_fn=self.loss_fn,
            amp=self.config.amp,
        )
        self.optimizer, self.policy, self.regularizers = self.step.optimizer, self.step.policy, self.step.regularizers
        if self.config.compile:
            self.step.model = torch.compile(self.model)  # shares the parameters; evaluation stays eager
        self.scheduler = build_scheduler(self.optimizer, self.train_spec["schedule"], epochs)
        self._ranks_model = None  # a new phase (a quantized model) gets its own DDP wrapper at its first step
        self.phase, self.phase_epochs = phase, epochs

    # ------------------------------------------------------------------------------------------ loop
    def _train_epoch(self, epoch: int) -> dict:
        self.model.train()
        loader = self._loader(self.splits.train, train=True, epoch=self._data_epoch(epoch))
        if self.distributed:  # this rank's chunk of every global batch
            loader = ranks.shard_batches(loader, ranks.rank(), ranks.world_size())
        self.step.set_epoch(epoch)
        rank_noise = per_rank_quantizers(self.model) if self.distributed else []
        if self.distributed:  # dropout and the like: per rank, a pure function of (seed, phase, epoch, rank)
            seed_rank_globals(self.config.seed, self.phase, epoch, ranks.rank())
        total_loss = correct = seen = 0
        reg_total = 0.0
        started = time.perf_counter()
        bar = self.progress.bar(_batches(loader), f"{self.phase} {epoch + 1}/{self.phase_epochs}")
        for step, (x, y) in enumerate(loader):
            x, y = x.to(self.device), y.to(self.device)
            if self.distributed and self._ranks_model is None:
                self._wrap_for_ranks(x)
            if rank_noise:  # per-rank data, per-rank noise: a pure function of (seed, step, rank)
                restart_rank_noise(rank_noise, self.phase, epoch, step, ranks.rank())
            try:
                out = self.step(x, y)
            except NonFiniteLoss as error:
                bar.close()
                raise TrainingDiverged(self._divergence_message(error.value, epoch, step)) from None
            n = y.numel()
            total_loss += out.loss.item() * n
            reg_total += out.regularizer.item() * n
            correct += (out.logits.argmax(1) == y).sum().item()
            seen += n
            bar.update(
                loss=total_loss / seen, acc=correct / seen, throughput=seen / max(time.perf_counter() - started, 1e-9)
            )
        bar.close()
        if self.distributed:  # the epoch's figures over every rank; rank 0's BatchNorm statistics everywhere
            total_loss, reg_total, correct, seen = ranks.sum_across([total_loss, reg_total, correct, seen], self.device)
            ranks.broadcast_state(self.model, parameters=False)
        elapsed = time.perf_counter() - started
        record = {
            "loss": total_loss / seen,
            "train_acc": correct / seen,
            "train_time_s": elapsed,
            "samples_per_s": seen / elapsed,
        }
        if self.step.active:
            record["regularizer"] = reg_total / seen
        return record

    def _wrap_for_ranks(self, x: torch.Tensor) -> None:
        """Before the first step of a phase on several processes: initialise the lazily initialised quantizers (LSQ
        steps, min-max ranges, Uhlich d/q_max) from the whole first global batch, copy rank 0's parameters and
        buffers to every rank, and let the training step run through DistributedDataParallel (gradients averaged over
        ranks).

        DDP copies rank 0's state when it is built, but a quantizer that initialises itself in the first forward would
        do so from each rank's own chunk after that copy; so every rank gathers the global batch (the ranks' chunks
        of it, ``x`` here, in rank order) and runs it here first, in train mode without gradients, with every buffer
        outside the quantizers (BatchNorm statistics) and every noise stream put back afterwards: the quantizers start
        from the values one process would give them on the same batch. The broadcast afterwards is a safeguard."""
        if any(not bool(q.initialized) for q in quantizers_in(self.model)):
            batch = ranks.gather_batch(x)  # W chunks: the memory of one global batch's forward, without gradients
            with self.step.forward_context(batch):  # under --amp bf16 as the first step would initialise them
                _initialize_quantizers(self.model, batch)
        for quantizer in quantizers_in(self.model):  # batch-size-dependent gradients count the global batch
            quantizer.batch_shards = ranks.world_size()
        ranks.broadcast_state(self.model)
        if self.train_spec.get("sync_batchnorm") and (synced := synchronize_batchnorms(self.model)):
            self.log(f"train.sync_batchnorm: {len(synced)} BatchNorm layers normalise over the global batch")
        device_ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
        self._ranks_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.step.model = self._ranks_model

    def _data_epoch(self, epoch: int) -> int:
        # pre-training and training see different shuffles, each a pure function of (seed, phase, epoch)
        return epoch + (10_000 if self.phase == "train" else 0)

    def _divergence_message(self, value: float, epoch: int, step: int) -> str:
        kept = (
            (f"the last good checkpoint {self.files.checkpoint} is kept (resume with --resume after fixing the cause)")
            if self.files and self.files.checkpoint.exists()
            else f"on rank {ranks.rank()}; rank 0 keeps the run's last good checkpoint, if an epoch finished (resume "
            f"with --resume after fixing the cause)"
            if not ranks.is_main()
            else "no checkpoint had been written yet"
        )
        return (
            f"the loss became {value} in {self.phase} epoch {epoch + 1}, step {step + 1}; {kept}. "
            f"Try a smaller learning rate (--lr), gradient clipping (--set train.grad_clip=1.0), or check the "
            f"input data"
        )

    @torch.no_grad()
    def evaluate(self, split: Union[TensorSplit, UserSplit]) -> dict:
        """Accuracy and loss on a split in eval mode (BC-stoch evaluates with its float weights here); NaN for an
        empty split."""
        if isinstance(split, TensorSplit) and len(split) == 0:
            return {"acc": float("nan"), "loss": float("nan")}
        self.model.eval()
        correct = seen = 0
        total_loss = 0.0
        for x, y in self._loader(split, train=False, batch_size=512):
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            total_loss += self.loss_fn(logits, y).item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
        if seen == 0:
            return {"acc": float("nan"), "loss": float("nan")}
        return {"acc": correct / seen, "loss": total_loss / seen}

    # ------------------------------------------------------------------------------------ checkpoints
    def _data_spec(self) -> DataSpec:
        splits, config = self.splits, self.config
        if isinstance(splits, UserSplits):
            dtype = str(splits.input_dtype).removeprefix("torch.")
            return DataSpec(splits.name, input_shape=list(splits.input_shape), user=True, input_dtype=dtype)
        return DataSpec(
            splits.name,
            config.data_dir,
            list(splits.mean),
            list(splits.std),
            list(splits.input_shape),
            splits.num_classes,
            config.val_fraction,
            config.train_subset,
            config.test_subset,
        )

    def checkpoint(self, epoch: int) -> Checkpoint:
        """The run's state after ``epoch`` (0-based) of the current phase."""
        config, data = self.config, self._data_spec()
        return Checkpoint(
            phase=self.phase,
            epoch=epoch,
            model_spec=self.model_spec,
            data=data,
            recipe=self.recipe.to_dict(),
            quantized=self.phase == "train" and any(True for _ in quantizers_in(self.model)),
            seed=config.seed,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            rng=capture_rng(),
            history=self.history,
            best=self.best,
            best_model_state=None if self.best.get("epoch") == epoch + 1 else self._best_state,
            layer_ends=self._layer_ends(),
            lowbit_version=__version__,
        )

    def _layer_ends(self) -> Optional[list]:
        """The first and last layer the conversion resolved (by data flow), so a restored model gets the same
        overrides."""
        report = getattr(self.model, "lowbit_report", None)
        return [report.first, report.last] if report is not None and report.first is not None else None

    def _commit(self, epoch: int, record: dict, is_best: bool) -> None:
        """Record a finished epoch: the history, the best epoch's model, then the checkpoint file, renamed into place
        as a whole (the run's one commit point), then the log line derived from it."""
        if is_best:
            self._best_state = {
                k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                for k, v in self.model.state_dict().items()
            }
        self.history.append(record)
        if self.files is None:
            return
        try:
            self.checkpoint(epoch).save(self.files.checkpoint)
        except OSError as error:  # a full disk, a directory that went away, ...
            raise CheckpointError(
                f"cannot write the checkpoint {self.files.checkpoint}: {error.strerror or error}; the checkpoint "
                f"of the previous epoch is kept (resume with --resume once the cause is fixed)"
            ) from None
        try:
            self.files.append_log(record)
        except OSError as error:
            raise CheckpointError(
                f"cannot append to {self.files.log}: {error.strerror or error}; epoch {epoch + 1} is saved in "
                f"{self.files.checkpoint} (resume with --resume once the cause is fixed)"
            ) from None

    @contextlib.contextmanager
    def _claim_run_directory(self) -> Iterator[Optional[Checkpoint]]:
        """:meth:`_claim_own_directory` on rank 0; in a distributed run every other rank then receives rank 0's
        checkpoint to resume from (it does not read the run directory itself, which need not be on its machine), or
        stops with rank 0's error when rank 0 could not claim the directory."""
        if not self.distributed:
            with self._claim_own_directory() as resume:
                yield resume
            return
        with contextlib.ExitStack() as stack:
            failure: Optional[Exception] = None
            resume = None
            try:
                resume = stack.enter_context(self._claim_own_directory())
            except Exception as error:  # shared first, so the other ranks stop too instead of waiting
                failure = error
            outcome = ranks.share_from_main(("failed", str(failure)) if failure is not None else ("ok", resume))
            if failure is not None:
                raise failure
            if outcome[0] == "failed":
                raise CheckpointError(f"rank 0 could not start the run: {outcome[1]}")
            if not ranks.is_main() and outcome[1] is not None:
                resume = outcome[1]
                self._resume_changes = self._check_resumable(resume)
            yield resume

    @contextlib.contextmanager
    def _claim_own_directory(self) -> Iterator[Optional[Checkpoint]]:
        """Lock the run directory for this process; yield the checkpoint to resume from (``None``: a new run).

        A new run never writes over an earlier one: it is refused, or with ``overwrite`` the old run is moved into
        ``replaced-<time>/`` first. ``resume`` without a checkpoint to resume from is an error, not a fresh start.
        """
        if self.files is None:
            yield None
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"cannot use {str(self.out)!r} as the run directory: {error.strerror or error}"
            ) from None
        with self.files.locked():
            resume = self._resume_point()
            if resume is None:
                if self.files.holds_run() and not self.config.overwrite:
                    raise CheckpointError(
                        f"{str(self.out)!r} already holds a run; continue it with --resume, train into another "
                        f"--out, or replace it with --overwrite (the old run is then moved into "
                        f"{self.out}/replaced-<time>/)"
                    )
                if self.files.holds_run():
                    self.log(f"moved the previous run in {self.out} to {self.files.move_aside()}")
                self.files.log.write_text("")
            yield resume

    def _resume_point(self) -> Optional[Checkpoint]:
        if not self.config.resume:
            return None
        if not self.files.checkpoint.exists():
            legacy = self.out / "last.pt"
            if legacy.exists():
                load_checkpoint(legacy)  # refused with the conversion hint
            raise CheckpointError(
                f"nothing to resume in {str(self.out)!r}: there is no {self.files.checkpoint.name} (a "
                f"run killed before the end of its first epoch leaves none); start the run "
                f"without --resume"
            )
        state = load_checkpoint(self.files.checkpoint, which="last")
        self._resume_changes = self._check_resumable(state)
        return state

    def _run_description(self, recipe: dict, data: Optional[DataSpec], model: ModelSpec, seed: int) -> dict:
        """What makes two runs the same run (compared on resume)."""
        data_fields = (
            {k: v for k, v in asdict(data).items() if k in ("name", "val_fraction", "train_subset", "test_subset")}
            if data
            else {}
        )
        return {
            "recipe": recipe,
            "data": data_fields,
            "model": {"name": model.name, "options": model.options, "reference": model.reference},
            "seed": seed,
        }

    def _check_resumable(self, saved: Checkpoint) -> dict[str, tuple]:
        """The allowed differences between the saved run and this one; anything else is refused."""
        differences = configuration_differences(
            self._run_description(_with_current_defaults(saved.recipe), saved.data, saved.model_spec, saved.seed),
            self._run_description(self.recipe.to_dict(), self._data_spec(), self.model_spec, self.config.seed),
        )
        refused = {k: v for k, v in differences.items() if k not in RESUMABLE_CHANGES}
        epochs = differences.get("recipe.train.epochs")
        if epochs and saved.phase == "train" and epochs[1] < saved.epoch + 1:
            raise CheckpointError(
                f"cannot resume {str(saved.path)!r} with --epochs {epochs[1]}: it has trained {saved.epoch + 1} "
                f"epochs already; give at least that many (or start a new run)"
            )
        if refused:
            shown = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in list(refused.items())[:4])
            more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
            raise CheckpointError(
                f"cannot resume {str(saved.path)!r} with a different configuration: {shown}{more}; resume with the "
                f"settings of the run (only --epochs and --lr may change), or start a new run with another --out"
            )
        return differences

    def _apply_resume_changes(self, resume: Checkpoint) -> None:
        """Apply the allowed changes to the restored optimizer: the LR of every group is set again from the
        (rescaled) base LR and the new schedule at the restored position (the saved LRs followed the old one)."""
        changes = getattr(self, "_resume_changes", {})
        ratio = 1.0
        epochs_change = changes.get("recipe.train.epochs") if self.phase == "train" else None
        if epochs_change:
            old, new = epochs_change
            self.log(f"resuming with {new} epochs instead of {old}: {RESUMABLE_CHANGES['recipe.train.epochs']}")
        lr_change = changes.get("recipe.train.optimizer.lr")
        uses_optimizer_lr = self.phase == "train" or not (self.train_spec.get("pretrain") or {}).get("lr")
        if lr_change and uses_optimizer_lr:
            old, new = lr_change
            ratio = new / old
            self.log(
                f"resuming with learning rate {new:g} instead of {old:g}: "
                f"{RESUMABLE_CHANGES['recipe.train.optimizer.lr']}"
            )
        if epochs_change or ratio != 1.0:
            scale_learning_rates(self.optimizer, self.scheduler, ratio)

    # -------------------------------------------------------------------------------------------- fit
    def fit(self) -> RunResult:
        started = time.perf_counter()
        seed_everything(self.config.seed)  # torch, Python's random and NumPy's global generator
        with self._claim_run_directory() as resume:
            return self._fit(resume, started)

    def _fit(self, resume: Optional[Checkpoint], started: float) -> RunResult:
        self.log(
            f"lowbit {__version__}: recipe {self.recipe.name} on {self.splits.name} "
            f"({_count(self.splits.train)} train / {_count(self.splits.val)} val / {_count(self.splits.test)} test), "
            f"model {self.model_spec.label}, seed {self.config.seed}"
        )
        for phase, epochs in self._phases():
            if phase == "train":
                self.quantize_model()
            start_epoch = 0
            if resume is not None:
                if resume.phase == "pretrain" and phase == "train":
                    resume = None  # pre-training had finished; nothing more to restore
                elif resume.phase == "train" and phase == "pretrain":
                    continue  # pre-training was done before the checkpoint
            self._setup_phase(phase, epochs)
            if resume is not None and resume.phase == phase:
                self.model.load_state_dict(resume.model_state)
                self.optimizer.load_state_dict(resume.optimizer_state)
                self.scheduler.load_state_dict(resume.scheduler_state)
                self._apply_resume_changes(resume)
                restore_rng(resume.rng)
                self.history, self.best = list(resume.history), dict(resume.best)
                self._best_state = resume.view("best").model_state if resume.has_best else None
                if self.files is not None:  # rank 0 of a distributed run
                    self.files.write_log(self.history)  # drops a line of an epoch that was never committed
                start_epoch = resume.epoch + 1
                self.log(f"resumed from {resume.path} after {phase} epoch {start_epoch}")
                resume = None
            elif start_epoch == 0:
                self.policy.start(notify=self.log)
            for epoch in range(start_epoch, epochs):
                self._run_epoch(epoch)
            if epochs == 0 and phase == "train":
                self._evaluate_only()
        if self.distributed:
            self._leave_ranks()
        return self._finish(time.perf_counter() - started)

    def _leave_ranks(self) -> None:
        """After the last epoch of a distributed run: the model a caller gets back is an ordinary one-process model
        (quantizers count their own batch again, BatchNorm layers are plain), whatever it is used for next."""
        for quantizer in quantizers_in(self.model):
            quantizer.batch_shards = 1
        unsynchronize_batchnorms(self.model)

    def _run_epoch(self, epoch: int) -> None:
        record = {"phase": self.phase, "epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(self._train_epoch(epoch))
        self.scheduler.step()
        val, test = self.evaluate(self.splits.val), self.evaluate(self.splits.test)
        record.update({"val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"]})
        for reg in self.regularizers:
            record.update(reg.describe(self.model))
        if self.phase == "train":
            record["bits"] = {name: bits for name, bits in model_summary(self.model).per_layer_bits().items()}
        eligible = all(r.satisfied(self.model) for r in self.regularizers)  # e.g. within every memory budget
        # best = highest validation accuracy, ties broken by lower validation loss (small validation sets tie often)
        if self.phase == "train" and not math.isfinite(record["val_acc"]) and not self._no_validation_noted:
            self._no_validation_noted = True
            self.log("note: no validation data, so no epoch is 'best': eval and export use the last epoch")
        is_best = (
            self.phase == "train"
            and eligible
            and math.isfinite(record["val_acc"])  # without validation data there is no best epoch
            and (
                not self.best
                or (record["val_acc"], -record["val_loss"])
                > (self.best["val_acc"], -self.best.get("val_loss", math.inf))
            )
        )
        if is_best:
            self.best = {
                "epoch": epoch + 1,
                "val_acc": record["val_acc"],
                "val_loss": record["val_loss"],
                "test_acc": record["test_acc"],
            }
        self._commit(epoch, record, is_best)
        self.log(self._epoch_line(record))

    def _evaluate_only(self) -> None:
        val, test = self.evaluate(self.splits.val), self.evaluate(self.splits.test)
        record = {"phase": "train", "epoch": 0, "val_acc": val["acc"], "test_acc": test["acc"]}
        self.best = {"epoch": 0, "val_acc": val["acc"], "test_acc": test["acc"]}
        self._commit(-1, record, is_best=True)  # no epoch finished: a resumed run starts at epoch 1

    def _epoch_line(self, r: dict) -> str:
        extra = "".join(reg.log_line(r) for reg in self.regularizers)
        return (
            f"{r['phase']:>8} epoch {r['epoch']:>3}  loss {r['loss']:.4f}  train {100 * r['train_acc']:.2f}%  "
            f"val {100 * r['val_acc']:.2f}%  test {100 * r['test_acc']:.2f}%  "
            f"{r['samples_per_s']:.0f} samples/s{extra}"
        )

    def _finish(self, wall_time: float) -> RunResult:
        if isinstance(self.splits, UserSplits):  # inputs of any dtype (token ids): measure on a real one
            summary = model_summary(self.model, example=self.example_batch(1))
        else:
            summary = model_summary(self.model, tuple(self.splits.input_shape))
        final = self.history[-1] if self.history else {}
        metrics = {
            "recipe": self.recipe.name,
            "dataset": self.splits.name,
            "model": self.model_spec.label,
            "seed": self.config.seed,
            "epochs": self.train_spec["epochs"],
            "test_accuracy": final.get("test_acc"),
            "val_accuracy": final.get("val_acc"),
            "best_epoch": self.best.get("epoch"),
            "best_val_accuracy": self.best.get("val_acc"),
            "best_test_accuracy": self.best.get("test_acc"),
            "model_size_kb": summary.memory_kb,
            "float_size_kb": summary.float_memory_kb,
            "compression": summary.compression,
            "bits": summary.per_layer_bits(),
            "wall_time_s": wall_time,
            "train_time_s": sum(r.get("train_time_s", 0.0) for r in self.history),
            "lowbit_version": __version__,
            "torch_version": torch.__version__,
            "recipe_resolved": self.recipe.to_dict(),
        }
        if self.files is not None:
            try:
                self.files.write_metrics(metrics, default=_jsonable)
            except OSError as error:
                raise CheckpointError(
                    f"cannot write {self.files.metrics}: {error.strerror or error}; the trained run is saved in "
                    f"{self.files.checkpoint} (resume with --resume to write the metrics once the cause is fixed)"
                ) from None
        self.log(
            f"test accuracy {100 * (metrics['test_accuracy'] or 0):.2f}% (best-val epoch "
            f"{metrics['best_epoch']}: {100 * (metrics['best_test_accuracy'] or 0):.2f}%)  model size "
            f"{metrics['model_size_kb']:.2f} KB (float32 {metrics['float_size_kb']:.2f} KB, "
            f"{metrics['compression']:.1f}x smaller)  {wall_time:.1f} s"
        )
        return RunResult(metrics=metrics, model=self.model, out=self.out)


def _initialize_quantizers(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of ``x`` in train mode without gradients, for the lazy initialisation of the quantizers not
    initialised yet only: every other buffer (BatchNorm statistics, the running ranges of quantizers initialised
    already, e.g. on a resumed run), every noise stream (a stochastic weight quantizer draws in this forward too) and
    every module's mode are restored."""
    quantizers = quantizers_in(model)
    owned = {id(b) for q in quantizers if not q._is_initialized for b in q.buffers()}
    saved = {id(b): (b, b.clone()) for b in model.buffers() if id(b) not in owned}
    noise = [(q.noise, q.noise.state()) for q in quantizers if q.noise is not None]
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        with torch.no_grad():
            for buffer, value in saved.values():
                buffer.copy_(value)
        for source, state in noise:
            source.load_state(state)
        for module, training in modes.items():
            module.train(training)


def _count(split: Union[TensorSplit, UserSplit]) -> str:
    size = split.size if isinstance(split, UserSplit) else len(split)
    return "?" if size is None else str(size)


def _batches(loader: Iterable) -> Optional[int]:
    """Batches per epoch for the progress bar (``None`` for a loader of unknown length)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.Tensor,)):
        return value.tolist()
    return str(value)


def run(config: TrainConfig, **kwargs: Any) -> RunResult:
    """Train as ``config`` says and return the metrics, the trained model and the output directory."""
    return Trainer(config, **kwargs).fit()
