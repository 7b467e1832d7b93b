"""Which tensors of a quantized model are stored as integer codes, and their codes.

Every quantized layer's ``weight`` and ``bias`` slot is encoded with its quantizer: ``q.encode(W)`` gives the integer
codes, bit width and scale/offset (:class:`~lowbit.quantizers.codes.QuantizedTensor`) with
``codes.dequantize() == q(W)`` in eval mode. That equality is checked here for every tensor, so whatever is written
from these codes rebuilds exactly the values the model computes with. Two cases keep float values instead:

* a quantizer that *evaluates* with the float latent weights (``eval_mode: float``, BinaryConnect-stoch): the codes
  of its deterministic grid (sign(W)) are exported, i.e. the model as evaluated with ``eval_mode: deterministic``;
* a grid the quantizer cannot express as codes (min-max with a real-valued zero point), or codes that do not
  reproduce its output: the fake-quantized float values are kept (and a note says so).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..convert import quantized_layers
from ..nn.slots import SLOTS
from ..quantizers.base import Quantizer
from ..quantizers.codes import QuantizedTensor

__all__ = ["EncodedSlot", "encode_model", "eval_mode", "join_name", "as_exported", "CODE_SLOTS"]

#: slots whose tensors are parameters of the layer (activations and gradients are not stored)
CODE_SLOTS = ("weight", "bias")


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class EncodedSlot:
    """One quantized parameter: its codes (``None`` when kept as float) and the values the model evaluates with."""

    layer: str
    slot: str
    quantizer: Quantizer
    codes: Optional[QuantizedTensor]
    values: torch.Tensor
    note: Optional[str] = None

    @property
    def param_name(self) -> str:
        return join_name(self.layer, self.slot)

    @property
    def quantizer_prefix(self) -> str:
        """State-dict prefix of the slot's quantizer (its parameters are not needed once the codes are stored)."""
        return join_name(self.layer, SLOTS[self.slot].attribute) + "."


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the duration, then restore each module's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@torch.no_grad()
def _encode_one(layer_name: str, slot: str, quantizer: Quantizer, tensor: torch.Tensor) -> EncodedSlot:
    where = f"{join_name(layer_name, slot)} ({type(quantizer).__name__})"
    try:
        codes = quantizer.encode(tensor)
    except (ValueError, NotImplementedError) as error:
        return EncodedSlot(
            layer_name,
            slot,
            quantizer,
            None,
            quantizer(tensor).detach().clone(),
            f"{where}: kept as float32, no integer codes ({error})",
        )
    decoded = codes.dequantize().reshape(tensor.shape).to(tensor.dtype)
    if quantizer.passthrough_now:
        # BC-stoch evaluates with the float latent weights, which are not on any grid: ship the sign(W) network
        return EncodedSlot(
            layer_name,
            slot,
            quantizer,
            codes,
            decoded,
            f"{where}: evaluates with its float latent weights (eval_mode: float), which cannot be "
            f"packed; exported its deterministic {codes.bits}-bit grid instead (the model as evaluated "
            f"with eval_mode: deterministic)",
        )
    expected = quantizer(tensor).detach()
    if not torch.equal(decoded, expected):
        return EncodedSlot(
            layer_name,
            slot,
            quantizer,
            None,
            expected.clone(),
            f"{where}: its codes do not reproduce its output exactly; kept as float32",
        )
    return EncodedSlot(layer_name, slot, quantizer, codes, decoded)


def encode_model(model: nn.Module) -> list[EncodedSlot]:
    """Encode the weight and bias slots of every quantized layer, in definition order (model put in eval mode
    for the duration)."""
    encoded = []
    with eval_mode(model):
        for name, layer in quantized_layers(model):
            for slot in CODE_SLOTS:
                quantizer = getattr(layer, SLOTS[slot].attribute)
                tensor = getattr(layer, slot)
                if quantizer is not None and tensor is not None:
                    encoded.append(_encode_one(name, slot, quantizer, tensor))
    return encoded


def as_exported(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that evaluates as its export does: weight and bias quantizers that evaluate with the
    float latent values (``eval_mode: float``, BinaryConnect-stoch) switched to their deterministic grid."""
    exported = copy.deepcopy(model)
    for _, layer in quantized_layers(exported):
        for slot in CODE_SLOTS:
            quantizer = getattr(layer, SLOTS[slot].attribute)
            if quantizer is not None and quantizer.eval_mode == "float":
                quantizer.eval_mode = "deterministic"
    return exported.eval()
