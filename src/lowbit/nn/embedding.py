"""Quantized ``Embedding``: the weight slot only.

``y = Q_weight(W)[tokens]``. The other slots have nothing to act on, so ``from_float`` leaves them empty:

* **input**: the input is a tensor of integer token indices, not activations; there is no value to round.
* **bias**: an embedding has none.
* **grad**: Banner's gradient quantization rounds the output gradient ``g`` where it is *propagated to the layer
  below* (``g·Wᵀ``); an embedding propagates nothing (its input is integer), and with bifurcation its weight gradient
  uses the high-precision ``g``, so a gradient quantizer would never be applied.

A per-channel weight quantizer scales each token's row (dimension 0 of ``(num_embeddings, embedding_dim)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..quantizers.base import Quantizer
from .layers import QUANTIZED_LAYERS, QuantizedLayer, SlotQuantizers, slot_layer_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["QuantEmbedding"]


@QUANTIZED_LAYERS.register(nn.Embedding, options={}, description="nn.Embedding with a weight quantizer")
class QuantEmbedding(QuantizedLayer, nn.Embedding):
    """``nn.Embedding`` whose rows are looked up in the quantized table ``Q_weight(W)`` (weight slot only; see the
    module docstring for why input, bias and grad do not apply)."""

    #: the slots this layer takes; the recipe's others are not applicable (module docstring)
    SLOTS_USED = ("weight",)

    def __init__(self, *args: Any, weight_quantizer: Optional[Quantizer] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bias = None  # the slot protocol's optional bias: an embedding has none
        self._set_slots(weight_quantizer)

    @classmethod
    def from_float(cls, embedding: nn.Embedding, **slots: Unpack[SlotQuantizers]) -> QuantEmbedding:
        """Wrap an existing ``nn.Embedding`` (its weight tensor is reused); only the ``weight`` slot is taken."""
        if embedding.sparse and slots.get("weight") is not None:
            raise ConfigError(
                f"{slot_layer_name(slots)}: nn.Embedding(sparse=True) cannot be quantized: the weight quantizer's "
                f"gradient is dense; construct the embedding with sparse=False"
            )
        layer = cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            padding_idx=embedding.padding_idx,
            max_norm=embedding.max_norm,
            norm_type=embedding.norm_type,
            scale_grad_by_freq=embedding.scale_grad_by_freq,
            sparse=embedding.sparse,
            device="meta",
        )
        layer.weight = embedding.weight
        layer._set_slots(weight=slots.get("weight"))
        layer.train(embedding.training)
        return layer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None:
            # as nn.Embedding does, renormalise the looked-up rows of the stored (latent) table in place first
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, tokens, self.max_norm, self.norm_type)
        return F.embedding(
            tokens, self.quantized_weight(), self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, False
        )
