"""Users' own layer types: ``lowbit.register_layer(HFConv1D)`` makes ``lowbit.quantize`` convert them.

A layer qualifies for the generic adapter when it holds its weight in a parameter named ``weight`` (optionally a bias
in ``bias``) and its ``forward(x, ...)`` computes from ``x`` and those parameters like a Linear or a convolution
(HuggingFace's GPT-2 ``Conv1D`` is the example). The adapter is a subclass of the user's class, built from the float
layer without calling its constructor, whose forward is::

    y = FloatLayer.forward(self with weight := Q_weight(W), bias := Q_bias(b),  Q_input(x), ...)

and with a ``grad`` slot the bifurcated backward is taken from the op's own autograd graph
(:func:`~lowbit.nn.gradient.bifurcated_call`). Per-channel weight quantizers scale along dimension 0 of ``weight``
(for ``Conv1D``, whose weight is ``(in, out)``, that is per input feature). A layer type with a hand-written quantized
version registers that instead: ``register_layer(FloatType, QuantizedType)``, where ``QuantizedType`` has
``from_float(layer, **slots)`` and mixes in :class:`~lowbit.nn.layers.QuantizedLayer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .gradient import bifurcated_call
from .layers import QUANTIZED_LAYERS, QuantizedLayer, SlotQuantizers, slot_layer_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["register_layer", "QuantizedAdapter"]


class QuantizedAdapter(QuantizedLayer):
    """Slots around a user's layer type (module docstring); subclassed per registered type by
    :func:`register_layer`."""

    #: the user's float class whose ``forward`` is run with the quantized parameters
    float_type: type[nn.Module]

    @classmethod
    def from_float(cls, layer: nn.Module, **slots: Unpack[SlotQuantizers]) -> QuantizedAdapter:
        """Take over ``layer``'s state (parameters are reused, not copied) in an instance of the adapter class."""
        name = slot_layer_name(slots, type(layer).__name__)
        if not isinstance(layer.__dict__.get("_parameters", {}).get("weight"), nn.Parameter):
            raise ConfigError(f"{name}: a registered layer needs its weight in a parameter named 'weight'")
        adapted = cls.__new__(cls)
        # the float layer's attributes, with its own dictionaries (parameters, modules, hooks) copied, so that adding
        # the quantizer modules here does not add them to the float layer
        adapted.__dict__.update({k: type(v)(v) if isinstance(v, dict) else v for k, v in layer.__dict__.items()})
        if "bias" not in adapted._parameters and "bias" not in adapted.__dict__:
            adapted.__dict__["bias"] = None
        if slots.get("bias") is not None and adapted.bias is None:
            raise ConfigError(f"{name}: a bias quantizer was given for a layer without bias")
        adapted._set_slots(**slots)
        return adapted

    @contextlib.contextmanager
    def _parameters_as(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Iterator[None]:
        """Within the block ``self.weight`` / ``self.bias`` are the given tensors (restored after)."""
        saved = dict(self._parameters)
        self._parameters["weight"] = weight
        if "bias" in saved and saved["bias"] is not None:
            self._parameters["bias"] = bias
        try:
            yield
        finally:
            self._parameters.update(saved)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        x = self._quantize_input(x)
        weight, bias = self.quantized_weight(), self.quantized_bias()

        def float_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Any:
            with self._parameters_as(weight, bias):
                return self.float_type.forward(self, x, *args, **kwargs)

        if self.grad_quantizer is not None and torch.is_grad_enabled():
            return bifurcated_call(float_forward, x, weight, bias, self.grad_quantizer, self.bifurcate)
        return float_forward(x, weight, bias)


def register_layer(float_type: type[nn.Module], quantized_type: Optional[type] = None) -> type:
    """Make ``lowbit.quantize`` convert layers of ``float_type``; returns the quantized class.

    Without ``quantized_type`` the generic adapter is used (a layer with a ``weight`` parameter used like a Linear;
    see the module docstring); otherwise ``quantized_type.from_float(layer, **slots)`` converts. Registering a type
    twice, or one lowbit already supports, is a :class:`~lowbit.errors.ConfigError`.
    """
    if not (isinstance(float_type, type) and issubclass(float_type, nn.Module)):
        raise ConfigError(f"register_layer needs an nn.Module subclass, got {float_type!r}")
    if float_type in QUANTIZED_LAYERS:
        raise ConfigError(
            f"layer type {float_type.__name__} is already registered (as {QUANTIZED_LAYERS[float_type].__name__})"
        )
    if quantized_type is None:
        quantized_type = type(
            f"Quant{float_type.__name__}",
            (QuantizedAdapter, float_type),
            {
                "float_type": float_type,
                "__module__": float_type.__module__,
                "__doc__": f"{float_type.__name__} with quantizer slots (lowbit.register_layer).",
            },
        )
    elif not callable(getattr(quantized_type, "from_float", None)):
        raise ConfigError(f"{quantized_type.__name__} needs a from_float(layer, **slots) class method")
    QUANTIZED_LAYERS.register(float_type, options={}, description=f"{float_type.__name__} (registered by the user)")(
        quantized_type
    )
    return quantized_type
