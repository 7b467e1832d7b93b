"""One registry mechanism for every pluggable component: quantizer families, losses, optimizers, LR schedules,
update policies, regularizers, datasets and quantized layer types.

A component is registered where it is defined, with the JSON schema of its recipe options::

    REGULARIZERS = Registry("regularizer")

    @REGULARIZERS.register("bin_reg", options={"strength": {"type": "number", "default": 0.5}})
    @dataclass
    class BinRegularizer: ...

and everything that lists components reads the registry: the recipe schema (enums, per-type option branches,
defaults), the "valid choices" of error messages, and ``lowbit recipes --schema``. A registry is a read-only mapping
``name -> factory``, so ``QUANTIZERS["lsq"]``, ``name in DATASETS`` and ``QUANTIZERS.items()`` work as they did for
the plain dicts they replace.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar, Union, overload

from .errors import ConfigError

__all__ = ["import_submodules", "Registry", "Component", "registries", "declared_keywords"]

K = TypeVar("K", bound=Hashable)
FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])  # a registered factory: a class or a function

_ALL: list[Registry] = []


@dataclass(frozen=True)
class Component(Generic[K]):
    """One registered component.

    ``options`` is the JSON schema of each recipe option (constructor keyword) by name; ``keywords_from`` are the
    callables whose signatures those options describe: the factory itself, then the callables it forwards
    ``**options`` to (checked by the tests: every option is a keyword there, with the same default).
    """

    name: K
    factory: Callable[..., Any]
    options: Mapping[str, dict] = field(default_factory=dict)
    description: str = ""
    keywords_from: tuple[Callable[..., Any], ...] = ()

    def option_values(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``spec`` that are options of this component (a flat recipe section holds the options of
        every type of its registry; each component takes its own)."""
        return {key: value for key, value in spec.items() if key in self.options}


def _display(key: Hashable) -> str:
    return getattr(key, "__name__", str(key))


def _summary(factory: Callable[..., Any]) -> str:
    """The first paragraph of the factory's docstring, on one line."""
    doc = (inspect.getdoc(factory) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


class Registry(Mapping[K, Callable[..., Any]]):
    """Components of one kind by name (or, for layer types, by the float class they replace).

    ``kind`` names the kind in messages ("unknown loss 'x'; valid choices: ..."); ``error`` is the exception type
    :meth:`get` raises for an unknown name (a :class:`~lowbit.errors.ConfigError` unless given).
    """

    def __init__(self, kind: str, *, error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self.error = error
        self._components: dict[K, Component[K]] = {}
        self._aliases: dict[K, K] = {}
        _ALL.append(self)

    # ------------------------------------------------------------------------------------------ registration
    @overload
    def register(
        self,
        name: K,
        factory: None = None,
        *,
        options: Optional[Mapping[str, dict]] = None,
        description: Optional[str] = None,
        aliases: Sequence[K] = (),
        keywords_from: Sequence[Callable[..., Any]] = (),
    ) -> Callable[[FactoryT], FactoryT]: ...

    @overload
    def register(
        self,
        name: K,
        factory: FactoryT,
        *,
        options: Optional[Mapping[str, dict]] = None,
        description: Optional[str] = None,
        aliases: Sequence[K] = (),
        keywords_from: Sequence[Callable[..., Any]] = (),
    ) -> FactoryT: ...

    def register(
        self,
        name: K,
        factory: Optional[FactoryT] = None,
        *,
        options: Optional[Mapping[str, dict]] = None,
        description: Optional[str] = None,
        aliases: Sequence[K] = (),
        keywords_from: Sequence[Callable[..., Any]] = (),
    ) -> Union[FactoryT, Callable[[FactoryT], FactoryT]]:
        """Register ``factory`` under ``name``; without ``factory``, a decorator that registers what it decorates.

        ``options`` defaults to the factory's ``OPTIONS`` attribute (the quantizer families declare theirs there),
        ``description`` to the first paragraph of its docstring.
        """

        def add(target: FactoryT) -> FactoryT:
            if name in self._components or name in self._aliases:
                raise ValueError(f"{self.kind} {_display(name)!r} is registered twice")
            declared = options if options is not None else getattr(target, "OPTIONS", {})
            self._components[name] = Component(
                name=name,
                factory=target,
                options=dict(declared),
                description=description if description is not None else _summary(target),
                keywords_from=(target, *keywords_from),
            )
            for alias in aliases:
                self._aliases[alias] = name
            return target

        return add if factory is None else add(factory)

    # ------------------------------------------------------------------------------------------------ lookup
    def canonical(self, name: K) -> K:
        """The registered name for ``name`` or one of its aliases; an unknown name raises ``self.error``."""
        if name in self._components:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise self.error(self.unknown_message(name))

    def component(self, name: K) -> Component[K]:
        return self._components[self.canonical(name)]

    def get(self, name: K) -> Callable[..., Any]:
        """The factory registered under ``name`` (or an alias); else ``self.error`` naming the valid choices."""
        return self.component(name).factory

    def unknown_message(self, name: Any) -> str:
        """``unknown <kind> 'x' (did you mean 'y'?); valid choices: a, b, c`` (one line)."""
        choices = [_display(key) for key in self._components]
        close = difflib.get_close_matches(_display(name), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = _display(name) if isinstance(name, type) else repr(name)
        return f"unknown {self.kind} {shown}{hint}; valid choices: {', '.join(choices)}"

    def names(self) -> list[K]:
        """Registered names in registration order (aliases excluded)."""
        return list(self._components)

    def components(self) -> list[Component[K]]:
        return list(self._components.values())

    def build(self, spec: Mapping[str, Any], **context: Any) -> Any:
        """Instantiate ``{"type": name, **options}``: ``factory(**context, **options)``."""
        options = dict(spec)
        name = options.pop("type")
        return self.get(name)(**context, **options)

    # Mapping interface: name -> factory
    def __getitem__(self, name: K) -> Callable[..., Any]:
        return self._components[name].factory

    def __iter__(self) -> Iterator[K]:
        return iter(self._components)

    def __len__(self) -> int:
        return len(self._components)

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(_display(key) for key in self._components)})"

    # ---------------------------------------------------------------------------------------- JSON schema
    def type_schema(self, **extra: Any) -> dict:
        """``{"enum": [names...], **extra}``: the schema of a recipe's ``type`` (or ``loss``) key."""
        return {"enum": [str(name) for name in self._components], **extra}

    def schema_branches(self) -> list[dict]:
        """One ``if type == name then {that component's options only}`` branch per component."""
        return [
            {
                "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                "then": {
                    "properties": {"type": {"const": name}, **copy.deepcopy(dict(component.options))},
                    "additionalProperties": False,
                },
            }
            for name, component in self._components.items()
        ]

    def spec_schema(self, *, require_type: bool = True, description: Optional[str] = None) -> dict:
        """``{"type": <name>, **options}`` accepting, for each type, exactly that component's options."""
        type_schema = self.type_schema(**({"description": description} if description else {}))
        return {
            "type": "object",
            "required": ["type"] if require_type else [],
            "properties": {"type": type_schema},
            "allOf": self.schema_branches(),
        }

    def merged_options(self) -> dict[str, dict]:
        """Every component's options in one mapping, for recipe sections that accept the options of all types
        (``train.optimizer``, ``train.schedule``, ``train.policy``). An option shared by several components must
        have the same schema in each."""
        merged: dict[str, dict] = {}
        for component in self._components.values():
            for key, schema in component.options.items():
                if key in merged and merged[key] != schema:
                    raise ValueError(f"{self.kind} option {key!r} has different schemas in different components")
                merged[key] = copy.deepcopy(schema)
        return merged


def import_submodules(package: str, path: Sequence[str]) -> None:
    """Import every module of ``package`` (in name order), so that the components they define register themselves:
    a new component is then one new file, with no list of modules to extend. Call as
    ``import_submodules(__name__, __path__)`` at the end of the package's ``__init__``."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def registries() -> list[Registry]:
    """Every registry created so far (the tests check all of their components)."""
    return list(_ALL)


def declared_keywords(component: Component) -> dict[str, inspect.Parameter]:
    """Keyword parameters of the component's factory and of the callables it forwards ``**options`` to; for a name
    found in several, the first (the factory's own default wins over the forwarded one's)."""
    found: dict[str, inspect.Parameter] = {}
    for target in component.keywords_from:
        for name, parameter in inspect.signature(target).parameters.items():
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                found.setdefault(name, parameter)
    return found
