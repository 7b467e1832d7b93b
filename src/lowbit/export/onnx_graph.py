"""Rewrite a traced ONNX graph whose quantizers and BatchNorms are ``lowbit.Mark`` placeholders into standard ops.

The exporter (:mod:`lowbit.export.onnx_export`) traces the model with every quantizer slot and normalisation layer
replaced by an identity op ``lowbit.Mark(tag)``; the torch exporter supplies the data flow (convolutions, pooling,
residual adds, reshapes) and this module gives each mark its meaning, in four passes:

1. weight marks  -> ``DequantizeLinear(codes, scale, zero_point, axis=0)`` on an 8-bit initializer (or the float
   values where the grid has no 8-bit form);
2. affine marks (BatchNorm) -> folded into the Conv/Gemm that *directly* precedes them (its output used by nothing
   else): the weight's per-output-channel DequantizeLinear scale becomes ``a·s`` and the bias ``a·c + b``, so the
   integer codes are unchanged (:mod:`lowbit.export.fold`); elsewhere a ``Mul`` and an ``Add``;
3. activation marks -> ``[Clip] -> QuantizeLinear -> DequantizeLinear`` (uint8), or float ops for grids without a
   QDQ form (:mod:`lowbit.export.grids`). Where a layer input is reached from a quantized Conv/Gemm (input and
   weight dequantized; or its Relu) through data-movement ops only (MaxPool, Flatten, Reshape, ...), copies of the
   pair go in front of each of those ops:
   ``Conv -> Relu -> QDQ -> MaxPool -> QDQ -> Flatten -> QDQ``. That changes no value (``DQ∘Q`` is monotone, so it
   commutes with max-pooling, reshapes move values unchanged, and ``DQ∘Q`` of a grid value is that value) and lets
   onnxruntime fuse the Conv with its output quantization and run the pooling on uint8;
4. integer bias: a Conv/Gemm that onnxruntime can run as an integer kernel gets its bias as
   ``DequantizeLinear(int32, s_x·s_w)``, rounded to the accumulator grid (error at most half a step ``s_x·s_w/2``),
   the only form in which onnxruntime fuses it into QLinearConv / QGemm. Elsewhere rounding it would only perturb
   the pre-activations (and flip levels of the next quantizer) for no speed gain, and a float bias that is the
   layer's own input is rounded anyway by onnxruntime's ``WeightBiasQuantization`` (basic optimisation level and up:
   every Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear): 4-12 % of a W4A4 MobileNetV2's
   predictions changed. So there the bias becomes a separate ``Add`` after the layer, ``Conv(x, W) + b``, the same
   float sum, which onnxruntime leaves alone (its Conv+Add fusion needs a constant float weight).
   ``integer_bias=False`` keeps the bias of integer layers float too.

Which layers fuse (onnxruntime's QDQ selectors): input and weight from DequantizeLinear; a Conv also needs its
output to go to a uint8 QuantizeLinear, directly or through a Relu made redundant by a zero point of 0; a Gemm fuses
without an output QuantizeLinear too (float output), unless a Relu follows it that no QuantizeLinear makes redundant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..optional import missing

try:  # export_onnx checked already; this keeps a direct import of this module to one line without the extra
    import onnx
    from onnx import helper, numpy_helper
except ImportError as error:
    raise missing("onnx", "ONNX export", error) from error

if TYPE_CHECKING:
    import numpy.typing as npt

from ..quantizers.grids import AffineFloat, IntegerGrid, Pow2Grid, SignGrid
from .errors import ExportError
from .grids import activation_qdq
from .marks import MARK_DOMAIN, MARK_OP, ActMark, AffineMark, Mark, WeightMark

__all__ = ["rewrite_marks", "RewriteReport"]

INT32_LIMIT = 2**31 - 1


@dataclass
class _DQ:
    kind: str  # "weight" | "act"
    scale: str  # initializer names
    zero_point: str


@dataclass
class RewriteReport:
    weight_scales: dict[str, str] = field(default_factory=dict)  # param -> its DequantizeLinear scale initializer
    folded: list[str] = field(default_factory=list)  # "bn -> conv"
    unfolded: list[str] = field(default_factory=list)
    integer_biases: list[str] = field(default_factory=list)
    float_biases: list[str] = field(default_factory=list)  # layers whose bias became a separate Add
    float_activations: list[str] = field(default_factory=list)


class _Graph:
    """The node list and initializers being rewritten, with name bookkeeping."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.inits: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}
        self.names = set(self.inits) | {o for n in self.nodes for o in n.output} | {i.name for i in model.graph.input}
        self.dq: dict[str, _DQ] = {}  # output name of a DequantizeLinear we created -> its parameters
        self.hoistable: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # unclipped activation Q/DQ pairs

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def add_init(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.inits[name] = np.asarray(array)
        return name

    def producer(self, value: str) -> Optional[onnx.NodeProto]:
        return next((n for n in self.nodes if value in n.output), None)

    def consumers(self, value: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if value in n.input]

    def const(self, value: str) -> Optional[np.ndarray]:
        """The value of an initializer, looking through Identity and Constant nodes."""
        if value in self.inits:
            return self.inits[value]
        node = self.producer(value)
        if node is not None and node.op_type == "Identity":
            return self.const(node.input[0])
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def replace(self, node: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        i = self.nodes.index(node)
        self.nodes[i : i + 1] = new_nodes

    def insert_before(self, node: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        i = self.nodes.index(node)
        self.nodes[i:i] = new_nodes

    def rename_uses(self, old: str, new: str) -> None:
        for node in self.nodes:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new


def _tag(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "tag")


def _marks(graph: _Graph, marks: dict[int, Mark], kind: type) -> list[tuple[onnx.NodeProto, Mark]]:
    found = []
    for node in graph.nodes:
        if node.domain == MARK_DOMAIN and node.op_type == MARK_OP:
            spec = marks[_tag(node)]
            if isinstance(spec, kind):
                found.append((node, spec))
    return found


def _attribute(node: onnx.NodeProto, name: str, default: object) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _set_axis(node: onnx.NodeProto, axis: Optional[int]) -> None:
    kept = [a for a in node.attribute if a.name != "axis"]
    del node.attribute[:]
    node.attribute.extend(kept)
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))


# --------------------------------------------------------------------------------------------------- pass 1
def _weights(graph: _Graph, marks: dict[int, Mark], report: RewriteReport) -> None:
    for node, spec in _marks(graph, marks, WeightMark):
        out = node.output[0]
        if spec.codes is None:
            graph.replace(node, [])
            graph.rename_uses(out, graph.add_init(spec.name, spec.values.astype(np.float32)))
            continue
        codes = spec.codes
        inputs = [
            graph.add_init(f"{spec.name}_quantized", codes.values),
            graph.add_init(f"{spec.name}_scale", codes.scale),
            graph.add_init(f"{spec.name}_zero_point", codes.zero_point),
        ]
        dq = helper.make_node("DequantizeLinear", inputs, [out], name=f"{spec.name}/DequantizeLinear")
        _set_axis(dq, codes.axis)
        graph.replace(node, [dq])
        graph.dq[out] = _DQ("weight", inputs[1], inputs[2])
        report.weight_scales[spec.name] = inputs[1]


# --------------------------------------------------------------------------------------------------- pass 2
def _fold_target(graph: _Graph, x: str, mark: onnx.NodeProto, channels: int) -> Optional[onnx.NodeProto]:
    """The Conv/Gemm producing ``x`` if a BatchNorm on ``x`` can be folded into it."""
    layer = graph.producer(x)
    if layer is None or layer.op_type not in ("Conv", "Gemm") or x in graph.outputs:
        return None
    if graph.consumers(x) != [mark]:
        return None  # the un-normalised output is used elsewhere too
    if layer.op_type == "Gemm" and (
        _attribute(layer, "transB", 0) != 1
        or _attribute(layer, "transA", 0) != 0
        or _attribute(layer, "alpha", 1.0) != 1.0
        or _attribute(layer, "beta", 1.0) != 1.0
    ):
        return None
    weight = layer.input[1]
    if len(graph.consumers(weight)) != 1:
        return None
    shape = graph.inits[graph.dq[weight].scale].shape if weight in graph.dq else None
    if weight in graph.dq:
        values = graph.const(graph.producer(weight).input[0])
    else:
        values = graph.const(weight)
    if values is None or values.shape[0] != channels or (shape is not None and shape not in ((), (channels,))):
        return None
    if len(layer.input) > 2 and layer.input[2] and graph.const(layer.input[2]) is None:
        return None
    return layer


def _fold(graph: _Graph, layer: onnx.NodeProto, spec: AffineMark) -> None:
    a, b = spec.a, spec.b
    weight = layer.input[1]
    if weight in graph.dq:
        dq = graph.dq[weight]
        scale = np.broadcast_to(graph.inits[dq.scale].astype(np.float64), a.shape)
        graph.inits[dq.scale] = (scale * a).astype(np.float32)
        graph.inits[dq.zero_point] = np.broadcast_to(graph.inits[dq.zero_point], a.shape).copy()
        _set_axis(graph.producer(weight), 0)
    else:
        values = graph.const(weight).astype(np.float64)
        scaled = values * a.reshape((-1,) + (1,) * (values.ndim - 1))
        layer.input[1] = graph.add_init(f"{spec.name}.folded_weight", scaled.astype(np.float32))
    bias = b.astype(np.float64)
    if len(layer.input) > 2 and layer.input[2]:
        bias = bias + a * graph.const(layer.input[2]).astype(np.float64)
    name = graph.add_init(f"{spec.name}.folded_bias", bias.astype(np.float32))
    while len(layer.input) < 3:
        layer.input.append("")
    layer.input[2] = name


def _affines(graph: _Graph, marks: dict[int, Mark], report: RewriteReport) -> None:
    for node, spec in _marks(graph, marks, AffineMark):
        x, out = node.input[0], node.output[0]
        layer = _fold_target(graph, x, node, spec.a.size)
        if layer is not None:
            _fold(graph, layer, spec)
            layer.output[0] = out  # the layer now writes the normalised tensor itself
            graph.replace(node, [])
            report.folded.append(f"{spec.name} -> {layer.name or layer.op_type}")
            continue
        shape = (spec.a.size,) + (1,) * max(spec.rank - 2, 0)
        a = graph.add_init(f"{spec.name}.scale", spec.a.astype(np.float32).reshape(shape))
        b = graph.add_init(f"{spec.name}.shift", spec.b.astype(np.float32).reshape(shape))
        scaled = graph.unique(f"{spec.name}/scaled")
        graph.replace(
            node,
            [
                helper.make_node("Mul", [x, a], [scaled], name=f"{spec.name}/Mul"),
                helper.make_node("Add", [scaled, b], [out], name=f"{spec.name}/Add"),
            ],
        )
        report.unfolded.append(spec.name)


# --------------------------------------------------------------------------------------------------- pass 3
def _qdq_nodes(graph: _Graph, spec: ActMark, x: str, out: str) -> Optional[list[onnx.NodeProto]]:
    qdq = activation_qdq(spec.grid)
    if qdq is None:
        return None
    n = spec.name
    nodes = []
    if qdq.clip is not None:
        clipped = graph.unique(f"{n}/clipped")
        nodes.append(
            helper.make_node(
                "Clip",
                [x, graph.add_init(f"{n}.clip_min", qdq.clip[0]), graph.add_init(f"{n}.clip_max", qdq.clip[1])],
                [clipped],
                name=f"{n}/Clip",
            )
        )
        x = clipped
    scale = graph.add_init(f"{n}.scale", np.float32(qdq.scale))
    zero = graph.add_init(f"{n}.zero_point", np.uint8(qdq.zero_point))
    quantized = graph.unique(f"{n}/quantized")
    nodes.append(helper.make_node("QuantizeLinear", [x, scale, zero], [quantized], name=f"{n}/QuantizeLinear"))
    nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [out], name=f"{n}/DequantizeLinear"))
    graph.dq[out] = _DQ("act", scale, zero)
    if qdq.clip is None:
        graph.hoistable.append((nodes[-2], nodes[-1]))
    return nodes


class _Chain:
    """Builds a straight chain of float ops ``x -> op(x, constants) -> ...`` ending in ``out``."""

    def __init__(self, graph: _Graph, name: str, x: str) -> None:
        self.graph, self.name, self.value, self.nodes = graph, name, x, []

    def const(self, label: str, value: npt.ArrayLike) -> str:
        return self.graph.add_init(f"{self.name}.{label}", np.asarray(value, dtype=np.float32))

    def op(self, op_type: str, *extra: str, out: Optional[str] = None, first: Optional[str] = None) -> str:
        result = out or self.graph.unique(f"{self.name}/{op_type}")
        inputs = [first or self.value, *extra]
        self.nodes.append(helper.make_node(op_type, inputs, [result], name=self.graph.unique(f"{self.name}/{op_type}")))
        self.value = result
        return result


def _float_nodes(graph: _Graph, spec: ActMark, x: str, out: str) -> list[onnx.NodeProto]:
    grid, c = spec.grid, _Chain(graph, spec.name, x)
    if isinstance(grid, IntegerGrid):  # more levels than a uint8 container holds
        grid = AffineFloat(
            grid.scale,
            np.float32(grid.zero_point),
            float(grid.l_min + grid.zero_point),
            float(grid.l_max + grid.zero_point),
        )
    if isinstance(grid, AffineFloat):
        # x̂ = s·(clip(round(x·(1/s) + z), u_min, u_max) − z), as the min-max quantizer computes it
        c.op("Mul", c.const("inv_scale", np.float32(1.0) / grid.scale))
        if grid.zero_point:
            c.op("Add", c.const("zero_point", grid.zero_point))
        c.op("Round")
        c.op("Clip", c.const("u_min", grid.u_min), c.const("u_max", grid.u_max))
        if grid.zero_point:
            c.op("Sub", c.const("zero_point_", grid.zero_point))
        c.op("Mul", c.const("scale", grid.scale), out=out)
    elif isinstance(grid, Pow2Grid):
        # sign(x)·clip(2^round(log2|x|), q_min, q_max), zero where |x| < q_min/√2
        if not grid.signed:
            x = c.op("Relu")
        magnitude = c.op("Abs")
        c.op("Log")
        c.op("Mul", c.const("inv_ln2", 1.0 / math.log(2.0)))
        c.op("Round")
        c.op("Pow", c.value, first=c.const("two", 2.0))
        c.op("Clip", c.const("q_min", grid.q_min), c.const("q_max", grid.q_max))
        if grid.threshold is not None:
            clipped = c.value
            small = c.op("Less", c.const("threshold", grid.threshold), first=magnitude)
            c.op("Where", c.const("zero", 0.0), clipped, first=small)
        scaled = c.value
        if grid.threshold is None:  # no zero level: x = 0 maps to +q_min, as x > 0 does
            sign = c.op(
                "Where",
                c.const("plus_one", 1.0),
                c.const("minus_one", -1.0),
                first=c.op("GreaterOrEqual", c.const("zero_", 0.0), first=x),
            )
        else:
            sign = c.op("Sign", first=x)
        c.op("Mul", scaled, out=out, first=sign)
    elif isinstance(grid, SignGrid):  # +H where x >= 0 (so sign(0) = +1), else -H
        condition = c.op("GreaterOrEqual", c.const("zero", 0.0))
        c.op("Where", c.const("plus", grid.scale), c.const("minus", -grid.scale), out=out, first=condition)
    else:
        raise ExportError(f"{spec.name}: no ONNX form for a {type(grid).__name__}")
    return c.nodes


def _activations(graph: _Graph, marks: dict[int, Mark], report: RewriteReport) -> None:
    for node, spec in _marks(graph, marks, ActMark):
        x, out = node.input[0], node.output[0]
        nodes = _qdq_nodes(graph, spec, x, out) if isinstance(spec.grid, IntegerGrid) else None
        if nodes is None:
            nodes = _float_nodes(graph, spec, x, out)
            report.float_activations.append(spec.name)
        graph.replace(node, nodes)


#: ops that move values without changing them, and commute with a monotone DQ∘Q (max-pooling)
_MOVES_DATA = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"}


def _quantized_layer_output(graph: _Graph, value: str) -> bool:
    """Whether ``value`` is the output of a Conv/Gemm with dequantized input and weight (or of its Relu): a layer
    onnxruntime can fuse into an integer kernel once a QuantizeLinear follows it."""
    node = graph.producer(value)
    if node is not None and node.op_type == "Relu" and len(graph.consumers(node.input[0])) == 1:
        node = graph.producer(node.input[0])
    return (
        node is not None
        and node.op_type in ("Conv", "Gemm")
        and _dq_kind(graph, node.input[0]) == "act"
        and _dq_kind(graph, node.input[1]) == "weight"
    )


def _dq_kind(graph: _Graph, value: str) -> str:
    return graph.dq[value].kind if value in graph.dq else ""


def _hoist(graph: _Graph) -> None:
    """Copy unclipped activation Q/DQ pairs up to the Conv/Gemm (or its Relu) they are reached from through
    data-movement ops, and between those ops: ``Conv -> Relu -> QDQ -> MaxPool -> QDQ -> Flatten -> QDQ``."""
    for quantize, dequantize in graph.hoistable:
        value, chain = quantize.input[0], []
        while True:
            node = graph.producer(value)
            if node is None or node.op_type not in _MOVES_DATA or len(graph.consumers(value)) != 1:
                break
            chain.append(node)
            value = node.input[0]
        # only where it lets a quantized layer fuse: onnxruntime pools uint8 NCHW tensors slowly otherwise
        if not chain or len(graph.consumers(value)) != 1 or not _quantized_layer_output(graph, value):
            continue
        base = quantize.name.removesuffix("/QuantizeLinear")
        for op in reversed(chain):  # in data order: a copy in front of every data-movement op
            quantized, restored = graph.unique(f"{base}/early_quantized"), graph.unique(f"{base}/early_dequantized")
            graph.insert_before(
                op,
                [
                    helper.make_node(
                        "QuantizeLinear",
                        [op.input[0], *quantize.input[1:]],
                        [quantized],
                        name=graph.unique(f"{base}/early_QuantizeLinear"),
                    ),
                    helper.make_node(
                        "DequantizeLinear",
                        [quantized, *dequantize.input[1:]],
                        [restored],
                        name=graph.unique(f"{base}/early_DequantizeLinear"),
                    ),
                ],
            )
            op.input[0] = restored


# --------------------------------------------------------------------------------------------------- pass 4
def _fuses(graph: _Graph, node: onnx.NodeProto) -> bool:
    """Whether onnxruntime will run this Conv/Gemm (input and weight dequantized) as an integer kernel."""
    out = node.output[0]
    users = graph.consumers(out)
    relu = users[0] if len(users) == 1 and users[0].op_type == "Relu" and out not in graph.outputs else None
    after = graph.consumers(relu.output[0] if relu is not None else out)
    quantize = after[0] if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None
    if quantize is not None and relu is not None:
        # the Relu is dropped only if the QuantizeLinear clips at zero by itself: uint8 with zero point 0
        zero = graph.const(quantize.input[2])
        quantize = quantize if zero is not None and int(zero) == 0 else None
    if node.op_type == "Gemm":
        return quantize is not None or relu is None  # QGemm may keep a float output
    return quantize is not None


def _layer_bias(graph: _Graph, node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The constant float32 bias of a Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear: the biases
    onnxruntime's ``WeightBiasQuantization`` would round onto the int32 accumulator grid (``None`` for others)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return None
    source = graph.producer(node.input[0])
    if source is None or source.op_type != "DequantizeLinear":
        return None
    bias = graph.const(node.input[2])
    return bias if bias is not None and bias.dtype == np.float32 and bias.ndim == 1 else None


def _int32_bias(graph: _Graph, node: onnx.NodeProto, bias: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(round(b / s), s)`` with ``s = s_x·s_w`` (float32 product, as onnxruntime's kernels assume), or ``None``
    where the scales do not allow it (zero scale, per-channel scale of another length, int32 overflow)."""
    x, w = node.input[0], node.input[1]
    scale = (graph.inits[graph.dq[x].scale].astype(np.float32) * graph.inits[graph.dq[w].scale]).astype(np.float32)
    if np.any(scale == 0) or (scale.ndim == 1 and scale.shape != bias.shape):
        return None
    quantized = np.round(bias.astype(np.float64) / scale.astype(np.float64))
    if np.abs(quantized).max(initial=0) >= INT32_LIMIT:
        return None
    return quantized.astype(np.int32), scale


def _bias_as_add(graph: _Graph, node: onnx.NodeProto, bias: np.ndarray) -> None:
    """``Conv(x, W, b)`` -> ``Add(Conv(x, W), b)``: the same float sum, which onnxruntime cannot re-round (it only
    quantizes a bias that is the layer's own input, and fuses a following Add only into a constant float weight)."""
    if node.op_type == "Gemm":
        shape = bias.shape  # (N, C) outputs: the bias broadcasts along the last axis
    else:
        weight = graph.const(node.input[1])
        if weight is None and node.input[1] in graph.dq:
            weight = graph.const(graph.producer(node.input[1]).input[0])
        spatial = len(_attribute(node, "kernel_shape", [])) or (weight.ndim - 2 if weight is not None else 2)
        shape = bias.shape + (1,) * spatial  # (N, C, *spatial) outputs
    base = node.input[2].removesuffix(".folded_bias").removesuffix(".bias")
    out, summed = node.output[0], graph.unique(f"{node.name or base}/without_bias")
    node.input[2] = ""
    node.output[0] = summed
    add = helper.make_node("Add", [summed, graph.add_init(f"{base}.bias", bias.reshape(shape))], [out])
    add.name = graph.unique(f"{node.name or base}/bias_Add")
    i = graph.nodes.index(node)
    graph.nodes[i + 1 : i + 1] = [add]


def _biases(graph: _Graph, report: RewriteReport, integer_bias: bool) -> None:
    """Give each bias a form onnxruntime's graph optimisations keep: int32 on the accumulator grid where the layer
    runs as an integer kernel, a separate float ``Add`` elsewhere (see the module docstring, pass 4)."""
    for node in list(graph.nodes):
        bias = _layer_bias(graph, node)
        if bias is None:
            continue
        integer_layer = (
            _dq_kind(graph, node.input[0]) == "act"
            and _dq_kind(graph, node.input[1]) == "weight"
            and _fuses(graph, node)
        )
        if not integer_layer:
            _bias_as_add(graph, node, bias)
            report.float_biases.append(node.name or node.input[0])
            continue
        if not integer_bias:
            continue  # kept as the layer's float input: onnxruntime rounds it as below when it fuses the layer
        found = _int32_bias(graph, node, bias)
        if found is None:
            _bias_as_add(graph, node, bias)
            report.float_biases.append(node.name or node.input[0])
            continue
        quantized, scale = found
        b = node.input[2]
        base = b.removesuffix(".folded_bias").removesuffix(".bias")
        inputs = [graph.add_init(f"{base}.bias_quantized", quantized), graph.add_init(f"{base}.bias_scale", scale)]
        out = graph.unique(f"{base}.bias_dequantized")
        dq = helper.make_node("DequantizeLinear", inputs, [out], name=graph.unique(f"{base}.bias/DequantizeLinear"))
        _set_axis(dq, 0 if scale.ndim == 1 else None)
        graph.insert_before(node, [dq])
        node.input[2] = out
        report.integer_biases.append(node.name or base)


# ------------------------------------------------------------------------------------------------------ driver
def _unique_node_names(nodes: list[onnx.NodeProto]) -> None:
    """Give every node its own name: a module called twice in ``forward`` is traced as two copies of its marks, each
    rewritten into nodes named after the module (``shared.input/Clip``), and onnxruntime refuses a graph with two
    nodes of the same name. The second call's nodes become ``shared.input/Clip_1``, and so on."""
    used = {node.name for node in nodes}
    seen: set[str] = set()
    for node in nodes:
        if node.name and node.name in seen:
            k, name = 1, f"{node.name}_1"
            while name in used:
                k, name = k + 1, f"{node.name}_{k + 1}"
            node.name = name
            used.add(name)
        seen.add(node.name)


def _finish(graph: _Graph) -> onnx.ModelProto:
    old = graph.model
    _unique_node_names(graph.nodes)
    used = {name for node in graph.nodes for name in node.input} | graph.outputs
    initializers = [
        numpy_helper.from_array(np.asarray(array), name) for name, array in graph.inits.items() if name in used
    ]
    init_names = {t.name for t in initializers}
    inputs = [i for i in old.graph.input if i.name not in init_names]
    new_graph = helper.make_graph(graph.nodes, old.graph.name or "lowbit", inputs, list(old.graph.output), initializers)
    model = helper.make_model(
        new_graph,
        opset_imports=[o for o in old.opset_import if o.domain != MARK_DOMAIN],
        producer_name="lowbit",
        ir_version=old.ir_version,
    )
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def rewrite_marks(
    model: onnx.ModelProto, marks: dict[int, Mark], *, integer_bias: bool = True
) -> tuple[onnx.ModelProto, RewriteReport]:
    """Replace every ``lowbit.Mark`` node by standard ONNX ops (see the module docstring)."""
    graph = _Graph(model)
    report = RewriteReport()
    _weights(graph, marks, report)
    _affines(graph, marks, report)
    _activations(graph, marks, report)
    _hoist(graph)
    _biases(graph, report, integer_bias)
    left = [n for n in graph.nodes if n.domain == MARK_DOMAIN]
    if left:
        raise RuntimeError(f"{len(left)} lowbit.Mark nodes were not rewritten")
    return _finish(graph), report
