"""Regularizers added to the task loss, built from the recipe's ``train.regularizers`` list: Bin Regularization
(Han et al. 2021) and memory budgets (Uhlich et al. 2020). Each subclasses :class:`Regularizer` and registers itself in
:data:`REGULARIZERS` in its own module; every module of this package is imported here, so a new regularizer is one
new file."""

from ...registry import import_submodules
from .base import REGULARIZERS, Regularizer, build_regularizers
from .bin_reg import BinRegularizer, bin_regularization, level_distance
from .memory_budget import MemoryBudget, activation_memory_bits, measure_activation_sizes, weight_memory_bits

__all__ = [
    "Regularizer",
    "REGULARIZERS",
    "BinRegularizer",
    "MemoryBudget",
    "build_regularizers",
    "level_distance",
    "weight_memory_bits",
    "activation_memory_bits",
    "measure_activation_sizes",
    "bin_regularization",
]

import_submodules(__name__, __path__)  # regularizers in modules not named above register themselves too
