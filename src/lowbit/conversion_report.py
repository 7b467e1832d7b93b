"""What ``lowbit.quantize`` did to each weight of a model: quantized (and at which bits) or left in float, and why.

Every module that holds a parameter with more than one dimension (Linear and convolution weights, embeddings, a
HuggingFace ``Conv1D``, recurrent weights, a raw ``nn.Parameter`` that ``forward`` uses functionally) gets one row,
and every such parameter is listed in exactly one row's ``weights`` (a parameter shared by several layers, a tied
weight, is listed in the first of them and named in the others' ``tied``). A row is either

* ``quantized``: the slots that were given quantizers and their bits, or
* ``skipped`` with a reason. Skips the recipe asked for (a ``float: true`` override, a recipe or override that
  quantizes no slot) are *intended*; the others (a module type without a registered quantized version, a raw
  parameter used functionally, a subclass whose own ``forward`` would be dropped) are *problems*: ``quantize`` warns
  about them once, naming the layers, or raises :class:`~lowbit.errors.ConfigError` with ``strict=True``.

The report is attached to the converted model as ``qmodel.lowbit_report``; ``print(qmodel.lowbit_report)`` shows it
as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["LayerReport", "ConversionReport", "DATA_FLOW", "DEFINITION_ORDER", "RECORDED"]

#: how ``first`` and ``last`` were found: the call order on an example input, or the ``named_modules()`` order
DATA_FLOW = "data flow"
DEFINITION_ORDER = "definition order"
#: given by the caller: the first and last layers of an earlier conversion (a checkpoint's, a packed file's)
RECORDED = "as recorded"


@dataclass(frozen=True)
class LayerReport:
    """One module holding weights (or a registered layer type): its fate in the conversion."""

    name: str  # the module's first name in ``named_modules()`` order ("" is the model itself)
    type: str  # its class name
    status: str  # "quantized" or "skipped"
    weights: tuple[str, ...] = ()  # its parameters with more than one dimension, by their ``named_parameters`` name
    aliases: tuple[str, ...] = ()  # further names of the same module object (converted once, set under each name)
    tied: tuple[str, ...] = ()  # parameters it shares with an earlier row, where they are listed
    bits: dict[str, int] = field(default_factory=dict)  # quantized: slot -> bits
    reason: str = ""  # skipped: why
    intended: bool = True  # skipped: whether the recipe asked for it (a float override, nothing to quantize)
    notes: tuple[str, ...] = ()  # anything else worth knowing (not called on the example input, a tied weight)

    @property
    def quantized(self) -> bool:
        return self.status == "quantized"

    @property
    def label(self) -> str:
        """The name as shown in messages, with its aliases."""
        shown = self.name or "(model)"
        return shown + "".join(f" = {alias}" for alias in self.aliases)

    def describe(self) -> str:
        """``quantized (weight 4, input 4)`` or ``skipped: <reason>``, plus notes."""
        if self.quantized:
            text = "quantized (" + ", ".join(f"{slot} {bits}" for slot, bits in self.bits.items()) + ")"
        else:
            text = f"skipped: {self.reason}"
        if self.tied:
            text += f"; shares {', '.join(self.tied)}"
        return "; ".join([text, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "type": self.type,
            "status": self.status,
            "weights": list(self.weights),
            "tied": list(self.tied),
            "bits": dict(self.bits),
            "reason": self.reason,
            "intended": self.intended,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ConversionReport:
    """The rows of a conversion, in definition order, and how ``first``/``last`` were resolved."""

    recipe: str
    layers: tuple[LayerReport, ...]
    order: str = DEFINITION_ORDER  # DATA_FLOW when an example input was given
    first: Optional[str] = None  # the layers the override patterns 'first' and 'last' named
    last: Optional[str] = None

    @property
    def quantized(self) -> list[LayerReport]:
        return [row for row in self.layers if row.quantized]

    @property
    def skipped(self) -> list[LayerReport]:
        return [row for row in self.layers if not row.quantized]

    @property
    def problems(self) -> list[LayerReport]:
        """Skipped rows the recipe did not ask for: what ``quantize`` warns about (or refuses with ``strict``)."""
        return [row for row in self.skipped if not row.intended]

    def row(self, name: str) -> LayerReport:
        """The row of the module called ``name`` (any of its names); ``KeyError`` if there is none."""
        for row in self.layers:
            if name == row.name or name in row.aliases:
                return row
        raise KeyError(name)

    def weight_count(self) -> tuple[int, int]:
        """``(rows quantized, rows in all)``, counting each weight-holding module once."""
        return len(self.quantized), len(self.layers)

    def problem_message(self) -> str:
        """One line naming the layers left in float unasked and why (empty when there are none)."""
        problems = self.problems
        if not problems:
            return ""
        by_reason: dict[str, list[str]] = {}
        for row in problems:
            by_reason.setdefault(row.reason, []).append(row.label)
        listed = "; ".join(f"{', '.join(labels)} ({reason})" for reason, labels in by_reason.items())
        return (
            f"recipe {self.recipe!r} leaves the weights of {len(problems)} layer(s) in float: {listed}. "
            f"Keep them in float on purpose with an override {{match: <name>, float: true}}"
        )

    def __str__(self) -> str:
        quantized, total = self.weight_count()
        where = f"first = {self.first}, last = {self.last}" if self.first is not None else "no quantizable layer"
        lines = [f"recipe {self.recipe}: {quantized} of {total} weight layers quantized ({where}, {self.order})"]
        width = max((len(row.label) for row in self.layers), default=0)
        type_width = max((len(row.type) for row in self.layers), default=0)
        lines += [f"  {row.label:<{width}}  {row.type:<{type_width}}  {row.describe()}" for row in self.layers]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "order": self.order,
            "first": self.first,
            "last": self.last,
            "layers": [row.to_dict() for row in self.layers],
        }
