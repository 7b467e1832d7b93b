"""A minimal, fast, reproducible mini-batch iterator over an in-memory :class:`TensorSplit`."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence

import torch

from ..errors import ConfigError
from .augment import augment_batch, check_augment
from .rng import STREAM_AUGMENT, STREAM_ORDER, check_seed, torch_generator
from .splits import TensorSplit


def _channel_tensor(values: float | Sequence[float], channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ConfigError(f"normalize {what} has {t.numel()} values but the images have {channels} channels")
    return t.reshape(1, channels, 1, 1).clone()


class BatchLoader:
    """Iterate over ``(x, y)`` mini-batches of a split: ``x`` float32 ``B×C×H×W``, ``y`` int64 ``B``.

    Args:
        split: the data (images kept in memory, typically uint8).
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``, and a last batch of
            a single sample is merged into the one before (see ``merge_single_last``).
        shuffle: visit samples in a random order (a fresh permutation each epoch).
        seed: non-negative base seed.
        epoch: initial epoch (see :meth:`set_epoch`).
        normalize: ``(mean, std)``, per channel or scalar, in the units of ``split.x``;
            batches become ``(x - mean) / std``. ``None`` returns ``x`` as float32 unchanged.
        augment: one of ``"none"``, ``"crop-flip"``, ``"crop"`` (see :mod:`lowbit.data.augment`),
            applied to the raw pixels before normalising; meant for the training split only.
        drop_last: drop a final batch smaller than ``batch_size``.
        merge_single_last: when the samples leave a final batch of exactly one (``len(split) % batch_size == 1``),
            append it to the batch before, which then has ``batch_size + 1`` samples. BatchNorm in training mode
            cannot normalise a batch of one sample (its batch variance is undefined: PyTorch raises "Expected more
            than 1 value per channel"), so without this a run would crash at the end of its first epoch; every
            sample is still visited once per epoch. A split of one sample still gives one batch of one. On by
            default, for training and evaluation loaders alike (in evaluation the merge changes nothing but the
            number of batches).

    Reproducibility: the visiting order is a permutation drawn from a generator seeded
    by ``(seed, epoch)``; the augmentation of batch ``b`` is drawn from its own
    generator seeded by ``(seed, epoch, b)``. Both are pure functions of those numbers,
    independent of each other and of any global RNG state, so a run resumed at epoch
    ``e`` (after ``set_epoch(e)``) sees exactly the batches the original run saw.

    Batches are cut from the contiguous in-memory tensor with one ``index_select``
    per batch; there are no worker processes and no per-sample Python code.
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] | None = None,
        augment: str = "none",
        drop_last: bool = False,
        merge_single_last: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        batch_size = int(batch_size)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        self.epoch = check_seed(epoch, "epoch")
        self.augment = check_augment(augment)
        self.drop_last = bool(drop_last)
        self.merge_single_last = bool(merge_single_last)
        channels = split.x.shape[1]
        if normalize is None:
            self._mean = self._std = None
        else:
            try:
                mean, std = normalize
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"normalize must be a (mean, std) pair or None, got {normalize!r}") from exc
            self._mean = _channel_tensor(mean, channels, "mean")
            self._std = _channel_tensor(std, channels, "std")
            if not bool((self._std > 0).all()):
                raise ConfigError(f"normalize std must be positive, got {self._std.flatten().tolist()}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration reproduces."""
        self.epoch = check_seed(epoch, "epoch")

    @property
    def num_samples(self) -> int:
        """Samples visited per epoch (fewer than ``len(split)`` when ``drop_last`` drops some)."""
        n = len(self.split)
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = len(self.split)
        if self.drop_last:
            return n // self.batch_size
        batches = -(-n // self.batch_size)
        if self._merges_last():
            batches -= 1
        return batches

    def _merges_last(self) -> bool:
        """Whether the last batch would hold one sample and is merged into the one before."""
        n = len(self.split)
        return self.merge_single_last and not self.drop_last and n > 1 and n % self.batch_size == 1

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of ``epoch`` (default: the current one) as int64 positions."""
        epoch = self.epoch if epoch is None else check_seed(epoch, "epoch")
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch_generator(self.seed, epoch, STREAM_ORDER))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The epoch is read once here, so set_epoch() during an iteration affects only the next one.
        epoch = self.epoch
        order = self.order(epoch)
        x_all, y_all = self.split.x, self.split.y
        batches = len(self)
        for b in range(batches):
            # the last batch takes every remaining sample: a short batch, or batch_size + 1 after a merge
            end = len(order) if b == batches - 1 and not self.drop_last else (b + 1) * self.batch_size
            idx = order[b * self.batch_size : end]
            x = x_all.index_select(0, idx)
            y = y_all.index_select(0, idx)
            if self.augment != "none":
                x = augment_batch(x, self.augment, torch_generator(self.seed, epoch, STREAM_AUGMENT, b))
            x = x.to(torch.float32)
            if self._mean is not None:
                x = x.sub_(self._mean).div_(self._std)
            yield x, y

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={len(self.split)}, batch_size={self.batch_size}, batches={len(self)}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}, augment={self.augment!r})"
        )


__all__ = ["BatchLoader"]
