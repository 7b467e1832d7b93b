"""Mixed precision DNNs: all you need is a good parametrization (Uhlich et al., ICLR 2020; ALGORITHMS.md 5).

A uniform quantizer ``Q(x) = d round(clip(x, -q_max, q_max) / d)`` parametrized by (d, q_max) (U3; P3 for
power-of-two grids) learns per-layer bit widths ``b = ceil(log2(q_max / d + 1)) + 1`` under the memory penalty
``0.1 (relu(S_w − S_w0)² + relu(S_a − S_a0)²)``. Table: a small CNN fine-tuned from the shared float model at fixed
and learned bit widths, the budget being the weight memory of the same net at :data:`BUDGET_BITS` bits. Analysis: the
gradient magnitudes of U1/U2/U3 (:mod:`lowbit.reproduce.gradients`). The ``memory`` probe measures ``S_w`` and the
learned bit widths at the reported checkpoint.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .. import figures as F
from ..cells import Budget, Cell, Table
from ..claims import Check, fmt_error, lower
from ..gradients import gradient_magnitudes
from ..markdown import render_table
from ..modes import Mode
from ..paper import Analysis, Paper
from ..probes import memory_usage
from ..results import CellStats, by_role, error_of
from .common import CNN, budget_kwargs, mobilenet_kwargs, shared_float, shared_float_mobilenet

if TYPE_CHECKING:
    from torch import nn

    from ...data import DatasetSplits

__all__ = ["PAPER", "BUDGET_BITS"]

# Budget = the weight memory of the same net at 3 bits. Signed uniform and power-of-two grids need at least 2 bits
# ({-d, 0, d}), so a budget equal to the 2-bit net leaves no room for any layer to take more bits: the only
# allocation that meets it is the homogeneous 2-bit one (checked: U3 ends at 4/2/2/3 bits, 3 % over it).
BUDGET_BITS = 3

# ------------------------------------------------------------------------------------------------------ prose
TITLE = "Mixed precision: learned step and range"
AUTHORS = "Uhlich et al., ICLR 2020"
CLAIM = (
    "Parametrizing a uniform quantizer by its step d and range q_max (U3; P3 = (q_min, q_max) for power-of-two "
    "grids) gives bounded, nearly decoupled gradients, so per-layer bit widths can be learned under a memory "
    "budget: the learned heterogeneous network meets the budget with a lower error than a fixed homogeneous "
    "one, while parametrizations through the bit width (U1 = (b, d), U2 = (b, q_max)) train worse."
)
SETUP = (
    "Small CNN conv16-conv32-fc128 fine-tuned from the shared float checkpoint with ADAM LR 1e-3, cosine, batch "
    "64; weights, biases and activations quantized with the parametric quantizers (network input in float; d "
    "snapped to powers of two as in the official code). Learned cells start at 4 bits and carry the penalty 0.1 "
    "(relu(S_w − S_w0)² + relu(S_a − S_a0)²), memories in KB, with S_w0 = the weight memory of the same net at "
    f"{BUDGET_BITS} bits and S_a0 = its largest activation at 4 bits (constraints 8a + 8c); their test error is "
    "read at the best validation epoch among those meeting both budgets. Fixed and homogeneous cells carry no "
    "penalty; they report the best validation epoch. MobileNetV2 rows: `mobilenetv2-28` (depthwise 3×3 layers of "
    "72-1,296 weights, 1×1 layers 64-3,456) fine-tuned from its own float model, U3 under the same "
    f"penalty against the fixed and the learned-q_max homogeneous {BUDGET_BITS}-bit nets (the same weight memory as "
    "the budget)."
)
PREDICTIONS = {
    "u3_budget": "U3 meets the weight-memory budget",
    "heterogeneous": "U3's learned allocation is heterogeneous (layers get different weight bit widths)",
    "u3_vs_fixed": "U3 has lower error than the fixed homogeneous net of the same memory",
    "u3_vs_homogeneous": "U3 has lower error than the homogeneous net with learned q_max",
    "p3_budget": "P3 meets the weight-memory budget",
    "p3_vs_fixed": "P3 has lower error than the fixed homogeneous net of the same memory",
    "learned_q_max": "learning q_max beats a fixed grid at the same bit width",
    "bit_width_worse": "{name} (bit width parametrized) trains worse than U3",
    "u3_bounded": "U3's partial derivatives are bounded: |∂Q/∂d| ≤ 1/2, |∂Q/∂q_max| ≤ 1 for every b",
    "u1_grows": "U1's ∂Q/∂d outside the range grows like 2^(b−1) (per element)",
    "means_grow": "U1's ∂Q/∂d grows with b on average too (its outside part dominates as b grows)",
    "mb_u3_budget": "MobileNetV2-28: U3 meets the weight-memory budget",
    "mb_u3_vs_homogeneous": "MobileNetV2-28 (layers of very different size and sensitivity): learned per-layer bit "
    "widths (U3) beat the homogeneous net of the same weight memory (learned q_max), as in Uhlich's ResNet-18 and "
    "MobileNetV2 tables",
    "mb_u3_vs_fixed": "MobileNetV2-28: U3 beats the fixed homogeneous net of the same weight memory",
}
# where each check's setup differs from the paper's (ALGORITHMS.md 5)
SCALE = "small CNN on Fashion-MNIST, 6-epoch fine-tune (paper: CIFAR-10 ResNet-20 / ImageNet)"
MB_SCALE = "MobileNetV2-28 (width 8) on a 10k-image Fashion-MNIST pool, 4-epoch fine-tune (paper: ImageNet MobileNetV2)"
DIFFERS = {
    "budget": f"{SCALE}; budget = the net at {BUDGET_BITS}-bit weights (paper's CIFAR configs: 2-bit)",
    "heterogeneous": SCALE,
    "ordering": f"{SCALE}; learned cells read at the best validation epoch within budget, as the official code; "
    "equal weight memory, but activation memory is not matched (U3's activation budget bounds only the largest "
    "activation layer, constraint 8c)",
    "bit_width_worse": f"{SCALE}; same LR for all parametrizations; a run that missed its budget is not ranked; U1/U2 "
    "are charged round(b) as the official code charges them, although U2's power-of-two step can leave a grid whose "
    "codes need one bit more",
    "analysis": "x ~ N(0, 1) with q_max = 3σ held fixed, so d shrinks as b grows; the paper's growth of the "
    "U1/U2 b-partials like 2^b holds at a fixed d and is not tested here (at a fixed q_max they shrink)",
    "mb_budget": f"{MB_SCALE}; budget = the net at {BUDGET_BITS}-bit weights",
    "mb_ordering": f"{MB_SCALE}; equal weight memory (the budget); activation memory is not matched: U3's "
    "activation budget bounds only the largest activation layer (constraint 8c), so its smaller layers may take "
    "more activation bits than the homogeneous nets' 4; a U3 run that missed its budget is reported as missed, not "
    "ranked",
}
RULES = {
    "budget": "weight KB ≤ budget at the reported checkpoint, in every seed",
    "heterogeneous": "in at least one seed, the weight bits differ between layers",
    "bit_width_worse": "err({name}) > err(U3) beyond noise, or {name} diverged in every seed; a run that missed "
    "its budget is reported as missed, not ranked",
    "u3_bounded": "max over x and b of |∂Q/∂d| ≤ 0.5 and of |∂Q/∂q_max| ≤ 1",
    "u1_grows": "max |∂Q/∂d| of U1 at b = {b1} ≥ 2^({b1}−2)",
    "means_grow": "mean |∂Q/∂d| of U1 at b = {b1} ≥ 1.5 × at b = {b0}",
}
TABLE_HEADER = [
    "method",
    "test error %",
    "weight KB",
    "≤ budget (seeds)",
    "weight bits per layer",
    "activation bits per layer",
]
ALLOCATIONS = (("u3", "U3 (d, q_max)"), ("p3", "P3 (q_min, q_max)"), ("u1", "U1 (b, d)"), ("u2", "U2 (b, q_max)"))
BITS_CAPTION = (
    "Learned per-layer weight bit widths (seed 0) at the reported checkpoint, or at the last epoch for a "
    "run that never met the budget."
)
GRADIENTS_CAPTION = (
    "Gradient magnitudes of the three uniform parametrizations for x ~ N(0, 1), q_max = 3σ fixed (so "
    "d = q_max/(2^(b−1)−1) shrinks as b grows): mean over samples (left) and the largest per-sample "
    "value (right)."
)

# ---------------------------------------------------------------------------------------------- experiments
BUDGETS = {
    "full": Budget(epochs=6, train_subset=15_000, test_subset=5_000, pretrain_epochs=12),
    "quick": Budget(epochs=12, pretrain_epochs=30),
}


def _parametric(parametrization: str, bits: int, frozen: tuple = (), pow2_step: bool = True) -> dict:
    spec = {"type": "parametric", "parametrization": parametrization, "init_bits": bits}
    if frozen:
        spec["frozen"] = list(frozen)
    if not pow2_step:
        spec["pow2_step"] = False
    return spec


def _quantize(weight: dict, activation: dict) -> dict:
    """Weights and biases with ``weight``, activations with ``activation``; the network input is not quantized."""
    return {
        "weight": weight,
        "bias": dict(weight),
        "input": activation,
        "overrides": [{"match": "first", "input": None}],
    }


def _fixed(bits: int) -> dict:
    """U3 with d and q_max frozen at their initial values: a fixed homogeneous grid, no penalty."""
    return {
        "name": f"mp-fixed-w{bits}",
        "train.regularizers": [],
        "quantize": _quantize(_parametric("U3", bits, ("d", "q_max")), _parametric("U3", 4, ("d", "q_max"))),
    }


def _homogeneous() -> dict:
    """U2 with b frozen learns q_max at a fixed bit width; d = q_max / (2^(b-1) - 1) is left unsnapped, because
    snapping it to a power of two can leave more levels than b bits index (the grid then needs b + 1 bits for its
    codes, while the net is charged round(b), as the official code does)."""
    return {
        "name": f"mp-homogeneous-w{BUDGET_BITS}",
        "train.regularizers": [],
        "quantize": _quantize(
            _parametric("U2", BUDGET_BITS, ("b",), pow2_step=False), _parametric("U2", 4, ("b",), pow2_step=False)
        ),
    }


def cells(mode: Mode, budget: Budget) -> list:
    base = dict(model="small-cnn", model_options=dict(CNN), init_from="shared/float-cnn", **budget_kwargs(mode, budget))
    penalty = [
        {
            "type": "memory_budget",
            "weight_bits": BUDGET_BITS,
            "activation_bits": 4,
            "activation_reduce": "max",
            "strength": 0.1,
        }
    ]
    out = [shared_float(mode, budget)]
    for bits in (2, BUDGET_BITS, 4):
        out.append(
            Cell(
                id=f"uhlich/fixed-w{bits}",
                label=f"fixed {bits}-bit W (4-bit A), d and q_max fixed",
                recipe="mp-u3",
                role=f"fixed{bits}",
                changes=_fixed(bits),
                probes=("memory",),
                kind="parametric",
                **base,
            )
        )
    out.append(
        Cell(
            id=f"uhlich/homogeneous-w{BUDGET_BITS}",
            label=f"homogeneous {BUDGET_BITS}-bit W (4-bit A), learned q_max (U2, b frozen, d not snapped)",
            recipe="mp-u3",
            role="homog",
            changes=_homogeneous(),
            probes=("memory",),
            kind="parametric",
            **base,
        )
    )
    for name in ("U3", "P3", "U1", "U2"):
        out.append(
            Cell(
                id=f"uhlich/{name.lower()}-budget",
                label=f"learned bit widths, {name}, budget = {BUDGET_BITS}-bit W",
                recipe=f"mp-{name.lower()}",
                role=name.lower(),
                changes={"train.regularizers": penalty},
                probes=("memory",),
                kind="pow2" if name == "P3" else "parametric",
                **base,
            )
        )
    return out + mobilenet_cells(mode, penalty)


def mobilenet_cells(mode: Mode, penalty: list) -> list:
    """U3 under the budget against the homogeneous nets of the same weight memory on ``mobilenetv2-28``, whose layers
    differ in size by a factor ~50 (64 to 3,456 weights; a depthwise 3×3 layer has 9 weights per channel), as in
    Uhlich's ResNet-18 and MobileNetV2 tables."""
    base = dict(probes=("memory",), kind="parametric", **mobilenet_kwargs(mode))
    return [
        shared_float_mobilenet(mode),
        Cell(
            id=f"uhlich/mobilenetv2/fixed-w{BUDGET_BITS}",
            label=f"MobileNetV2-28: fixed {BUDGET_BITS}-bit W (4-bit A), d and q_max fixed",
            recipe="mp-u3",
            role=f"mb-fixed{BUDGET_BITS}",
            changes=_fixed(BUDGET_BITS),
            **base,
        ),
        Cell(
            id=f"uhlich/mobilenetv2/homogeneous-w{BUDGET_BITS}",
            label=f"MobileNetV2-28: homogeneous {BUDGET_BITS}-bit W (4-bit A), learned q_max",
            recipe="mp-u3",
            role="mb-homog",
            changes=_homogeneous(),
            **base,
        ),
        Cell(
            id="uhlich/mobilenetv2/u3-budget",
            label=f"MobileNetV2-28: learned bit widths, U3, budget = {BUDGET_BITS}-bit W",
            recipe="mp-u3",
            role="mb-u3",
            changes={"train.regularizers": penalty},
            **base,
        ),
    ]


def memory_probe(model: nn.Module, splits: DatasetSplits) -> dict:
    """Weight memory at the reported checkpoint, the budget (the net at BUDGET_BITS) and the per-layer bits."""
    return memory_usage(model, BUDGET_BITS)


def gradients_request(mode: Mode) -> dict:
    return {"bits": list(range(2, 9)), "n": 200_000 if mode.name != "smoke" else 20_000, "q_max": 3.0, "seed": 0}


def gradients_compute(request: dict) -> dict:
    return gradient_magnitudes(bits=request["bits"], n=request["n"], q_max=request["q_max"], seed=request["seed"])


GRADIENTS = Analysis(name="gradients", request=gradients_request, compute=gradients_compute)


# --------------------------------------------------------------------------------------------------- checks
def checks(stats: dict, analyses: dict) -> list:
    r = by_role(stats)
    u3, p3, homog = r.get("u3"), r.get("p3"), r.get("homog")
    fixed_role = next((k for k in ("fixed3", "fixed2") if k in r), "fixed3")
    fixed, fixed_name = r.get(fixed_role), f"fixed {fixed_role[-1]}-bit"
    out = [
        budget_met(PREDICTIONS["u3_budget"], u3),
        heterogeneous(u3),
        within_budget_lower(PREDICTIONS["u3_vs_fixed"], u3, fixed, "U3", fixed_name),
        within_budget_lower(PREDICTIONS["u3_vs_homogeneous"], u3, homog, "U3", "homogeneous learned"),
        budget_met(PREDICTIONS["p3_budget"], p3),
        within_budget_lower(PREDICTIONS["p3_vs_fixed"], p3, fixed, "P3", fixed_name),
        lower(
            PREDICTIONS["learned_q_max"], homog, fixed, "homogeneous learned", fixed_name, differs=DIFFERS["ordering"]
        ),
    ]
    for name in ("U1", "U2"):
        out.append(worse_or_failed(PREDICTIONS["bit_width_worse"].format(name=name), r.get(name.lower()), u3, name))
    mb_u3, mb_differs = r.get("mb-u3"), DIFFERS["mb_ordering"]
    out += [
        budget_met(PREDICTIONS["mb_u3_budget"], mb_u3, DIFFERS["mb_budget"]),
        within_budget_lower(
            PREDICTIONS["mb_u3_vs_homogeneous"], mb_u3, r.get("mb-homog"), "U3", "homogeneous", mb_differs
        ),
        within_budget_lower(
            PREDICTIONS["mb_u3_vs_fixed"],
            mb_u3,
            r.get(f"mb-fixed{BUDGET_BITS}"),
            "U3",
            f"fixed {BUDGET_BITS}-bit",
            mb_differs,
        ),
    ]
    return out + gradient_checks(analyses.get("gradients"))


def missed_budget(s: Optional[CellStats]) -> str:
    """``"missed budget: X KB > Y KB"`` when a seed of ``s`` never met its memory budget (no admissible
    checkpoint; memory at the last epoch), else ``""``."""
    if s is None or not s.unmet:
        return ""
    missed = [
        rec["probes"]["memory"]
        for rec in s.records
        if not rec.get("diverged") and error_of(rec, "best_budget") is None and rec.get("probes", {}).get("memory")
    ]
    shown = ", ".join(f"{m['weight_kb']:.2f} KB > {m['budget_kb']:.2f} KB" for m in missed) or "memory not probed"
    seeds = f" in {s.unmet}/{len(s.records)} seeds" if s.unmet < len(s.records) else ""
    return f"missed budget{seeds}: {shown}"


def _not_ranked(claim: str, rule: str, cells: dict, differs: str) -> Optional[Check]:
    """A check that is not ranked because a cell in ``cells`` (name -> stats) missed its budget; else ``None``."""
    missed = {name: missed_budget(s) for name, s in cells.items()}
    missed = {name: text for name, text in missed.items() if text}
    if not missed:
        return None
    observed = "; ".join(f"{name}: {fmt_error(cells[name])}" for name in cells)
    status = "; ".join(f"{name} {text}" for name, text in missed.items())
    return Check(claim, rule, observed, None, differs=differs, status=status)


def within_budget_lower(
    claim: str,
    a: Optional[CellStats],
    b: Optional[CellStats],
    name_a: str,
    name_b: str,
    differs: str = DIFFERS["ordering"],
) -> Check:
    """The ordering ``err(a) < err(b)`` beyond noise, unless a run of either cell missed its memory budget: such a
    cell's error is only over the seeds that met it, so it is reported as missed instead of ranked."""
    rule = f"err({name_a}) < err({name_b})"
    return _not_ranked(claim, rule, {name_a: a, name_b: b}, differs) or lower(
        claim, a, b, name_a, name_b, differs=differs
    )


def _memories(s: Optional[CellStats]) -> list:
    """The ``memory`` probe of every seed that has one."""
    return [rec["probes"]["memory"] for rec in (s.records if s else []) if rec.get("probes", {}).get("memory")]


def budget_met(claim: str, s: Optional[CellStats], differs: str = DIFFERS["budget"]) -> Check:
    """Every seed's reported checkpoint is within the weight budget (a diverged seed counts as not within)."""
    rule = RULES["budget"]
    if s is None or not s.records:
        return Check(claim, rule, "–", None, differs=differs)
    probed = [rec["probes"] for rec in s.records if rec.get("probes", {}).get("memory")]
    met = [p["memory"]["weight_kb"] <= p["memory"]["budget_kb"] + 1e-9 for p in probed] + [False] * s.diverged
    if not met:
        return Check(claim, rule, "–", None, differs=differs)
    shown = ", ".join(
        f"{p['memory']['weight_kb']:.2f}/{p['memory']['budget_kb']:.2f} KB ({p.get('checkpoint')})" for p in probed
    )
    if s.diverged:
        shown += f", {s.diverged} diverged"
    return Check(claim, rule, f"{sum(met)}/{len(met)} seeds: {shown}", all(met), differs=differs)


def heterogeneous(s: Optional[CellStats]) -> Check:
    claim, rule = PREDICTIONS["heterogeneous"], RULES["heterogeneous"]
    if s is None or not s.records:
        return Check(claim, rule, "–", None, differs=DIFFERS["heterogeneous"])
    allocations = [tuple(v["weight"] for v in memory["bits"].values()) for memory in _memories(s)]
    if not allocations:
        return Check(claim, rule, "–", None, differs=DIFFERS["heterogeneous"])
    return Check(
        claim,
        rule,
        "; ".join("/".join(str(b) for b in a) for a in allocations),
        any(len(set(a)) > 1 for a in allocations),
        differs=DIFFERS["heterogeneous"],
    )


def worse_or_failed(claim: str, s: Optional[CellStats], u3: Optional[CellStats], name: str) -> Check:
    """``name`` trains worse than U3: by the ordering rule, or because it diverged in every seed. A run of either
    that missed its memory budget is reported as missed (its memory against the budget), never ranked."""
    rule, differs = RULES["bit_width_worse"].format(name=name), DIFFERS["bit_width_worse"]
    not_ranked = _not_ranked(claim, rule, {name: s, "U3": u3}, differs)
    if not_ranked is not None:
        return not_ranked
    if s is not None and s.records and s.diverged == len(s.records):
        return Check(claim, rule, f"{name}: diverged in every seed; U3 {fmt_error(u3)}", True, differs=differs)
    check = lower(claim, u3, s, "U3", name, differs=differs)
    check.rule = rule
    return check


def gradient_checks(grads: Optional[dict]) -> list:
    """U3's partials are bounded (|∂Q/∂d| ≤ 1/2, |∂Q/∂q_max| ≤ 1); U1's ∂Q/∂d grows like 2^(b−1) outside the range,
    and on average. At a fixed q_max the b-partials of U1/U2 shrink with d, so no check claims they grow."""
    keys = ("u3_bounded", "u1_grows", "means_grow")
    if not grads:
        return [Check(PREDICTIONS[k], "–", "–", None, differs=DIFFERS["analysis"]) for k in keys]
    mx, mean = grads["max"], grads["mean"]
    bounded = max(mx["U3/d"]) <= 0.5 + 1e-9 and max(mx["U3/q_max"]) <= 1 + 1e-9
    grows = mx["U1/d"][-1] >= 2 ** (grads["bits"][-1] - 2)
    u1_d = mean["U1/d"]
    b0, b1 = grads["bits"][0], grads["bits"][-1]
    others = ", ".join(f"{k} ×{mean[k][-1] / mean[k][0]:.2f}" for k in ("U1/b", "U2/b", "U2/q_max"))
    observed = [
        f"max |∂Q/∂d| = {max(mx['U3/d']):.3f}, max |∂Q/∂q_max| = {max(mx['U3/q_max']):.3f}",
        f"max |∂Q/∂d| = {', '.join(f'{v:.0f}' for v in mx['U1/d'])} for b = {b0}..{b1}",
        f"mean |∂Q/∂d| of U1: {u1_d[0]:.3f} → {u1_d[-1]:.3f} (×{u1_d[-1] / u1_d[0]:.2f}); at fixed q_max the "
        f"other U1/U2 means change {others}",
    ]
    holds = [bounded, grows, u1_d[-1] >= 1.5 * u1_d[0]]
    # properties of the formulas the quantizers implement, evaluated on samples: they confirm the implementation
    # has the paper's analytical property but are no experiment that could disagree with the paper, so they are
    # shown with their outcome and left out of the verdict
    return [
        Check(
            PREDICTIONS[k],
            RULES[k].format(b0=b0, b1=b1),
            o,
            None,
            differs=DIFFERS["analysis"],
            status=f"{'holds' if ok else 'does not hold'} (a property of the formulas; not counted in the verdict)",
        )
        for k, o, ok in zip(keys, observed, holds)
    ]


# ------------------------------------------------------------------------------------------- table, figures
def _bits_text(s: CellStats, slot: str = "weight") -> str:
    """The distinct per-layer bit allocations of the seeds ("4/2/2/3"; "f" = a float layer)."""
    allocations = [
        "/".join(str(v[slot]) if v[slot] is not None else "f" for v in memory["bits"].values())
        for memory in _memories(s)
    ]
    if not allocations:
        return "–"
    return "; ".join(sorted(set(allocations), key=allocations.index))


def markdown(table: Table, stats: dict) -> str:
    rows = []
    budget = next((m["budget_kb"] for s in stats.values() for m in _memories(s)), None)
    for s in stats.values():
        memory = _memories(s)
        kb = f"{statistics.fmean(m['weight_kb'] for m in memory):.2f}" if memory else "–"
        if memory and budget is not None and abs(memory[0]["budget_kb"] - budget) > 1e-9:
            kb += f" (budget {memory[0]['budget_kb']:.2f})"  # another model's budget than the header's
        met = f"{sum(m['weight_kb'] <= m['budget_kb'] + 1e-9 for m in memory)}/{len(memory)}" if memory else "–"
        if s.cell.role == "float":
            kb = "float (32-bit)"
        error = s.format()
        if not s.errors and s.unmet and s.final_errors:
            error += f" (final epoch: {statistics.fmean(s.final_errors):.2f})"
        rows.append([s.cell.label, error, kb, met, _bits_text(s), _bits_text(s, "input") if memory else "–"])
    header = list(TABLE_HEADER)
    if budget:
        header[2] = f"weight KB (budget {budget:.2f})"
    return render_table(header, rows)


def figures(table: Table, stats: dict, analyses: dict, fig_dir: Path) -> list:
    out = []
    r = by_role(stats)
    allocations, shares = [], None
    for role, label in ALLOCATIONS:
        memories = _memories(r.get(role))
        if memories:
            allocations.append((label, {k: v["weight"] for k, v in memories[0]["bits"].items()}))
        shares = shares or next((m["layer_shares"] for m in memories if "layer_shares" in m), None)
    budget_bits = next(
        (c.changes["train.regularizers"][0]["weight_bits"] for c in table.cells if c.changes.get("train.regularizers")),
        None,
    )
    path = F.bits_figure(
        allocations,
        fig_dir / "uhlich_bits.png",
        f"budget = the net at {budget_bits:g}-bit weights" if budget_bits else "",
        budget_bits,
        shares,
    )
    if path:
        out.append((BITS_CAPTION, path))
    grads = analyses.get("gradients")
    if grads:
        out.append((GRADIENTS_CAPTION, F.gradient_figure(grads, fig_dir / "uhlich_gradients.png")))
    return out


PAPER = Paper(
    key="uhlich",
    title=TITLE,
    authors=AUTHORS,
    claim=CLAIM,
    setup=SETUP,
    select="best_budget",
    budgets=BUDGETS,
    cells=cells,
    checks=checks,
    markdown=markdown,
    figures=figures,
    probes={"memory": memory_probe},
    analyses=(GRADIENTS,),
)
