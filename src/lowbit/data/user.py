"""The user's own data: any ``torch.utils.data.Dataset`` or ``DataLoader`` yielding ``(input, target)`` pairs.

Inputs may have any shape and dtype (images, sequences, token ids); normalisation and augmentation are the user's
pipeline's, lowbit only batches and moves the tensors. Two kinds of source, two rules for the order of a split:

* a map-style ``Dataset`` (``__getitem__`` and ``__len__``): lowbit batches it (the recipe's batch size, default
  collation, no worker processes). The training order is a permutation drawn from a generator seeded by
  ``(seed, epoch)``, as for the built-in datasets (:class:`SeededBatches`, the same batching rule as
  :class:`~lowbit.data.loader.BatchLoader`: a last batch of one sample is merged into the one before), so a resumed
  run sees the batches the uninterrupted one saw. Evaluation splits are read in order.
* a ``DataLoader`` (or an ``IterableDataset``, wrapped in one): used as it is, with its own batch size, order, workers
  and collation. Before each training epoch ``loader.sampler.set_epoch(epoch)`` is called where the sampler has it
  (``DistributedSampler``). A loader that shuffles with torch's global generator (the default) repeats its order on
  resume, since the trainer restores that generator; one with its own ``generator`` restarts it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..errors import ConfigError
from .rng import STREAM_ORDER, check_seed, torch_generator

__all__ = ["SeededBatches", "UserSplit", "UserSplits", "user_splits"]

UserData = Union[Dataset, DataLoader, None]


class SeededBatches(Sampler[list[int]]):
    """Index batches over ``n`` samples: ``randperm(n)`` from a generator seeded by ``(seed, epoch)`` when shuffling,
    else ``0..n-1``; cut into ``batch_size`` pieces, a last piece of one sample merged into the one before."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.n, self.batch_size, self.shuffle = n, int(batch_size), shuffle
        self.seed, self.epoch = check_seed(seed), check_seed(epoch, "epoch")

    def __len__(self) -> int:
        batches = -(-self.n // self.batch_size)
        return batches - 1 if self.n > 1 and self.n % self.batch_size == 1 else batches

    def __iter__(self) -> Iterator[list[int]]:
        order = (
            torch.randperm(self.n, generator=torch_generator(self.seed, self.epoch, STREAM_ORDER))
            if self.shuffle
            else torch.arange(self.n)
        ).tolist()
        batches = len(self)
        for b in range(batches):
            end = self.n if b == batches - 1 else (b + 1) * self.batch_size
            yield order[b * self.batch_size : end]


class UserSplit:
    """One split of the user's data (``None``: an empty split)."""

    def __init__(self, data: UserData, what: str) -> None:
        self.what = what
        self.loader: Optional[DataLoader] = None
        self.dataset: Optional[Dataset] = None
        if isinstance(data, DataLoader):
            self.loader, self.dataset = data, data.dataset
        elif isinstance(data, IterableDataset):
            self.dataset = data  # batched by a DataLoader with the run's batch size (its own order)
        elif data is None or (hasattr(data, "__getitem__") and isinstance(data, Sized)):
            self.dataset = data
        else:
            raise ConfigError(
                f"{what} must be a torch.utils.data.Dataset or DataLoader yielding (input, target), "
                f"got {type(data).__name__}"
            )

    @property
    def size(self) -> Optional[int]:
        """Samples in the split, where the dataset knows it."""
        if self.dataset is None:
            return 0
        return len(self.dataset) if isinstance(self.dataset, Sized) else None

    def __len__(self) -> int:
        return self.size or 0

    @property
    def name(self) -> str:
        return type(self.dataset).__name__ if self.dataset is not None else "none"

    def batches(self, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> Iterable[Any]:
        """The split's ``(input, target)`` batches for one pass (see the module docstring for the order)."""
        if self.dataset is None:
            return []
        if self.loader is not None:
            if shuffle and hasattr(self.loader.sampler, "set_epoch"):
                self.loader.sampler.set_epoch(epoch)
            return self.loader
        if isinstance(self.dataset, IterableDataset):
            return DataLoader(self.dataset, batch_size=batch_size)
        sampler = SeededBatches(len(self.dataset), batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return DataLoader(self.dataset, batch_sampler=sampler)

    def first_input(self) -> Optional[torch.Tensor]:
        """One sample's input (from the first batch of a DataLoader)."""
        if self.loader is not None or isinstance(self.dataset, IterableDataset):
            batch = next(iter(self.batches(1, shuffle=False, seed=0, epoch=0)), None)
            return _input_of(batch, self.what)[0] if batch is not None else None
        return torch.as_tensor(_input_of(self.dataset[0], self.what)) if len(self.dataset) else None


def _input_of(pair: Any, what: str) -> torch.Tensor:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ConfigError(f"{what} must yield (input, target) pairs, got {type(pair).__name__}")
    return pair[0]


@dataclass
class UserSplits:
    """Train / validation / test splits of the user's data, in the places the trainer reads a
    :class:`~lowbit.data.splits.DatasetSplits`: ``input_shape`` is one sample's input shape (no batch dimension),
    ``input_dtype`` its dtype; ``num_classes`` is 0 (the user's model knows it)."""

    name: str
    train: UserSplit
    val: UserSplit
    test: UserSplit
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    num_classes: int = 0
    user = True  # the trainer records DataSpec(user=True)


def user_splits(train: UserData, val: UserData = None, test: UserData = None) -> UserSplits:
    """Wrap the user's Datasets/DataLoaders; the input shape and dtype come from the first sample of the first split
    given (the training split when training)."""
    splits = [UserSplit(train, "train_data"), UserSplit(val, "val_data"), UserSplit(test, "test_data")]
    given = [s for s in splits if s.dataset is not None]
    if not given:
        raise ConfigError("no data given: pass train_data (and val_data, test_data) as Datasets or DataLoaders")
    sample = given[0].first_input()
    if not isinstance(sample, torch.Tensor):
        raise ConfigError(f"{given[0].what} is empty or its inputs are not tensors ({type(sample).__name__})")
    return UserSplits(given[0].name, *splits, tuple(sample.shape), sample.dtype)
