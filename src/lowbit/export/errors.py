"""Errors raised when a model or file cannot be exported or loaded (one-line messages; the CLI prints them)."""

from __future__ import annotations

from ..errors import LowbitError

__all__ = ["ExportError", "PackedFileError"]


class ExportError(LowbitError, ValueError):
    """A model or checkpoint that cannot be exported as asked; the message says why and what to do instead."""


class PackedFileError(ExportError):
    """A file that is not a readable lowbit packed model (foreign, corrupt, other format version, wrong model)."""
