"""Split containers and the shared train/val/test splitting pipeline.

Every reader hands its official training and test arrays to :func:`make_splits`, so
all datasets follow the same rules:

* ``train_subset=N`` first keeps the first ``N`` entries of a permutation of the
  official training set seeded by ``seed`` (all of it when ``N`` exceeds its size);
  the validation split is then carved from that pool, so ``len(train) + len(val) ==
  min(N, official train size)``.
* The validation split is ``round(val_fraction * pool size)`` samples, stratified by
  label (per-class quotas by the largest-remainder method), drawn with ``seed``.
* The test split is the official test set, or the first ``test_subset`` entries of a
  permutation of it seeded by ``seed``.
* Selected samples keep their original relative order (indices are sorted); the
  :class:`~lowbit.data.loader.BatchLoader` does the shuffling.
* ``mean``/``std`` are per-channel statistics of the final TRAIN split only, in the
  units stored in ``x`` (uint8 pixel values 0..255), population std (ddof = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from .rng import STREAM_TEST_SUBSET, STREAM_TRAIN_SUBSET, STREAM_VAL, check_seed, numpy_rng


@dataclass
class TensorSplit:
    """One split of a dataset held in memory.

    Attributes:
        x: images, ``N×C×H×W``; uint8 pixel values for every built-in dataset.
        y: int64 class labels, shape ``N``.
        index: int64 positions of the samples in the official split they came from
            (training set for ``train``/``val``, test set for ``test``; for ``digits``,
            positions among the 1,797 embedded images), or ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ConfigError(f"TensorSplit.x must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.dtype != torch.int64:
            raise ConfigError(f"TensorSplit.y must be a 1-D int64 tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(f"TensorSplit has {self.x.shape[0]} images but {self.y.shape[0]} labels")
        if self.index is not None and tuple(self.index.shape) != (self.y.shape[0],):
            raise ConfigError("TensorSplit.index must have one entry per sample")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"TensorSplit(n={len(self)}, x={self.x.dtype}{list(self.x.shape)}, y={self.y.dtype})"


@dataclass
class DatasetSplits:
    """Train/validation/test splits of one dataset plus what a trainer needs to use them.

    ``mean``/``std`` have one entry per channel, in the units of ``train.x`` (pixel
    values 0..255), computed on the train split only; pass them to ``BatchLoader`` as
    ``normalize=(splits.mean, splits.std)``. ``augment`` is the augmentation the papers
    use for the training split of this dataset (``"none"``, ``"crop-flip"`` or ``"crop"``).
    """

    name: str
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    classes: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, num_classes={self.num_classes}, input_shape={self.input_shape}, "
            f"augment={self.augment!r})"
        )


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(y)-1`` into (kept, held-out), stratified by label.

    The held-out part has ``h = round(fraction * n)`` samples (at most ``n - 1`` so
    that something is kept). Class ``c`` with ``n_c`` samples first gets
    ``floor(h * n_c / n)`` held-out slots; the leftover slots go to the classes with
    the largest fractional parts (ties broken at random), so every class's share
    matches the overall proportion to within one sample. Which members of a class are
    held out is a random choice. Both arrays are sorted int64.
    """
    y = np.asarray(y)
    n = int(y.shape[0])
    all_idx = np.arange(n, dtype=np.int64)
    n_held = _round_half_up(fraction * n)
    n_held = max(0, min(n_held, n - 1))
    if n_held == 0:
        return all_idx, np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    ideal = counts * (n_held / n)
    quota = np.floor(ideal).astype(np.int64)
    leftover = n_held - int(quota.sum())
    if leftover > 0:
        tie_break = rng.random(len(classes))
        order = np.lexsort((tie_break, -(ideal - quota)))
        quota[order[:leftover]] += 1
    held = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        if quota[c]:
            held.append(rng.permutation(members)[: quota[c]])
    held_idx = np.sort(np.concatenate(held)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return all_idx[mask], held_idx


def seeded_subset(n: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of the first ``min(k, n)`` entries of a random permutation of ``n``
    (all positions when ``k`` is None)."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.permutation(n)[:k]).astype(np.int64)


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``x`` (``N×C×H×W``), in ``x``'s units.

    For uint8 images the statistics come from a 256-bin histogram per channel, which is
    exact and needs no float copy of the data: ``mean = Σ_v v·h(v) / n`` and
    ``var = Σ_v (v - mean)²·h(v) / n``. Other dtypes accumulate sums and sums of squares
    in float64 over chunks of samples. A channel with zero variance gets std 1.0 so
    that normalising never divides by zero.
    """
    if x.shape[0] == 0:
        raise ConfigError("cannot compute normalisation statistics of an empty split")
    channels = x.shape[1]
    if x.dtype == torch.uint8:
        hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)])
        hist = hist.to(torch.float64)
        values = torch.arange(256, dtype=torch.float64)
        count = hist.sum(dim=1)
        mean = (hist * values).sum(dim=1) / count
        var = (hist * (values - mean[:, None]).square()).sum(dim=1) / count
    else:
        total = torch.zeros(channels, dtype=torch.float64)
        total_sq = torch.zeros(channels, dtype=torch.float64)
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].to(torch.float64)
            total += part.sum(dim=(0, 2, 3))
            total_sq += part.square().sum(dim=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def check_split_args(val_fraction: float, seed: int, train_subset: int | None, test_subset: int | None) -> None:
    """Validate the splitting arguments of ``load_dataset`` (``ValueError`` naming the argument)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    check_seed(seed)
    for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{name} must be a positive int or None, got {value!r}")


def _to_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> TensorSplit:
    # Fancy indexing copies, so the full official arrays can be freed afterwards.
    xs = torch.from_numpy(np.ascontiguousarray(x[idx]))
    ys = torch.from_numpy(np.asarray(y[idx], dtype=np.int64))
    return TensorSplit(xs, ys, torch.from_numpy(idx.astype(np.int64)))


def make_splits(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
    augment: str = "none",
    classes: tuple[str, ...] | None = None,
    source: str = "",
) -> DatasetSplits:
    """Build :class:`DatasetSplits` from official arrays (``N×C×H×W`` images, ``N`` labels).

    See the module docstring for the rules; every random choice is drawn from its own
    stream derived from ``seed``, so e.g. changing ``test_subset`` never changes the
    validation split.
    """
    check_split_args(val_fraction, seed, train_subset, test_subset)
    pool = seeded_subset(len(train_y), train_subset, numpy_rng(seed, STREAM_TRAIN_SUBSET))
    kept, held = stratified_holdout(np.asarray(train_y)[pool], val_fraction, numpy_rng(seed, STREAM_VAL))
    train = _to_split(train_x, train_y, pool[kept])
    val = _to_split(train_x, train_y, pool[held])
    test = _to_split(test_x, test_y, seeded_subset(len(test_y), test_subset, numpy_rng(seed, STREAM_TEST_SUBSET)))
    mean, std = channel_stats(train.x)
    c, h, w = train.x.shape[1:]
    return DatasetSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        mean=mean,
        std=std,
        augment=augment,
        classes=classes,
        source=source,
    )
