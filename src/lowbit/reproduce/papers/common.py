"""What several papers' tables share: the small CNN, the float baseline of a recipe, and the float model that the
fine-tuning tables (LSQ, Uhlich) start from."""

from __future__ import annotations

from ..cells import Budget, Cell
from ..modes import Mode

__all__ = [
    "CNN",
    "MOBILENET",
    "MOBILENET_BUDGETS",
    "float_changes",
    "budget_kwargs",
    "mobilenet_budget",
    "mobilenet_kwargs",
    "shared_float",
    "shared_float_mobilenet",
]

# the architecture does not change with the budget; narrow so that the full run fits in 2-2.5 h
CNN = {"channels": [16, 32], "fc": 128}  # 2 conv + 2 FC (LSQ 3a.6)

SHARED_FLOAT_LABEL = "float (pre-trained, the fine-tuning start)"

# The depthwise-separable net of the BR and mixed-precision cells (its defaults: width 8, head 64, 28k parameters).
MOBILENET_MODEL = "mobilenetv2-28"
MOBILENET: dict = {}
#: its own data and epochs (it trains at about half the small CNN's speed): each cell a few minutes per seed on one
#: core in the full mode; smoke mode uses the mode's budget as for every table
MOBILENET_BUDGETS = {
    "full": Budget(epochs=4, train_subset=10_000, test_subset=5_000, pretrain_epochs=8),
    "quick": Budget(epochs=8, pretrain_epochs=20),
}


def float_changes(name: str) -> dict:
    """The recipe's training loop with nothing quantized (the float baseline of a comparison)."""
    return {"name": name, "quantize": {}}


def budget_kwargs(mode: Mode, budget: Budget) -> dict:
    """The :class:`Cell` keywords of a table's data and epochs."""
    return {
        "data": mode.data,
        "epochs": budget.epochs,
        "train_subset": budget.train_subset,
        "test_subset": budget.test_subset,
    }


def shared_float(mode: Mode, budget: Budget) -> Cell:
    """The float small CNN that LSQ(+BR) and Uhlich fine-tune from: one run per seed, shared by both tables.

    Both tables must give it the same budget (data, pre-training epochs): the plan refuses two different cells with
    one id, so a mismatch fails loudly instead of silently running the float model twice.
    """
    return _float_start("shared/float-cnn", SHARED_FLOAT_LABEL, "float", "small-cnn", CNN, mode, budget)


def mobilenet_budget(mode: Mode) -> Budget:
    """The data and epochs of the MobileNetV2 cells in ``mode`` (the same for the LSQ and the Uhlich table, which
    share the float model)."""
    return mode.budget or MOBILENET_BUDGETS[mode.name]


def shared_float_mobilenet(mode: Mode) -> Cell:
    """The float ``mobilenetv2-28`` that the LSQ(+BR) and Uhlich MobileNetV2 cells fine-tune from (one run per seed,
    shared by both tables like :func:`shared_float`)."""
    label = "MobileNetV2-28 float (pre-trained, the fine-tuning start)"
    budget = mobilenet_budget(mode)
    return _float_start("shared/float-mobilenetv2", label, "mb-float", MOBILENET_MODEL, MOBILENET, mode, budget)


def _float_start(cell_id: str, label: str, role: str, model: str, options: dict, mode: Mode, budget: Budget) -> Cell:
    """A float model trained for the budget's pre-training epochs (recipe ``fp32``), the start of fine-tuning cells."""
    return Cell(
        id=cell_id,
        label=label,
        recipe="fp32",
        role=role,
        model=model,
        model_options=dict(options),
        data=mode.data,
        epochs=budget.pretrain_epochs,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
        kind="float",
    )


def mobilenet_kwargs(mode: Mode) -> dict:
    """The :class:`Cell` keywords of a MobileNetV2 cell fine-tuned from :func:`shared_float_mobilenet`."""
    budget = mobilenet_budget(mode)
    return dict(
        model=MOBILENET_MODEL,
        model_options=dict(MOBILENET),
        init_from="shared/float-mobilenetv2",
        data=mode.data,
        epochs=budget.epochs,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
    )
