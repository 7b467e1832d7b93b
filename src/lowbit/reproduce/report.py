"""The results page of a mode (``OUT/<mode>/README.md``), its figures and tables, and the index ``OUT/README.md``.

Everything on the page is generated from the raw JSON under ``OUT/<mode>/raw/``; the only hand-written parts are
the notes in ``OUT/notes/<table>.md`` (for every mode) and ``OUT/notes/<mode>/<table>.md`` (observations on that
mode's numbers), which are included verbatim under each paper's section. Re-running the generator
(``lowbit reproduce --report-only``) therefore reproduces the page exactly from the files.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from . import claims as C
from . import figures as F
from .analyses import load_analysis
from .experiments import Mode, Table, describe_budget
from .results import CellStats, collect
from .runner import format_duration

__all__ = ["write_report", "write_index", "PAPER_CLAIMS", "render_table"]

PAPER_CLAIMS = {
    "bc": "Binarizing the weights during the forward and backward propagations, while float weights accumulate the "
          "updates, costs little accuracy and acts as a regularizer: BC-det comes within about 1–2 points of the "
          "float net, and BC-stoch, tested with its real-valued weights, matches or beats it (paper, permutation-"
          "invariant MNIST: 1.29 % and 1.18 % against 1.30 % error). Clipping the latent weights to [-1, 1] is "
          "needed, and testing BC-stoch with sign(W) instead of W costs accuracy.",
    "lide": "Training methods that keep a float copy of the quantized weights (BC) have a greedy, annealing phase "
            "that purely quantized training lacks: with weights stored on the grid, deterministic rounding (R) "
            "freezes once the steps are smaller than half a grid step, and stochastic rounding (SR) stalls at an "
            "O(Δ) floor that does not shrink when the learning rate does. Expected ordering of test error: "
            "ADAM < BC-ADAM ≪ Big SR-ADAM < SR-ADAM ≲ R-ADAM; a bigger batch helps SR but does not close the gap.",
    "lsq": "LSQ — learning each quantizer's step size with the gradient scale g = 1/sqrt(N·Q_P), fine-tuning from "
           "a float model — keeps 8- and 4-bit weights and activations at float accuracy, 3 bits slightly lower "
           "and 2 bits with a clear but modest drop (ResNet-18: 70.5 % → 67.6 % top-1 at 2 bits). Bin "
           "Regularization pulls every bin's weights onto its quantization level (spiky histograms, smaller "
           "float-vs-quantized mismatch) and improves accuracy modestly, most at 2 bits (+3.9 points for 2-bit "
           "MobileNetV2).",
    "banner": "With 8-bit weights, activations and layer gradients (stochastic rounding), a high-precision path "
              "for the weight gradients (“gradient bifurcation”) and Range BatchNorm, training matches full "
              "precision (ResNet-18/50 on ImageNet). Deterministic rounding of the gradients, or 8-bit weight "
              "gradients, degrade it; Range BN works as well as BN.",
    "uhlich": "Parametrizing a uniform quantizer by its step d and range q_max (U3; P3 = (q_min, q_max) for "
              "power-of-two grids) gives bounded, nearly decoupled gradients, so per-layer bit widths can be "
              "learned under a memory budget: the learned heterogeneous network meets the budget with a lower "
              "error than a fixed homogeneous one, while parametrizations through the bit width (U1 = (b, d), "
              "U2 = (b, q_max)) train worse.",
}

SELECT_TEXT = {"best_val": "test error at the epoch with the best validation error",
               "final": "test error after the last epoch",
               "best_budget": "test error at the best-validation epoch among those meeting the memory budget"}


# -------------------------------------------------------------------------------------------------- tables
def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_table(header: list, rows: list) -> str:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _probe_error(s: Optional[CellStats], key: str) -> str:
    if s is None:
        return "–"
    values = [100 * (1 - v) for v in s.probe_values("sign_eval", key)]
    if not values:
        return "–"
    text = f"{statistics.fmean(values):.2f}"
    return text + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _mean_probe(s: Optional[CellStats], probe: str, key: str, scale: float = 1.0, digits: int = 1) -> str:
    if s is None:
        return "–"
    values = [scale * v for v in s.probe_values(probe, key)]
    if not values:
        return "–"
    text = f"{statistics.fmean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def bc_markdown(table: Table, stats: dict) -> str:
    cols = [c for c in table.columns if any(s.cell.column == c for s in stats.values())]
    by = {(s.cell.column, s.cell.role): s for s in stats.values()}
    rows = []
    for role, label in (("float", "float (same loop)"), ("bc-det", "BC-det (test with sign(W))"),
                        ("bc-stoch", "BC-stoch (test with real W, the paper's protocol)")):
        rows.append([label] + [by[(c, role)].format() if (c, role) in by else "–" for c in cols])
    rows.append(["ablation: BC-stoch tested with sign(W)"] +
                [_probe_error(by.get((c, "bc-stoch")), "test_acc_sign_w") for c in cols])
    rows.append(["diagnostic: BC-stoch, real W after re-estimating BN statistics"] +
                [_probe_error(by.get((c, "bc-stoch")), "test_acc_real_w_bn_refit") for c in cols])
    for role, label in (("bc-det-noclip", "ablation: BC-det without clipping"),
                        ("bc-stoch-noclip", "ablation: BC-stoch without clipping (real W)")):
        rows.append([label] + [by[(c, role)].format() if (c, role) in by else "–" for c in cols])
    return render_table(["method (test error %)"] + cols, rows)


def _final_loss(s: CellStats) -> str:
    losses = [rec["history"][-1].get("loss") for rec in s.records if rec.get("history")]
    losses = [v for v in losses if v is not None]
    return f"{statistics.fmean(losses):.3f}" if losses else "–"


def _other_error(s: CellStats, select: str) -> str:
    values = s.final_errors if select == "final" else []
    if select != "final":
        for rec in s.records:
            acc = (rec.get("result") or {}).get("best_test_acc")
            if acc is not None:
                values.append(100 * (1 - acc))
    if not values:
        return "–"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def lide_markdown(table: Table, stats: dict) -> str:
    """Rows in the paper's expected order (best first); 'rank' is the order our mean errors give."""
    means = sorted((s.mean, s.cell.id) for s in stats.values() if s.mean is not None)
    rank = {cell_id: i for i, (_, cell_id) in enumerate(means, 1)}
    rows = [[s.cell.label, s.format(), rank.get(s.cell.id, "–"), _other_error(s, "best_val"), _final_loss(s)]
            for s in stats.values()]
    return render_table(["method (paper's expected order)", "test error % (final)", "rank (ours)",
                         "test error % at best-val epoch", "final train loss"], rows)


def lsq_markdown(table: Table, stats: dict) -> str:
    rows = []
    for s in stats.values():
        rows.append([s.cell.label, s.format(), _mean_probe(s, "weights", "near_level", 100.0),
                     _mean_probe(s, "weights", "mean_distance", 1.0, 3)])
    return render_table(["method", "test error %", "weights within 0.05·s of a level (%)", "mean |w − Q(w)|/s"],
                        rows)


def banner_markdown(table: Table, stats: dict) -> str:
    rows = [[s.cell.label, s.format(), _other_error(s, "best_val"), _final_loss(s)] for s in stats.values()]
    return render_table(["method", "test error % (final)", "test error % at best-val epoch", "final train loss"],
                        rows)


def _bits_text(s: CellStats, slot: str = "weight") -> str:
    allocations = []
    for rec in s.records:
        memory = rec.get("probes", {}).get("memory")
        if memory:
            allocations.append("/".join(str(v[slot]) if v[slot] is not None else "f" for v in memory["bits"].values()))
    if not allocations:
        return "–"
    unique = sorted(set(allocations), key=allocations.index)
    return "; ".join(unique)


def uhlich_markdown(table: Table, stats: dict) -> str:
    rows = []
    for s in stats.values():
        memory = [rec["probes"]["memory"] for rec in s.records if rec.get("probes", {}).get("memory")]
        kb = f"{statistics.fmean(m['weight_kb'] for m in memory):.2f}" if memory else "–"
        met = f"{sum(m['weight_kb'] <= m['budget_kb'] + 1e-9 for m in memory)}/{len(memory)}" if memory else "–"
        if s.cell.role == "float":
            kb = "float (32-bit)"
        error = s.format()
        if not s.errors and s.unmet and s.final_errors:
            error += f" (final epoch: {statistics.fmean(s.final_errors):.2f})"
        rows.append([s.cell.label, error, kb, met, _bits_text(s), _bits_text(s, "input") if memory else "–"])
    budget = next((rec["probes"]["memory"]["budget_kb"] for s in stats.values() for rec in s.records
                   if rec.get("probes", {}).get("memory")), None)
    head = f"weight KB (budget {budget:.2f})" if budget else "weight KB"
    return render_table(["method", "test error %", head, "≤ budget (seeds)", "weight bits per layer",
                         "activation bits per layer"], rows)


RENDER = {"bc": bc_markdown, "lide": lide_markdown, "lsq": lsq_markdown, "banner": banner_markdown,
          "uhlich": uhlich_markdown}


# ------------------------------------------------------------------------------------------------- figures
def _figures(table: Table, stats: dict, analyses: dict, fig_dir: Path) -> list:
    """(caption, path) of every figure of ``table``."""
    out = []
    r = {s.cell.role: s for s in stats.values()}
    if table.key == "bc":
        panels = []
        for column in table.columns:
            by = {s.cell.role: s for s in stats.values() if s.cell.column == column}
            panels.append((column, [(lab, by[k]) for k, lab in (("float", "float"), ("bc-det", "BC-det"),
                                                                 ("bc-stoch", "BC-stoch (real W)"),
                                                                 ("bc-det-noclip", "BC-det no clip"),
                                                                 ("bc-stoch-noclip", "BC-stoch no clip"))
                                    if k in by]))
        path = F.curves_figure(panels, fig_dir / "bc_curves.png", "BinaryConnect: test error per epoch")
        if path:
            out.append(("Test error per epoch (mean over seeds; BC-det evaluated with sign(W), BC-stoch with real W).",
                        path))
    elif table.key == "lide":
        toy = analyses.get("toy")
        if toy:
            out.append(("Convex toy (least squares on a grid of step Δ): suboptimality versus a constant learning "
                        "rate. R freezes (flat at the initial loss) once the steps are below Δ/2; SR stalls at an "
                        "O(Δ) floor; BC-stoch's float copy converges and its rounded weights reach the grid point "
                        "next to the optimum (dashed line).", F.toy_figure(toy, fig_dir / "lide_toy.png")))
        group = [(s.cell.label, s) for s in stats.values()]
        path = F.curves_figure([("binary-weight MLP", group)], fig_dir / "lide_curves.png", loss_panel=True)
        if path:
            out.append(("Training loss and test error per epoch (mean over seeds).", path))
    elif table.key == "lsq":
        rows = []
        for bits in (2, 3):
            series = [("LSQ", _histograms(r.get(f"lsq{bits}"))), ("LSQ + BR, λ = 0.5", _histograms(r.get(f"br{bits}")))]
            if bits == 2:
                series.append(("LSQ + BR, λ = 50", _histograms(r.get("br2-lambda50"))))
            rows.append((bits, series))
        path = F.histogram_figure(rows, fig_dir / "lsq_histograms.png")
        if path:
            out.append(("Histograms of the latent weights in units of their LSQ step, after fine-tuning (seed 0), "
                        "without Bin Regularization (grey bars) and with it (lines); dotted lines mark the "
                        "quantization levels. The first and last layers (8 bits) are not shown.", path))
    elif table.key == "banner":
        group = [(s.cell.label, s) for s in stats.values()]
        path = F.curves_figure([("small CNN from scratch", group)], fig_dir / "banner_curves.png", loss_panel=True)
        if path:
            out.append(("Training loss and test error per epoch (mean over seeds).", path))
    elif table.key == "uhlich":
        allocations, shares = [], None
        for role, label in (("u3", "U3 (d, q_max)"), ("p3", "P3 (q_min, q_max)"), ("u1", "U1 (b, d)"),
                            ("u2", "U2 (b, q_max)")):
            s = r.get(role)
            memory = next((rec["probes"]["memory"] for rec in (s.records if s else [])
                           if rec.get("probes", {}).get("memory")), None)
            if memory:
                allocations.append((label, {k: v["weight"] for k, v in memory["bits"].items()}))
            shares = shares or next((rec["probes"]["memory"]["layer_shares"] for rec in (s.records if s else [])
                                     if "layer_shares" in rec.get("probes", {}).get("memory", {})), None)
        budget_bits = next((c.changes["train.regularizers"][0]["weight_bits"] for c in table.cells
                            if c.changes.get("train.regularizers")), None)
        path = F.bits_figure(allocations, fig_dir / "uhlich_bits.png",
                             f"budget = the net at {budget_bits:g}-bit weights" if budget_bits else "", budget_bits,
                             shares)
        if path:
            out.append(("Learned per-layer weight bit widths (seed 0) at the reported checkpoint, or at the last "
                        "epoch for a run that never met the budget.", path))
        grads = analyses.get("gradients")
        if grads:
            out.append(("Gradient magnitudes of the three uniform parametrizations for x ~ N(0, 1), q_max = 3σ fixed "
                        "(so d = q_max/(2^(b−1)−1) shrinks as b grows): mean over samples (left) and the largest "
                        "per-sample value (right).", F.gradient_figure(grads, fig_dir / "uhlich_gradients.png")))
    return out


def _histograms(s: Optional[CellStats]) -> dict:
    if s is None:
        return {}
    for rec in s.records:
        layers = rec.get("probes", {}).get("weights", {}).get("layers")
        if layers:
            return {name: e["histogram"] for name, e in layers.items() if "histogram" in e}
    return {}


# ---------------------------------------------------------------------------------------------------- page
def _checks_for(table: Table, stats: dict, analyses: dict) -> list:
    checks = C.CHECKS[table.key](stats)
    if table.key == "lide":
        checks += C.toy_checks(analyses.get("toy"))
    if table.key == "uhlich":
        checks += C.gradient_checks(analyses.get("gradients"))
    return checks


def _notes(out: Path, mode: Mode, key: str) -> list:
    """The hand-written notes: protocol and mechanisms (every mode), then observations on this mode's numbers."""
    general, specific = out / "notes" / f"{key}.md", out / "notes" / mode.name / f"{key}.md"
    lines = []
    if general.exists():
        lines += ["**Notes (all modes).**", "", general.read_text().strip(), ""]
    lines += [f"**Observations on this run ({mode.name} mode).**", ""]
    if specific.exists():
        lines += [specific.read_text().strip(), ""]
    else:
        lines += [f"*None written yet: add `notes/{mode.name}/{key}.md` after reading the numbers above.*", ""]
    return lines


def _compute_summary(tables: list, all_stats: dict) -> tuple:
    wall = cpu = 0.0
    runs = 0
    seen = set()
    for table in tables:
        for s in all_stats[table.key].values():
            for rec in s.records:
                key = (s.cell.id, rec.get("seed"))
                if key in seen:
                    continue
                seen.add(key)
                runs += 1
                wall += rec.get("timing", {}).get("wall_s", 0.0)
                cpu += rec.get("timing", {}).get("cpu_s", 0.0)
    return runs, wall, cpu


def write_report(out: Path, mode: Mode, tables: list, analyses: Optional[dict] = None,
                 command: str = "", run_info: Optional[dict] = None) -> Path:
    """Write ``OUT/<mode>/README.md`` (+ figures, summary.json) for the ``tables`` that have results."""
    out = Path(out)
    base = out / mode.name
    fig_dir = base / "figures"
    analyses = dict(analyses or {})
    for name in ("toy", "gradients"):
        analyses.setdefault(name, load_analysis(out, mode, name))
    all_stats = {t.key: collect(out, mode, t) for t in tables}
    present = [t for t in tables if any(s.records for s in all_stats[t.key].values())]
    runs, wall, cpu = _compute_summary(present, all_stats)
    versions = next((rec.get("versions") for t in present for s in all_stats[t.key].values() for rec in s.records),
                    {})
    # the runs' own dates, not the page's: regenerating an old run's page must not make it look new
    finished = sorted(rec["finished"][:10] for t in present for s in all_stats[t.key].values() for rec in s.records
                      if rec.get("finished"))
    ran = (f"runs finished {finished[0]}" + (f" to {finished[-1]}" if finished[-1] != finished[0] else "")
           if finished else "run dates not recorded")
    today = datetime.now(timezone.utc).strftime('%Y-%m-%d')
    lines = [f"# Reproducing the five papers — {mode.name} mode ({mode.data})", ""]
    lines += [f"> Generated by `{command or _default_command(mode)}` from the raw results in [raw/](raw/) "
              f"({ran}; page written {today}). Every number and figure on this page comes from "
              "those files; regenerate with `lowbit reproduce --report-only"
              f"{' --quick' if mode.name == 'quick' else ''}`. Hand-written notes live in "
              "[../notes/](../notes/).", ""]
    partial = [t.title for t in present if any(len(s.records) < mode.seeds for s in all_stats[t.key].values())]
    if partial:
        lines += [f"**Partial results**: some cells have fewer than the mode's {mode.seeds} seeds "
                  f"({', '.join(partial)}). Run `{_default_command(mode)}` to complete them: finished runs are "
                  "skipped.", ""]
    if mode.name == "quick":
        lines += ["**This is the quick run**: sklearn `digits` (8×8 images, 359 test images), **one seed**, "
                  "minutes of CPU. Its numbers are noisy (one test image = 0.28 points) and the dataset is easy; "
                  "the full run on Fashion-MNIST over 3 seeds (`lowbit reproduce`) is the one to quote.", ""]
    lines += [f"- **Mode**: {mode.name} — {mode.description}.",
              f"- **Command**: `{command or _default_command(mode)}` (the same as "
              f"`{(command or _default_command(mode)).replace('lowbit reproduce', 'python benchmarks/reproduce.py')}`"
              ").",
              f"- **Compute**: {runs} training runs, {format_duration(wall)} of wall time in the runs "
              f"({format_duration(cpu)} CPU), torch threads: {_threads(present, all_stats)}"
              + (f"; last invocation {format_duration(run_info['wall_s'])} end to end" if run_info else "") + ".",
              f"- **Versions**: lowbit {versions.get('lowbit', '?')}, torch {versions.get('torch', '?')}, "
              f"Python {versions.get('python', '?')}.", ""]
    lines += ["## Summary", "", C.RULES_TEXT, ""]
    summary_rows, sections, summary_json = [], [], {"mode": mode.name, "data": mode.data, "tables": {}}
    for i, table in enumerate(present, 1):
        stats = all_stats[table.key]
        checks = _checks_for(table, stats, analyses)
        v = C.verdict(checks)
        passed = sum(1 for c in checks if c.passed)
        decided = sum(1 for c in checks if c.passed is not None)
        summary_rows.append([f"[{table.title}](#{_anchor(i, table.title)})", table.paper, f"**{v}**",
                             f"{passed}/{decided}"])
        sections.append(_section(i, table, stats, checks, v, analyses, fig_dir, base, out, mode))
        summary_json["tables"][table.key] = {
            "verdict": v,
            "cells": {s.cell.id: {"label": s.cell.label, "errors": s.errors, "mean": s.mean, "std": s.std,
                                  "n": s.n, "diverged": s.diverged, "budget_unmet": s.unmet}
                      for s in stats.values()},
            "checks": [{"claim": c.claim, "rule": c.rule, "observed": c.observed, "passed": c.passed,
                        "within_noise": c.within_noise} for c in checks]}
    lines += [render_table(["paper", "authors", "verdict", "checks passed"], summary_rows), ""]
    lines += ["## Settings", "", "The same data, epochs and schedule for every cell of a table. `train / val / test` "
              "are the images used (validation = 10 % of the training pool, stratified; subsets are seeded by the "
              "run's "
              "seed). Runs that fine-tune start from the float model of the same seed.", ""]
    lines += [_settings_table(present, all_stats, mode), ""]
    lines += sections
    page = "\n".join(lines).rstrip() + "\n"
    base.mkdir(parents=True, exist_ok=True)
    (base / "README.md").write_text(page)
    (base / "summary.json").write_text(json.dumps(summary_json, indent=1) + "\n")
    write_index(out)
    return base / "README.md"


def _threads(tables, all_stats) -> str:
    values = {rec.get("timing", {}).get("threads") for t in tables for s in all_stats[t.key].values()
              for rec in s.records}
    return ", ".join(str(v) for v in sorted(v for v in values if v is not None)) or "?"


def _default_command(mode: Mode) -> str:
    return {"quick": "lowbit reproduce --quick", "smoke": "lowbit reproduce --smoke"}.get(mode.name,
                                                                                          "lowbit reproduce")


def _anchor(i: int, title: str) -> str:
    text = f"{i}. {title}".lower()
    keep = "".join(ch for ch in text if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")


def _settings_table(tables: list, all_stats: dict, mode: Mode) -> str:
    rows = []
    for table in tables:
        b = describe_budget(mode, table.key)
        sizes = next((rec.get("data") for s in all_stats[table.key].values() for rec in s.records
                      if rec.get("data")), None)
        images = f"{sizes['train']} / {sizes['val']} / {sizes['test']}" if sizes else "–"
        seeds = max((len(s.records) for s in all_stats[table.key].values()), default=0)
        rows.append([table.title, b["data"], images, b["epochs"], b["pretrain_epochs"] or "–", seeds,
                     SELECT_TEXT[table.select]])
    return render_table(["table", "data", "train / val / test images", "epochs", "float pre-training epochs",
                         "seeds", "reported number"], rows)


def _section(i: int, table: Table, stats: dict, checks: list, v: str, analyses: dict, fig_dir: Path, base: Path,
             out: Path, mode: Mode) -> str:
    lines = [f"## {i}. {table.title}", "", f"*{table.paper}*", "", f"**Claim.** {PAPER_CLAIMS[table.key]}", "",
             f"**Setup.** {table.description}", "", RENDER[table.key](table, stats), ""]
    incomplete = [s.cell.label for s in stats.values() if len(s.records) < mode.seeds]
    if incomplete:
        lines += [f"*Missing seeds (not run yet): {', '.join(incomplete)}.*", ""]
    lines += [f"Values: mean ± sample standard deviation over seeds of the {SELECT_TEXT[table.select]}, in %.", ""]
    for caption, path in _figures(table, stats, analyses, fig_dir):
        rel = path.relative_to(base).as_posix()
        lines += [f"![{path.stem}]({rel})", "", f"*{caption}*", ""]
    rows = [[c.claim, c.rule, c.observed, c.outcome] for c in checks]
    lines += ["**Checks.**", "", render_table(["prediction", "rule", "our numbers", "result"], rows), "",
              f"**Verdict: {v}.**", ""]
    lines += _notes(out, mode, table.key)
    return "\n".join(lines)


def write_index(out: Path) -> Path:
    """``OUT/README.md``: links to the result pages of the modes present, with their verdicts."""
    out = Path(out)
    rows = []
    for name in ("full", "quick", "smoke"):
        summary = out / name / "summary.json"
        if not summary.exists():
            continue
        data = json.loads(summary.read_text())
        verdicts = ", ".join(f"{k}: {t['verdict']}" for k, t in data["tables"].items())
        rows.append([f"[{name}]({name}/README.md)", data["data"], verdicts])
    others = sorted(p.name for p in out.glob("*.md") if p.name != "README.md")
    lines = ["# Results", "",
             "Generated by `lowbit reproduce` (also `python benchmarks/reproduce.py`): the five papers' claims "
             "re-run on real data, with tables, figures and the raw JSON of every run. The full mode (Fashion-MNIST, "
             "3 seeds, about 2-2.5 hours on 2 CPU cores) is the one to quote; the quick mode (digits, 1 seed, "
             "minutes) checks that everything runs.", ""]
    if rows:
        lines += [render_table(["mode", "data", "verdicts"], rows), ""]
    else:
        lines += ["*No reproduction results yet: run `lowbit reproduce --quick`.*", ""]
    if others:
        lines += ["Other benchmark results: " + ", ".join(f"[{o}]({o})" for o in others) + ".", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
