"""Checkpoints: written atomically, holding everything a resumed run needs to continue bit for bit.

A checkpoint is a ``torch.save`` dictionary with a format tag and version, the model state (quantizer parameters,
running ranges and the noise generators of stochastic quantizers included), optimizer and scheduler state, the RNG
states, the per-epoch history and the resolved recipe. It is written to ``NAME.tmp`` and renamed over ``NAME``, so a
run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "capture_rng", "restore_rng", "FORMAT",
           "VERSION"]

FORMAT = "lowbit-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, from another format or version)."""


def capture_rng() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(path: Union[str, os.PathLike], payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        candidates = [path / "best.pt", path / "last.pt"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise CheckpointError(f"no checkpoint in {str(path)!r}: expected best.pt or last.pt written by "
                                  f"'lowbit train --out {path}'")
        path = found
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {error}); "
                              f"it may be truncated or not a lowbit checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a lowbit checkpoint (no '{FORMAT}' format tag)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {data.get('version')}, this lowbit "
                              f"reads version {VERSION}; re-train, or use the lowbit release that wrote it "
                              f"({data.get('lowbit_version', 'unknown')})")
    data["path"] = str(path)
    return data
