"""lowbit: train, compare, inspect and export 1- to 8-bit neural networks in PyTorch.

Five methods on one core — BinaryConnect, Li & De's R/SR/BC, LSQ with Bin Regularization, Banner's 8-bit training and
Uhlich's learned mixed precision — each a YAML recipe::

    import lowbit
    qmodel = lowbit.quantize(model, "lsq-w4a4")
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

# (before the imports below: modules that report the version import it from here)
try:  # the version is written once, in pyproject.toml
    __version__ = _installed_version("lowbit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .calibrate import calibrate
from .convert import quantize, quantized_layers, quantizers_of
from .errors import CheckpointError, ConfigError, LowbitError
from .export.packed import load_packed
from .nn.adapter import register_layer
from .pretrained import load_float_state_dict
from .recipes import Recipe, RecipeError, list_recipes, load_recipe
from .runs import Checkpoint, load_checkpoint
from .summary import model_summary

__all__ = [
    "quantize",
    "quantized_layers",
    "quantizers_of",
    "calibrate",
    "load_float_state_dict",
    "register_layer",
    "model_summary",
    "load_packed",
    "load_recipe",
    "list_recipes",
    "Recipe",
    "RecipeError",
    "load_checkpoint",
    "Checkpoint",
    "LowbitError",
    "ConfigError",
    "CheckpointError",
    "__version__",
]
