"""Training: update policies around any optimizer, losses, regularizers and the trainer loop."""

from ..errors import TrainingDiverged
from .losses import squared_hinge
from .optimizers import build_optimizer, parameter_groups
from .policies import (
    GridWeights,
    LatentWeights,
    PolicyOptimizer,
    UpdatePolicy,
    attach_policy,
    build_policy,
    glorot_lr_scale,
)
from .regularizers import BinRegularizer, MemoryBudget, Regularizer, bin_regularization
from .step import StepOutput, TrainingStep
from .trainer import RunResult, TrainConfig, Trainer, run

__all__ = [
    "TrainConfig",
    "Trainer",
    "RunResult",
    "TrainingDiverged",
    "run",
    "UpdatePolicy",
    "LatentWeights",
    "GridWeights",
    "build_policy",
    "attach_policy",
    "PolicyOptimizer",
    "glorot_lr_scale",
    "build_optimizer",
    "parameter_groups",
    "Regularizer",
    "BinRegularizer",
    "MemoryBudget",
    "bin_regularization",
    "squared_hinge",
    "TrainingStep",
    "StepOutput",
]
