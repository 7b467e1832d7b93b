"""Quantized ``nn.MultiheadAttention``: its four projections are quantized layers, and no PyTorch fast path skips them.

``nn.MultiheadAttention`` keeps its query/key/value projection as one packed parameter ``in_proj_weight``
``(3E, E)`` and calls ``F.multi_head_attention_forward`` on the raw tensors, so quantizing its modules would change
nothing. :class:`QuantMultiheadAttention` holds ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as
:class:`~lowbit.nn.layers.QuantLinear` (each with every slot: weight, input, bias, grad, and its own quantizer
parameters, e.g. its own LSQ step) and computes

    Q = q_proj(query), K = k_proj(key), V = v_proj(value)            (per head h: Q_h, K_h, V_h of width E / H)
    A_h = softmax(Q_h K_hᵀ / √(E/H) + mask),  y = out_proj(concat_h(A_h V_h))

Eval is what it says: PyTorch's fast paths (``TransformerEncoderLayer`` in eval under ``no_grad``, and
``TransformerEncoder``'s nested-tensor path with a padding mask) read ``self_attn.in_proj_weight`` /
``in_proj_bias`` and the feed-forward weights directly and run fused float kernels. Here those two names are empty
placeholders of a tensor type with its own ``__torch_function__``, which both fast paths decline ("some Tensor
argument has_torch_function"), and every quantized layer carries a no-op forward pre-hook, which
``TransformerEncoderLayer``'s fast path also declines (so a quantized ``linear1`` beside a float attention is not
skipped either); so the output in eval is the same with and without ``torch.no_grad()``.

A float ``state_dict`` (``in_proj_weight``, ``in_proj_bias``, or ``q/k/v_proj_weight``) loads: it is split into the
three projections. ``add_bias_kv`` and ``add_zero_attn`` are refused (:class:`~lowbit.errors.ConfigError`).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..rounding import NoiseSource, derive_seed
from .layers import QUANTIZED_LAYERS, QuantLinear, SlotQuantizers, slot_layer_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["QuantMultiheadAttention"]

_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def _slot_copy(quantizer: Any, projection: str) -> Any:
    """An independent copy of a slot quantizer for one projection: its own parameters, its own name and (for
    stochastic rounding) its own noise stream."""
    if quantizer is None:
        return None
    twin = copy.deepcopy(quantizer)
    name = getattr(quantizer, "module_name", None)
    if isinstance(name, str) and "." in name:
        layer, attribute = name.rsplit(".", 1)
        twin.module_name = f"{layer}.{projection}.{attribute}"
    if getattr(twin, "noise", None) is not None:
        twin.noise = NoiseSource(derive_seed(twin.noise.seed, projection), twin.noise.resolution_bits)
    return twin


class _DeclinesFastPaths(torch.Tensor):
    """An empty tensor type with its own ``__torch_function__``: PyTorch's fused transformer paths check
    ``torch.overrides.has_torch_function`` on the weights they would read and decline."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        return super().__torch_function__(func, types, args, kwargs or {})


def _fast_path_placeholder() -> torch.Tensor:
    return torch.empty(0).as_subclass(_DeclinesFastPaths)


def _projection(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    linear.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    return linear


@QUANTIZED_LAYERS.register(
    nn.MultiheadAttention, options={}, description="nn.MultiheadAttention with quantized q/k/v/out projections"
)
class QuantMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention whose projections are quantized layers (module docstring)."""

    def __init__(self, attention: nn.MultiheadAttention, projections: dict[str, nn.Module]) -> None:
        nn.Module.__init__(self)
        self.embed_dim = attention.embed_dim
        self.kdim, self.vdim = attention.kdim, attention.vdim
        self._qkv_same_embed_dim = attention._qkv_same_embed_dim
        self.num_heads = attention.num_heads
        self.dropout = attention.dropout
        self.batch_first = attention.batch_first
        self.head_dim = attention.head_dim
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        for name in (*_PROJECTIONS, "out_proj"):
            self.add_module(name, projections[name])
        self.train(attention.training)

    @classmethod
    def from_float(cls, attention: nn.MultiheadAttention, **slots: Unpack[SlotQuantizers]) -> QuantMultiheadAttention:
        """Split the float attention's projections into four :class:`QuantLinear` (parameters copied), each with its
        own copy of the given slot quantizers."""
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ConfigError(
                f"{slot_layer_name(slots)}: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not "
                f"supported by lowbit; keep it in float with an override ({{match: <name>, float: true}})"
            )
        e = attention.embed_dim
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.split(e)
        else:
            weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
        biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.split(e)
        floats: dict[str, nn.Module] = {name: _projection(w, b) for name, w, b in zip(_PROJECTIONS, weights, biases)}
        floats["out_proj"] = _projection(attention.out_proj.weight, attention.out_proj.bias)
        bifurcate = slots.get("bifurcate", True)
        projections = {}
        for name, linear in floats.items():
            quantizers = {slot: _slot_copy(q, name) for slot, q in slots.items() if slot != "bifurcate"}
            projections[name] = QuantLinear.from_float(linear, bifurcate=bifurcate, **quantizers)
        return cls(attention, projections)

    # ------------------------------------------------------------------ what PyTorch's fast paths read (module doc)
    @property
    def in_proj_weight(self) -> torch.Tensor:
        return _fast_path_placeholder()

    @property
    def in_proj_bias(self) -> torch.Tensor:
        return _fast_path_placeholder()

    q_proj_weight = k_proj_weight = v_proj_weight = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Accept a float ``nn.MultiheadAttention`` state: packed or separate q/k/v weights, split here."""
        packed = state_dict.pop(prefix + "in_proj_weight", None)
        if packed is not None:
            for name, w in zip(_PROJECTIONS, packed.split(self.embed_dim)):
                state_dict[f"{prefix}{name}.weight"] = w
        for name in _PROJECTIONS:
            separate = state_dict.pop(f"{prefix}{name}_weight", None)
            if separate is not None:
                state_dict[f"{prefix}{name}.weight"] = separate
        packed_bias = state_dict.pop(prefix + "in_proj_bias", None)
        if packed_bias is not None:
            for name, b in zip(_PROJECTIONS, packed_bias.split(self.embed_dim)):
                state_dict[f"{prefix}{name}.bias"] = b
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As ``nn.MultiheadAttention.forward`` (same arguments, masks and outputs), through the quantized
        projections."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        # the projections run on the tensors in the caller's layout, (N, L, E) with batch_first, else (L, N, E):
        # transposing first would hand F.linear non-contiguous inputs, whose kernel (and float rounding) differs
        # with and without grad
        batch_dim = 0 if self.batch_first and not unbatched else 1
        batch, target, source = query.shape[batch_dim], query.shape[1 - batch_dim], key.shape[1 - batch_dim]
        heads, width = self.num_heads, self.head_dim

        def split_heads(x: torch.Tensor, length: int) -> torch.Tensor:  # -> (N·H, length, E/H), contiguous
            x = x.reshape(batch, length, heads, width) if batch_dim == 0 else x.reshape(length, batch, heads, width)
            order = (0, 2, 1, 3) if batch_dim == 0 else (1, 2, 0, 3)
            return x.permute(order).reshape(batch * heads, length, width)

        q = split_heads(self.q_proj(query), target)
        k = split_heads(self.k_proj(key), source)
        v = split_heads(self.v_proj(value), source)
        # torch.bmm, not matmul: matmul folds batched operands differently when they require grad, which would
        # change the float rounding between eval with and without no_grad
        scores = torch.bmm(q, k.transpose(1, 2)).view(batch, heads, target, source) / math.sqrt(width)
        bias = self._mask(attn_mask, key_padding_mask, is_causal, target, source, batch, scores.dtype, query.device)
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights.reshape(batch * heads, target, source), v).view(batch, heads, target, width)
        order = (0, 2, 1, 3) if batch_dim == 0 else (2, 0, 1, 3)  # back to the caller's layout
        out = self.out_proj(out.permute(order).reshape(*(out.shape[i] for i in order[:2]), self.embed_dim))
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights

    def _mask(
        self,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool,
        target: int,
        source: int,
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Optional[torch.Tensor]:
        """The additive mask ``(N or 1, H or 1, L, S)``: boolean masks (True = not attended) become ``-inf``;
        ``is_causal`` without ``attn_mask`` builds the causal mask (with one, it is the hint PyTorch documents)."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        total = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(target, source, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            mask = additive(attn_mask)
            total = mask.reshape(batch, self.num_heads, target, source) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).reshape(batch, 1, 1, source)
            total = padding if total is None else total + padding
        return total
