"""What several papers' tables share: the small CNN, the float baseline of a recipe, and the float model that the
fine-tuning tables (LSQ, Uhlich) start from."""

from __future__ import annotations

from ..cells import Budget, Cell
from ..modes import Mode

__all__ = ["CNN", "float_changes", "budget_kwargs", "shared_float"]

# the architecture does not change with the budget; narrow so that the full run fits in 2-2.5 h
CNN = {"channels": [16, 32], "fc": 128}  # 2 conv + 2 FC (LSQ 3a.6)

SHARED_FLOAT_LABEL = "float (pre-trained, the fine-tuning start)"


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
    return Cell(
        id="shared/float-cnn",
        label=SHARED_FLOAT_LABEL,
        recipe="fp32",
        role="float",
        model="small-cnn",
        model_options=dict(CNN),
        data=mode.data,
        epochs=budget.pretrain_epochs,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
        kind="float",
    )
