"""Imports of packages that not every installation has, each failing with one line that names the fix.

The core dependencies (``dependencies`` in pyproject.toml) cover training, evaluation, inspection, plots, the
datasets and the packed model format. ONNX export and its checks in onnxruntime need the ``export`` extra::

    pip install "lowbit[export]"

Every import of such a package goes through :func:`require` (or, at the top of a module that only ONNX export
imports, through :func:`missing`), so a missing one is a :class:`~lowbit.errors.MissingDependency`, printed by the
command line as one line, instead of a ``ModuleNotFoundError`` traceback; ``import lowbit`` and every command that
does not need the package work without it. Core dependencies that are imported only where needed (scikit-learn for
``digits``, scipy for SVHN) go through it too, for an installation that lost one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependency

__all__ = ["require", "missing", "install_hint", "EXTRAS", "CORE"]

#: top-level import name -> (distribution on PyPI, the lowbit extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
}

#: top-level import name -> distribution on PyPI, for core dependencies imported only where they are needed
CORE: dict[str, str] = {
    "sklearn": "scikit-learn",
    "scipy": "scipy",
}


def _distribution(module: str) -> tuple[str, str]:
    """(distribution name, the ``pip install`` that brings it) for an import name like ``onnx`` or ``scipy.io``."""
    top = module.partition(".")[0]
    if top in EXTRAS:
        distribution, extra = EXTRAS[top]
        return distribution, f'pip install "lowbit[{extra}]"'
    if top in CORE:
        return CORE[top], f"pip install {CORE[top]}"
    raise KeyError(f"{top!r} is neither in lowbit.optional.EXTRAS nor in CORE: declare it in pyproject.toml and here")


def install_hint(module: str) -> str:
    """The command that installs the package providing ``module``, e.g. ``pip install "lowbit[export]"``."""
    return _distribution(module)[1]


def _not_installed(module: str, error: ImportError) -> bool:
    """Whether ``error`` says that ``module`` itself (or a package above it) is absent, rather than that it is
    installed and failed while importing (a dependency of its own missing, a broken binary)."""
    name = getattr(error, "name", None)
    return isinstance(error, ModuleNotFoundError) and bool(name) and (module == name or module.startswith(f"{name}."))


def missing(module: str, purpose: str, error: ImportError) -> MissingDependency:
    """The one-line error for ``module`` failing to import with ``error``; ``purpose`` says what needed it
    ("ONNX export"). Raise it ``from error``."""
    distribution, command = _distribution(module)
    if _not_installed(module, error):
        message = f"{purpose} needs the {distribution} package, which is not installed: {command}"
    else:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        message = (
            f"{purpose} needs the {distribution} package, which is installed but fails to import "
            f"({type(error).__name__}: {first_line}); reinstall it: pip install --force-reinstall {distribution}"
        )
    return MissingDependency(message, name=module)


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (``"onnx"``, ``"scipy.io"``, ...) for ``purpose``, or raise :class:`MissingDependency`
    naming the package and the ``pip install`` that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing(module, purpose, error) from error
