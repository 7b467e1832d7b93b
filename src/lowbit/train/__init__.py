"""Training: update policies around any optimizer, losses, regularizers and the trainer loop."""

from ..errors import TrainingDiverged
from .losses import squared_hinge
from .policies import PolicyOptimizer, UpdatePolicy, glorot_lr_scale
from .regularizers import BinRegularizer, MemoryBudget, bin_regularization
from .step import StepOutput, TrainingStep
from .trainer import RunResult, TrainConfig, Trainer, run

__all__ = ["TrainConfig", "Trainer", "RunResult", "TrainingDiverged", "run", "UpdatePolicy", "PolicyOptimizer",
           "glorot_lr_scale", "BinRegularizer", "MemoryBudget", "bin_regularization", "squared_hinge", "TrainingStep",
           "StepOutput"]
