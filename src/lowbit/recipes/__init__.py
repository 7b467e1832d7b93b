"""Recipes: a method is a YAML file, validated against a schema, never a branch in the code.

``load_recipe("lsq-w4a4")`` loads a shipped recipe; ``load_recipe("my.yaml")`` a file; a dict is accepted too. A
recipe may ``extends:`` another and change a few keys (dictionaries merge key by key; lists and values replace).
Overrides (``quantize.overrides``) merge into the recipe's slot specs the same way, so ``{match: [first, last],
weight: {bits: 8}}`` keeps the family and changes only the bit width.

Recipe files are read as UTF-8 with :mod:`lowbit.recipes.safe_yaml` (YAML 1.2 floats such as ``1e-3``, bounded
alias expansion) and may be at most :data:`MAX_RECIPE_BYTES` long. Every number must be finite: NaN and infinity are
meaningless for a learning rate, a momentum, a budget or any other recipe value.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..errors import ConfigError
from ..nn.slots import SLOTS
from .safe_yaml import describe, safe_load
from .schema import explain, fill_defaults, quantizer_spec_schema, recipe_schema, shown, validation_errors

__all__ = ["Recipe", "RecipeError", "load_recipe", "list_recipes", "recipe_dir", "merge", "set_value", "recipe_schema"]

RECIPE_DIR = Path(__file__).resolve().parent
#: largest recipe file read (a recipe is a few hundred bytes)
MAX_RECIPE_BYTES = 1 << 20
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

    def with_changes(self, changes: Mapping[str, Any], source: str = "change") -> Recipe:
        """A new recipe with dotted-path assignments applied (``{"train.epochs": 3}``) and validated again.

        An error names the assignment that caused it as ``{source} KEY=VALUE`` (``source="--set"`` for the
        command line's ``--set``), not the recipe file, which was valid: of the assignments whose key is the key of
        the problem, or lies above or below it (all of them when none does), the ones that cause the same problem on
        their own, else all of those.
        """
        data = self.to_dict()
        for path, value in changes.items():
            try:
                set_value(data, path, value)
            except RecipeError as error:
                raise RecipeError(f"invalid {_changes_label(source, {path: value}, self.name)}: {error}") from None
        problems, data = _problems(data)
        if problems:
            culprits = _related_changes(changes, problems[0])
            if len(culprits) > 1:
                alone = {k: v for k, v in culprits.items() if self._first_problem({k: v}) == problems[0]}
                culprits = alone or culprits
            raise RecipeError(_report(_changes_label(source, culprits, self.name), problems))
        return Recipe(name=data["name"], data=data, source=self.source)

    def _first_problem(self, changes: Mapping[str, Any]) -> Optional[str]:
        data = self.to_dict()
        try:
            for path, value in changes.items():
                set_value(data, path, value)
        except RecipeError as error:
            return str(error)
        problems, _ = _problems(data)
        return problems[0] if problems else None


def recipe_dir() -> Path:
    """The directory of the shipped recipes."""
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
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        if not isinstance(node, (dict, list)):
            raise RecipeError(
                f"{'.'.join(keys[: i + 1])} is {shown(node)}, not a mapping or a list, so it has no {keys[i + 1]!r}"
            )
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
        with open(path, "rb") as file:
            raw = file.read(MAX_RECIPE_BYTES + 1)
    except OSError as error:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {error.strerror}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"recipe {str(path)!r} is larger than {MAX_RECIPE_BYTES} bytes; a recipe is a short YAML file "
            f"(is this the right file?)"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"recipe {str(path)!r} is not UTF-8 text: byte 0x{raw[error.start]:02x} at offset {error.start} "
            f"cannot be decoded (a binary file, or text in another encoding?); save the recipe as UTF-8"
        ) from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {describe(error)}") from None
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
    problems, data = _problems(data)
    if problems:
        raise RecipeError(_report(f"recipe {source}", problems))
    return Recipe(name=data["name"], data=data, source=source)


def _problems(data: dict) -> tuple[list[str], dict]:
    """The problems of ``data``, each one line starting with its key path (``train.epochs: ...``), and ``data`` with
    every default filled in (when there are no problems). Numbers first, then the schema, then the rules the schema
    cannot express; each stage runs only when the one before found nothing."""
    problems = _non_finite_numbers(data)
    if problems:
        return problems, data
    schema = recipe_schema()
    errors = validation_errors(data, schema)
    if errors:
        return [explain(e) for e in errors], data
    data = fill_defaults(data, schema)
    return _override_problems(data) or _consistency_problems(data), data


def _report(label: str, problems: list[str]) -> str:
    head = f"invalid {label}: {problems[0]}"
    if len(problems) > 1:
        head += "\n" + "\n".join(f"  also: {p}" for p in problems[1:5])
    return head


def _display_path(parts: list[Any]) -> str:
    """``["train", "regularizers", 0, "strength"]`` -> ``train.regularizers[0].strength`` (as the messages write)."""
    text = ""
    for part in parts:
        is_index = isinstance(part, int) or (isinstance(part, str) and part.isdigit())
        text += f"[{part}]" if is_index and text else f".{part}" if text else str(part)
    return text


def _non_finite_numbers(value: Any, where: tuple[Any, ...] = ()) -> list[str]:
    """``key: nan is not a finite number`` for every NaN or infinity in ``value`` (JSON schema has no notion of them,
    and ``nan > 0`` is false, so a range check lets NaN through)."""
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _non_finite_numbers(item, (*where, key))]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in _non_finite_numbers(item, (*where, i))]
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        return [f"{_display_path(list(where)) or '(top level)'}: {value} is not a finite number; give a finite value"]
    return []


def _changes_label(source: str, changes: Mapping[str, Any], recipe_name: str) -> str:
    """``--set train.optimizer.lr=abc (recipe bc-det)``: the assignments as the user wrote them, roughly."""
    assignments = " ".join(f"{source} {key}={_yaml_text(value)}" for key, value in changes.items())
    return f"{assignments} (recipe {recipe_name})"


def _yaml_text(value: Any) -> str:
    """``value`` written as YAML on one line (``0.001``, ``[16, 32]``, ``null``), at most ~80 characters."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    except yaml.YAMLError:  # not a YAML value (a tuple, an object given through the library)
        return shown(value)
    text = text.removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def _related_changes(changes: Mapping[str, Any], problem: str) -> dict[str, Any]:
    """The assignments that touch the key of ``problem`` (the key itself, a key above it or below it)."""
    where = problem.split(": ", 1)[0]
    where = "" if where == "(top level)" else where

    def related(key: str) -> bool:
        path = _display_path(key.split("."))
        return not where or any(
            a == b or a.startswith(b + ".") or a.startswith(b + "[") for a, b in ((path, where), (where, path))
        )

    culprits = {key: value for key, value in changes.items() if related(key)}
    return culprits or dict(changes)


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


def _override_problems(data: dict) -> list[str]:
    spec_schema = quantizer_spec_schema()
    quantize = data["quantize"]
    for i, override in enumerate(quantize.get("overrides", [])):
        for slot in SLOTS:
            if slot not in override or override[slot] is None:
                continue
            merged = effective_slot(quantize.get(slot), override[slot])
            if merged is not None and "type" not in merged:
                return [
                    f"quantize.overrides[{i}].{slot}: options without a 'type', and the recipe has no {slot} "
                    f"quantizer to apply them to; add a type"
                ]
            errors = validation_errors(merged, spec_schema)
            if errors:
                return [explain(e, f"quantize.overrides[{i}].{slot}") for e in errors]
    return []


def _consistency_problems(data: dict) -> list[str]:
    """Rules that span several keys, which the schema cannot express."""
    train = data["train"]
    schedule = train["schedule"]
    if schedule["type"] == "step" and not schedule.get("milestones"):
        return ["train.schedule: type 'step' needs 'milestones' (epochs at which the LR is multiplied by gamma)"]
    if schedule["type"] == "exponential" and "final_lr_ratio" not in schedule:
        return [
            "train.schedule: type 'exponential' needs 'final_lr_ratio' (LR at the last epoch divided by the initial LR)"
        ]
    for i, reg in enumerate(train["regularizers"]):
        if reg["type"] == "memory_budget":
            has_weight = "weight_kb" in reg or "weight_bits" in reg
            has_act = "activation_kb" in reg or "activation_bits" in reg
            if "weight_kb" in reg and "weight_bits" in reg or "activation_kb" in reg and "activation_bits" in reg:
                return [f"train.regularizers[{i}]: give a budget either in KB or in homogeneous bits, not both"]
            if not (has_weight or has_act):
                return [
                    f"train.regularizers[{i}]: a memory_budget needs weight_kb/weight_bits and/or "
                    f"activation_kb/activation_bits"
                ]
    return []


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
