"""Uhlich et al.'s gradient-magnitude check (ALGORITHMS.md 5.2 and 5.7 (i)): mean |dQ/dtheta| for U1, U2, U3.

Signed uniform quantizer ``Q(x) = d round(clip(x, -q_max, q_max) / d)`` with ``q_max = (2^(b-1) - 1) d``; with the
straight-through estimator for ``round`` the partial derivatives are (inside: ``|x| <= q_max``)::

                  inside                                        outside
    U1  dQ/db     0                                             sign(x) 2^(b-1) ln2 d
    U1  dQ/dd     (Q - x) / d                                   sign(x) (2^(b-1) - 1)
    U2  dQ/db     -(2^(b-1) ln2 / (2^(b-1) - 1)) (Q - x)        0
    U2  dQ/dq_max (Q - x) / q_max                               sign(x)
    U3  dQ/dd     (Q - x) / d        (in [-1/2, 1/2])           0
    U3  dQ/dq_max 0                                             sign(x)

For ``x ~ N(0, 1)`` and ``q_max = 3`` (3 sigma) held fixed while ``b`` goes from 2 to 8, ``d = q_max / (2^(b-1) - 1)``
shrinks with ``b``. :func:`gradient_magnitudes` evaluates the table on samples of ``x`` (no learning involved);
:func:`autograd_partials` gets the same numbers from :mod:`lowbit.quantizers` by autograd, per element, as a check
that the library's straight-through gradients are the table's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["gradient_magnitudes", "closed_form_partials", "autograd_partials", "PARTIALS"]

#: (parametrization, parameter) pairs, in the order of the figure
PARTIALS = (("U1", "b"), ("U1", "d"), ("U2", "b"), ("U2", "q_max"), ("U3", "d"), ("U3", "q_max"))
LN2 = math.log(2.0)


def _quantize(x: np.ndarray, d: float, q_max: float) -> np.ndarray:
    c = np.clip(x, -q_max, q_max)
    return d * np.sign(c) * np.floor(np.abs(c) / d + 0.5)  # round half away from zero, as eq. (1)


def closed_form_partials(x: np.ndarray, bits: int, q_max: float = 3.0) -> dict:
    """Per-element ``dQ/dtheta`` for every (parametrization, parameter) of :data:`PARTIALS`."""
    levels = 2 ** (bits - 1) - 1
    d = q_max / levels
    q = _quantize(x, d, q_max)
    inside = np.abs(x) <= q_max
    s = np.sign(x)
    return {
        ("U1", "b"): np.where(inside, 0.0, s * 2 ** (bits - 1) * LN2 * d),
        ("U1", "d"): np.where(inside, (q - x) / d, s * levels),
        ("U2", "b"): np.where(inside, -(2 ** (bits - 1) * LN2 / levels) * (q - x), 0.0),
        ("U2", "q_max"): np.where(inside, (q - x) / q_max, s),
        ("U3", "d"): np.where(inside, (q - x) / d, 0.0),
        ("U3", "q_max"): np.where(inside, 0.0, s),
    }


def gradient_magnitudes(bits: Iterable[int] = range(2, 9), n: int = 200_000, q_max: float = 3.0, seed: int = 0) -> dict:
    """For ``x ~ N(0, 1)``: ``{"bits": [...], "mean": {"U1/b": [mean |dQ/db| per b], ...}, "max": {...}}``.

    The mean weighs each region by its probability (the outside of a 3 sigma range holds 0.27 % of the samples);
    the max is the largest per-element partial, i.e. the table's entries themselves.
    """
    x = np.random.default_rng(seed).standard_normal(n)
    bits = list(bits)
    out = {"bits": bits, "q_max": q_max, "n": n, "seed": seed, "mean": {}, "max": {}}
    for b in bits:
        partials = closed_form_partials(x, b, q_max)
        for (param_set, name), values in partials.items():
            key = f"{param_set}/{name}"
            out["mean"].setdefault(key, []).append(float(np.mean(np.abs(values))))
            out["max"].setdefault(key, []).append(float(np.max(np.abs(values))))
    return out


def autograd_partials(x: torch.Tensor, bits: int, parametrization: str, q_max: float = 3.0) -> dict:
    """Per-element partials of the library's parametric quantizer (``pow2_step: false``), by autograd.

    Every element gets its own copy of the two scalars (a batched ``torch.func.vmap`` over one-element calls), so
    the result is ``dQ(x_i)/dtheta`` rather than the sum over elements that a plain ``backward`` gives.
    """
    from ..quantizers import build_quantizer

    levels = 2 ** (bits - 1) - 1
    values = {"b": float(bits), "d": q_max / levels, "q_max": q_max}
    partials = {}
    for _i, xi in enumerate(x.reshape(-1)):
        q = build_quantizer(
            {
                "type": "parametric",
                "parametrization": parametrization,
                "pow2_step": False,
                "init_bits": min(max(bits, 2), 8),
            },
            role="weight",
        )
        q.maybe_initialize(torch.ones(1))  # mark initialised; the values are set below
        with torch.no_grad():
            for name in q.learned_names:
                getattr(q, name).fill_(values[name])
        out = q(xi.reshape(1))
        grads = torch.autograd.grad(out.sum(), [getattr(q, name) for name in q.learned_names])
        for name, g in zip(q.learned_names, grads):
            partials.setdefault(name, []).append(float(g))
    return {name: np.asarray(v) for name, v in partials.items()}
