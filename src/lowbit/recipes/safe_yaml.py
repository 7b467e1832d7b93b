"""The YAML reader of recipe files and of ``--set`` / ``--model-option`` values: safe, bounded, standard floats.

It is PyYAML's ``SafeLoader`` (no Python objects, only mappings, lists and scalars) with three changes:

* **Floats as YAML 1.2 and every programming language write them**: ``1e-3``, ``1E3``, ``.5``, ``-2.5e-4`` and
  ``5.`` are floats. YAML 1.1, which PyYAML follows, wants a dot and a signed exponent (``1.0e-3``) and reads
  ``1e-3`` as the *string* ``"1e-3"``, so ``--set train.optimizer.lr=1e-3`` used to fail as "expected number".
  ``true``/``false``/``null``, integers and the 1.1 float spellings keep their meaning.
* **Bounded expansion**: an alias (``*name``) is the node its anchor (``&name``) names, so ten lines of aliases of
  aliases describe 10^9 values (the "billion laughs"). Loading itself shares the nodes and stays cheap, but anything
  that walks the result (validation, printing, copying) expands it. Documents whose expansion has more than
  :data:`MAX_VALUES` values, that nest deeper than :data:`MAX_DEPTH`, or whose aliases form a cycle are refused with a
  :class:`YamlLimitError` before anything else sees them.
* :func:`describe` turns any YAML error into one line (problem, line and column) for a message.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

__all__ = ["MAX_VALUES", "MAX_DEPTH", "YamlLimitError", "RecipeYamlLoader", "safe_load", "describe"]

#: most values (scalars, lists and mappings, counted after alias expansion) a document may hold; a recipe has ~100
MAX_VALUES = 10_000
#: deepest nesting of lists and mappings; a recipe nests 5 deep
MAX_DEPTH = 50

_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core-schema floats (optional dot, optional exponent with optional sign, leading-dot numbers with a sign),
# plus YAML 1.1's base-60 floats and underscores, which PyYAML's constructor understands. A dot or an exponent is
# required, so integers still resolve as integers.
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlLimitError(yaml.MarkedYAMLError):
    """A document too large or too deep once its aliases are expanded, or whose aliases refer to themselves."""


class RecipeYamlLoader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 floats and limits on nesting and on the expanded size (see the module)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Optional[Node], index: Any) -> Node:
        mark = self.peek_event().start_mark
        if not self.check_event(AliasEvent):  # an alias is a node composed before: counted by the expansion check
            self._composed += 1
            if self._composed > MAX_VALUES:
                raise YamlLimitError(
                    problem=f"more than {MAX_VALUES} values; a recipe needs far fewer", problem_mark=mark
                )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(problem=f"lists and mappings nested more than {MAX_DEPTH} deep", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Optional[Node]:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


# the float resolver replaced in place (same first characters, same position before the integer resolver)
RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _FLOAT if tag == _FLOAT_TAG else regexp) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Count the values of the document with every alias expanded, without expanding anything.

    ``size(node) = 1 + sum(size(child))``, memoised per node, so a node that many aliases name is counted once per
    alias but visited once. Iterative depth-first walk: a node met again while it is on the current path is an alias
    inside its own anchor (``&a [*a]``), which would expand forever.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_VALUES:
                raise YamlLimitError(
                    problem=f"with its aliases expanded, the document holds more than {MAX_VALUES} values "
                    f"(aliases of aliases?); a recipe needs far fewer",
                    problem_mark=node.start_mark,
                )
            sizes[key] = size
        elif key not in sizes:
            if key in on_path:
                raise YamlLimitError(problem="an alias refers to its own anchor", problem_mark=node.start_mark)
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def safe_load(text: str) -> Any:
    """Parse one YAML document with :class:`RecipeYamlLoader`; raises ``yaml.YAMLError`` (incl. the limits)."""
    return yaml.load(text, Loader=RecipeYamlLoader)  # noqa: S506 - a SafeLoader subclass


def describe(error: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem, then ``at line L, column C`` when the parser knows where."""
    problem = getattr(error, "problem", None)
    if not problem:
        return " ".join(str(error).split())
    mark = getattr(error, "problem_mark", None)
    context = getattr(error, "context", None)
    text = f"{context}: {problem}" if context and not isinstance(error, YamlLimitError) else problem
    return f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else text
