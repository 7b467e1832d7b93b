"""What each paper predicts, as explicit checks on our numbers, and the verdict they add up to.

Every check prints its rule next to the numbers it was applied to. Errors are mean test errors over seeds, in %;
differences and tolerances are in percentage points (pp). Three kinds of rule:

* **ordering** ("A has a lower error than B"): *pass* when ``err(B) − err(A) − margin > 2 SE``, *fail* when
  ``< −2 SE``, *inconclusive* in between (the data cannot order the two), with ``SE = sqrt(se_A² + se_B²)``;
* **tolerance** ("A is within t pp of B", "A is at most t pp worse than B"): decided on the means; *(near the
  limit)* marks a margin smaller than 2 SE;
* **training loss** ("B degrades training"): B's final training loss exceeds A's in every seed and its mean is at
  least 1.5 x A's (free of test-set noise, and one diverging seed cannot decide it alone).

``se`` of a cell (:mod:`lowbit.reproduce.results`) is the larger of the seeds' standard error and the binomial
standard error of the pooled test images, so neither one seed nor three lucky seeds look more certain than the test
set allows.

Verdict of a paper: **supported** when every check with data passes, **not supported** when none passes, **partly**
otherwise; an inconclusive check is not a pass. Checks without data (a cell not run, a budget never met) are listed
and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from .results import CellStats

__all__ = ["Check", "verdict", "bc_checks", "lide_checks", "toy_checks", "lsq_checks", "banner_checks",
           "uhlich_checks", "gradient_checks", "CHECKS", "RULES_TEXT", "lower", "close", "not_worse",
           "higher_training_loss"]

RULES_TEXT = ("Errors are mean test errors over seeds (%). *Ordering* checks (A better than B) pass when the "
              "difference exceeds twice its standard error, fail when it is that far the other way, and are "
              "*inconclusive* in between; *tolerance* checks (A within t points of B) are decided on the means; "
              "*training-loss* checks (B trains worse than A) compare the final training losses seed by seed. "
              "Standard errors use the larger of the seed-to-seed and the test-set (binomial) noise. Verdict: "
              "**supported** when every check passes, **not supported** when none does, **partly** otherwise; an "
              "inconclusive check does not count as a pass.")


@dataclass
class Check:
    claim: str
    rule: str
    observed: str
    passed: Optional[bool]           # None: no data
    within_noise: bool = False       # ordering: inconclusive (passed is False); tolerance: near the limit

    @property
    def outcome(self) -> str:
        if self.passed is None:
            return "no data"
        if self.passed:
            return "pass (near the limit)" if self.within_noise else "pass"
        return "inconclusive (within noise)" if self.within_noise else "fail"


def verdict(checks: list) -> str:
    decided = [c.passed for c in checks if c.passed is not None]
    if not decided:
        return "no data"
    if all(decided):
        return "supported"
    if not any(decided):
        return "not supported"
    return "partly"


# ----------------------------------------------------------------------------------------------- helpers
def _fmt(s: Optional[CellStats]) -> str:
    return "–" if s is None or s.mean is None else f"{s.mean:.2f}%"


def _se_diff(a: CellStats, b: CellStats) -> float:
    return math.sqrt((a.se or 0.0) ** 2 + (b.se or 0.0) ** 2)


def _have(*stats) -> bool:
    return all(s is not None and s.mean is not None for s in stats)


def _observed(a: CellStats, b: CellStats, name_a: str, name_b: str) -> str:
    d = a.mean - b.mean
    return f"{name_a} {_fmt(a)}, {name_b} {_fmt(b)}; {name_a} − {name_b} = {d:+.2f} pp (2 SE = {2 * _se_diff(a, b):.2f})"


def lower(claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str,
          margin: float = 0.0) -> Check:
    """Ordering: ``err(b) − err(a) > margin`` beyond noise (a has the lower error)."""
    rule = f"err({name_a}) < err({name_b})" if not margin else f"err({name_b}) − err({name_a}) > {margin:g} pp"
    if not _have(a, b):
        return Check(claim, rule, f"{name_a} {_fmt(a)}, {name_b} {_fmt(b)}", None)
    excess = b.mean - a.mean - margin
    noise = 2 * _se_diff(a, b)
    if excess > noise:
        return Check(claim, rule, _observed(a, b, name_a, name_b), True)
    return Check(claim, rule, _observed(a, b, name_a, name_b), False, within_noise=excess >= -noise)


def close(claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str,
          tol: float) -> Check:
    """Tolerance: ``|err(a) − err(b)| <= tol`` on the means."""
    rule = f"|err({name_a}) − err({name_b})| ≤ {tol:g} pp"
    if not _have(a, b):
        return Check(claim, rule, f"{name_a} {_fmt(a)}, {name_b} {_fmt(b)}", None)
    d = a.mean - b.mean
    ok = abs(d) <= tol
    return Check(claim, rule, _observed(a, b, name_a, name_b), ok, ok and tol - abs(d) < 2 * _se_diff(a, b))


def not_worse(claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str,
              tol: float) -> Check:
    """Tolerance: ``err(a) <= err(b) + tol`` on the means (a matches, within tol, or beats b)."""
    rule = f"err({name_a}) ≤ err({name_b}) + {tol:g} pp"
    if not _have(a, b):
        return Check(claim, rule, f"{name_a} {_fmt(a)}, {name_b} {_fmt(b)}", None)
    d = a.mean - b.mean
    ok = d <= tol
    return Check(claim, rule, _observed(a, b, name_a, name_b), ok, ok and tol - d < 2 * _se_diff(a, b))


def _probe_stats(s: Optional[CellStats], probe: str, key: str, scale: float = 1.0) -> Optional[CellStats]:
    """A pseudo ``CellStats`` whose 'errors' are a probe's values (e.g. the error with sign(W) at test time)."""
    if s is None:
        return None
    values = [scale * v for v in s.probe_values(probe, key)]
    out = CellStats(s.cell, errors=values, test_n=s.test_n)
    out.records = s.records
    return out


def _acc_to_error(s: Optional[CellStats], probe: str, key: str) -> Optional[CellStats]:
    p = _probe_stats(s, probe, key)
    if p is not None:
        p.errors = [100.0 * (1.0 - v) for v in p.errors]
    return p


# ------------------------------------------------------------------------------------------------ papers
def bc_checks(stats: dict) -> list:
    checks = []
    for column in ("MLP", "CNN"):
        r = {s.cell.role: s for s in stats.values() if s.cell.column == column}
        if not r:
            continue
        f, det, sto = r.get("float"), r.get("bc-det"), r.get("bc-stoch")
        checks += [
            not_worse(f"{column}: BC-det is within about 1–2 points of the float net", det, f, "BC-det", "float",
                      2.0),
            not_worse(f"{column}: BC-stoch tested with real W matches or beats the float net", sto, f, "BC-stoch",
                      "float", 0.5),
            lower(f"{column}: turning off clipping makes BC-det worse", det, r.get("bc-det-noclip"), "BC-det",
                  "BC-det no clip"),
            lower(f"{column}: turning off clipping makes BC-stoch worse", sto, r.get("bc-stoch-noclip"), "BC-stoch",
                  "BC-stoch no clip"),
            lower(f"{column}: testing BC-stoch with sign(W) costs accuracy", sto,
                  _acc_to_error(sto, "sign_eval", "test_acc_sign_w"), "BC-stoch real W", "BC-stoch sign(W)"),
        ]
    return checks


def lide_checks(stats: dict) -> list:
    r = {s.cell.role: s for s in stats.values()}
    f, bc, big, sr, rr = (r.get(k) for k in ("float", "bc", "big-sr", "sr", "r"))
    checks = [
        lower("ADAM (float) has the lowest error", f, bc, "ADAM", "BC-ADAM"),
        lower("BC-ADAM is far better than the purely quantized methods (≥ 2 pp better than Big SR-ADAM)", bc, big,
              "BC-ADAM", "Big SR-ADAM (LR × 16)", margin=2.0),
        lower("a bigger batch helps SR (at equal epochs, LR scaled with the batch)", big, sr, "Big SR-ADAM (LR × 16)",
              "SR-ADAM"),
        not_worse("SR-ADAM is at most about as bad as R-ADAM (SR ≲ R)", sr, rr, "SR-ADAM", "R-ADAM", 0.5),
    ]
    checks.append(_late_improvement(sr, bc))
    return checks


def _late_improvement(sr: Optional[CellStats], bc: Optional[CellStats]) -> Check:
    """Li & De: SR stops improving once the LR decays, BC keeps improving (its greedy phase)."""
    claim = "SR stops improving once the LR decays, while BC keeps improving"
    rule = "Δ(BC) − Δ(SR) > 2 SE, Δ = test error at mid-training − test error at the end"

    def delta(s):
        if s is None or not s.records:
            return None, None
        values = []
        for record in s.records:
            errors = [100 * (1 - h["test_acc"]) for h in record.get("history", []) if h.get("phase") == "train"]
            if len(errors) >= 2:
                values.append(errors[len(errors) // 2 - 1] - errors[-1])
        if not values:
            return None, None
        # a difference of two test errors of one run: sqrt(2) x the binomial SE of one, over the seeds' runs
        p = (s.mean or 0) / 100
        se = math.sqrt(2 * max(p * (1 - p), 1e-12) / max(s.test_n * len(values), 1)) * 100
        return sum(values) / len(values), se

    (d_sr, se_sr), (d_bc, se_bc) = delta(sr), delta(bc)
    if d_sr is None or d_bc is None:
        return Check(claim, rule, "–", None)
    noise = 2 * math.hypot(se_sr, se_bc)
    excess = d_bc - d_sr
    return Check(claim, rule, f"Δ(SR) {d_sr:+.2f} pp, Δ(BC) {d_bc:+.2f} pp (2 SE = {noise:.2f})", excess > noise,
                 excess <= noise and excess >= -noise)


def toy_checks(toy: Optional[dict]) -> list:
    claims = ["convex toy: R freezes at small learning rates (stays at its initial loss)",
              "convex toy: SR's floor does not shrink as the learning rate shrinks, and stays well above the best "
              "grid point",
              "convex toy: BC-stoch's deployed weights reach the grid point next to the optimum",
              "convex toy: BC-stoch's float copy converges to the optimum; BC-det's is biased"]
    if not toy:
        return [Check(c, "–", "–", None) for c in claims]
    lrs, gaps = toy["lrs"], toy["gaps"]
    small = [i for i, lr in enumerate(lrs) if lr <= 1e-2 + 1e-12]
    steps = toy["settings"]["steps"]
    # small learning rates that had time to converge (LR x steps >= 5: the float error contracts by e^-5 or more)
    tiny = [i for i, lr in enumerate(lrs) if lr <= 1e-3 + 1e-12 and lr * steps >= 5]
    large = [i for i, lr in enumerate(lrs) if lr >= 1e-2 - 1e-12]
    init, grid = toy["init_gap"], toy["rounded_ls_gap"]
    if not tiny or not small or not large:
        short = f"no small learning rate converged in {steps} steps"
        return [Check(c, "–", short, None) for c in claims]
    r_small = [gaps["R"][i] for i in small]
    frozen = all(abs(v - init) <= 1e-6 * max(init, 1) for v in r_small)
    sr_large, sr_tiny = min(gaps["SR"][i] for i in large), min(gaps["SR"][i] for i in tiny)
    bcs = [gaps["BC-stoch"][i] for i in tiny]
    copy_s = max(gaps["BC-stoch float copy"][i] for i in tiny)
    copy_d = min(gaps["BC-det float copy"][i] for i in tiny)
    return [
        Check(claims[0], "f − f* of R equals its initial value for every LR ≤ 1e-2",
              f"initial {init:.3f}; R at LR ≤ 1e-2: {', '.join(f'{v:.3f}' for v in r_small)}", frozen),
        Check(claims[1], "min SR gap over LR ≤ 1e-3 (LR × steps ≥ 5) ≥ 0.5 × min over LR ≥ 1e-2, and > 2 × "
                         "the rounded-LS gap",
              f"SR floor at LR ≥ 1e-2: {sr_large:.3f}, at LR ≤ 1e-3: {sr_tiny:.3f}; rounded LS solution "
              f"{grid:.3f}", sr_tiny >= 0.5 * sr_large and sr_tiny > 2 * grid),
        Check(claims[2], "BC-stoch's f(Q_d(w_r)) − f* within 10 % of f(Q_d(w_LS)) − f* for every LR ≤ 1e-3 "
                         "with LR × steps ≥ 5",
              f"BC-stoch {', '.join(f'{v:.4f}' for v in bcs)}; rounded LS solution {grid:.4f}",
              all(abs(v - grid) <= 0.1 * grid for v in bcs)),
        Check(claims[3], "BC-stoch float copy f − f* < 0.01 and BC-det's > 10 × that, for LR ≤ 1e-3 with "
                         "LR × steps ≥ 5",
              f"BC-stoch copy ≤ {copy_s:.4f}, BC-det copy ≥ {copy_d:.4f}", copy_s < 0.01 and copy_d > 10 * copy_s),
    ]


def lsq_checks(stats: dict) -> list:
    r = {s.cell.role: s for s in stats.values()}
    ref = r.get("float-ft") or r.get("float")
    ref_name = "float, same schedule" if r.get("float-ft") else "float"
    checks = [
        close("8-bit LSQ ≈ float", r.get("lsq8"), ref, "LSQ-8", ref_name, 1.0),
        close("4-bit LSQ ≈ float", r.get("lsq4"), ref, "LSQ-4", ref_name, 1.0),
        not_worse("3-bit LSQ only slightly worse than float (≤ 2 pp)", r.get("lsq3"), ref, "LSQ-3", ref_name, 2.0),
        lower("2-bit LSQ: a clear drop from 4-bit", r.get("lsq4"), r.get("lsq2"), "LSQ-4", "LSQ-2"),
        not_worse("2-bit LSQ: the drop stays modest (≤ 5 pp from float)", r.get("lsq2"), ref, "LSQ-2", ref_name,
                  5.0),
        lower("without the gradient scale (g = 1) LSQ is worse", r.get("lsq2"), r.get("lsq2-g1"), "LSQ-2",
              "LSQ-2, g = 1"),
    ]
    for bits in (2, 3):
        lsq, br = r.get(f"lsq{bits}"), r.get(f"br{bits}")
        checks.append(_ratio(f"{bits}-bit: BR concentrates the weights at the levels (spiky histograms)",
                             _probe_stats(br, "weights", "near_level", 100.0),
                             _probe_stats(lsq, "weights", "near_level", 100.0), 1.5, "≥",
                             "% of weights within 0.05 s of a level, with BR", "without BR"))
        checks.append(_ratio(f"{bits}-bit: BR reduces the float-vs-quantized mismatch",
                             _probe_stats(br, "weights", "mean_distance"), _probe_stats(lsq, "weights", "mean_distance"),
                             0.8, "≤", "mean |w − Q(w)|/s with BR", "without BR"))
    checks.append(not_worse("2-bit: LSQ+BR is at least as accurate as LSQ", r.get("br2"), r.get("lsq2"), "LSQ+BR-2",
                            "LSQ-2", 0.0))
    checks.append(_gain_largest_at_2(r))
    return checks


def _ratio(claim, a, b, factor: float, op: str, name_a: str, name_b: str) -> Check:
    """Effect size on a probe: ``a >= factor * b`` (op "≥") or ``a <= factor * b`` (op "≤")."""
    rule = f"{name_a} {op} {factor:g} × {name_b}"
    if not _have(a, b):
        return Check(claim, rule, "–", None)
    ok = a.mean >= factor * b.mean if op == "≥" else a.mean <= factor * b.mean
    return Check(claim, rule, f"{a.mean:.3g} vs {b.mean:.3g} (ratio {a.mean / b.mean:.2f})" if b.mean else
                 f"{a.mean:.3g} vs {b.mean:.3g}", ok)


def _gain_largest_at_2(r: dict) -> Check:
    claim = "BR's accuracy gain is largest at 2 bits"
    rule = "[err(LSQ-2) − err(LSQ+BR-2)] − [err(LSQ-3) − err(LSQ+BR-3)] > 2 SE"
    parts = [r.get(k) for k in ("lsq2", "br2", "lsq3", "br3")]
    if not _have(*parts):
        return Check(claim, rule, "–", None)
    g2, g3 = parts[0].mean - parts[1].mean, parts[2].mean - parts[3].mean
    noise = 2 * math.sqrt(sum((x.se or 0) ** 2 for x in parts))
    return Check(claim, rule, f"gain at 2 bits {g2:+.2f} pp, at 3 bits {g3:+.2f} pp (2 SE = {noise:.2f})",
                 g2 - g3 > noise, abs(g2 - g3) <= noise)


def banner_checks(stats: dict) -> list:
    r = {s.cell.role: s for s in stats.values()}
    return [
        close("8-bit training (W8A8G8, Range BN) matches float", r.get("8bit"), r.get("float"), "W8A8G8", "float",
              1.0),
        lower("deterministic rounding of the 8-bit gradients degrades training", r.get("8bit"), r.get("8bit-det"),
              "W8A8G8", "deterministic g"),
        higher_training_loss("deterministic rounding of the 8-bit gradients degrades training (training loss)",
                             r.get("8bit"), r.get("8bit-det"), "W8A8G8", "deterministic g"),
        lower("8-bit weight gradients (no bifurcation) degrade training", r.get("8bit"), r.get("8bit-nobif"),
              "W8A8G8", "8-bit g_W"),
        higher_training_loss("8-bit weight gradients (no bifurcation) degrade training (training loss)",
                             r.get("8bit"), r.get("8bit-nobif"), "W8A8G8", "8-bit g_W"),
        close("Range BN ≈ BN in a float network", r.get("float-rbn"), r.get("float"), "float Range BN", "float BN",
              1.0),
    ]


def _final_losses(s: Optional[CellStats]) -> dict:
    """``seed -> training loss of the last epoch`` (diverged runs count as infinitely bad)."""
    losses = {}
    for record in (s.records if s is not None else []):
        if record.get("diverged"):
            losses[record.get("seed")] = math.inf
            continue
        epochs = [h for h in record.get("history", []) if h.get("phase") == "train" and h.get("loss") is not None]
        if epochs:
            losses[record.get("seed")] = epochs[-1]["loss"]
    return losses


def higher_training_loss(claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str,
                         factor: float = 1.5) -> Check:
    """Training degradation seen in the training loss, paired by seed: ``b`` ends with a higher final training loss
    than ``a`` in every seed, and its mean is at least ``factor`` times ``a``'s. Unlike the test error, the training
    loss of one run is not subject to test-set sampling noise; a seed-by-seed rule keeps one bad seed from deciding."""
    rule = f"final training loss of {name_b} > {name_a} in every seed, mean ≥ {factor:g} ×"
    la, lb = _final_losses(a), _final_losses(b)
    seeds = sorted(set(la) & set(lb))
    if not seeds:
        return Check(claim, rule, "–", None)
    pairs = ", ".join(f"{lb[k]:.3f} vs {la[k]:.3f}" for k in seeds)
    mean_a, mean_b = (sum(d[k] for k in seeds) / len(seeds) for d in (la, lb))
    ok = all(lb[k] > la[k] for k in seeds) and mean_b >= factor * mean_a
    return Check(claim, rule, f"{name_b} vs {name_a} per seed: {pairs}", ok)


def uhlich_checks(stats: dict) -> list:
    r = {s.cell.role: s for s in stats.values()}
    u3, p3, homog = r.get("u3"), r.get("p3"), r.get("homog")
    fixed_role = next((k for k in ("fixed3", "fixed2") if k in r), "fixed3")
    fixed, fixed_name = r.get(fixed_role), f"fixed {fixed_role[-1]}-bit"
    checks = [_budget_met("U3 meets the weight-memory budget", u3), _heterogeneous(u3),
              lower("U3 has lower error than the fixed homogeneous net of the same memory", u3, fixed, "U3",
                    fixed_name),
              lower("U3 has lower error than the homogeneous net with learned q_max", u3, homog, "U3",
                    "homogeneous learned"),
              _budget_met("P3 meets the weight-memory budget", p3),
              lower("P3 has lower error than the fixed homogeneous net of the same memory", p3, fixed, "P3",
                    fixed_name),
              lower("learning q_max beats a fixed grid at the same bit width", homog, fixed, "homogeneous learned",
                    fixed_name)]
    for name in ("u1", "u2"):
        checks.append(_worse_or_failed(f"{name.upper()} (bit width parametrized) ends worse than U3", r.get(name), u3,
                                       name.upper()))
    return checks


def _budget_met(claim: str, s: Optional[CellStats]) -> Check:
    rule = "weight KB ≤ budget at the reported checkpoint, in every seed"
    if s is None or not s.records:
        return Check(claim, rule, "–", None)
    probed = [rec["probes"] for rec in s.records if rec.get("probes", {}).get("memory")]
    met = [p["memory"]["weight_kb"] <= p["memory"]["budget_kb"] + 1e-9 for p in probed] + [False] * s.diverged
    if not met:
        return Check(claim, rule, "–", None)
    shown = ", ".join(f"{p['memory']['weight_kb']:.2f}/{p['memory']['budget_kb']:.2f} KB ({p.get('checkpoint')})"
                      for p in probed)
    if s.diverged:
        shown += f", {s.diverged} diverged"
    return Check(claim, rule, f"{sum(met)}/{len(met)} seeds: {shown}", all(met))


def _heterogeneous(s: Optional[CellStats]) -> Check:
    claim = "U3's learned allocation is heterogeneous (layers get different weight bit widths)"
    rule = "in at least one seed, the weight bits differ between layers"
    if s is None or not s.records:
        return Check(claim, rule, "–", None)
    allocations = [tuple(v["weight"] for v in rec["probes"]["memory"]["bits"].values())
                   for rec in s.records if rec.get("probes", {}).get("memory")]
    if not allocations:
        return Check(claim, rule, "–", None)
    return Check(claim, rule, "; ".join("/".join(str(b) for b in a) for a in allocations),
                 any(len(set(a)) > 1 for a in allocations))


def _worse_or_failed(claim: str, s: Optional[CellStats], u3: Optional[CellStats], name: str) -> Check:
    rule = f"err({name}) > err(U3) (ordering), or {name} diverged / never met the budget (no admissible checkpoint)"
    if s is not None and s.records and (s.diverged or s.unmet) and not s.errors:
        memory = [rec["probes"]["memory"] for rec in s.records if rec.get("probes", {}).get("memory")]
        detail = ", ".join(f"{m['weight_kb']:.2f}/{m['budget_kb']:.2f} KB at the end" for m in memory)
        final = f"; final-epoch error {sum(s.final_errors) / len(s.final_errors):.2f}%" if s.final_errors else ""
        return Check(claim, rule, f"{name}: {s.format()} ({detail}{final}); U3 {_fmt(u3)}", True)
    return lower(claim, u3, s, "U3", name)


def gradient_checks(grads: Optional[dict]) -> list:
    claims = ["U3's partial derivatives are bounded: |∂Q/∂d| ≤ 1/2, |∂Q/∂q_max| ≤ 1 for every b",
              "U1's partial derivatives grow with b (per element, ∂Q/∂d outside the range ~ 2^(b−1))",
              "the mean magnitudes of the U1/U2 partials grow with b"]
    if not grads:
        return [Check(c, "–", "–", None) for c in claims]
    mx, mean = grads["max"], grads["mean"]
    bounded = max(mx["U3/d"]) <= 0.5 + 1e-9 and max(mx["U3/q_max"]) <= 1 + 1e-9
    grows = mx["U1/d"][-1] >= 2 ** (grads["bits"][-1] - 2)
    ratios = {k: mean[k][-1] / mean[k][0] for k in ("U1/b", "U1/d", "U2/b", "U2/q_max")}
    b0, b1 = grads["bits"][0], grads["bits"][-1]
    return [
        Check(claims[0], "max over x and b of |∂Q/∂d| ≤ 0.5 and of |∂Q/∂q_max| ≤ 1",
              f"max |∂Q/∂d| = {max(mx['U3/d']):.3f}, max |∂Q/∂q_max| = {max(mx['U3/q_max']):.3f}", bounded),
        Check(claims[1], f"max |∂Q/∂d| of U1 at b = {b1} ≥ 2^({b1}−2)",
              f"max |∂Q/∂d| = {', '.join(f'{v:.0f}' for v in mx['U1/d'])} for b = {b0}..{b1}", grows),
        Check(claims[2], f"mean |∂Q/∂θ| at b = {b1} > at b = {b0} for every U1/U2 partial",
              ", ".join(f"{k}: ×{v:.2f}" for k, v in ratios.items()), all(v > 1 for v in ratios.values())),
    ]


CHECKS: dict = {"bc": bc_checks, "lide": lide_checks, "lsq": lsq_checks, "banner": banner_checks,
                "uhlich": uhlich_checks}
CheckFn = Callable[[dict], list]
