"""The five papers' comparisons, as data: tables of cells, each cell one training configuration run over seeds.

A :class:`Cell` is everything :func:`lowbit.train.run` needs except the seed and the output directory: a shipped
recipe, dotted ``changes`` to it, a model, the data budget and, for fine-tuning cells, the id of the float cell whose
checkpoint (same seed) it starts from. A :class:`Table` groups the cells that one paper's claim compares; every cell
of a table gets the same data, epochs and schedule (only what the comparison is about differs).

Three modes size the runs (:data:`MODES`):

* ``full``: Fashion-MNIST, 3 seeds, subsets and epochs chosen so that the whole run takes about 2-2.5 h on 2 CPU
  cores with one torch thread (see :func:`lowbit.reproduce.runner.estimate_seconds`);
* ``quick``: sklearn ``digits``, 1 seed, under 10 minutes;
* ``smoke``: ``digits`` with tiny subsets, 1 epoch and two cells per table, for the tests and CI.

Which numbers a table reports (``select``): ``best_val`` is BinaryConnect's protocol (the test error at the epoch
with the best validation error); ``final`` the test error after the last epoch (cosine schedules that end at LR 0,
and Bin Regularization, which only acts in the second half of the fine-tune); ``best_budget`` Uhlich's protocol
(the best validation epoch among those that satisfy the memory budget).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Optional

__all__ = ["Cell", "Table", "Budget", "Mode", "MODES", "TABLE_KEYS", "build_tables", "mode_named", "cells_of"]

TABLE_KEYS = ("bc", "lide", "lsq", "banner", "uhlich")
#: bumped when a change to this package (a probe, a default) changes what a cached result would contain
RESULTS_VERSION = 1

# model options shared by every mode (the architecture does not change with the budget)
MLP_BC = {"hidden": 512, "depth": 2}          # ALGORITHMS 1.8: 784-512-512-10, BN after each layer, BN'd output
MLP_LIDE = {"hidden": 256, "depth": 2}        # ALGORITHMS 2.6: 64-256-256-10 on digits
CNN = {"channels": [16, 32], "fc": 128}       # 2 conv + 2 FC (LSQ 3a.6); narrow so the full run fits in 2-2.5 h


@dataclass(frozen=True)
class Budget:
    """Data and epochs of one table in one mode.

    ``train_subset`` is the size of the pool the train and validation splits are cut from (10 % validation);
    ``None`` uses the whole official training set. ``pretrain_epochs``: epochs of the shared float model that the
    fine-tuning tables start from.
    """

    epochs: int
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    pretrain_epochs: int = 0


@dataclass(frozen=True)
class Cell:
    """One row (or one row x column) of a table: a training configuration, run once per seed.

    ``probes`` name measurements taken after training (see :mod:`lowbit.reproduce.probes`): ``sign_eval`` (BC-stoch
    evaluated with sign(W), and with BatchNorm statistics re-estimated for the real weights), ``weights``
    (distance of the weights to the quantization levels and their histograms), ``memory`` (weight KB of the
    selected checkpoint).
    """

    id: str                      # unique across tables; also the directory of its results ("bc/mlp/bc-det")
    label: str                   # row label
    recipe: str
    role: str                    # what the claims call this cell ("float", "bc-det", ...)
    model: str
    model_options: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)
    column: str = ""             # a second table dimension (BinaryConnect: MLP / CNN)
    data: str = "digits"
    epochs: int = 1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    init_from: Optional[str] = None   # id of the float cell (same seed) this cell fine-tunes
    probes: tuple = ()
    note: str = ""               # one line shown under the table
    # bumped when a change to the library alters this cell's results (and only this cell's), so that resuming
    # re-runs it without invalidating the rest of the cache
    revision: int = 0

    def train_kwargs(self) -> dict:
        """The :class:`lowbit.train.TrainConfig` keywords of this cell (seed, out, init_from added by the runner)."""
        return {"recipe": self.recipe, "data": self.data, "model": self.model,
                "model_options": copy.deepcopy(self.model_options), "changes": copy.deepcopy(self.changes),
                "epochs": self.epochs, "train_subset": self.train_subset, "test_subset": self.test_subset,
                "pretrain_epochs": 0}

    def fingerprint(self, parent: Optional["Cell"] = None) -> str:
        """A short hash of everything that determines the cell's result (and its parent's, for fine-tuning)."""
        payload = {"train": self.train_kwargs(), "probes": list(self.probes), "version": RESULTS_VERSION,
                   "parent": parent.fingerprint() if parent is not None else None}
        if self.revision:
            payload["revision"] = self.revision
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    paper: str
    cells: tuple
    select: str = "final"        # best_val | final | best_budget (see the module docstring)
    columns: tuple = ("",)
    description: str = ""        # how the table was run (model, optimizer, schedule), one paragraph


@dataclass(frozen=True)
class Mode:
    name: str
    data: str
    seeds: int
    budgets: dict
    description: str
    cells_per_table: Optional[int] = None   # smoke: only the first few cells of each table
    toy_steps: int = 50_000
    threads: int = 1

    def budget(self, key: str) -> Budget:
        return self.budgets[key]


MODES = {
    # Fashion-MNIST: 54k train / 6k val / 10k test in full; the subsets below keep the run near 2-2.5 h (measured
    # throughput with one torch thread, see runner.THROUGHPUT); the test subset (5,000 images, a different seeded
    # draw per seed) bounds the evaluation cost, which is paid every epoch.
    "full": Mode(
        name="full", data="fashion-mnist", seeds=3,
        budgets={
            "bc": Budget(epochs=15, train_subset=15_000, test_subset=5_000),
            "lide": Budget(epochs=20, train_subset=15_000, test_subset=5_000),
            "lsq": Budget(epochs=6, train_subset=15_000, test_subset=5_000, pretrain_epochs=12),
            "banner": Budget(epochs=10, train_subset=15_000, test_subset=5_000),
            "uhlich": Budget(epochs=6, train_subset=15_000, test_subset=5_000, pretrain_epochs=12),
        },
        description="Fashion-MNIST, seeded subsets of the training and test sets, 3 seeds",
        toy_steps=100_000,
    ),
    "quick": Mode(
        name="quick", data="digits", seeds=1,
        budgets={
            "bc": Budget(epochs=30),
            "lide": Budget(epochs=40),
            "lsq": Budget(epochs=12, pretrain_epochs=30),
            "banner": Budget(epochs=25),
            "uhlich": Budget(epochs=12, pretrain_epochs=30),
        },
        description="sklearn digits (1,294 train / 144 validation / 359 test images of 8x8 pixels), 1 seed",
        toy_steps=100_000,
    ),
    "smoke": Mode(
        name="smoke", data="digits", seeds=1,
        budgets={key: Budget(epochs=1, train_subset=400, test_subset=100, pretrain_epochs=1) for key in TABLE_KEYS},
        description="smoke test: digits subsets, 1 epoch, two cells per table",
        cells_per_table=2, toy_steps=2_000,
    ),
}


def mode_named(name: str, seeds: Optional[int] = None) -> Mode:
    try:
        mode = MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}") from None
    return replace(mode, seeds=seeds) if seeds else mode


# --------------------------------------------------------------------------------------------------- helpers
def _float_changes(name: str) -> dict:
    """The recipe's training loop with nothing quantized (the float baseline of a comparison)."""
    return {"name": name, "quantize": {}}


def _budget_kwargs(mode: Mode, key: str) -> dict:
    b = mode.budget(key)
    return {"data": mode.data, "epochs": b.epochs, "train_subset": b.train_subset, "test_subset": b.test_subset}


def shared_float(mode: Mode) -> Cell:
    """The float small CNN that LSQ(+BR) and Uhlich fine-tune from: one run per seed, shared by both tables."""
    b = mode.budget("lsq")
    return Cell(id="shared/float-cnn", label="float (pre-trained, the fine-tuning start)", recipe="fp32",
                role="float", model="small-cnn", model_options=dict(CNN), data=mode.data,
                epochs=b.pretrain_epochs, train_subset=b.train_subset, test_subset=b.test_subset)


# ------------------------------------------------------------------------------------------- the tables
def bc_table(mode: Mode) -> Table:
    kw = _budget_kwargs(mode, "bc")
    cells = []
    for column, model, options in (("MLP", "mlp", MLP_BC), ("CNN", "small-cnn", CNN)):
        base = dict(model=model, model_options=dict(options), column=column, **kw)
        tag = column.lower()
        cells += [
            Cell(id=f"bc/{tag}/float", label="float (same loop, no binarization)", recipe="bc-det", role="float",
                 changes=_float_changes("bc-float"), **base),
            Cell(id=f"bc/{tag}/bc-det", label="BC-det (test with sign(W))", recipe="bc-det", role="bc-det", **base),
            Cell(id=f"bc/{tag}/bc-stoch", label="BC-stoch (test with real W)", recipe="bc-stoch", role="bc-stoch",
                 probes=("sign_eval",), **base),
            Cell(id=f"bc/{tag}/bc-det-noclip", label="BC-det, no clipping (ablation)", recipe="bc-det",
                 role="bc-det-noclip", changes={"train.policy.clip": False}, **base),
            Cell(id=f"bc/{tag}/bc-stoch-noclip", label="BC-stoch, no clipping (ablation)", recipe="bc-stoch",
                 role="bc-stoch-noclip", changes={"train.policy.clip": False}, probes=("sign_eval",), **base),
        ]
    return Table(key="bc", title="BinaryConnect", paper="Courbariaux, Bengio & David, NeurIPS 2015",
                 cells=tuple(cells), select="best_val", columns=("MLP", "CNN"),
                 description="Squared hinge loss on a BatchNorm'd 10-way output, ADAM with LR 3e-3 decayed "
                             "exponentially to 3e-5 over the run, batch 100, Glorot per-layer LR scale, latent weights "
                             "drawn from U(-1, 1) and clipped to [-1, 1] after every step (recipes `bc-det`, "
                             "`bc-stoch`); the float net runs the identical loop with no weight quantizer. MLP "
                             "input-512-512-10, small CNN conv16-conv32-fc128, both with BN after every layer. Test "
                             "error at the epoch with the best validation error, as the paper's code reports it.")


def lide_table(mode: Mode) -> Table:
    kw = _budget_kwargs(mode, "lide")
    base = dict(model="mlp", model_options=dict(MLP_LIDE), **kw)
    cells = (
        Cell(id="lide/adam", label="ADAM (float)", recipe="bc-adam", role="float",
             changes=_float_changes("adam-float"), **base),
        Cell(id="lide/bc-adam", label="BC-ADAM (float copy)", recipe="bc-adam", role="bc", **base),
        Cell(id="lide/big-sr-adam", label="Big SR-ADAM (batch 512, LR 3e-3 as the recipe)", recipe="big-sr-adam",
             role="big-sr-same-lr", **base),
        # 16x the batch at equal epochs is 16x fewer steps; SR moves a weight with probability ~ LR per step, so
        # the linear scaling rule (LR x 16) keeps the expected movement per epoch and isolates the variance effect
        Cell(id="lide/big-sr-adam-lr16", label="Big SR-ADAM (batch 512, LR 4.8e-2 = 16 x 3e-3)", recipe="big-sr-adam",
             role="big-sr", changes={"train.optimizer.lr": 0.048}, **base),
        Cell(id="lide/sr-adam", label="SR-ADAM (batch 32)", recipe="sr-adam", role="sr", **base),
        Cell(id="lide/r-adam", label="R-ADAM (batch 32)", recipe="r-adam", role="r", **base),
    )
    return Table(key="lide", title="Training quantized nets: BC vs R vs SR", paper="Li, De, Xu, Studer, Samet & "
                 "Goldstein, NeurIPS 2017", cells=cells, select="final",
                 description="Binary weights {-1, +1} (BatchNorm after every layer makes the scale irrelevant), MLP "
                             "input-256-256-10, cross-entropy, ADAM LR 3e-3 with a cosine schedule, batch 32 (Big "
                             "SR: 512), the same number of epochs for all (recipes `bc-adam`, `sr-adam`, "
                             "`big-sr-adam`, `r-adam`). R and SR keep no float copy: the weights are rounded back onto "
                             "{-1, +1} after every ADAM step. Test error after the last epoch.")


def lsq_table(mode: Mode) -> Table:
    kw = _budget_kwargs(mode, "lsq")
    e = kw["epochs"]
    base = dict(model="small-cnn", model_options=dict(CNN), init_from="shared/float-cnn", **kw)
    staged = {"train.regularizers": [{"type": "bin_reg", "strength": 0.5, "start_epoch": e // 2}]}
    cells = [shared_float(mode),
             Cell(id="lsq/float-ft", label="float, fine-tuned with the same schedule (control)", recipe="lsq-w8a8",
                  role="float-ft", changes=_float_changes("lsq-float-ft"), **base)]
    for bits in (8, 4, 3, 2):
        cells.append(Cell(id=f"lsq/w{bits}a{bits}", label=f"LSQ W{bits}/A{bits}", recipe=f"lsq-w{bits}a{bits}",
                          role=f"lsq{bits}", probes=("weights",), **base))
    for bits in (3, 2):
        cells.append(Cell(id=f"lsq/br-w{bits}a{bits}", label=f"LSQ + BR W{bits}/A{bits} (BR from epoch {e // 2 + 1})",
                          recipe=f"lsq-br-w{bits}a{bits}", role=f"br{bits}", changes=dict(staged),
                          probes=("weights",), **base))
    cells.append(Cell(id="lsq/br-w2a2-lambda50", label="LSQ + BR W2/A2, λ = 50 (investigation)",
                      recipe="lsq-br-w2a2", role="br2-lambda50",
                      changes={"train.regularizers": [{"type": "bin_reg", "strength": 50.0, "start_epoch": e // 2}]},
                      probes=("weights",), **base))
    cells.append(Cell(id="lsq/w2a2-g1", label="LSQ W2/A2 with g = 1 (ablation)", recipe="lsq-w2a2", role="lsq2-g1",
                      changes={"quantize.weight.grad_scale": "none", "quantize.input.grad_scale": "none"},
                      probes=("weights",), **base))
    return Table(key="lsq", title="LSQ and Bin Regularization", paper="Esser et al., ICLR 2020; Han et al., "
                 "ICCV 2021", cells=tuple(cells), select="final",
                 description="Small CNN conv16-conv32-fc128 pre-trained in float (recipe `fp32`, ADAM 2e-3, "
                             "cosine), then fine-tuned from that checkpoint (same seed) with LSQ: SGD momentum 0.9, "
                             "LR 0.01, cosine, weight decay 1e-4 (8/4 bit), 5e-5 (3 bit), 2.5e-5 (2 bit); first and "
                             "last layer at 8 bits (recipes `lsq-w*a*`). LSQ+BR: the same, plus 0.5 x Bin "
                             "Regularization from the middle of the fine-tune (staged strategy). Test error after the "
                             "last epoch; 'near level' = fraction of the weights of the low-bit layers within "
                             "0.05 step of a quantization level, after training.")


def banner_table(mode: Mode) -> Table:
    kw = _budget_kwargs(mode, "banner")
    # revision 1: Range BN as one autograd Function, gradient noise drawn as two 12-bit halves of one 24-bit draw
    base = dict(model="small-cnn", model_options=dict(CNN), revision=1, **kw)
    cells = (
        Cell(id="banner/float", label="float, BatchNorm", recipe="banner-w8a8g8", role="float",
             changes=_float_changes("banner-float"), **base),
        Cell(id="banner/float-rangebn", label="float, Range BN", recipe="banner-w8a8g8", role="float-rbn",
             changes={"name": "banner-float-rangebn", "quantize": {"batchnorm": {"type": "range"}}}, **base),
        Cell(id="banner/w8a8g8", label="W8A8G8 + Range BN (8-bit stochastic g_l, float g_W)",
             recipe="banner-w8a8g8", role="8bit", **base),
        Cell(id="banner/w8a8g8-det", label="ablation: deterministic gradient rounding", recipe="banner-w8a8g8",
             role="8bit-det", changes={"quantize.grad.rounding": "nearest",
                                       "quantize.batchnorm.grad.rounding": "nearest"}, **base),
        Cell(id="banner/w8a8g8-nobif", label="ablation: 8-bit weight gradients (no bifurcation)",
             recipe="banner-w8a8g8", role="8bit-nobif", changes={"quantize.bifurcate": False}, **base),
    )
    return Table(key="banner", title="8-bit training", paper="Banner, Hubara, Hoffer & Soudry, NeurIPS 2018",
                 cells=cells, select="final",
                 description="Small CNN conv16-conv32-fc128 trained from scratch, SGD momentum 0.9, LR 0.05, cosine, "
                             "weight decay 5e-4, batch 64 (recipe `banner-w8a8g8`: 8-bit per-channel weights, 8-bit "
                             "per-sample activations, 8-bit stochastic layer gradients with a float weight-gradient "
                             "path, Range BN with 8-bit output gradients). The float rows run the identical loop with "
                             "nothing quantized, with standard BN or Range BN. Test error after the last epoch.")


def _parametric(parametrization: str, bits: int, frozen: tuple = (), pow2_step: bool = True) -> dict:
    spec = {"type": "parametric", "parametrization": parametrization, "init_bits": bits}
    if frozen:
        spec["frozen"] = list(frozen)
    if not pow2_step:
        spec["pow2_step"] = False
    return spec


def _uhlich_quantize(weight: dict, activation: dict) -> dict:
    """Weights and biases with ``weight``, activations with ``activation``; the network input is not quantized."""
    return {"weight": weight, "bias": dict(weight), "input": activation,
            "overrides": [{"match": "first", "input": None}]}


def uhlich_table(mode: Mode) -> Table:
    kw = _budget_kwargs(mode, "uhlich")
    base = dict(model="small-cnn", model_options=dict(CNN), init_from="shared/float-cnn", **kw)
    # Budget = the weight memory of the same net at 3 bits. Signed uniform and power-of-two grids need at least 2
    # bits ({-d, 0, d}), so a budget equal to the 2-bit net leaves no room for any layer to take more bits: the only
    # allocation that meets it is the homogeneous 2-bit one (checked: U3 ends at 4/2/2/3 bits, 3 % over it).
    budget = [{"type": "memory_budget", "weight_bits": BUDGET_BITS, "activation_bits": 4, "activation_reduce": "max",
               "strength": 0.1}]

    def fixed(bits):
        return {"name": f"mp-fixed-w{bits}", "train.regularizers": [],
                "quantize": _uhlich_quantize(_parametric("U3", bits, ("d", "q_max")),
                                             _parametric("U3", 4, ("d", "q_max")))}

    # U2 with b frozen learns q_max at a fixed bit width; d = q_max / (2^(b-1) - 1) is left unsnapped, because
    # snapping it to a power of two can make q_max / d exceed 2^(b-1) - 1 and the inferred width b + 1 (measured:
    # a "3-bit" net at 4 bits in its large layer, 100 KB instead of 76 KB)
    homogeneous = {"name": f"mp-homogeneous-w{BUDGET_BITS}", "train.regularizers": [],
                   "quantize": _uhlich_quantize(_parametric("U2", BUDGET_BITS, ("b",), pow2_step=False),
                                                _parametric("U2", 4, ("b",), pow2_step=False))}
    cells = [shared_float(mode)]
    for bits in (2, BUDGET_BITS, 4):
        cells.append(Cell(id=f"uhlich/fixed-w{bits}", label=f"fixed {bits}-bit W (4-bit A), d and q_max fixed",
                          recipe="mp-u3", role=f"fixed{bits}", changes=fixed(bits), probes=("memory",), **base))
    cells.append(Cell(id=f"uhlich/homogeneous-w{BUDGET_BITS}",
                      label=f"homogeneous {BUDGET_BITS}-bit W (4-bit A), learned q_max (U2, b frozen, d not snapped)",
                      recipe="mp-u3", role="homog", changes=homogeneous, probes=("memory",), **base))
    for name in ("U3", "P3", "U1", "U2"):
        cells.append(Cell(id=f"uhlich/{name.lower()}-budget",
                          label=f"learned bit widths, {name}, budget = {BUDGET_BITS}-bit W",
                          recipe=f"mp-{name.lower()}", role=name.lower(), changes={"train.regularizers": budget},
                          probes=("memory",), **base))
    return Table(key="uhlich", title="Mixed precision: learned step and range", paper="Uhlich et al., ICLR 2020",
                 cells=tuple(cells), select="best_budget",
                 description="Small CNN conv16-conv32-fc128 fine-tuned from the shared float checkpoint with ADAM "
                             "LR 1e-3, cosine, batch 64; weights, biases and activations quantized with the "
                             "parametric quantizers (network input in float; d snapped to powers of two as in the "
                             "official code). Learned cells start at 4 bits and carry the penalty "
                             "0.1 (relu(S_w − S_w0)² + relu(S_a − S_a0)²), memories in KB, with S_w0 = the weight "
                             f"memory of the same net at {BUDGET_BITS} bits and S_a0 = its largest activation at 4 "
                             "bits (constraints 8a + 8c); their test error is read at the best validation epoch among "
                             "those meeting both budgets. Fixed and homogeneous cells carry no penalty; they report "
                             "the best validation epoch.")


BUDGET_BITS = 3


BUILDERS = {"bc": bc_table, "lide": lide_table, "lsq": lsq_table, "banner": banner_table, "uhlich": uhlich_table}


def build_tables(mode: Mode, only: Optional[list] = None) -> list:
    """The tables of ``mode`` (``only``: a subset of :data:`TABLE_KEYS`), in the order of the results page."""
    keys = list(only) if only else list(TABLE_KEYS)
    unknown = [k for k in keys if k not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown table {', '.join(unknown)}; valid tables: {', '.join(TABLE_KEYS)}")
    tables = []
    for key in TABLE_KEYS:
        if key not in keys:
            continue
        table = BUILDERS[key](mode)
        if mode.cells_per_table:
            table = _trimmed(table, mode.cells_per_table)
        tables.append(table)
    return tables


def _trimmed(table: Table, n: int) -> Table:
    """The first ``n`` trained cells of ``table`` (plus the float cell they fine-tune from)."""
    kept = [c for c in table.cells if c.init_from is None and c.id.startswith("shared/")]
    trained = [c for c in table.cells if c not in kept][:n]
    return replace(table, cells=tuple(kept + trained))


def cells_of(tables: list) -> dict:
    """Every distinct cell of ``tables`` by id (shared cells once)."""
    found: dict[str, Cell] = {}
    for table in tables:
        for cell in table.cells:
            if cell.id in found and found[cell.id] != cell:
                raise ValueError(f"cell id {cell.id!r} is used by two different cells")
            found[cell.id] = cell
    return found


def describe_budget(mode: Mode, key: str) -> dict[str, Any]:
    b = mode.budget(key)
    return {"data": mode.data, "epochs": b.epochs, "train_subset": b.train_subset, "test_subset": b.test_subset,
            "pretrain_epochs": b.pretrain_epochs}
