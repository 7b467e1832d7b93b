"""Li & De's convex toy (ALGORITHMS.md 2.6): least squares on a grid of step Delta, trained five ways.

Problem: ``f(w) = ||X w - y||^2 / (2 n)`` with ``X ~ N(0, 1)`` (n x d), ``w* ~ U(-1, 1)``, ``y = X w* + 0.1 noise``;
``f* = f(w_LS)``. Grid ``Delta Z`` with

* ``Q_d(w) = sign(w) Delta floor(|w| / Delta + 1/2)`` (deterministic rounding),
* ``Q_s(w) = Delta (k + [u < p])``, ``k = floor(w / Delta)``, ``p = w / Delta - k``, ``u ~ U[0, 1)`` (unbiased).

Minibatch SGD with a constant learning rate ``a`` and gradient ``g`` on a minibatch:

* float:    ``w <- w - a g(w)``
* R:        ``w <- Q_d(w - a g(w))``       (weights stored on the grid)
* SR:       ``w <- Q_s(w - a g(w))``
* BC-det:   ``w_r <- w_r - a g(Q_d(w_r))``  (float copy; deployed weights ``Q_d(w_r)``)
* BC-stoch: ``w_r <- w_r - a g(Q_s(w_r))``  (deployed weights ``Q_d(w_r)``)

All runs start at ``w = 0`` (on the grid) and share the minibatch sequence. Expected: R freezes once
``a |g| < Delta / 2`` (small ``a``); SR stalls at an O(Delta) floor that does not shrink with ``a``; BC-stoch's float
copy converges to ``w*`` (for a quadratic, ``E[g(Q_s(w))] = g(w)``) and its deployed weights reach the grid point next
to it, ``f(Q_d(w_LS)) - f*``. All five methods and all learning rates advance together as one array, so a run of
5 x 7 x 50,000 steps takes a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ToyProblem", "make_problem", "run_toy", "METHODS", "DEFAULT_LRS"]

METHODS = ("float", "R", "SR", "BC-det", "BC-stoch")
DEFAULT_LRS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)


@dataclass
class ToyProblem:
    X: np.ndarray
    y: np.ndarray
    w_star: np.ndarray
    w_ls: np.ndarray
    delta: float

    def loss(self, w: np.ndarray) -> np.ndarray:
        """``f`` for one weight vector (d,) or a stack (..., d)."""
        residual = w @ self.X.T - self.y
        return 0.5 * np.mean(residual**2, axis=-1)

    @property
    def f_star(self) -> float:
        return float(self.loss(self.w_ls))


def q_det(w: np.ndarray, delta: float) -> np.ndarray:
    return np.sign(w) * delta * np.floor(np.abs(w) / delta + 0.5)


def q_stoch(w: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    scaled = w / delta
    k = np.floor(scaled)
    return delta * (k + (rng.random(w.shape) < scaled - k))


def make_problem(n: int = 2000, d: int = 20, delta: float = 0.25, noise: float = 0.1, seed: int = 0) -> ToyProblem:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_star = rng.uniform(-1, 1, d)
    y = X @ w_star + noise * rng.standard_normal(n)
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0]
    return ToyProblem(X, y, w_star, w_ls, delta)


def run_toy(
    problem: ToyProblem | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = 50_000,
    batch: int = 10,
    seed: int = 0,
    evals: int = 100,
) -> dict:
    """Train every method at every learning rate; return the suboptimality ``f - f*`` of each, averaged over the
    last 10 % of ``evals`` evenly spaced evaluations (so SR's jitter does not decide the number)."""
    p = problem or make_problem(seed=seed)
    rng = np.random.default_rng(seed + 1)
    lrs = np.asarray(lrs, dtype=float)
    n, d = p.X.shape
    W = np.zeros((len(METHODS), len(lrs), d))  # one weight vector (or float copy) per method and LR
    a = lrs[None, :, None]
    i_float, i_r, i_sr, i_bcd, i_bcs = range(len(METHODS))
    every = max(1, steps // evals)
    tail_start = steps - max(every, steps // 10)
    sums = {
        key: np.zeros(len(lrs))
        for key in ("float", "R", "SR", "BC-det", "BC-det float copy", "BC-stoch", "BC-stoch float copy")
    }
    count = 0
    for t in range(1, steps + 1):
        idx = rng.integers(0, n, batch)
        Xb, yb = p.X[idx], p.y[idx]
        at = W.copy()  # the point where each method evaluates its gradient
        at[i_bcd] = q_det(W[i_bcd], p.delta)
        at[i_bcs] = q_stoch(W[i_bcs], p.delta, rng)
        grad = ((at @ Xb.T - yb) @ Xb) / batch
        W -= a * grad
        W[i_r] = q_det(W[i_r], p.delta)
        W[i_sr] = q_stoch(W[i_sr], p.delta, rng)
        if t > tail_start and t % every == 0:
            f = {
                "float": p.loss(W[i_float]),
                "R": p.loss(W[i_r]),
                "SR": p.loss(W[i_sr]),
                "BC-det": p.loss(q_det(W[i_bcd], p.delta)),
                "BC-det float copy": p.loss(W[i_bcd]),
                "BC-stoch": p.loss(q_det(W[i_bcs], p.delta)),
                "BC-stoch float copy": p.loss(W[i_bcs]),
            }
            for key, value in f.items():
                sums[key] += value
            count += 1
    f_star = p.f_star
    gaps = {key: [float(v) for v in value / max(count, 1) - f_star] for key, value in sums.items()}
    return {
        "lrs": [float(x) for x in lrs],
        "gaps": gaps,
        "f_star": f_star,
        "init_gap": float(p.loss(np.zeros(d)) - f_star),
        "rounded_ls_gap": float(p.loss(q_det(p.w_ls, p.delta)) - f_star),
        "settings": {"n": n, "d": d, "delta": p.delta, "batch": batch, "steps": steps, "seed": seed},
    }
