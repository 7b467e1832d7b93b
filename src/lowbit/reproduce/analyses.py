"""The papers' analyses that need no training (e.g. Li & De's convex toy, Uhlich's gradient magnitudes).

Each is computed in seconds and stored as raw JSON beside the training runs (``OUT/<mode>/raw/analysis/``), so the
page and its figures are drawn from files like every other number. A stored result is reused while its ``request``
(the analysis's settings for the mode) is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from . import papers as registry
from .modes import Mode
from .paper import Paper
from .rawfiles import analysis_path, read_raw

__all__ = ["analysis_path", "ensure_analyses", "load_analysis", "load_analyses"]


def ensure_analyses(
    out: Path,
    mode: Mode,
    table_keys: list,
    fresh: bool = False,
    log: Callable[[str], None] = print,
    papers: Optional[Sequence[Paper]] = None,
) -> dict:
    """Compute (or reuse) the analyses of the papers in ``table_keys`` (among ``papers``, default: the registry);
    returns ``name -> result``."""
    results = {}
    for paper in papers if papers is not None else registry.registered():
        if paper.key not in table_keys:
            continue
        for analysis in paper.analyses:
            path = analysis_path(out, mode, analysis.name)
            request = analysis.request(mode)
            cached = None if fresh else read_raw(path)
            if cached and cached.get("request") == request:
                results[analysis.name] = cached
                continue
            result = analysis.compute(request)
            result["request"] = request
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, path)
            log(f"analysis {analysis.name}: wrote {path}")
            results[analysis.name] = result
    return results


def load_analysis(out: Path, mode: Mode, name: str) -> Optional[dict]:
    return read_raw(analysis_path(out, mode, name))


def load_analyses(out: Path, mode: Mode, tables: list) -> dict:
    """``name -> stored result`` (``None`` where not computed) of every analysis of the papers of ``tables``."""
    return {
        analysis.name: load_analysis(out, mode, analysis.name) for table in tables for analysis in table.paper.analyses
    }
