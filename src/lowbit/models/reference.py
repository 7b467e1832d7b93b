"""A user's own architecture named by reference: ``--model my_pkg.my_module:build_model``.

The reference is ``MODULE:ATTRIBUTE``: a callable ``build_model(input_shape, num_classes, **options) -> nn.Module``
or a class constructed the same way. Importing the module runs its code, so lowbit imports one only when the user
names it (on the command line or in Python); a checkpoint records the reference but opening it never imports it (see
:meth:`lowbit.runs.ModelSpec.build`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence

from torch import nn

from ..errors import ConfigError

__all__ = ["is_reference", "resolve_reference", "build_from_reference", "reference_options"]

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_reference(name: object) -> bool:
    """Whether a ``--model`` value names a user's builder (``module:attribute``) rather than a built-in model."""
    return isinstance(name, str) and ":" in name


def resolve_reference(reference: str) -> Callable[..., nn.Module]:
    """Import ``MODULE`` and return ``MODULE.ATTRIBUTE`` (dotted attributes allowed), with one-line errors for a
    malformed reference, a module that cannot be imported and a missing or non-callable attribute."""
    if not _REFERENCE.match(reference.strip()):
        raise ConfigError(
            f"--model {reference!r} is neither a built-in model nor a reference MODULE:CALLABLE "
            f"(e.g. my_pkg.my_module:build_model)"
        )
    module_name, _, attribute = reference.strip().partition(":")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"cannot import module {module_name!r} of --model {reference}: {error}; put the directory that "
                f"holds it on PYTHONPATH (e.g. PYTHONPATH=/path/to/project lowbit ...)"
            ) from None
        raise ConfigError(f"importing module {module_name!r} of --model {reference} failed: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} (from --model {reference})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--model {reference} names a {type(target).__name__}, not a function or class")
    return target


def reference_options(reference: str) -> list[str]:
    """The keyword options the builder accepts beyond ``(input_shape, num_classes)``; ``["*"]`` for ``**options``."""
    builder = resolve_reference(reference)
    try:
        params = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return ["*"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return ["*"]
    return [p.name for p in params[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_from_reference(reference: str, input_shape: Sequence[int], num_classes: int, **options: object) -> nn.Module:
    """``builder(tuple(input_shape), num_classes, **options)`` for the builder ``reference`` names; the result must be
    an ``nn.Module``."""
    accepted = reference_options(reference)
    unknown = [k for k in options if k not in accepted and accepted != ["*"]]
    if unknown:
        raise ConfigError(
            f"--model {reference} takes no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(accepted) if accepted else '(none)'}"
        )
    model = resolve_reference(reference)(tuple(input_shape), num_classes, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {reference} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
