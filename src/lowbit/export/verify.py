"""Does an exported ONNX file compute what the PyTorch model computes? onnxruntime against the fake-quantized model.

``onnx_parity`` runs both on the same inputs and reports how many predicted classes agree and the largest absolute
logit difference; ``runtime_kernels`` lists the op types onnxruntime actually executes after its graph optimisations
(QLinearConv, QGemm, ... when the quantized layers were fused into integer kernels).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from torch import nn

from ..optional import require
from .encode import as_exported

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "OnnxParity",
    "onnx_parity",
    "onnx_logits",
    "torch_logits",
    "compare_logits",
    "ort_session",
    "runtime_kernels",
    "INTEGER_KERNELS",
]

#: what the comparisons accept as inputs: a tensor, or an iterable of tensors / (x, y) batches (a ``BatchLoader``)
ModelInputs = Union[torch.Tensor, Iterable[Union[torch.Tensor, Sequence[torch.Tensor]]]]

#: onnxruntime ops that compute with integer arithmetic
INTEGER_KERNELS = (
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "MatMulInteger",
    "QLinearAdd",
    "QLinearGlobalAveragePool",
    "DynamicQuantizeMatMul",
)


@dataclass
class OnnxParity:
    samples: int
    agree: int  # samples with the same predicted class
    max_abs_diff: float  # largest |logit_onnx - logit_torch|
    max_abs_logit: float  # largest |logit_torch|, for scale
    kernels: dict[str, int] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        return self.agree / self.samples if self.samples else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


def ort_session(
    path: Union[str, os.PathLike],
    *,
    threads: Optional[int] = None,
    optimized_path: Optional[str] = None,
    optimization: str = "all",
    disabled_optimizers: Sequence[str] = (),
) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session (``threads`` intra-op threads; ``optimization``: all, extended, basic, none;
    ``disabled_optimizers``: names of onnxruntime graph transformers to skip)."""
    ort = require("onnxruntime", "running an ONNX file in onnxruntime")

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3  # saving an ENABLE_ALL graph warns that it is hardware specific: expected
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers)
    )


def runtime_kernels(
    path: Union[str, os.PathLike], *, optimization: str = "all", disabled_optimizers: Sequence[str] = ()
) -> dict[str, int]:
    """Op types (with counts) of the graph onnxruntime runs after optimising ``path``."""
    onnx = require("onnx", "reading the graph onnxruntime optimised")

    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        ort_session(
            path,
            optimized_path=optimized,
            optimization=optimization,
            threads=1,
            disabled_optimizers=disabled_optimizers,
        )
        graph = onnx.load(optimized).graph
    return dict(Counter(node.op_type for node in graph.node))


def _batches(inputs: ModelInputs) -> list[torch.Tensor]:
    """A tensor, or an iterable of tensors / (x, y) batches, as a list of input tensors."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    return [b[0] if isinstance(b, (tuple, list)) else b for b in batches]


def onnx_logits(
    path: Union[str, os.PathLike],
    inputs: ModelInputs,
    *,
    batch_size: int = 1024,
    threads: Optional[int] = None,
    optimization: str = "all",
) -> np.ndarray:
    """onnxruntime's outputs for ``inputs`` (see :func:`onnx_parity`), concatenated."""
    session = ort_session(path, threads=threads, optimization=optimization)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(None, {name: chunk.cpu().numpy()})[0]
            for x in _batches(inputs)
            for chunk in torch.split(x, batch_size)
        ]
    )


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: ModelInputs, *, batch_size: int = 1024) -> np.ndarray:
    """The outputs of ``model`` evaluated as exported (:func:`~lowbit.export.encode.as_exported`)."""
    reference = as_exported(model)
    return np.concatenate(
        [reference(chunk).cpu().numpy() for x in _batches(inputs) for chunk in torch.split(x, batch_size)]
    )


def compare_logits(expected: np.ndarray, got: np.ndarray, kernels: Optional[dict] = None) -> OnnxParity:
    """Agreement of predicted classes and the largest absolute difference of two ``(N, classes)`` arrays."""
    if expected.shape != got.shape:
        raise ValueError(f"outputs of shape {got.shape} do not match the expected {expected.shape}")
    agree = int(np.sum(expected.argmax(1) == got.argmax(1)))
    return OnnxParity(
        len(expected),
        agree,
        float(np.abs(expected - got).max(initial=0.0)),
        float(np.abs(expected).max(initial=0.0)),
        dict(kernels or {}),
    )


def onnx_parity(
    model: nn.Module,
    path: Union[str, os.PathLike],
    inputs: ModelInputs,
    *,
    batch_size: int = 1024,
    threads: Optional[int] = None,
    optimization: str = "all",
) -> OnnxParity:
    """Compare the exported file with ``model`` (evaluated as exported, see
    :func:`~lowbit.export.encode.as_exported`) on ``inputs``: a tensor, or an iterable of tensors / (x, y) batches.
    ``optimization`` is onnxruntime's graph optimisation level (``all``: fused integer kernels; ``none``: the
    graph run as written)."""
    batches = _batches(inputs)
    expected = torch_logits(model, batches, batch_size=batch_size)
    got = onnx_logits(path, batches, batch_size=batch_size, threads=threads, optimization=optimization)
    return compare_logits(expected, got, runtime_kernels(path, optimization=optimization))
