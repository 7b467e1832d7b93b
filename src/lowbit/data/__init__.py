"""Dataset readers for lowbit: local files only, nothing is downloaded at run time.

``load_dataset(name, data_dir)`` returns :class:`DatasetSplits` (train / val / test
:class:`TensorSplit` s of uint8 ``N×C×H×W`` images and int64 labels, plus per-channel
train statistics); :class:`BatchLoader` turns a split into normalised, optionally
augmented, reproducibly shuffled float32 mini-batches. :func:`user_splits` wraps the user's own Datasets or
DataLoaders (any input shape) for the trainer.
"""

from .augment import AUGMENTATIONS
from .errors import DatasetError
from .loader import BatchLoader
from .registry import DATASETS, canonical_name, load_dataset
from .rng import seed_everything
from .splits import DatasetSplits, TensorSplit
from .user import SeededBatches, UserSplit, UserSplits, user_splits

__all__ = [
    "AUGMENTATIONS",
    "BatchLoader",
    "DATASETS",
    "DatasetError",
    "DatasetSplits",
    "SeededBatches",
    "TensorSplit",
    "UserSplit",
    "UserSplits",
    "canonical_name",
    "load_dataset",
    "seed_everything",
    "user_splits",
]
