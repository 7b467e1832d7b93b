"""Regularizers added to the task loss, built from the recipe's ``train.regularizers`` list: Bin Regularization
(Han et al. 2021) and memory budgets (Uhlich et al. 2020). Each subclasses :class:`Regularizer` and registers itself in
:data:`REGULARIZERS`; importing this package registers them all."""

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
