"""The exceptions lowbit raises for problems of the user's input, one base for all of them.

Every error a user can cause and fix (a bad recipe, a missing dataset, an unreadable checkpoint, a model that cannot
be exported, an unknown option, a run that diverged) derives from :class:`LowbitError`, and its message says what is
wrong and what to do. The command line prints these as one line and exits with a non-zero status; anything else is
a bug in lowbit and surfaces with its traceback.

The subclasses also derive from the built-in type that callers would naturally catch (``ValueError`` for bad values,
``FileNotFoundError`` for missing data, ``RuntimeError`` for a diverged run), so code written against those keeps
working.
"""

from __future__ import annotations

__all__ = [
    "LowbitError",
    "ConfigError",
    "CheckpointError",
    "CustomModelError",
    "TrainingDiverged",
    "MissingDependency",
]


class LowbitError(Exception):
    """Base of every user-facing lowbit error: the message names the problem and the fix."""

    #: exit status of the command line for this kind of error
    exit_code: int = 2


class ConfigError(LowbitError, ValueError):
    """A bad option or value given to lowbit (an unknown choice, a value out of range, inconsistent settings)."""


class CheckpointError(LowbitError, ValueError):
    """A checkpoint or run directory that cannot be used (missing, corrupt, another format, another run)."""


class CustomModelError(CheckpointError):
    """A checkpoint of a user-defined architecture, restored without the user's float model."""


class TrainingDiverged(LowbitError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class MissingDependency(LowbitError, ImportError):
    """A package that a feature needs is not installed (an optional extra such as ``lowbit[export]``, or a
    dependency removed since lowbit was installed); the message names it and the ``pip install`` that fixes it.
    Raise it through :func:`lowbit.optional.require`."""
