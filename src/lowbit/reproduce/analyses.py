"""The two analyses that need no training: Li & De's convex toy and Uhlich's gradient magnitudes.

Both are computed in seconds and stored as raw JSON beside the training runs (``OUT/<mode>/raw/analysis/``), so the
page and its figures are drawn from files like every other number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .experiments import Mode
from .gradients import gradient_magnitudes
from .runner import read_raw
from .toy import run_toy

__all__ = ["analysis_path", "ensure_analyses", "load_analysis"]

ANALYSES = {"toy": "lide", "gradients": "uhlich"}  # analysis -> the table it belongs to


def analysis_path(out: Path, mode: Mode, name: str) -> Path:
    return Path(out) / mode.name / "raw" / "analysis" / f"{name}.json"


def _settings(mode: Mode, name: str) -> dict:
    if name == "toy":
        return {"steps": mode.toy_steps, "seed": 0}
    return {"bits": list(range(2, 9)), "n": 200_000 if mode.name != "smoke" else 20_000, "q_max": 3.0, "seed": 0}


def ensure_analyses(out: Path, mode: Mode, table_keys: list, fresh: bool = False, log=print) -> dict:
    """Compute (or reuse) the analyses of the tables in ``table_keys``; returns ``name -> result``."""
    results = {}
    for name, table in ANALYSES.items():
        if table not in table_keys:
            continue
        path = analysis_path(out, mode, name)
        settings = _settings(mode, name)
        cached = None if fresh else read_raw(path)
        if cached and cached.get("request") == settings:
            results[name] = cached
            continue
        if name == "toy":
            result = run_toy(steps=settings["steps"], seed=settings["seed"])
        else:
            result = gradient_magnitudes(bits=settings["bits"], n=settings["n"], q_max=settings["q_max"],
                                         seed=settings["seed"])
        result["request"] = settings
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)
        log(f"analysis {name}: wrote {path}")
        results[name] = result
    return results


def load_analysis(out: Path, mode: Mode, name: str) -> Optional[dict]:
    return read_raw(analysis_path(out, mode, name))
