"""The rules that turn a paper's predictions into checks on our numbers, and the verdict they add up to.

Each paper module (:mod:`lowbit.reproduce.papers`) states its predictions with these rules. Every check prints its
rule next to the numbers it was applied to. Errors are mean test errors over seeds, in %; differences and
tolerances are in percentage points (pp). Three kinds of rule:

* **ordering** ("A has a lower error than B"): *pass* when ``err(B) − err(A) − margin > 2 SE``, *fail* when
  ``< −2 SE``, *inconclusive* in between (the data cannot order the two), with ``SE = sqrt(se_A² + se_B²)``.
  "A at or below B" (:func:`at_or_below`) is decided the same way: equal means are *inconclusive*, never a pass,
  so a check cannot pass on a coin flip of the seeds;
* **tolerance** ("A is within t pp of B", "A is at most t pp worse than B"): decided on the means; *(near the
  limit)* marks a margin smaller than 2 SE;
* **training loss** ("B degrades training"): B's final training loss exceeds A's in every seed and its mean is at
  least 1.5 x A's (free of test-set noise, and one diverging seed cannot decide it alone).

``se`` of a cell (:mod:`lowbit.reproduce.results`) is the larger of the seeds' standard error and the binomial
standard error of the pooled test images, so neither one seed nor three lucky seeds look more certain than the test
set allows.

Verdict of a paper: **supported** when every check with data passes, **not supported** when none passes, **partly**
otherwise; an inconclusive check is not a pass. Checks without data (a cell not run, a budget never met) are listed
and left out; their outcome says why (e.g. ``missed budget: 75.73 KB > 75.71 KB``: a run that misses its memory
budget has no admissible checkpoint, so it is reported as missed, never ranked).

Every check states the paper's claim as the paper makes it (``claim``) and, in ``differs``, where lowbit's setup
differs from the paper's (model, data, epochs, settings the paper does not give).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .results import CellStats

__all__ = [
    "Check",
    "verdict",
    "RULES_TEXT",
    "lower",
    "at_or_below",
    "close",
    "not_worse",
    "ratio",
    "higher_training_loss",
    "have",
    "fmt_error",
    "probe_stats",
    "probe_accuracy_as_error",
]

RULES_TEXT = (
    "Errors are mean test errors over seeds (%). *Ordering* checks (A better than B) pass when the "
    "difference exceeds twice its standard error, fail when it is that far the other way, and are "
    "*inconclusive* in between; *tolerance* checks (A within t points of B) are decided on the means; "
    "*training-loss* checks (B trains worse than A) compare the final training losses seed by seed. "
    "Standard errors use the larger of the seed-to-seed and the test-set (binomial) noise. Verdict: "
    "**supported** when every check passes, **not supported** when none does, **partly** otherwise; an "
    "inconclusive check does not count as a pass. A run that missed its memory budget is reported as missed "
    "(with its memory against the budget) and is never ranked. Each check states the paper's claim as the paper "
    "makes it and where our setup differs."
)


@dataclass
class Check:
    claim: str
    rule: str
    observed: str
    passed: Optional[bool]  # None: no data, or nothing to rank (``status`` says why)
    within_noise: bool = False  # ordering: inconclusive (passed is False); tolerance: near the limit
    differs: str = ""  # where lowbit's setup differs from the paper's
    status: str = ""  # the outcome of a check left out of the verdict ("missed budget: ..."); default "no data"

    @property
    def outcome(self) -> str:
        if self.passed is None:
            return self.status or "no data"
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
def fmt_error(s: Optional[CellStats]) -> str:
    """A cell's mean error as the checks show it (``–`` without data)."""
    return "–" if s is None or s.mean is None else f"{s.mean:.2f}%"


def _se_diff(a: CellStats, b: CellStats) -> float:
    return math.sqrt((a.se or 0.0) ** 2 + (b.se or 0.0) ** 2)


def have(*stats: Optional[CellStats]) -> bool:
    """Whether every one of ``stats`` has a mean error to compare."""
    return all(s is not None and s.mean is not None for s in stats)


def _observed(a: CellStats, b: CellStats, name_a: str, name_b: str) -> str:
    d = a.mean - b.mean
    return (
        f"{name_a} {fmt_error(a)}, {name_b} {fmt_error(b)}; {name_a} − {name_b} = {d:+.2f} pp "
        f"(2 SE = {2 * _se_diff(a, b):.2f})"
    )


def lower(
    claim: str,
    a: Optional[CellStats],
    b: Optional[CellStats],
    name_a: str,
    name_b: str,
    margin: float = 0.0,
    differs: str = "",
    rule: str = "",
) -> Check:
    """Ordering: ``err(b) − err(a) > margin`` beyond noise (a has the lower error)."""
    if not rule:
        rule = f"err({name_a}) < err({name_b})" if not margin else f"err({name_b}) − err({name_a}) > {margin:g} pp"
    if not have(a, b):
        return Check(claim, rule, f"{name_a} {fmt_error(a)}, {name_b} {fmt_error(b)}", None, differs=differs)
    excess = b.mean - a.mean - margin
    noise = 2 * _se_diff(a, b)
    observed = _observed(a, b, name_a, name_b)
    if excess > noise:
        return Check(claim, rule, observed, True, differs=differs)
    return Check(claim, rule, observed, False, within_noise=excess >= -noise, differs=differs)


def at_or_below(
    claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str, differs: str = ""
) -> Check:
    """ "a at or below b" (``err(a) ≤ err(b)``), decided like an ordering: *pass* when a is lower beyond noise,
    *fail* when it is higher beyond noise, *inconclusive* in between -- equal means are not evidence for the claim."""
    rule = f"err({name_a}) ≤ err({name_b}): pass when lower by > 2 SE, fail when higher by > 2 SE"
    return lower(claim, a, b, name_a, name_b, differs=differs, rule=rule)


def close(
    claim: str,
    a: Optional[CellStats],
    b: Optional[CellStats],
    name_a: str,
    name_b: str,
    tol: float,
    differs: str = "",
) -> Check:
    """Tolerance: ``|err(a) − err(b)| <= tol`` on the means."""
    rule = f"|err({name_a}) − err({name_b})| ≤ {tol:g} pp"
    if not have(a, b):
        return Check(claim, rule, f"{name_a} {fmt_error(a)}, {name_b} {fmt_error(b)}", None, differs=differs)
    d = a.mean - b.mean
    ok = abs(d) <= tol
    near = ok and tol - abs(d) < 2 * _se_diff(a, b)
    return Check(claim, rule, _observed(a, b, name_a, name_b), ok, near, differs=differs)


def not_worse(
    claim: str,
    a: Optional[CellStats],
    b: Optional[CellStats],
    name_a: str,
    name_b: str,
    tol: float,
    differs: str = "",
) -> Check:
    """Tolerance: ``err(a) <= err(b) + tol`` on the means (a matches, within tol, or beats b). ``tol`` must be
    positive: with ``tol = 0`` two equal methods would pass or fail on a coin flip (use :func:`at_or_below`)."""
    if tol <= 0:
        raise ConfigError(f"not_worse needs a positive tolerance, got {tol}; use at_or_below for err(a) ≤ err(b)")
    rule = f"err({name_a}) ≤ err({name_b}) + {tol:g} pp"
    if not have(a, b):
        return Check(claim, rule, f"{name_a} {fmt_error(a)}, {name_b} {fmt_error(b)}", None, differs=differs)
    d = a.mean - b.mean
    ok = d <= tol
    near = ok and tol - d < 2 * _se_diff(a, b)
    return Check(claim, rule, _observed(a, b, name_a, name_b), ok, near, differs=differs)


def ratio(
    claim: str, a: Optional[CellStats], b: Optional[CellStats], factor: float, op: str, name_a: str, name_b: str
) -> Check:
    """Effect size on a probe: ``a >= factor * b`` (op "≥") or ``a <= factor * b`` (op "≤"), on the means."""
    rule = f"{name_a} {op} {factor:g} × {name_b}"
    if not have(a, b):
        return Check(claim, rule, "–", None)
    ok = a.mean >= factor * b.mean if op == "≥" else a.mean <= factor * b.mean
    return Check(
        claim,
        rule,
        f"{a.mean:.3g} vs {b.mean:.3g} (ratio {a.mean / b.mean:.2f})" if b.mean else f"{a.mean:.3g} vs {b.mean:.3g}",
        ok,
    )


def probe_stats(s: Optional[CellStats], probe: str, key: str, scale: float = 1.0) -> Optional[CellStats]:
    """A pseudo ``CellStats`` whose 'errors' are a probe's values (e.g. the error with sign(W) at test time)."""
    if s is None:
        return None
    values = [scale * v for v in s.probe_values(probe, key)]
    out = CellStats(s.cell, errors=values, test_n=s.test_n)
    out.records = s.records
    return out


def probe_accuracy_as_error(s: Optional[CellStats], probe: str, key: str) -> Optional[CellStats]:
    """Like :func:`probe_stats` for a probe that measured an accuracy: its 'errors' are ``100 (1 - accuracy)``."""
    p = probe_stats(s, probe, key)
    if p is not None:
        p.errors = [100.0 * (1.0 - v) for v in p.errors]
    return p


def _final_losses(s: Optional[CellStats]) -> dict:
    """``seed -> training loss of the last epoch`` (diverged runs count as infinitely bad)."""
    losses = {}
    for record in s.records if s is not None else []:
        if record.get("diverged"):
            losses[record.get("seed")] = math.inf
            continue
        epochs = [h for h in record.get("history", []) if h.get("phase") == "train" and h.get("loss") is not None]
        if epochs:
            losses[record.get("seed")] = epochs[-1]["loss"]
    return losses


def higher_training_loss(
    claim: str, a: Optional[CellStats], b: Optional[CellStats], name_a: str, name_b: str, factor: float = 1.5
) -> Check:
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
