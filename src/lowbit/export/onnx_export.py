"""ONNX export of a quantized model: integer weights behind DequantizeLinear, QuantizeLinear/DequantizeLinear on
quantized activations, BatchNorm folded into the convolution (or linear layer) directly before it.

How: a copy of the model is traced by torch's TorchScript ONNX exporter with every quantizer slot and
normalisation layer replaced by an identity placeholder (``lowbit.Mark``), so the exporter supplies only the data
flow; :mod:`lowbit.export.onnx_graph` then turns each placeholder into standard ops from the codes and grids read
here. The result uses opset 17 (per-axis DequantizeLinear needs 13) and only the default ONNX domain.

What matches the PyTorch model: weights are exactly its decoded codes; activation grids are its grids. What can
differ, by float rounding only: BatchNorm folding re-associates products, ONNX rounds ``x / s`` where some
quantizers compute ``x · (1/s)`` (ties may flip one level), ``round`` is half-to-even in ONNX where Li & De's and
Uhlich's grids round ties away from zero, biases of integer layers are rounded to the int32 accumulator grid, and
onnxruntime's fused integer kernels requantize with their own rounding. Other biases are a separate float ``Add``,
which onnxruntime's graph optimisations do not re-round (:mod:`lowbit.export.onnx_graph`, pass 4).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from ..convert import replace_submodule
from ..devices import on_cpu
from ..nn.activation import QuantAct
from ..nn.layers import QuantizedLayer
from ..optional import require
from ..quantizers.base import Quantizer
from ..quantizers.grids import Grid, GridUnavailable
from .encode import encode_model, eval_mode, join_name
from .errors import ExportError
from .fold import affine_of, is_foldable_norm
from .grids import weight_codes
from .marks import MARK_DOMAIN, MARK_OP, ActMark, AffineMark, Mark, WeightMark

if TYPE_CHECKING:
    import onnx

__all__ = ["export_onnx", "OnnxExport", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


class _Mark(torch.autograd.Function):
    """Identity in PyTorch; ``lowbit.Mark(tag)`` in the traced ONNX graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tag: int) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: torch._C.Value, tag: int) -> torch._C.Value:
        # g: the TorchScript exporter's GraphContext, a private class whose module moves between torch versions
        out = g.op(f"{MARK_DOMAIN}::{MARK_OP}", x, tag_i=tag)
        out.setType(x.type())
        return out


class _MarkModule(nn.Module):
    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag
        self.rank = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rank = x.dim()  # recorded while tracing: BatchNorm1d normalises (N, C) or (N, C, L)
        return _Mark.apply(x, self.tag)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: str
    file_bytes: int
    opset: int
    weights: dict[str, dict] = field(default_factory=dict)  # param -> {bits, container, per_channel}
    activations: dict[str, str] = field(default_factory=dict)  # layer input -> "uint8 QDQ" / "float ops"
    folded: list[str] = field(default_factory=list)
    integer_biases: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _activation_grid(quantizer: Quantizer, where: str) -> Optional[Grid]:
    """The grid an activation quantizer applies in eval mode (``None``: values pass through), or an
    :class:`ExportError` naming the layer input when it has none fixed."""
    try:
        return quantizer.eval_grid()
    except GridUnavailable as error:
        raise ExportError(f"{where}: a static ONNX graph needs a fixed grid, and {error}") from None
    except NotImplementedError:
        raise ExportError(
            f"{where}: no ONNX form for activation quantizer {type(quantizer).__name__}: it does not "
            f"describe its grid (Quantizer.deterministic_grid)"
        ) from None


def _deploy_copy(
    model: nn.Module, weight_dtype: str, notes: list[str]
) -> tuple[nn.Module, dict[int, Mark], dict[int, _MarkModule]]:
    """A copy of ``model`` with placeholders, and what each placeholder stands for (tag -> mark)."""
    marks: dict[int, Mark] = {}
    modules: dict[int, _MarkModule] = {}

    def placeholder(spec: Mark) -> _MarkModule:
        tag = len(marks)
        marks[tag], modules[tag] = spec, _MarkModule(tag)
        return modules[tag]

    encoded = {(s.layer, s.slot): s for s in encode_model(model)}
    notes.extend(s.note for s in encoded.values() if s.note)
    deploy = copy.deepcopy(model).eval()
    for name, module in list(deploy.named_modules()):
        if isinstance(module, nn.Linear) and module.bias is None:
            # a zero bias makes the exporter write Gemm(x, W, b, transB=1), not MatMul(x, Transpose(W)): the form
            # a following BatchNorm folds into and onnxruntime fuses into QGemm
            module.bias = nn.Parameter(
                torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
            )
        if isinstance(module, QuantizedLayer):
            for slot in ("weight", "bias"):
                found = encoded.get((name, slot))
                if found is None:
                    continue
                with torch.no_grad():
                    getattr(module, slot).copy_(found.values)
                codes = (
                    weight_codes(found.codes, weight_dtype) if found.codes is not None and slot == "weight" else None
                )
                if slot == "weight":
                    if codes is None and found.codes is not None:
                        notes.append(
                            f"{found.param_name}: {found.codes.bits}-bit grid has no 8-bit integer form "
                            f"(more than 256 levels or non-integer levels); stored as float32"
                        )
                    values = found.values.detach().cpu().numpy()
                    module.weight_quantizer = placeholder(WeightMark(found.param_name, codes, values))
                else:
                    module.bias_quantizer = None  # the decoded bias is in the parameter; pass 4 may make it int32
            if module.input_quantizer is not None:
                where = join_name(name, "input")
                grid = _activation_grid(module.input_quantizer, where)
                module.input_quantizer = None if grid is None else placeholder(ActMark(where, grid))
            module.grad_quantizer = None
        elif isinstance(module, QuantAct):
            grid = _activation_grid(module.quantizer, name)
            replace_submodule(deploy, name, nn.Identity() if grid is None else placeholder(ActMark(name, grid)))
        elif is_foldable_norm(module):
            a, b = affine_of(module)
            replace_submodule(deploy, name, placeholder(AffineMark(name, a, b)))
    strays = [n for n, m in deploy.named_modules() if isinstance(m, Quantizer)]
    if strays:
        raise ExportError(
            f"cannot export quantizer {strays[0]!r}: only quantizers in the slots of quantized layers "
            f"and in QuantAct modules have an ONNX form"
        )
    return deploy, marks, modules


def _example(
    model: nn.Module,
    input_shape: Optional[Sequence[int]],
    example: Optional[torch.Tensor],
    input_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    if example is not None:
        return example[:1].detach().cpu()
    if input_shape is None:
        raise ExportError("give the input shape (C, H, W) of one sample, or an example batch, to export to ONNX")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((1,) + tuple(int(d) for d in input_shape), device=device, dtype=input_dtype or torch.float32)


def _trace(deploy: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    onnx = require("onnx", "ONNX export")

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export; lowbit needs its custom-op symbolic
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deploy,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            custom_opsets={MARK_DOMAIN: 1},
        )
    return onnx.load_from_string(buffer.getvalue())


def _describe(marks: dict, scales: dict[str, tuple], result: OnnxExport) -> None:
    """Per weight: bits, container and whether its final (BatchNorm-folded) scale is per channel."""
    for spec in marks.values():
        if isinstance(spec, WeightMark):
            codes = spec.codes
            result.weights[spec.name] = {
                "bits": None if codes is None else codes.bits,
                "container": "float32" if codes is None else str(codes.values.dtype),
                "per_channel": len(scales.get(spec.name, ())) == 1,
            }
        elif isinstance(spec, ActMark):
            result.activations[spec.name] = type(spec.grid).__name__


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    input_shape: Optional[Sequence[int]] = None,
    example: Optional[torch.Tensor] = None,
    input_dtype: Optional[torch.dtype] = None,
    opset: int = DEFAULT_OPSET,
    weight_dtype: str = "auto",
    integer_bias: bool = True,
    allow_float: bool = False,
    metadata: Optional[dict] = None,
) -> OnnxExport:
    """Export a quantized ``model`` (in eval semantics) to an ONNX file at ``path`` with a dynamic batch size.

    ``input_shape`` is one sample's ``(C, H, W)``, with ``input_dtype`` (float32 unless given: ``torch.long`` for
    token ids), or pass an ``example`` batch of the model's real input. ``weight_dtype``: ``auto`` (int8
    for weight grids within ±64, uint8 otherwise; see :mod:`lowbit.export.grids`), ``int8`` or ``uint8``.
    ``integer_bias``: int32 biases for layers that onnxruntime fuses into integer kernels (what it needs to fuse
    them); the biases of other layers with a quantized input are a separate float ``Add`` either way.
    ``allow_float``: export a model without quantized layers (float baseline)
    instead of raising. ``metadata``: extra string key/values for the model's ``metadata_props``.
    Returns what was written; ``notes`` lists every place that is not an integer grid.
    """
    onnx = require("onnx", "ONNX export")  # first: without the export extra, one line and nothing done

    from .. import __version__
    from .onnx_graph import rewrite_marks

    if opset < 13:
        raise ExportError(f"opset {opset} has no per-axis DequantizeLinear; use opset 13 or later")
    quantized = any(isinstance(m, QuantizedLayer) for m in model.modules())
    if not quantized and not allow_float:
        raise ExportError(
            "the model has no quantized layers: it was never quantized; quantize it with a recipe "
            "(lowbit.quantize, or train with --recipe lsq-w8a8) or pass allow_float=True for a "
            "float32 ONNX"
        )
    notes: list[str] = []
    model = on_cpu(model)
    with eval_mode(model):
        sample = _example(model, input_shape, example, input_dtype)
        deploy, marks, modules = _deploy_copy(model, weight_dtype, notes)
        try:
            traced = _trace(deploy, sample, opset)
        except RuntimeError as error:  # the model does not run on this input (token ids given as floats, ...)
            raise ExportError(
                f"tracing the model for ONNX on an input of shape {tuple(sample.shape)} and dtype {sample.dtype} "
                f"failed: {str(error).splitlines()[0]}; pass an example batch of the model's real input "
                f"(example=..., e.g. token ids) or its input_dtype"
            ) from None
    for tag, spec in marks.items():
        if isinstance(spec, AffineMark) and modules[tag].rank is not None:
            spec.rank = modules[tag].rank
    onnx_model, report = rewrite_marks(traced, marks, integer_bias=integer_bias)
    for name in report.float_activations:
        notes.append(f"{name}: activation grid has no uint8 QuantizeLinear form; written as float ops")
    for name in report.unfolded:
        notes.append(f"{name}: normalisation not directly after a Conv/Linear; kept as Mul + Add")
    props = {
        "lowbit_version": __version__,
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
    }
    onnx.helper.set_model_props(onnx_model, props)
    onnx.checker.check_model(onnx_model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(path))
    result = OnnxExport(
        path=str(path),
        file_bytes=path.stat().st_size,
        opset=opset,
        folded=report.folded,
        integer_biases=report.integer_biases,
        notes=notes,
    )
    dims = {t.name: tuple(t.dims) for t in onnx_model.graph.initializer}
    _describe(marks, {param: dims.get(name, ()) for param, name in report.weight_scales.items()}, result)
    return result
