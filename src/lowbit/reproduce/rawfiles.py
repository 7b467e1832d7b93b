"""Where the raw JSON of a mode lives, and how it is read and written.

Layout (``OUT`` = ``--out``, default ``docs/results``)::

    OUT/<mode>/raw/<cell id>/seed<k>.json     the result of one run: config, metrics, per-epoch history, probes
    OUT/<mode>/raw/analysis/<name>.json       the result of an analysis that needs no training

Files are written atomically (a temporary file renamed over the old one), without NaN or infinity (written as
``null``), so an interrupted run never leaves half a file and every JSON reader accepts them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch

from .modes import Mode

__all__ = ["raw_path", "analysis_path", "read_raw", "write_json"]


def raw_path(out: Path, mode: Mode, cell_id: str, seed: int) -> Path:
    return Path(out) / mode.name / "raw" / cell_id / f"seed{seed}.json"


def analysis_path(out: Path, mode: Mode, name: str) -> Path:
    return Path(out) / mode.name / "raw" / "analysis" / f"{name}.json"


def read_raw(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _clean(value: object) -> object:
    """JSON without NaN/inf (written as null), so every JSON reader accepts the raw files."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    return value


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
