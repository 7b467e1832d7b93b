"""The recipe schema (JSON Schema, draft 2020-12) and the messages for recipes that break it.

The quantizer part is generated from the quantizer registry: each family lists its options in ``OPTIONS``, so adding
a quantizer adds its recipe options here without editing this file. ``lowbit recipes --schema`` prints the whole
schema, which editors can use to complete and check recipe files.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Iterable

import jsonschema

from ..quantizers import QUANTIZERS

__all__ = ["recipe_schema", "quantizer_spec_schema", "validation_errors", "explain", "fill_defaults",
           "LOSSES", "OPTIMIZERS", "SCHEDULES", "POLICIES", "REGULARIZERS"]

LOSSES = ("cross_entropy", "squared_hinge")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "exponential", "step")
POLICIES = ("latent", "grid")
REGULARIZERS = ("bin_reg", "memory_budget")
SLOT_NAMES = ("weight", "input", "bias", "grad")


def quantizer_spec_schema(require_type: bool = True) -> dict:
    """``{"type": <family>, **options}`` with the options of that family only."""
    branches = []
    for kind, factory in QUANTIZERS.items():
        options = getattr(factory, "OPTIONS", {})
        branches.append({
            "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
            "then": {"properties": {"type": {"const": kind}, **copy.deepcopy(options)},
                     "additionalProperties": False},
        })
    return {
        "type": "object",
        "required": ["type"] if require_type else [],
        "properties": {"type": {"enum": list(QUANTIZERS), "description": "quantizer family"}},
        "allOf": branches,
    }


def _nullable(schema: dict) -> dict:
    return {"anyOf": [{"type": "null"}, schema]}


def _slots(require_type: bool) -> dict:
    descriptions = {"weight": "weights", "input": "layer inputs (activations)", "bias": "biases",
                    "grad": "gradient w.r.t. the layer output (Banner)"}
    return {slot: {**_nullable(quantizer_spec_schema(require_type)), "description": descriptions[slot]}
            for slot in SLOT_NAMES}


def _regularizer_schema() -> dict:
    budget_options = {
        "weight_kb": {"type": "number", "exclusiveMinimum": 0, "description": "weight memory budget in KB"},
        "weight_bits": {"type": "number", "exclusiveMinimum": 0, "maximum": 32,
                        "description": "budget = memory of the same net at this homogeneous weight bit width"},
        "activation_kb": {"type": "number", "exclusiveMinimum": 0, "description": "activation memory budget in KB"},
        "activation_bits": {"type": "number", "exclusiveMinimum": 0, "maximum": 32,
                            "description": "budget = activation memory at this homogeneous bit width"},
        "activation_reduce": {"enum": ["sum", "max"], "default": "max",
                              "description": "total (8b) or largest single layer (8c) activation memory"},
        "strength": {"type": "number", "minimum": 0, "default": 0.1, "description": "lambda of the squared excess"},
        "clip_grads": {"type": "boolean", "default": True,
                       "description": "clip d / q_max gradients to [-d, d] while the budget is on"},
    }
    bin_reg_options = {
        "strength": {"type": "number", "minimum": 0, "default": 0.5, "description": "lambda"},
        "start_epoch": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "train with the task loss only before this epoch (staged strategy S2)"},
    }
    per_type = {"bin_reg": bin_reg_options, "memory_budget": budget_options}
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": list(REGULARIZERS)}},
        "allOf": [{"if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                   "then": {"properties": {"type": {"const": kind}, **options}, "additionalProperties": False}}
                  for kind, options in per_type.items()],
    }


def recipe_schema() -> dict:
    number = {"type": "number"}
    override = {
        "type": "object",
        "additionalProperties": False,
        "required": ["match"],
        "properties": {
            "match": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                      "description": "module-name glob(s); 'first' and 'last' name the first and last layer"},
            "float": {"type": "boolean", "default": False, "description": "leave the matched layers in float"},
            "bifurcate": {"type": "boolean"},
            **_slots(require_type=False),
        },
    }
    quantize = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_slots(require_type=True),
            "bifurcate": {"type": "boolean", "default": True,
                          "description": "weight gradient from the high-precision output gradient (Banner)"},
            "batchnorm": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["keep", "range"], "default": "keep"},
                    "estimator": {"enum": ["paper", "chunked"], "default": "paper"},
                    "grad": _nullable(quantizer_spec_schema()),
                },
                "default": {"type": "keep"},
            },
            "overrides": {"type": "array", "items": override, "default": []},
        },
    }
    optimizer = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "type": {"enum": list(OPTIMIZERS), "default": "adam"},
            "lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-3},
            "weight_decay": {"type": "number", "minimum": 0, "default": 0.0},
            "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9},
            "nesterov": {"type": "boolean", "default": False},
            "betas": {"type": "array", "items": number, "minItems": 2, "maxItems": 2, "default": [0.9, 0.999]},
            "quantizer_lr": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                             "description": "learning rate of quantizer parameters (step sizes, ranges); null: lr"},
        },
        "default": {},
    }
    schedule = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "type": {"enum": list(SCHEDULES), "default": "cosine"},
            "final_lr_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                               "description": "exponential: LR_fin / LR_start reached at the last epoch "
                                              "(BinaryConnect: LR_t = LR_start (LR_fin/LR_start)^(t/T))"},
            "milestones": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "gamma": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "warmup_epochs": {"type": "integer", "minimum": 0, "default": 0},
        },
        "default": {},
    }
    policy = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "type": {"enum": list(POLICIES), "default": "latent",
                     "description": "latent: float weights, quantized in forward (BC); grid: weights rounded back "
                                    "onto the grid after every step (R / SR)"},
            "clip": {"type": "boolean", "default": True,
                     "description": "latent: clip weights to the quantizer's range after each step"},
            "lr_scale": {"enum": ["none", "glorot"], "default": "none",
                         "description": "BinaryConnect's per-layer step scale 1/sqrt(1.5/(fan_in+fan_out))"},
            "init": {"enum": ["keep", "uniform"], "default": "keep",
                     "description": "uniform: re-draw quantized weights from U(range) before training (BC: U(-H, H))"},
        },
        "default": {},
    }
    train = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "epochs": {"type": "integer", "minimum": 0, "default": 10},
            "batch_size": {"type": "integer", "minimum": 1, "default": 64},
            "loss": {"enum": list(LOSSES), "default": "cross_entropy"},
            "optimizer": optimizer,
            "schedule": schedule,
            "policy": policy,
            "pretrain": {"anyOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": False,
                "properties": {"epochs": {"type": "integer", "minimum": 0, "default": 5},
                               "lr": {"type": "number", "exclusiveMinimum": 0}},
            }], "default": None, "description": "float training before quantization (fine-tuning recipes)"},
            "regularizers": {"type": "array", "items": _regularizer_schema(), "default": []},
            "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
            "val_every": {"type": "integer", "minimum": 1, "default": 1},
        },
        "default": {},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "lowbit recipe",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "summary": {"type": "string", "description": "one line: what the recipe does"},
            "paper": {"type": "string"},
            "extends": {"type": "string", "description": "name or path of a recipe this one modifies"},
            "model": {"anyOf": [{"type": "string"}, {
                "type": "object", "properties": {"name": {"type": "string"}}}],
                "description": "default model name and/or model options (e.g. output_bn: true); the command line "
                               "can override the name, options the chosen model lacks are ignored"},
            "data": {"type": "string", "description": "default dataset"},
            "quantize": {**quantize, "default": {}},
            "train": train,
        },
        "required": ["name"],
    }


# ---------------------------------------------------------------------------------------------- validation
def validation_errors(instance: Any, schema: dict) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(instance))
    # anyOf errors wrap the interesting ones; report the deepest, most specific
    flat: list[jsonschema.ValidationError] = []
    for error in errors:
        flat.extend(_leaves(error))
    flat.sort(key=lambda e: (list(map(str, e.absolute_path)), e.validator != "enum"))
    unique, seen = [], set()
    for error in flat:
        key = (tuple(error.absolute_path), error.validator, str(error.instance)[:50])
        if key not in seen:
            seen.add(key)
            unique.append(error)
    return unique


def _leaves(error: jsonschema.ValidationError) -> Iterable[jsonschema.ValidationError]:
    if error.validator in ("anyOf", "oneOf") and error.context:
        # prefer the branch that got furthest (e.g. the object branch rather than "is not null")
        # drop the failures of bare alternatives such as {"type": "null"}: the user meant the structured branch
        structured = [e for e in error.context if set(e.schema) - {"type", "description"}]
        if not structured:
            yield error
            return
        for sub in structured:
            yield from _leaves(sub)
    else:
        yield error


def _path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [prefix] if prefix else []
    for part in error.absolute_path:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def explain(error: jsonschema.ValidationError, prefix: str = "") -> str:
    """One line naming the key, the bad value and what is allowed."""
    where = _path(error, prefix)
    schema, value = error.schema, error.instance
    kind = error.validator
    if kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        unknown = [k for k in value if k not in allowed]
        key = unknown[0] if unknown else "?"
        return (f"{where}: unknown key {key!r}{_suggest(key, allowed)}; valid keys: {', '.join(allowed)}")
    if kind in ("enum", "const"):
        choices = schema.get("enum", [schema.get("const")])
        shown = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                          for c in choices)
        return f"{where}: {value!r} is not a valid choice{_suggest(value, map(str, choices))}; valid choices: {shown}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        low_op = "<" if "exclusiveMinimum" in schema else "<="
        high_op = "<" if "exclusiveMaximum" in schema else "<="
        name = where.rsplit(".", 1)[-1]
        if low is not None and high is not None:
            allowed = f"{low} {low_op} {name} {high_op} {high}"
        elif low is not None:
            allowed = f"{name} {'>' if low_op == '<' else '>='} {low}"
        else:
            allowed = f"{name} {high_op} {high}"
        return f"{where}: {value!r} is out of range; allowed: {allowed}"
    if kind == "type":
        expected = schema["type"]
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {expected}, got {value!r} ({type(value).__name__})"
    if kind == "required":
        missing = [k for k in schema.get("required", []) if k not in value]
        return f"{where}: missing required key {missing[0]!r}" if missing else f"{where}: {error.message}"
    return f"{where}: {error.message}"


# -------------------------------------------------------------------------------------------------- defaults
def fill_defaults(instance: Any, schema: dict) -> Any:
    """Return a copy of ``instance`` with every ``default`` of the schema filled in (objects and arrays)."""
    if isinstance(instance, dict):
        result = dict(instance)
        properties = dict(schema.get("properties", {}))
        for branch in schema.get("allOf", []):  # quantizer / regularizer options of the matching type
            const = branch.get("if", {}).get("properties", {}).get("type", {}).get("const")
            if const is not None and instance.get("type") == const:
                properties.update(branch["then"]["properties"])
        for key, sub in properties.items():
            sub = _object_branch(sub)
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = fill_defaults(result[key], sub)
        return result
    if isinstance(instance, list) and "items" in schema:
        return [fill_defaults(item, _object_branch(schema["items"])) for item in instance]
    return instance


def _object_branch(schema: dict) -> dict:
    """For ``anyOf: [null, {object}]`` use the object branch (keeping the outer default)."""
    if "anyOf" in schema:
        objects = [s for s in schema["anyOf"] if s.get("type") == "object" or "properties" in s]
        if objects:
            merged = dict(objects[0])
            if "default" in schema:
                merged["default"] = schema["default"]
            return merged
    return schema
