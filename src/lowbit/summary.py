"""Model summary: per-layer bit widths, parameters, memory and MACs, with totals and compression (as Larq's).

Everything is read from the quantizers' ``bits`` attribute; nothing is re-derived from a recipe. Memory counts every
parameter at the bit width it is stored with at inference: quantized weights (and biases) at their quantizer's bits,
everything else (biases of float slots, BatchNorm, quantizer scalars) at 32 bits. A parameter shared by several
layers (tied weights) is counted once, in the first layer that uses it. MACs come from one forward pass of a single
example (multiply-accumulates per sample, counted by ``torch.utils.flop_counter``) through a copy of the model, so
inspecting a model never initialises or changes its quantizers or BatchNorm statistics; BOPs are
``MACs x weight bits x input bits``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from .convert import quantizers_of
from .nn.layers import QUANTIZED_LAYERS, QuantizedLayer

__all__ = ["LayerRow", "ModelSummary", "model_summary"]

#: bits in a kilobyte (memory is reported in KB = 1024 bytes)
BITS_PER_KB = 8 * 1024


@dataclass
class LayerRow:
    name: str
    kind: str
    weight_bits: Optional[int]
    input_bits: Optional[int]
    params: int
    memory_kb: float
    macs: int

    @property
    def bops(self) -> int:
        return self.macs * (self.weight_bits or 32) * (self.input_bits or 32)


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    other_params: int
    total_params: int
    memory_kb: float
    float_memory_kb: float
    macs: int
    bops: int
    notes: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float:
        return self.float_memory_kb / self.memory_kb if self.memory_kb else float("inf")

    def per_layer_bits(self) -> dict[str, dict[str, Optional[int]]]:
        return {r.name: {"weight": r.weight_bits, "input": r.input_bits} for r in self.rows}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["compression"] = self.compression
        return data

    def format(self) -> str:
        header = f"{'layer':<28} {'type':<12} {'w bits':>6} {'a bits':>6} {'params':>10} {'KB':>10} {'MACs':>12}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            wb = "-" if r.weight_bits is None else str(r.weight_bits)
            ab = "-" if r.input_bits is None else str(r.input_bits)
            lines.append(
                f"{r.name:<28.28} {r.kind:<12} {wb:>6} {ab:>6} {r.params:>10,} {r.memory_kb:>10.2f} {r.macs:>12,}"
            )
        lines.append(
            f"{'other parameters (32-bit)':<28} {'':<12} {'':>6} {'':>6} {self.other_params:>10,} "
            f"{self.other_params * 32 / BITS_PER_KB:>10.2f}"
        )
        lines.append("-" * len(header))
        lines.append(f"total parameters: {self.total_params:,}   MACs per sample: {self.macs:,}   BOPs: {self.bops:,}")
        lines.append(
            f"model size: {self.memory_kb:.2f} KB (float32: {self.float_memory_kb:.2f} KB, "
            f"{self.compression:.1f}x smaller)"
        )
        lines.extend(self.notes)
        return "\n".join(lines)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a recipe can quantize (quantized already, or of a registered float type with a ``weight``
    parameter), in module order. A float ``MultiheadAttention`` has none (its packed projection is
    ``in_proj_weight``): it is counted under other parameters until it is quantized, when its four projections are
    rows."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, QuantizedLayer)
        or (type(m) in QUANTIZED_LAYERS and isinstance(getattr(m, "weight", None), torch.Tensor))
    ]


def _measure_macs(model: nn.Module, input_shape: tuple[int, ...], example: Optional[torch.Tensor]) -> dict[str, int]:
    """Multiply-accumulates of each module in one eval-mode forward pass of one example, by module name.

    The pass runs on a deep copy of ``model`` with torch's random state restored afterwards: on the model itself it
    would initialise data-dependent quantizers from the sample (e.g. LSQ steps from an all-zeros input).
    ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every matrix product and convolution a module
    runs (any layer type, grouped, transposed, or a user's layer computing with ``addmm``); MACs = FLOPs / 2. Ops
    without products (embedding look-ups, element-wise quantizers) count zero."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).eval()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    sample = example[:1].to(device) if example is not None else torch.zeros((1,) + tuple(input_shape), device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(sample)
    root = type(probe).__name__
    macs = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == root:
            macs[""] = sum(per_op.values()) // 2
        elif key.startswith(root + "."):
            macs[key[len(root) + 1 :]] = sum(per_op.values()) // 2
    return macs


def model_summary(
    model: nn.Module, input_shape: Optional[tuple[int, ...]] = None, example: Optional[torch.Tensor] = None
) -> ModelSummary:
    """Summarise ``model``; with ``input_shape`` (C, H, W) or an ``example`` batch the MACs are measured by one
    forward pass in eval mode of a copy of the model: ``model`` itself is left as it was (quantizers that are not
    initialised yet stay so and report their bit widths)."""
    if example is not None:
        input_shape = tuple(example.shape[1:])
    layers = _weight_layers(model)
    macs = _measure_macs(model, input_shape, example) if input_shape is not None else {}

    rows: list[LayerRow] = []
    counted: dict[int, str] = {}  # id of a weight/bias tensor -> the first layer slot holding it
    shared: list[str] = []
    memory_bits = 0.0
    for name, module in layers:
        quantized = isinstance(module, QuantizedLayer)
        w_bits = module.weight_quantizer.bits if quantized and module.weight_quantizer is not None else None
        a_bits = module.input_quantizer.bits if quantized and module.input_quantizer is not None else None
        b_bits = module.bias_quantizer.bits if quantized and module.bias_quantizer is not None else None
        params, bits = 0, 0
        for slot, slot_bits in (("weight", w_bits), ("bias", b_bits)):
            tensor = getattr(module, slot)
            if tensor is None:
                continue
            if id(tensor) in counted:  # tied: stored (and counted) once, with the first layer that uses it
                shared.append(f"{name}.{slot} is shared with {counted[id(tensor)]}: counted once")
                continue
            counted[id(tensor)] = f"{name}.{slot}"
            params += tensor.numel()
            bits += tensor.numel() * (slot_bits or 32)
        memory_bits += bits
        kind = type(module).__name__
        rows.append(LayerRow(name, kind, w_bits, a_bits, params, bits / BITS_PER_KB, macs.get(name, 0)))

    quantizer_params = {id(p) for q in quantizers_of(model) for p in q.parameters(recurse=False)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted and id(p) not in quantizer_params)
    quantizer_scalars = sum(p.numel() for p in model.parameters() if id(p) in quantizer_params)
    other += quantizer_scalars
    memory_bits += other * 32
    total = sum(r.params for r in rows) + other
    notes = list(shared)
    if input_shape is None:
        notes.append("(MACs not measured: give an input shape)")
    return ModelSummary(
        rows=rows,
        other_params=other,
        total_params=total,
        memory_kb=memory_bits / BITS_PER_KB,
        float_memory_kb=total * 32 / BITS_PER_KB,
        macs=sum(r.macs for r in rows),
        bops=sum(r.bops for r in rows),
        notes=notes,
    )
