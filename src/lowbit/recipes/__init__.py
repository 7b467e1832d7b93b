"""Recipes: a method is a YAML file, validated against a schema, never a branch in the code.

``load_recipe("lsq-w4a4")`` loads a shipped recipe; ``load_recipe("my.yaml")`` a file; a dict is accepted too. A
recipe may ``extends:`` another and change a few keys (dictionaries merge key by key; lists and values replace).
Overrides (``quantize.overrides``) merge into the recipe's slot specs the same way, so ``{match: [first, last],
weight: {bits: 8}}`` keeps the family and changes only the bit width.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..errors import ConfigError
from ..nn.slots import SLOTS
from .schema import explain, fill_defaults, quantizer_spec_schema, recipe_schema, validation_errors

__all__ = ["Recipe", "RecipeError", "load_recipe", "list_recipes", "recipe_dir", "merge", "set_value", "recipe_schema"]

RECIPE_DIR = Path(__file__).resolve().parent
ALIASES = {
    "float": "fp32",
    "bc": "bc-det",
    "binaryconnect": "bc-det",
    "banner": "banner-w8a8g8",
    "lsq": "lsq-w4a4",
    "mp": "mp-u3",
    "uhlich": "mp-u3",
}


class RecipeError(ConfigError):
    """A recipe that cannot be used; the message names the key, the bad value and the valid choices."""


@dataclass
class Recipe:
    """A validated recipe with every default filled in."""

    name: str
    data: dict = field(repr=False)
    source: str = "<dict>"

    @property
    def summary(self) -> str:
        return self.data.get("summary", "")

    @property
    def paper(self) -> str:
        return self.data.get("paper", "")

    @property
    def quantize(self) -> dict:
        return self.data["quantize"]

    @property
    def train(self) -> dict:
        return self.data["train"]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def with_changes(self, changes: Mapping[str, Any]) -> Recipe:
        """A new recipe with dotted-path assignments applied (``{"train.epochs": 3}``) and validated again."""
        data = self.to_dict()
        for path, value in changes.items():
            set_value(data, path, value)
        return _validated(data, self.source)


def recipe_dir() -> Path:
    return RECIPE_DIR


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [load_recipe(path.stem) for path in sorted(RECIPE_DIR.glob("*.yaml"))]


def merge(base: Any, change: Any) -> Any:
    """Deep merge: mappings merge key by key, anything else is replaced by ``change``."""
    if isinstance(base, dict) and isinstance(change, dict):
        result = dict(base)
        for key, value in change.items():
            result[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return result
    return copy.deepcopy(change)


def set_value(data: dict, path: str, value: Any) -> None:
    """Assign ``value`` at a dotted ``path`` (``train.optimizer.lr``; list items by index: ``regularizers.0``)."""
    keys = path.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_index(node, key, keys[: i + 1])]
            continue
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, keys)] = value
    else:
        node[last] = value


def _index(items: list, key: str, where: list[str]) -> int:
    try:
        index = int(key)
        items[index]
        return index
    except (ValueError, IndexError):
        raise RecipeError(f"{'.'.join(where)}: no list item {key!r} (the list has {len(items)} items)") from None


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as error:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a mapping of keys to values, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def _locate(name_or_path: Union[str, os.PathLike]) -> Path:
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or os.sep in text or candidate.exists():
        if not candidate.exists():
            raise RecipeError(f"recipe file {text!r} does not exist")
        return candidate
    shipped = RECIPE_DIR / f"{ALIASES.get(text, text)}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(text, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(
        f"unknown recipe {text!r}{hint}; shipped recipes: {', '.join(names)}; or give the path of a .yaml file"
    )


def _resolve_extends(data: dict, source: str, seen: tuple[str, ...] = ()) -> dict:
    parent = data.get("extends")
    if parent is None:
        return data
    if parent in seen:
        raise RecipeError(f"{source}: recipes extend each other in a cycle: {' -> '.join(seen + (parent,))}")
    sibling = Path(source).parent / parent if source != "<dict>" else None
    base_path = sibling if sibling is not None and sibling.is_file() else _locate(parent)
    base = _resolve_extends(_read_yaml(base_path), str(base_path), seen + (parent,))
    own = {k: v for k, v in data.items() if k != "extends"}
    for key in ("summary", "paper"):  # describe the child, not the parent
        base.pop(key, None)
    return merge(base, own)


def _validated(data: dict, source: str) -> Recipe:
    schema = recipe_schema()
    errors = validation_errors(data, schema)
    if errors:
        raise RecipeError(_report(source, [explain(e) for e in errors]))
    data = fill_defaults(data, schema)
    _check_overrides(data, source)
    _check_consistency(data, source)
    return Recipe(name=data["name"], data=data, source=source)


def _report(source: str, problems: list[str]) -> str:
    head = f"invalid recipe {source}: {problems[0]}"
    if len(problems) > 1:
        head += "\n" + "\n".join(f"  also: {p}" for p in problems[1:5])
    return head


def effective_slot(current: Optional[dict], change: Any, recipe_spec: Optional[dict] = None) -> Optional[dict]:
    """A slot spec after an override: ``null`` removes it; a mapping with a new ``type`` replaces it; a partial
    mapping merges into the current spec, or into the recipe's spec for the slot when an earlier override removed
    it (so ``first`` and ``last`` overrides compose on a one-layer model)."""
    if change is None:
        return None
    base = current if current is not None else recipe_spec
    if base is None or ("type" in change and change["type"] != base.get("type")):
        return dict(change)
    return merge(base, change)


def _check_overrides(data: dict, source: str) -> None:
    spec_schema = quantizer_spec_schema()
    quantize = data["quantize"]
    for i, override in enumerate(quantize.get("overrides", [])):
        for slot in SLOTS:
            if slot not in override or override[slot] is None:
                continue
            merged = effective_slot(quantize.get(slot), override[slot])
            if merged is not None and "type" not in merged:
                raise RecipeError(
                    f"invalid recipe {source}: quantize.overrides[{i}].{slot}: options without a "
                    f"'type', and the recipe has no {slot} quantizer to apply them to; add a type"
                )
            errors = validation_errors(merged, spec_schema)
            if errors:
                raise RecipeError(_report(source, [explain(e, f"quantize.overrides[{i}].{slot}") for e in errors]))


def _check_consistency(data: dict, source: str) -> None:
    """Rules that span several keys, which the schema cannot express."""
    train = data["train"]
    schedule = train["schedule"]
    if schedule["type"] == "step" and not schedule.get("milestones"):
        raise RecipeError(
            f"invalid recipe {source}: train.schedule: type 'step' needs 'milestones' "
            f"(epochs at which the LR is multiplied by gamma)"
        )
    if schedule["type"] == "exponential" and "final_lr_ratio" not in schedule:
        raise RecipeError(
            f"invalid recipe {source}: train.schedule: type 'exponential' needs 'final_lr_ratio' "
            f"(LR at the last epoch divided by the initial LR)"
        )
    for i, reg in enumerate(train["regularizers"]):
        if reg["type"] == "memory_budget":
            has_weight = "weight_kb" in reg or "weight_bits" in reg
            has_act = "activation_kb" in reg or "activation_bits" in reg
            if "weight_kb" in reg and "weight_bits" in reg or "activation_kb" in reg and "activation_bits" in reg:
                raise RecipeError(
                    f"invalid recipe {source}: train.regularizers[{i}]: give a budget either in KB "
                    f"or in homogeneous bits, not both"
                )
            if not (has_weight or has_act):
                raise RecipeError(
                    f"invalid recipe {source}: train.regularizers[{i}]: a memory_budget needs "
                    f"weight_kb/weight_bits and/or activation_kb/activation_bits"
                )


def load_recipe(recipe: Union[str, os.PathLike, Mapping, Recipe]) -> Recipe:
    """Load, resolve ``extends``, validate and fill defaults. Raises :class:`RecipeError` on any problem."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        data, source = copy.deepcopy(dict(recipe)), "<dict>"
        data.setdefault("name", "custom")
    else:
        path = _locate(recipe)
        data, source = _read_yaml(path), str(path)
    data = _resolve_extends(data, source, (data.get("name", ""),))
    return _validated(data, source)
