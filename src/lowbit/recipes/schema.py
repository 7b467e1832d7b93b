"""The recipe schema (JSON Schema, draft 2020-12) and the messages for recipes that break it.

Every list of components in it comes from a registry (:mod:`lowbit.registry`): quantizer families, losses,
optimizers, schedules, update policies and regularizers each register themselves with the schema of their options
where they are defined, so adding one adds its recipe options here without editing this file. ``lowbit recipes
--schema`` prints the whole schema, which editors can use to complete and check recipe files.
"""

from __future__ import annotations

import copy
import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

import jsonschema

from ..data.registry import DATASETS
from ..quantizers import QUANTIZERS

__all__ = ["recipe_schema", "quantizer_spec_schema", "validation_errors", "explain", "fill_defaults", "shown"]

#: longest quotation of a value in a message: a message names the bad value, never a whole document
MAX_SHOWN = 80

# bounded repr: at most a few items per level and a few levels, so quoting a huge value costs little
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, MAX_SHOWN, MAX_SHOWN
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (``...`` marks the cut)."""
    return _clip(_REPR.repr(value), limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quantizer_spec_schema(require_type: bool = True) -> dict:
    """``{"type": <family>, **options}`` with the options of that family only."""
    return QUANTIZERS.spec_schema(require_type=require_type, description="quantizer family")


def _nullable(schema: dict) -> dict:
    return {"anyOf": [{"type": "null"}, schema]}


def _slots(require_type: bool) -> dict:
    from ..nn.slots import SLOTS

    return {
        name: {**_nullable(quantizer_spec_schema(require_type)), "description": slot.description}
        for name, slot in SLOTS.items()
    }


def _choices(registry: Any) -> str:
    """``name: description; ...`` of a registry's components, for the description of a ``type`` key."""
    return "; ".join(f"{component.name}: {component.description.rstrip('.')}" for component in registry.components())


def _flat_section(registry: Any, default_type: str, common: dict) -> dict:
    """A recipe section whose ``type`` picks a component and that accepts the options of every component of the
    registry (each takes its own), plus options ``common`` to all of them."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": registry.type_schema(default=default_type, description=_choices(registry)),
            **copy.deepcopy(common),
            **registry.merged_options(),
        },
        "default": {},
    }


def _train_schema() -> dict:
    # imported here, not at the top: the training modules import the recipes (through ``convert``)
    from ..train import losses, optimizers, policies, regularizers, schedule

    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "epochs": {"type": "integer", "minimum": 0, "default": 10},
            "batch_size": {"type": "integer", "minimum": 1, "default": 64},
            "loss": losses.LOSSES.type_schema(default="cross_entropy", description=_choices(losses.LOSSES)),
            "optimizer": _flat_section(optimizers.OPTIMIZERS, "adam", optimizers.COMMON_OPTIONS),
            "schedule": _flat_section(schedule.SCHEDULES, "cosine", schedule.COMMON_OPTIONS),
            "policy": _flat_section(policies.POLICIES, "latent", {}),
            "pretrain": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "epochs": {"type": "integer", "minimum": 0, "default": 5},
                            "lr": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                ],
                "default": None,
                "description": "float training before quantization (fine-tuning recipes)",
            },
            "regularizers": {"type": "array", "items": regularizers.REGULARIZERS.spec_schema(), "default": []},
            "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
            "sync_batchnorm": {
                "type": "boolean",
                "default": False,
                "description": "on several processes: BatchNorm and Range BN statistics over the global batch of "
                "every rank (docs/distributed.md)",
            },
            "val_every": {"type": "integer", "minimum": 1, "default": 1},
        },
        "default": {},
    }


def recipe_schema() -> dict:
    """The whole recipe schema, with the components registered now (``lowbit recipes --schema`` prints it)."""
    override = {
        "type": "object",
        "additionalProperties": False,
        "required": ["match"],
        "properties": {
            "match": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                "description": "module-name glob(s); 'first' and 'last' name the first and last layer",
            },
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
            "bifurcate": {
                "type": "boolean",
                "default": True,
                "description": "weight gradient from the high-precision output gradient (Banner)",
            },
            "batchnorm": {
                "type": "object",
                "additionalProperties": False,
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
            "model": {
                "anyOf": [{"type": "string"}, {"type": "object", "properties": {"name": {"type": "string"}}}],
                "description": "default model name and/or model options (e.g. output_bn: true); the command line "
                "can override the name, options the chosen model lacks are ignored",
            },
            # any spelling load_dataset accepts (aliases, any case), so a string rather than an enum
            "data": {"type": "string", "description": f"default dataset: {', '.join(DATASETS)}"},
            "quantize": {**quantize, "default": {}},
            "train": _train_schema(),
        },
        "required": ["name"],
    }


# ---------------------------------------------------------------------------------------------- validation
def validation_errors(instance: Any, schema: dict) -> list[jsonschema.ValidationError]:
    """The schema violations of ``instance``, most specific first, one per key, value and kind."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(instance))
    # anyOf errors wrap the interesting ones; report the deepest, most specific
    flat: list[jsonschema.ValidationError] = []
    for error in errors:
        flat.extend(_leaves(error))
    flat.sort(key=lambda e: (list(map(str, e.absolute_path)), e.validator != "enum"))
    unique, seen = [], set()
    for error in flat:
        key = (tuple(error.absolute_path), error.validator, shown(error.instance))
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


def _suggest(word: Any, choices: Iterable[str]) -> str:
    if not isinstance(word, (str, int, float)):  # a list or mapping where a name was expected: nothing to suggest
        return ""
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
        return f"{where}: unknown key {shown(key)}{_suggest(key, allowed)}; valid keys: {', '.join(allowed)}"
    if kind in ("enum", "const"):
        choices = schema.get("enum", [schema.get("const")])
        valid = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        return (
            f"{where}: {shown(value)} is not a valid choice{_suggest(value, map(str, choices))}; valid choices: {valid}"
        )
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
        return f"{where}: {shown(value)} is out of range; allowed: {allowed}"
    if kind == "type":
        expected = schema["type"]
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {expected}, got {shown(value)} ({type(value).__name__})"
    if kind == "required":
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            return f"{where}: missing required key {shown(missing[0])}"
    # jsonschema's own message quotes the whole value: keep its start
    return f"{where}: {_clip(error.message, 2 * MAX_SHOWN)}"


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
