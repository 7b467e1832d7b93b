"""One rank of the multi-process tests in test_distributed.py, started by torchrun as
``distributed_worker.py MODE ARGS...``:

* ``one RECIPE OUT REPORT``: trains RECIPE (1 pre-training epoch, 1 epoch) into OUT; rank 0 writes every rank's
  state fingerprint to REPORT (a JSON file outside the run directory).
* ``recipes REPORT``: every shipped recipe, in turn, for a few steps (no run directory); REPORT gets each rank's
  fingerprint per recipe.
* ``resume DIR``: for each of RESUMED_RECIPES, 2 epochs uninterrupted (DIR/NAME/full), and 1 epoch (DIR/NAME/cut,
  copied to DIR/NAME/to-one-rank by rank 0) then ``resume`` to 2 epochs; then MATCHED_RECIPES on the MLP without
  BatchNorm (DIR/match-NAME), and lsq-w4a4 on that MLP and the user's own Dataset (DIR/user-data), to compare
  with one process.
* ``resume-one DIR``: resumes DIR (1 epoch, written by one process) to 2 epochs.

The configurations are functions here, so the test builds the same runs on one process.
"""

import gc
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from lowbit.convert import quantizers_of
from lowbit.distributed import teardown
from lowbit.recipes import list_recipes
from lowbit.train import TrainConfig, Trainer
from lowbit.train.rank_noise import SHARED_NOISE_ROLES

#: stochastic recipes resumed on 2 processes: per-rank gradient noise with Range BN, and shared weight noise (SR)
RESUMED_RECIPES = ("banner-w8a8g8", "sr-adam")
#: recipes compared between 2 ranks × B/2 and 1 rank × B on a model without BatchNorm
MATCHED_RECIPES = ("bc-det", "lsq-w4a4")
#: timing fields, the only ones of an epoch record that may differ between ranks
TIMINGS = ("train_time_s", "samples_per_s")


def recipe_config(name: str, **extra: object) -> TrainConfig:
    """A few steps of a shipped recipe on digits: 1 pre-training epoch where the recipe pre-trains, Bin
    Regularization switched on from the first epoch (so its value is logged and compared)."""
    recipe = next(r for r in list_recipes() if r.name == name)
    changes = {}
    if any(reg.get("type") == "bin_reg" for reg in recipe.train.get("regularizers") or []):
        changes["train.regularizers.0.start_epoch"] = 0
    options = dict(epochs=1, train_subset=64, test_subset=32, progress=False, quiet=True, changes=changes)
    options["pretrain_epochs"] = 1 if recipe.train.get("pretrain") else 0
    options.update(extra)
    return TrainConfig(recipe=name, **options)


def resume_config(name: str, out: Path, epochs: int, resume: bool = False) -> TrainConfig:
    return recipe_config(name, epochs=epochs, pretrain_epochs=0, out=str(out), resume=resume)


def no_batchnorm_mlp() -> nn.Module:
    """3 Linear layers for 8x8 digits, without BatchNorm (so a global batch split over ranks computes the same
    gradient as one process, up to the order of summation)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def matched_config(name: str) -> TrainConfig:
    """Batch 16 of 64 training samples (no validation split): every global batch divides evenly over 2 ranks."""
    return TrainConfig(
        recipe=name,
        epochs=1,
        pretrain_epochs=0,
        batch_size=16,
        train_subset=64,
        test_subset=32,
        val_fraction=0.0,
        progress=False,
        quiet=True,
    )


def user_dataset() -> torch.utils.data.TensorDataset:
    """64 seeded 8x8 "images" with 10 classes, as a user's own map-style Dataset."""
    generator = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(
        torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )


def _digest(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_digest).encode()).hexdigest()


def fingerprint(trainer: Trainer, result: Optional[object] = None) -> dict:
    """What must agree across ranks (tensors, shared noise, the logged records, the best epoch) and what may not
    (the per-rank noise generators, reported apart)."""
    model = trainer.model
    per_rank = [q for q in quantizers_of(model) if q.noise is not None and q.role not in SHARED_NOISE_ROLES]
    shared = [q for q in quantizers_of(model) if q.noise is not None and q.role in SHARED_NOISE_ROLES]
    return {
        "state": {k: _digest(v) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
        "shared_noise": [_digest(q.noise.state()) for q in shared],
        "per_rank_noise": [_digest(q.noise.state()) for q in per_rank],
        "flags": [q._is_initialized for q in quantizers_of(model)],
        # what the caller gets back is a one-process model: quantizers count their own batch, BatchNorm is plain
        "one_process_model": all(q.batch_shards == 1 for q in quantizers_of(model))
        and not any(type(m).__name__.startswith("Synchronized") for m in model.modules()),
        "history": [{k: v for k, v in r.items() if k not in TIMINGS} for r in trainer.history],
        "best": trainer.best,
        "wrote": trainer.out is not None,
    }


def gather_to(report: str, mine: object) -> None:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        Path(report).write_text(json.dumps(gathered, default=str))


def fit(config: TrainConfig, **kwargs: object) -> Trainer:
    trainer = Trainer(config, **kwargs)
    trainer.fit()
    return trainer


def main(mode: str, *args: str) -> None:
    if mode == "one":
        recipe, out, report = args
        config = recipe_config(recipe, pretrain_epochs=1, train_subset=200, test_subset=50, out=out)
        trainer = fit(config)
        gather_to(report, fingerprint(trainer))
    elif mode == "recipes":
        (report,) = args
        gather_to(report, {r.name: fingerprint(fit(recipe_config(r.name))) for r in list_recipes()})
    elif mode == "resume":
        root = Path(args[0])
        for name in RESUMED_RECIPES:
            fit(resume_config(name, root / name / "full", 2))
            fit(resume_config(name, root / name / "cut", 1))
            if dist.get_rank() == 0:
                shutil.copytree(root / name / "cut", root / name / "to-one-rank", ignore=shutil.ignore_patterns(".*"))
            fit(resume_config(name, root / name / "cut", 2, resume=True))
        for name in MATCHED_RECIPES:
            trainer = fit(matched_config(name), model=no_batchnorm_mlp())
            if dist.get_rank() == 0:
                trainer.checkpoint(0).save(root / f"match-{name}.safetensors")
        trainer = fit(matched_config("lsq-w4a4"), model=no_batchnorm_mlp(), train_data=user_dataset())
        if dist.get_rank() == 0:
            trainer.checkpoint(0).save(root / "user-data.safetensors")
    elif mode == "resume-one":
        root = Path(args[0])
        fit(resume_config(RESUMED_RECIPES[0], root, 2, resume=True))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    gc.collect()  # the DistributedDataParallel wrappers go before their process group
    teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
