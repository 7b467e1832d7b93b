"""lowbit: train, compare, inspect and export 1- to 8-bit neural networks in PyTorch.

Five methods on one core — BinaryConnect, Li & De's R/SR/BC, LSQ with Bin Regularization, Banner's 8-bit training and
Uhlich's learned mixed precision — each a YAML recipe::

    import lowbit
    qmodel = lowbit.quantize(model, "lsq-w4a4")
"""

from .convert import quantize, quantized_layers, quantizers_of
from .export.packed import load_packed
from .export.summary import model_summary
from .recipes import Recipe, RecipeError, list_recipes, load_recipe

__version__ = "0.1.0"

__all__ = ["quantize", "quantized_layers", "quantizers_of", "model_summary", "load_packed", "load_recipe", "list_recipes", "Recipe", "RecipeError",
           "__version__"]
