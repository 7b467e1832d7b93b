"""Recipe -> model: swap ``nn.Linear`` / ``nn.Conv2d`` (and BatchNorm where the recipe says) for quantized modules.

The swaps come from registries: :data:`~lowbit.nn.layers.QUANTIZED_LAYERS` (float layer class -> quantized class) and
:data:`~lowbit.nn.range_bn.RANGE_BATCHNORMS`; a module is swapped when its type is exactly a registered class.

No graph tracing: the model's module tree is walked with ``named_modules()`` and children are replaced in their
parents, so any architecture works (residual blocks, custom ``forward`` code, shared functional ops), as long as the
layers to quantize are modules. "first" and "last" in override patterns mean the first and last Linear/Conv2d in
definition order (``named_modules()`` order), which is the data-flow order for the usual architectures.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional, Union

from torch import nn

from .errors import ConfigError
from .nn.layers import QUANTIZED_LAYERS, QuantizedLayer
from .nn.range_bn import RANGE_BATCHNORMS
from .nn.slots import SLOTS
from .quantizers import Quantizer, build_quantizer
from .recipes import Recipe, effective_slot, load_recipe
from .rounding import derive_seed

if TYPE_CHECKING:
    from .quantizers.base import Quantizer

__all__ = ["quantize", "quantized_layers", "quantizers_of", "layer_plan"]


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` inside ``root`` (``"layer1.0.conv1"``)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _matches(patterns: Union[str, list], name: str, first: str, last: str) -> bool:
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if pattern == "first" and name == first or pattern == "last" and name == last:
            return True
        if fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def layer_plan(model: nn.Module, recipe: Union[Recipe, str, dict]) -> dict[str, Optional[dict]]:
    """For every Linear/Conv2d name: the slot specs it will get (``None`` = left in float)."""
    recipe = load_recipe(recipe)
    spec = recipe.quantize
    names = [name for name, m in model.named_modules() if type(m) in QUANTIZED_LAYERS]
    if not names:
        return {}
    first, last = names[0], names[-1]
    plan: dict[str, Optional[dict]] = {}
    for name in names:
        slots = {slot: spec.get(slot) for slot in SLOTS}
        slots["bifurcate"] = spec.get("bifurcate", True)
        keep_float = False
        for override in spec.get("overrides", []):
            if not _matches(override["match"], name, first, last):
                continue
            keep_float = override.get("float", False)
            for slot in SLOTS:
                if slot in override:
                    slots[slot] = effective_slot(slots[slot], override[slot], spec.get(slot))
            if "bifurcate" in override:
                slots["bifurcate"] = override["bifurcate"]
        quantized = any(slots[slot] is not None for slot in SLOTS)
        plan[name] = None if keep_float or not quantized else slots
    return plan


def quantize(model: nn.Module, recipe: Union[Recipe, str, dict], *, seed: int = 0, inplace: bool = False) -> nn.Module:
    """Return ``model`` with its layers quantized as ``recipe`` says.

    Linear and Conv2d modules become :class:`QuantLinear` / :class:`QuantConv2d` holding the recipe's quantizers
    (per-layer overrides applied); with ``quantize.batchnorm.type: range`` BatchNorm1d/2d become Range BatchNorm.
    Parameters (and BN statistics) carry over, so ``state_dict`` keys of the float model are kept and the quantizer
    parameters are added. Stochastic quantizers get seeds derived from ``seed``, the layer name and the slot.
    """
    recipe = load_recipe(recipe)
    if any(isinstance(m, QuantizedLayer) for m in model.modules()):
        raise ConfigError("the model already contains quantized layers; quantize the float model instead")
    if not inplace:
        model = copy.deepcopy(model)
    for name, slots in layer_plan(model, recipe).items():
        if slots is None:
            continue
        float_layer = model.get_submodule(name)
        quantizers = {
            slot: build_quantizer(slots[slot], role=SLOTS[slot].role, seed=derive_seed(seed, name, slot))
            for slot in SLOTS
            if slots[slot] is not None
        }
        if "bias" in quantizers and getattr(float_layer, "bias", None) is None:
            del quantizers["bias"]
        quantizers = {slot: q.to(next(float_layer.parameters()).device) for slot, q in quantizers.items()}
        for slot, quantizer in quantizers.items():  # named before from_float initialises them, for its errors
            quantizer.module_name = f"{name}.{SLOTS[slot].attribute}"
        layer = QUANTIZED_LAYERS[type(float_layer)].from_float(float_layer, bifurcate=slots["bifurcate"], **quantizers)
        replace_submodule(model, name, layer)
    batchnorm = recipe.quantize.get("batchnorm", {})
    if batchnorm.get("type", "keep") == "range":
        for name, module in list(model.named_modules()):
            if type(module) in RANGE_BATCHNORMS:
                grad = batchnorm.get("grad")
                grad_quantizer = (
                    None
                    if grad is None
                    else build_quantizer(grad, role="gradient", seed=derive_seed(seed, name, "grad"))
                )
                if grad_quantizer is not None:
                    grad_quantizer.module_name = f"{name}.grad_quantizer"
                range_bn = RANGE_BATCHNORMS[type(module)].from_batchnorm(
                    module, estimator=batchnorm.get("estimator", "paper"), grad_quantizer=grad_quantizer
                )
                range_bn.module_name = name
                replace_submodule(model, name, range_bn)
    return model


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantizedLayer]]:
    """``(name, layer)`` for every quantized layer, in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            yield name, module


def quantizers_of(model: nn.Module) -> list[Quantizer]:
    """Every quantizer module in the model (layer slots, Range BN gradient quantizers, ``QuantAct``)."""
    return [m for m in model.modules() if isinstance(m, Quantizer)]
