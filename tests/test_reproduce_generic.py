"""The reproduction suite is generic over its papers: a sixth paper is one module, registered, and the runner, the
analyses and the page take it as they take the five real ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lowbit.cli import main as lowbit_main
from lowbit.reproduce import figures as F
from lowbit.reproduce import papers as registry
from lowbit.reproduce.cells import Budget, Cell, Table
from lowbit.reproduce.claims import Check, lower
from lowbit.reproduce.experiments import build_tables, mode_named
from lowbit.reproduce.markdown import render_table
from lowbit.reproduce.modes import Mode
from lowbit.reproduce.paper import Analysis, Paper
from lowbit.reproduce.rawfiles import analysis_path, raw_path
from lowbit.reproduce.report import NUMBER_WORDS
from lowbit.reproduce.results import by_role
from lowbit.reproduce.runner import plan_jobs


# ------------------------------------------------------------------- a sixth paper, as its module would read
def _fake_cells(mode: Mode, budget: Budget) -> list:
    base = dict(
        model="mlp",
        model_options={"hidden": 32, "depth": 1},
        data=mode.data,
        epochs=budget.epochs,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
    )
    return [
        Cell(id="fake/float", label="float", recipe="fp32", role="float", kind="float", **base),
        Cell(id="fake/binary", label="binary weights", recipe="bc-det", role="binary", probes=("parameters",), **base),
    ]


def _count_parameters(model, splits) -> dict:
    return {"count": sum(p.numel() for p in model.parameters())}


def _fake_checks(stats: dict, analyses: dict) -> list:
    r = by_role(stats)
    doubled = (analyses.get("doubling") or {}).get("double")
    return [
        lower("float beats binary weights", r.get("float"), r.get("binary"), "float", "binary"),
        Check(
            "the analysis doubles", "double = 2 × value", f"double {doubled}", None if doubled is None else doubled == 4
        ),
    ]


def _fake_markdown(table: Table, stats: dict) -> str:
    return render_table(
        ["method", "test error %", "parameters"],
        [
            [s.cell.label, s.format(), ", ".join(str(v) for v in s.probe_values("parameters", "count")) or "–"]
            for s in stats.values()
        ],
    )


def _fake_figures(table: Table, stats: dict, analyses: dict, fig_dir: Path) -> list:
    path = F.curves_figure([("fake", [(s.cell.label, s) for s in stats.values()])], fig_dir / "fake_curves.png")
    return [("Fake curves.", path)] if path else []


FAKE = Paper(
    key="fake",
    title="A sixth paper",
    authors="Nobody et al., 2031",
    claim="Binary weights cost accuracy on a tiny MLP.",
    setup="One hidden layer of 32 units.",
    select="final",
    budgets={"full": Budget(epochs=1), "quick": Budget(epochs=1)},
    cells=_fake_cells,
    checks=_fake_checks,
    markdown=_fake_markdown,
    figures=_fake_figures,
    probes={"parameters": _count_parameters},
    analyses=(
        Analysis(
            "doubling", request=lambda mode: {"value": 2}, compute=lambda request: {"double": 2 * request["value"]}
        ),
    ),
)


@pytest.fixture
def sixth_paper(monkeypatch):
    monkeypatch.setattr(registry, "PAPERS", (*registry.PAPERS, FAKE))
    return FAKE


def test_a_sixth_paper_runs_through_plan_run_and_report_without_touching_the_runner(sixth_paper, tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    threads = torch.get_num_threads()
    try:
        assert lowbit_main(["reproduce", "--smoke", "--only", "fake", "--out", str(out), "--work", str(work)]) == 0
    finally:
        torch.set_num_threads(threads)
    mode = mode_named("smoke")
    binary = json.loads(raw_path(out, mode, "fake/binary", 0).read_text())
    assert binary["probes"]["parameters"]["count"] > 0  # the paper's own probe ran on the trained model
    assert "kind" not in binary["cell"]  # a planning hint, not part of the result
    assert json.loads(analysis_path(out, mode, "doubling").read_text())["double"] == 4
    page = (out / "smoke" / "README.md").read_text()
    count = NUMBER_WORDS[len(registry.PAPERS)]  # the real papers and this one
    assert f"# Reproducing the {count} papers" in page
    assert "## 1. A sixth paper" in page and "*Nobody et al., 2031*" in page
    assert "**Claim.** Binary weights cost accuracy on a tiny MLP." in page
    assert "| binary weights |" in page and "![fake_curves](figures/fake_curves.png)" in page
    assert "| the analysis doubles | double = 2 × value | double 4 | pass |" in page
    summary = json.loads((out / "smoke" / "summary.json").read_text())
    assert list(summary["tables"]) == ["fake"]  # only papers with results are on the page
    assert [c["claim"] for c in summary["tables"]["fake"]["checks"]] == [
        "float beats binary weights",
        "the analysis doubles",
    ]


def test_only_accepts_a_registered_paper_and_the_plan_keeps_page_order(sixth_paper):
    tables = build_tables(mode_named("smoke"))
    assert [t.key for t in tables] == [p.key for p in registry.PAPERS] and tables[-1].key == "fake"
    assert [t.key for t in build_tables(mode_named("smoke"), ["fake", "bc"])] == ["bc", "fake"]


def test_a_probe_the_paper_does_not_define_is_refused_before_training():
    def cells(mode, budget):
        return [Cell(id="typo/a", label="a", recipe="fp32", role="a", model="mlp", probes=("weigths",))]

    typo = Paper(
        key="typo",
        title="t",
        authors="a",
        claim="c",
        setup="s",
        select="final",
        budgets={},
        cells=cells,
        checks=lambda stats, analyses: [],
        markdown=lambda table, stats: "",
    )
    mode = mode_named("smoke")
    with pytest.raises(ValueError, match="unknown probe 'weigths'"):
        plan_jobs(build_tables(mode, papers=[typo]), mode)


def test_every_cell_id_lives_under_its_papers_key_or_is_shared():
    for mode in ("full", "quick", "smoke"):
        for table in build_tables(mode_named(mode)):
            for cell in table.cells:
                assert cell.id.split("/")[0] in (table.key, "shared"), cell.id


def test_every_probe_named_by_a_cell_is_defined_by_its_paper():
    for paper in registry.registered():
        for mode in ("full", "quick"):
            for cell in paper.table(mode_named(mode)).cells:
                assert set(cell.probes) <= set(paper.probes), (paper.key, cell.id)


GENERIC_MODULES = (
    "runner.py",
    "report.py",
    "experiments.py",
    "analyses.py",
    "results.py",
    "markdown.py",
    "claims.py",
    "cells.py",
    "modes.py",
    "paper.py",
    "rawfiles.py",
    "probes.py",
)


# a branch on which paper, recipe or analysis this is: what the shared modules must not contain
PAPER_BRANCH = re.compile(
    r"\.key\s*[!=]=|\bkey\s+in\s*\(|recipe\s*[!=]=|recipe\.startswith|"
    r"\bname\s*[!=]=\s*[\"'](toy|gradients|sign_eval|weights|memory)"
)


@pytest.mark.parametrize("name", GENERIC_MODULES)
def test_generic_modules_do_not_branch_on_papers(name):
    """What a paper is lives in its module: the shared code neither asks which paper, recipe or analysis it has."""
    source = (Path(registry.__file__).parent.parent / name).read_text()
    assert not PAPER_BRANCH.search(source), PAPER_BRANCH.search(source).group(0)


def test_a_cell_with_fewer_seeds_runs_only_those_and_is_not_reported_as_partial():
    mode = mode_named("full", None)
    jobs = plan_jobs(build_tables(mode, only=["bc"]), mode)
    seeds = {}
    for job in jobs:
        seeds.setdefault(job.cell.id, []).append(job.seed)
    assert seeds["bc/mlp/bc-stoch-long"] == [0] and seeds["bc/mlp/float-long"] == [0]
    assert seeds["bc/mlp/bc-stoch"] == list(range(mode.seeds))
    long_cell = next(job.cell for job in jobs if job.cell.id == "bc/mlp/bc-stoch-long")
    assert long_cell.epochs > next(job.cell for job in jobs if job.cell.id == "bc/mlp/bc-stoch").epochs
    assert long_cell.seed_count(mode.seeds) == 1 and long_cell.seed_count(0) == 0
    quick = mode_named("quick", None)
    assert not any(job.cell.id.endswith("-long") for job in plan_jobs(build_tables(quick, only=["bc"]), quick))
