"""The one exception type raised for missing or corrupt datasets."""

from __future__ import annotations

from ..errors import LowbitError


class DatasetError(LowbitError, FileNotFoundError, ValueError):
    """A dataset is missing, incomplete or corrupt, or a dataset name is unknown.

    It derives from both :class:`FileNotFoundError` and :class:`ValueError` so that
    callers catching either (a missing file, a bad value) also catch it; catch
    ``DatasetError`` itself to handle every dataset problem in one place.

    The message always says which file(s) were expected in which directory and how to
    obtain them; nothing is ever downloaded at run time.
    """

    def __init__(self, message: str) -> None:
        # A single argument keeps OSError from formatting "[Errno ...]" prefixes.
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def corrupt(path: object, why: str, hint: str = "") -> DatasetError:
    """A ``DatasetError`` for a file that exists but cannot be used (``raise corrupt(...)``)."""
    message = f"corrupt dataset file {path}: {why}"
    if hint:
        message += f". {hint}"
    return DatasetError(message)


def check_labels(y: object, num_classes: int, path: object, hint: str = "") -> None:
    """Raise a ``corrupt`` error unless every label is an integer in ``[0, num_classes)``."""
    import numpy as np

    y = np.asarray(y)
    if y.ndim != 1:
        raise corrupt(path, f"labels must be a 1-D array, got shape {y.shape}", hint)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise corrupt(path, f"labels must be integers in [0, {num_classes}), found range {y.min()}..{y.max()}", hint)
