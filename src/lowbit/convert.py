"""Recipe -> model: swap the registered layer types (and BatchNorm where the recipe says) for quantized modules.

The swaps come from registries: :data:`~lowbit.nn.layers.QUANTIZED_LAYERS` (float layer class -> quantized class) and
:data:`~lowbit.nn.range_bn.RANGE_BATCHNORMS`. A layer is matched with ``isinstance``, so a subclass of a registered
class converts too; when several registered classes match, the most derived one (first in the layer class's MRO)
wins. Two exceptions: a subclass that overrides ``forward`` is not converted (the quantized class would not run its
code; register a quantized version of it), and an already quantized layer is never converted again (quantizing a
model that holds quantized layers is an error). Range BatchNorm replaces exactly the registered BatchNorm types.

No graph tracing: the model's module tree is walked with ``named_modules()`` and children are replaced in their
parents, so any architecture works (residual blocks, custom ``forward`` code, shared functional ops), as long as the
layers to quantize are modules. A registered layer's own children belong to it (they are not converted separately),
and so do the children of ``nn.MultiheadAttention``, whose ``forward`` reads ``out_proj.weight`` directly.

**Aliases and tied weights.** A module registered under several names is converted once and the quantized module is
set under every name. Layers that share one weight ``Parameter`` (a tied LM head) keep sharing it, and share its
quantizer too: the quantizer is built once, from the weight spec of the first of those layers in the order below
(a later layer whose recipe spec for the slot differs is told so in the report and by a warning), and every layer
applies it to the shared tensor in its own forward. The tensor is thus quantized on one grid (exported once), once
per call of each layer; a stochastic quantizer draws new noise at each call.

**first and last.** The override patterns ``first`` and ``last`` name the first and last quantizable layer in data
flow when ``quantize`` gets an example input (``example=batch``): the model is run once on it, in eval mode, with
forward pre-hooks recording the order in which the quantizable layers are called (with autograd enabled, so that
PyTorch's fused inference paths, which skip the layer modules, are not taken; no backward is run, the training flags
and the CPU random generator are restored, nothing else changes). Without an example they are the first and last
quantizable layer in definition order (``named_modules()`` order), which is the data-flow order for most
architectures but not for all; the report says which order was used.

**The report.** ``quantize`` attaches a :class:`~lowbit.conversion_report.ConversionReport` to the model it returns
(``qmodel.lowbit_report``): every module holding a parameter with more than one dimension, quantized (with each
slot's bits) or skipped with the reason. Skips the recipe did not ask for raise one warning naming the layers
(:class:`SkippedWeightsWarning`), or a :class:`~lowbit.errors.ConfigError` with ``strict=True``. An override pattern
that matches no layer is a ``ConfigError`` naming the closest layer names.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .calibrate import Batch, calibrate
from .conversion_report import DATA_FLOW, DEFINITION_ORDER, RECORDED, ConversionReport, LayerReport
from .errors import ConfigError
from .nn.layers import QUANTIZED_LAYERS, QuantizedLayer
from .nn.range_bn import RANGE_BATCHNORMS
from .nn.recurrent import unsupported_reason
from .nn.slots import SLOTS
from .nn.sync_bn import unsynchronized_type
from .quantizers import Quantizer, build_quantizer
from .recipes import Recipe, effective_slot, load_recipe
from .rounding import derive_seed

__all__ = ["quantize", "quantized_layers", "quantizers_of", "layer_plan", "SkippedWeightsWarning"]

#: how a user adds a layer type, named in the report's "unsupported type" reasons
REGISTER_HINT = "lowbit.register_layer({type})"

#: module types whose ``forward`` reads their children's weights directly: the children are part of them
_READS_CHILD_WEIGHTS: tuple[type, ...] = (nn.MultiheadAttention,)

#: slots that quantize a parameter of the layer (the attribute of the same name): shared parameters share them
_PARAMETER_SLOTS = ("weight", "bias")

_SPECIAL_PATTERNS = ("first", "last")


class SkippedWeightsWarning(UserWarning):
    """``lowbit.quantize`` left weights in float that the recipe did not ask to keep in float."""


Example = Union[torch.Tensor, Sequence[Any], dict[str, Any]]


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` inside ``root`` (``"layer1.0.conv1"``)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


# ------------------------------------------------------------------------------------------ matching layer types
def registered_base(module: nn.Module) -> Optional[type]:
    """The registered float class ``module`` converts as: the first class of its MRO in ``QUANTIZED_LAYERS``
    (``None`` for unregistered types and for layers that are quantized already)."""
    quantized_classes = tuple(QUANTIZED_LAYERS.values())
    if isinstance(module, QuantizedLayer) or (quantized_classes and isinstance(module, quantized_classes)):
        return None
    return next((cls for cls in type(module).__mro__ if cls in QUANTIZED_LAYERS), None)


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of every module object (a module registered twice has two), in definition order."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name not in names.setdefault(id(module), []):
            names[id(module)].append(name)
    return names


def _big(parameter: torch.Tensor) -> bool:
    return parameter.dim() > 1


@dataclass
class _Unit:
    """A row of the report: one module object that holds weights or is a registered layer type."""

    module: nn.Module
    names: list[str]
    base: Optional[type]  # the registered class it converts as, when it can be converted
    problem: str = ""  # why it cannot be converted ("" when it can)
    weights: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    parameters: list[nn.Parameter] = field(default_factory=list)  # its >1-dim parameters (its own or tied)
    kind: str = ""  # what the report calls its type ("" = the module's class name)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def quantizable(self) -> bool:
        return self.base is not None and not self.problem


def _problem(module: nn.Module, base: Optional[type]) -> str:
    """Why a layer module cannot be converted ("" when it can)."""
    kind = type(module).__name__
    hint = f"register a quantized version with {REGISTER_HINT.format(type=kind)}"
    if base is None:
        return unsupported_reason(module) or f"unsupported type {kind}: {hint}"
    if getattr(type(module), "forward", None) is not getattr(base, "forward", None):
        return f"{kind} overrides forward() of {base.__name__}, which its quantized version would not run: {hint}"
    return ""


def _is_layer(module: nn.Module, base: Optional[type]) -> bool:
    """Whether ``module`` is reported as one layer (a registered type, a type whose forward reads its children's
    weights, or a leaf module such as ``nn.Embedding`` or HuggingFace's ``Conv1D``) rather than as a container
    whose own raw parameters are reported one by one."""
    return base is not None or isinstance(module, _READS_CHILD_WEIGHTS) or not any(True for _ in module.children())


def _units(model: nn.Module) -> list[_Unit]:
    """The report's rows in definition order; every >1-dim parameter is in exactly one row's ``weights``.

    A layer's row holds the >1-dim parameters of its whole subtree (a registered layer's children are converted,
    or not, with it); a container's raw >1-dim parameters (used functionally in its ``forward``) get a row each,
    named by the parameter."""
    names = _module_names(model)
    canonical = {id(p): name for name, p in model.named_parameters()}
    covered: set[int] = set()  # modules inside a layer's subtree
    assigned: set[int] = set()
    units = []

    def add(unit: _Unit) -> None:
        for p in unit.parameters:
            (unit.tied if id(p) in assigned else unit.weights).append(canonical[id(p)])
            assigned.add(id(p))
        units.append(unit)

    for _, module in model.named_modules():
        if id(module) in covered:
            continue
        base = registered_base(module)
        if _is_layer(module, base):
            covered.update(id(m) for m in module.modules() if m is not module)
            params = list({id(p): p for p in module.parameters() if _big(p)}.values())
            if base is not None or params:
                problem = _problem(module, base)
                add(_Unit(module, names[id(module)], None if problem else base, problem, parameters=params))
            continue
        for p in module.parameters(recurse=False):
            if _big(p):
                kind = type(module).__name__
                problem = (
                    f"raw parameter of {kind}, used in its forward(): hold it in a layer module (e.g. nn.Linear) "
                    f"or register a quantized version of {kind} with {REGISTER_HINT.format(type=kind)}"
                )
                add(_Unit(module, [canonical[id(p)]], None, problem, parameters=[p], kind="Parameter"))
    return units


# ------------------------------------------------------------------------------------------------- data flow
def _run_example(model: nn.Module, example: Example) -> None:
    if isinstance(example, torch.Tensor):
        model(example)
    elif isinstance(example, dict):
        model(**example)
    elif isinstance(example, (tuple, list)):
        model(*example)
    else:
        raise ConfigError(
            f"example must be a tensor, a tuple/list of positional inputs or a dict of keyword inputs, "
            f"not {type(example).__name__}"
        )


def call_order(model: nn.Module, modules: Sequence[nn.Module], example: Example) -> tuple[list[int], list[int]]:
    """Run ``model`` once on ``example`` and return the indices of ``modules`` that were called, ordered by their
    first call and by their last call.

    The model runs in eval mode with autograd enabled (no backward; PyTorch's fused inference paths, taken under
    ``no_grad`` by ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``, would skip the layer modules), with
    forward pre-hooks; the training flags and the CPU random generator are restored afterwards.
    """
    calls: list[int] = []
    hooks = [
        module.register_forward_pre_hook(lambda _module, _args, index=index: calls.append(index))
        for index, module in enumerate(modules)
    ]
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            _run_example(model, example)
    except ConfigError:
        raise
    except Exception as error:  # the user's model and example: name the problem, keep the cause chained
        raise ConfigError(
            f"quantize(example=...): running the model on the example input failed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"give an input the model's forward accepts, or no example (first/last then follow definition order)"
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
        for module, flag in training.items():
            module.training = flag
    first_calls = list(dict.fromkeys(calls))
    last_calls = list(reversed(list(dict.fromkeys(reversed(calls)))))
    return first_calls, last_calls


# ------------------------------------------------------------------------------------------------------ plan
def _as_list(patterns: Union[str, list]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


@dataclass
class _Plan:
    units: list[_Unit]
    order: list[_Unit]  # the quantizable units, first/last-wise (data flow, then uncalled in definition order)
    order_kind: str
    first: Optional[_Unit]
    last: Optional[_Unit]
    slots: dict[int, Optional[dict]]  # id(unit) -> slot specs and bifurcate, None = float
    skip_reasons: dict[int, str]  # id(unit) -> why an intended skip
    not_called: set[int]


def _plan(model: nn.Module, recipe: Recipe, example: Optional[Example], ends: Optional[Sequence[str]] = None) -> _Plan:
    spec = recipe.quantize
    units = _units(model)
    quantizable = [u for u in units if u.quantizable]
    order, order_kind, not_called = list(quantizable), DEFINITION_ORDER, set()
    first = last = None
    if ends is not None and quantizable:
        by_name = {name: u for u in quantizable for name in u.names}
        missing = [name for name in ends if name not in by_name]
        if missing:
            raise ConfigError(
                f"the first/last layers of the conversion being repeated ({', '.join(map(repr, ends))}) are not "
                f"quantizable layers of this model: {', '.join(map(repr, missing))}; give the float model the run "
                f"was trained with"
            )
        first, last = by_name[ends[0]], by_name[ends[1]]
        order_kind = RECORDED
    elif example is not None and quantizable:
        first_calls, last_calls = call_order(model, [u.module for u in quantizable], example)
        if first_calls:
            called = [quantizable[i] for i in first_calls]
            not_called = {id(u) for u in quantizable} - {id(u) for u in called}
            order = called + [u for u in quantizable if id(u) in not_called]
            order_kind = DATA_FLOW
            first, last = quantizable[first_calls[0]], quantizable[last_calls[-1]]
    if quantizable and first is None:
        first, last = order[0], order[-1]

    overrides = spec.get("overrides", [])
    matched = [False] * len(overrides)

    def matches(index: int, unit: _Unit) -> bool:
        for pattern in _as_list(overrides[index]["match"]):
            if pattern == "first" and unit is first or pattern == "last" and unit is last:
                return True
            if any(fnmatch.fnmatchcase(name, pattern) for name in unit.names):
                return True
        return False

    slots_of: dict[int, Optional[dict]] = {}
    skip_reasons: dict[int, str] = {}
    for unit in units:
        slots = {slot: spec.get(slot) for slot in SLOTS}
        slots["bifurcate"] = spec.get("bifurcate", True)
        float_override = None
        for index, override in enumerate(overrides):
            if not matches(index, unit):
                continue
            matched[index] = True
            float_override = override["match"] if override.get("float", False) else None
            for slot in SLOTS:
                if slot in override:
                    slots[slot] = effective_slot(slots[slot], override[slot], spec.get(slot))
            if "bifurcate" in override:
                slots["bifurcate"] = override["bifurcate"]
        if float_override is not None:
            skip_reasons[id(unit)] = f"float override (match {float_override!r})"
        elif not any(slots[slot] is not None for slot in SLOTS):
            skip_reasons[id(unit)] = "recipe quantizes nothing"
        slots_of[id(unit)] = None if id(unit) in skip_reasons or not unit.quantizable else slots

    _check_patterns(overrides, matched, units, has_quantizable=bool(quantizable))
    return _Plan(units, order, order_kind, first, last, slots_of, skip_reasons, not_called)


def _check_patterns(overrides: list[dict], matched: list[bool], units: list[_Unit], has_quantizable: bool) -> None:
    """An override whose patterns match no layer is a mistake (a typo, a renamed layer): say so, with the closest
    layer names. ``first``/``last`` match nothing only on a model without quantizable layers, which the report
    shows anyway."""
    names = [name for unit in units for name in unit.names]
    for index, override in enumerate(overrides):
        if matched[index]:
            continue
        patterns = [p for p in _as_list(override["match"]) if p not in _SPECIAL_PATTERNS or has_quantizable]
        if not patterns:
            continue
        shown = patterns[0] if len(patterns) == 1 else patterns
        close = list(dict.fromkeys(c for p in patterns for c in difflib.get_close_matches(p, names, n=3, cutoff=0.4)))
        if close:
            hint = f"closest layer names: {', '.join(close[:3])}"
        else:
            hint = f"layer names are e.g. {', '.join(names[:5])}" if names else "the model has no weight layers"
        raise ConfigError(f"quantize.overrides[{index}].match {shown!r} matches no layer; {hint}")


def layer_plan(
    model: nn.Module,
    recipe: Union[Recipe, str, dict],
    *,
    example: Optional[Example] = None,
    ends: Optional[Sequence[str]] = None,
) -> dict[str, Optional[dict]]:
    """For every quantizable layer (by its first name; further names of the same module share its plan): the slot
    specs and ``bifurcate`` it will get (``None`` = left in float). ``example`` resolves ``first``/``last`` by data
    flow, as in :func:`quantize`."""
    plan = _plan(model, load_recipe(recipe), example, ends)
    return {unit.name: plan.slots[id(unit)] for unit in plan.units if unit.quantizable}


# ---------------------------------------------------------------------------------------------------- convert
def quantize(
    model: nn.Module,
    recipe: Union[Recipe, str, dict],
    *,
    seed: int = 0,
    inplace: bool = False,
    example: Optional[Example] = None,
    strict: bool = False,
    ends: Optional[Sequence[str]] = None,
    calibration: Optional[Batch] = None,
) -> nn.Module:
    """Return ``model`` with its layers quantized as ``recipe`` says, and ``model.lowbit_report`` set.

    Instances of the registered layer types (``Linear``, ``Conv2d`` and whatever else ``QUANTIZED_LAYERS`` holds,
    subclasses included) become their quantized versions holding the recipe's quantizers (per-layer overrides
    applied); with ``quantize.batchnorm.type: range`` BatchNorm1d/2d become Range BatchNorm. Parameters (and BN
    statistics) carry over, so ``state_dict`` keys of the float model are kept and the quantizer parameters are
    added. Stochastic quantizers get seeds derived from ``seed``, the layer name and the slot.

    ``example``: an input batch (a tensor, a tuple of positional inputs or a dict of keyword inputs) to find the
    ``first`` and ``last`` layers by data flow; without it they follow definition order. ``ends``: the names of the
    first and last layer of an earlier conversion of the same model (``report.first``, ``report.last``; checkpoints
    and packed files store them), so that rebuilding a trained model applies the same overrides. ``strict``: raise
    :class:`~lowbit.errors.ConfigError` instead of warning when weights are left in float unasked (see
    :class:`~lowbit.conversion_report.ConversionReport`; the model is then left unchanged).

    Weight quantizers are initialised from the (trained) weights. ``calibration``, a batch of inputs, initialises
    the activation quantizers from real activations (:func:`lowbit.calibrate`: no weight or BatchNorm statistic
    changes) and marks the weights as trained, so BinaryConnect keeps them instead of re-drawing them.
    """
    recipe = load_recipe(recipe)
    if any(isinstance(m, QuantizedLayer) for m in model.modules()):
        raise ConfigError("the model already contains quantized layers; quantize the float model instead")
    plan = _plan(model, recipe, example, ends)
    problems = [u for u in plan.units if id(u) not in plan.skip_reasons and not u.quantizable]
    if strict and problems:
        unasked = ConversionReport(recipe.name, tuple(_row(unit, plan, None, []) for unit in problems))
        raise ConfigError(unasked.problem_message() + ", or quantize with strict=False")
    if not inplace:
        model = copy.deepcopy(model)
    # the copy holds copies of the modules: find them again by name
    units = _units(model) if not inplace else plan.units
    by_name = {unit.name: unit for unit in units}
    converted: dict[int, nn.Module] = {}
    tie_notes: dict[int, list[str]] = {}
    shared: dict[int, tuple[Quantizer, Optional[dict], str]] = {}  # id(parameter) -> its quantizer, spec, owner
    for planned in plan.order:
        slots = plan.slots[id(planned)]
        if slots is None:
            continue
        unit = by_name[planned.name]
        layer = _convert(unit, slots, seed, shared, tie_notes.setdefault(id(planned), []))
        for name in unit.names:
            replace_submodule(model, name, layer)
        converted[id(planned)] = layer
    _convert_batchnorms(model, recipe, seed)
    report = _report(plan, recipe, converted, tie_notes)
    model.lowbit_report = report
    for notes in tie_notes.values():
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    if report.problems:
        warnings.warn(report.problem_message(), SkippedWeightsWarning, stacklevel=2)
    if calibration is not None:
        calibrate(model, calibration)
    return model


def _convert(
    unit: _Unit,
    slots: dict,
    seed: int,
    shared: dict[int, tuple[Quantizer, Optional[dict], str]],
    notes: list[str],
) -> nn.Module:
    """The quantized version of one layer; a parameter already quantized by an earlier layer keeps its quantizer."""
    float_layer, name = unit.module, unit.name
    device = next((p.device for p in float_layer.parameters()), torch.device("cpu"))
    quantizers: dict[str, Quantizer] = {}
    for slot in SLOTS:
        if slots[slot] is None:
            continue
        parameter = getattr(float_layer, slot, None) if slot in _PARAMETER_SLOTS else None
        if slot == "bias" and not isinstance(parameter, torch.Tensor):
            continue  # a layer without bias
        if isinstance(parameter, nn.Parameter) and id(parameter) in shared:
            quantizer, spec, owner = shared[id(parameter)]
            if spec != slots[slot]:
                notes.append(
                    f"{name}.{slot} is tied to {owner}.{slot} and quantized with {owner}'s {slot} quantizer "
                    f"({spec.get('type')}, {getattr(quantizer, 'bits', '?')} bits), not its own recipe spec"
                )
            quantizers[slot] = quantizer
            continue
        quantizer = build_quantizer(slots[slot], role=SLOTS[slot].role, seed=derive_seed(seed, name, slot))
        quantizer = quantizer.to(device)
        quantizer.module_name = f"{name}.{SLOTS[slot].attribute}"  # named before from_float initialises it
        quantizers[slot] = quantizer
        if isinstance(parameter, nn.Parameter):
            shared[id(parameter)] = (quantizer, slots[slot], name)
    return QUANTIZED_LAYERS[unit.base].from_float(float_layer, bifurcate=slots["bifurcate"], **quantizers)


def _convert_batchnorms(model: nn.Module, recipe: Recipe, seed: int) -> None:
    batchnorm = recipe.quantize.get("batchnorm", {})
    if batchnorm.get("type", "keep") != "range":
        return
    names = _module_names(model)
    for name, module in list(model.named_modules()):
        kind = unsynchronized_type(module)  # a BatchNorm synchronized during float pre-training on several ranks
        if kind not in RANGE_BATCHNORMS:
            continue
        grad = batchnorm.get("grad")
        grad_quantizer = (
            None if grad is None else build_quantizer(grad, role="gradient", seed=derive_seed(seed, name, "grad"))
        )
        if grad_quantizer is not None:
            grad_quantizer.module_name = f"{name}.grad_quantizer"
        range_bn = RANGE_BATCHNORMS[kind].from_batchnorm(
            module, estimator=batchnorm.get("estimator", "paper"), grad_quantizer=grad_quantizer
        )
        range_bn.module_name = name
        for alias in names[id(module)]:
            replace_submodule(model, alias, range_bn)


def _slot_bits(layer: nn.Module) -> dict[str, int]:
    """``{slot: bits}`` of a quantized layer; for a layer made of quantized sub-layers (attention's projections),
    ``{"sub.slot": bits}`` of each."""
    own = {slot: int(q.bits) for slot, s in SLOTS.items() if (q := getattr(layer, s.attribute, None)) is not None}
    if own or isinstance(layer, QuantizedLayer):
        return own
    return {
        f"{name}.{slot}": int(q.bits)
        for name, sub in layer.named_modules()
        if name and isinstance(sub, QuantizedLayer)
        for slot, s in SLOTS.items()
        if (q := getattr(sub, s.attribute, None)) is not None
    }


def _row(unit: _Unit, plan: _Plan, layer: Optional[nn.Module], notes: list[str]) -> LayerReport:
    """The report's row of ``unit``; ``layer`` is its quantized version (``None`` when it was not converted)."""
    common = {
        "name": unit.name,
        "aliases": tuple(unit.names[1:]),
        "type": unit.kind or type(unit.module).__name__,
        "weights": tuple(unit.weights),
        "tied": tuple(unit.tied),
    }
    notes = list(notes)
    if id(unit) in plan.not_called:
        notes.append("not called on the example input")
    if layer is not None:
        return LayerReport(status="quantized", bits=_slot_bits(layer), notes=tuple(notes), **common)
    if id(unit) in plan.skip_reasons:
        return LayerReport(status="skipped", reason=plan.skip_reasons[id(unit)], notes=tuple(notes), **common)
    return LayerReport(status="skipped", reason=unit.problem, intended=False, notes=tuple(notes), **common)


def _report(
    plan: _Plan, recipe: Recipe, converted: dict[int, nn.Module], tie_notes: dict[int, list[str]]
) -> ConversionReport:
    rows = [_row(unit, plan, converted.get(id(unit)), tie_notes.get(id(unit), [])) for unit in plan.units]
    return ConversionReport(
        recipe=recipe.name,
        layers=tuple(rows),
        order=plan.order_kind,
        first=plan.first.name if plan.first is not None else None,
        last=plan.last.name if plan.last is not None else None,
    )


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantizedLayer]]:
    """``(name, layer)`` for every quantized layer, in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            yield name, module


def quantizers_of(model: nn.Module) -> list[Quantizer]:
    """Every quantizer module in the model (layer slots, Range BN gradient quantizers, ``QuantAct``)."""
    return [m for m in model.modules() if isinstance(m, Quantizer)]
