"""Dataset readers for lowbit: local files only, nothing is downloaded at run time.

``load_dataset(name, data_dir)`` returns :class:`DatasetSplits` (train / val / test
:class:`TensorSplit` s of uint8 ``N×C×H×W`` images and int64 labels, plus per-channel
train statistics); :class:`BatchLoader` turns a split into normalised, optionally
augmented, reproducibly shuffled float32 mini-batches.
"""

from .augment import AUGMENTATIONS
from .errors import DatasetError
from .loader import BatchLoader
from .registry import DATASETS, canonical_name, load_dataset
from .rng import seed_everything
from .splits import DatasetSplits, TensorSplit

__all__ = [
    "AUGMENTATIONS",
    "BatchLoader",
    "DATASETS",
    "DatasetError",
    "DatasetSplits",
    "TensorSplit",
    "canonical_name",
    "load_dataset",
    "seed_everything",
]
