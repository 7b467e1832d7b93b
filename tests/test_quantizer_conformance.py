"""Every registered quantizer family keeps the protocol of :mod:`lowbit.quantizers.base`.

For representative configurations of each family in ``lowbit.quantizers.QUANTIZERS`` (roles, signed and unsigned
grids, bit widths, the six Uhlich parametrizations, min-max granularities, stochastic rounding), once initialised on
a random tensor:

* ``bits`` is a Python int in the family's range, equal to ``bit_width()``;
* in eval mode ``encode(x).dequantize() == forward(x)`` exactly, with codes that fit ``bits``, also for values far
  outside the grid (where a careless straight-through form would lose the level to float rounding);
* ``eval_grid()`` describes what eval-mode ``forward`` computes: its formula, applied here independently in float64,
  gives the same values (up to float32 rounding at exact ties), and it has no more levels than ``bits`` can index;
* ``state_dict`` round-trips into a fresh quantizer (another seed) that evaluates identically and, in training,
  draws the same rounding noise.

A family registered without configurations below fails ``test_quantizer_keeps_the_protocol`` by name.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import torch

from lowbit.quantizers import QUANTIZERS, build_quantizer
from lowbit.quantizers.grids import HALF_AWAY, AffineFloat, GridUnavailable, IntegerGrid, Pow2Grid, SignGrid


@dataclass(frozen=True)
class Case:
    spec: dict  # recipe entry without "type"
    role: str
    positive: bool = False  # feed post-ReLU (non-negative) data
    fixed_grid: bool = True  # False: eval_grid() must raise GridUnavailable (range recomputed from every tensor)
    codes: bool = True  # False: encode() must refuse (no integer codes)
    label: str = field(default="", compare=False)


def _binary() -> list[Case]:
    specs = [{}, {"scale": 0.25}, {"rounding": "stochastic"}, {"rounding": "stochastic", "eval_mode": "float"}]
    return [Case(spec, role) for spec in specs for role in ("weight", "activation")]


def _uniform() -> list[Case]:
    cases = []
    for role, bits, signed in itertools.product(
        ("weight", "activation", "gradient", "bias"), (2, 4, 8, 12), (True, False, None)
    ):
        cases.append(Case({"bits": bits, "signed": signed}, role, positive=signed is False))
    cases += [
        Case({"bits": 3, "symmetric": False}, "weight"),
        Case({"bits": 4, "step": 0.1}, "activation"),
        Case({"bits": 4, "rounding": "stochastic"}, "weight"),
        Case({"bits": 8, "rounding": "stochastic", "signed": True}, "gradient"),
        Case({"bits": 2, "eval_mode": "float", "rounding": "stochastic"}, "weight"),
    ]
    return cases


def _minmax() -> list[Case]:
    cases = []
    for role, granularity, zero_point, (bits, rounding) in itertools.product(
        ("weight", "activation", "gradient", "bias"),
        ("tensor", "channel", "sample"),
        ("integer", "exact"),
        ((2, "nearest"), (8, "stochastic"), (5, "nearest")),
    ):
        spec = {"bits": bits, "granularity": granularity, "zero_point": zero_point, "rounding": rounding}
        cases.append(Case(spec, role, fixed_grid=granularity == "sample", codes=zero_point == "integer"))
    cases += [
        Case({}, role, fixed_grid=role == "activation", codes=role != "gradient")
        for role in ("weight", "activation", "gradient")
    ]  # Banner's defaults by role
    cases.append(Case({"bits": 4, "granularity": "sample"}, "activation", positive=True))
    cases.append(Case({"bits": 8, "eval_mode": "float"}, "activation"))
    return cases


def _lsq() -> list[Case]:
    cases = [
        Case({"bits": bits, "signed": signed}, role, positive=positive)
        for role, bits, signed, positive in itertools.product(
            ("weight", "activation"), (2, 3, 4, 8), (True, False, "auto", None), (False, True)
        )
    ]
    cases += [
        Case({"bits": 4, "init_step": 0.05}, "weight"),
        Case({"bits": 4, "grad_scale": "per_sample"}, "activation"),
        Case({"bits": 2, "eval_mode": "float"}, "activation"),
    ]
    return cases


def _parametric() -> list[Case]:
    cases = []
    for name, role, signed, init_bits, positive in itertools.product(
        ("U1", "U2", "U3", "P1", "P2", "P3"), ("weight", "activation"), (True, False, None), (3, 4, 8), (False, True)
    ):
        cases.append(Case({"parametrization": name, "signed": signed, "init_bits": init_bits}, role, positive))
    cases += [Case({"parametrization": p, "pow2_step": False}, "weight") for p in ("U1", "U2", "U3")]
    cases += [
        Case({"parametrization": p, "with_zero": with_zero}, role)
        for p in ("P1", "P2", "P3")
        for role in ("weight", "activation")
        for with_zero in (False, True)
    ]
    cases += [
        Case({"parametrization": "U2", "frozen": ["b"]}, "weight"),
        Case({"parametrization": "P3", "eval_mode": "float"}, "activation"),
    ]
    return cases


#: recipe ``type`` -> configurations; every entry of ``QUANTIZERS`` needs one
CONFIGS = {"binary": _binary(), "uniform": _uniform(), "minmax": _minmax(), "lsq": _lsq(), "parametric": _parametric()}


def _cases():
    for kind in QUANTIZERS:
        configs = CONFIGS.get(kind)
        if not configs:
            yield pytest.param(kind, None, id=f"{kind}-has-no-configurations")
            continue
        for i, case in enumerate(configs):
            options = ",".join(f"{k}={v}" for k, v in case.spec.items())
            yield pytest.param(kind, case, id=f"{kind}-{i}-{case.role}-{options}{'-relu' if case.positive else ''}")


# ---------------------------------------------------------------------------------- grid formulas, independently
def _round(t: np.ndarray, rounding: str) -> np.ndarray:
    return np.sign(t) * np.floor(np.abs(t) + 0.5) if rounding == HALF_AWAY else np.round(t)  # np.round: half even


def _near_tie(t: np.ndarray) -> np.ndarray:
    """Where float32 and float64 evaluation may round differently: within float32 error of a half-integer."""
    return np.abs(np.abs(t - np.floor(t)) - 0.5) < 1e-4


def _integer(grid: IntegerGrid, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.float64(grid.scale)
    t = x / s
    levels = np.clip(_round(t, grid.rounding) + grid.zero_point, grid.l_min, grid.l_max)
    return s * (levels - grid.zero_point), _near_tie(t)


def _affine(grid: AffineFloat, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, z = np.float64(grid.scale), np.float64(grid.zero_point)
    t = x / s + z
    return s * (np.clip(np.round(t), grid.u_min, grid.u_max) - z), _near_tie(t)


def _pow2(grid: Pow2Grid, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not grid.signed:
        x = np.maximum(x, 0.0)
    a = np.abs(x)
    with np.errstate(divide="ignore"):
        e = np.log2(a)
    finite = np.where(np.isfinite(e), e, 0.0)
    magnitude = np.clip(np.exp2(_round(finite, HALF_AWAY)), grid.q_min, grid.q_max)
    unsure = _near_tie(finite) & np.isfinite(e)
    if grid.threshold is not None:
        threshold = np.float64(grid.threshold)
        magnitude = np.where(a < threshold, 0.0, magnitude)
        unsure |= np.abs(a - threshold) < 1e-6 * threshold
        return np.sign(x) * magnitude, unsure
    # no zero level (the official code's power-of-two weights): 0 maps to +q_min
    magnitude = np.where(a == 0, np.float64(grid.q_min), magnitude)
    return np.where(x >= 0, 1.0, -1.0) * magnitude, unsure


def _sign(grid: SignGrid, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.float64(grid.scale)
    return np.where(x >= 0, s, -s), np.zeros(x.shape, dtype=bool)


#: grid type -> (values, where float32 may round the other way) of its formula
FORMULAS = {IntegerGrid: _integer, AffineFloat: _affine, Pow2Grid: _pow2, SignGrid: _sign}


def _levels(grid) -> int:
    if isinstance(grid, IntegerGrid):
        return grid.l_max - grid.l_min + 1
    if isinstance(grid, AffineFloat):
        return int(grid.u_max - grid.u_min) + 1
    if isinstance(grid, Pow2Grid):
        magnitudes = int(round(np.log2(np.float64(grid.q_max) / np.float64(grid.q_min)))) + 1
        return magnitudes * (2 if grid.signed else 1) + (grid.threshold is not None)
    return 2


def _has_negative_levels(grid) -> bool:
    if isinstance(grid, IntegerGrid):
        return grid.l_min < grid.zero_point
    if isinstance(grid, AffineFloat):
        return grid.u_min < grid.zero_point
    return grid.signed if isinstance(grid, Pow2Grid) else True


# ----------------------------------------------------------------------------------------------------------- test
def _data(gen: torch.Generator, positive: bool, spread: float) -> torch.Tensor:
    x = torch.randn(8, 6, 3, 3, generator=gen) * spread + 0.1
    return x.relu() if positive else x


@pytest.mark.parametrize("kind,case", list(_cases()))
def test_quantizer_keeps_the_protocol(kind: str, case: Optional[Case]):
    assert case is not None, f"quantizer family {kind!r} is registered but has no configurations in CONFIGS"
    spec = {"type": kind, **case.spec}
    gen = torch.Generator().manual_seed(5)
    q = build_quantizer(spec, role=case.role, seed=3)
    q.train()
    for _ in range(2):  # initialisation, then a second batch (running ranges)
        q(_data(gen, case.positive, 1.0))
    q.eval()
    x = _data(gen, case.positive, 1.5)  # wider than training: eval clips
    with torch.no_grad():
        y = q(x)

    bits = q.bits
    assert type(bits) is int and 1 <= bits <= 16
    assert bits == int(q.bit_width().item())
    if "bits" in case.spec:
        assert bits == case.spec["bits"]
    assert isinstance(q.signed, bool)

    if not case.fixed_grid:
        with pytest.raises(GridUnavailable, match="granularity"):
            q.eval_grid()
        grid = "per tensor"
    else:
        grid = q.eval_grid()
    passthrough = grid is None
    if passthrough:
        assert q.eval_mode == "float" and torch.equal(y, x)
    elif isinstance(grid, tuple(FORMULAS)):
        expected, unsure = FORMULAS[type(grid)](grid, x.double().numpy())
        assert unsure.mean() < 0.01
        np.testing.assert_allclose(y.double().numpy()[~unsure], expected[~unsure], rtol=1e-6, atol=1e-12)
        assert _levels(grid) <= 2**bits
        assert _has_negative_levels(grid) == q.signed
    else:
        assert grid == "per tensor", f"{type(grid).__name__} has no formula in FORMULAS"

    if not case.codes:
        with pytest.raises(ValueError, match="integer zero point"):
            q.encode(x)
    else:
        codes = q.encode(x)
        assert codes.bits == bits and int(codes.indices.max()) < 2**bits
        if not passthrough:
            assert torch.equal(codes.dequantize().reshape(x.shape).to(x.dtype), y)
            # far outside the grid, a straight-through form like x + (q - x).detach() loses q to float rounding
            big = x * 4096.0
            with torch.no_grad():
                assert torch.equal(q.encode(big).dequantize().reshape(big.shape).to(big.dtype), q(big))

    fresh = build_quantizer(spec, role=case.role, seed=11)
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    assert fresh.bits == bits and fresh.signed == q.signed
    if case.fixed_grid:
        assert fresh.eval_grid() == grid
    q.train(), fresh.train()
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))  # the same stochastic rounding draws too
