"""``lowbit export CHECKPOINT --format packed|onnx [--out FILE]``, and :func:`export_checkpoint` behind it.

The checkpoint is a training checkpoint (``best.pt`` / ``last.pt`` or their run directory); for ``--format onnx``
a packed file works too. Bad input raises :class:`~lowbit.export.errors.ExportError` or
:class:`~lowbit.train.checkpoint.CheckpointError` (both ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .errors import ExportError
from .grids import WEIGHT_DTYPES

__all__ = ["export_checkpoint", "ExportResult", "add_export_parser", "cmd_export", "FORMATS", "default_output"]

FORMATS = ("packed", "onnx")
SUFFIXES = {"packed": ".packed.safetensors", "onnx": ".onnx"}


@dataclass
class ExportResult:
    path: str
    format: str
    info: object  # PackedInfo or OnnxExport
    model: nn.Module  # the model as exported (eval mode)
    data: Optional[dict] = None  # the checkpoint's data description (name, mean, std, splits)
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def default_output(source: Union[str, os.PathLike], fmt: str) -> Path:
    """``RUN/model.packed.safetensors`` for a run directory, ``DIR/best.onnx`` for ``DIR/best.pt``, ..."""
    source = Path(source)
    if source.is_dir():
        return source / f"model{SUFFIXES[fmt]}"
    name = source.name.removesuffix(".packed.safetensors")
    return source.with_name(Path(name).stem + SUFFIXES[fmt])


def _never_quantized(path: str, recipe: str, phase: Optional[str]) -> ExportError:
    why = "was written during float pre-training, before quantization" if phase == "pretrain" else \
        f"holds a float model (recipe {recipe!r} quantizes nothing)"
    return ExportError(f"checkpoint {path!r} {why}: there are no integer weights to export; train with a quantizing "
                       f"recipe (e.g. 'lowbit train --recipe lsq-w8a8') and export that run")


def _from_checkpoint(source, model: Optional[nn.Module]):
    from ..nn.layers import QuantizedLayer
    from ..train.checkpoint import load_checkpoint
    from ..train.trainer import restore_model

    state = load_checkpoint(source)
    recipe = state.get("recipe", {}).get("name", "?")
    if not state.get("quantized", True):
        raise _never_quantized(state["path"], recipe, state.get("phase"))
    if model is None and state["model_spec"].get("name") is None:
        raise ExportError(f"checkpoint {state['path']!r} holds a custom model: export it in Python, "
                          f"lowbit.export.export_checkpoint(path, model=YourFloatModel())")
    restored = restore_model(state, model=model)
    if not any(isinstance(m, QuantizedLayer) for m in restored.modules()):
        raise _never_quantized(state["path"], recipe, state.get("phase"))
    meta = {"recipe": state["recipe"], "seed": state["seed"], "model_spec": state["model_spec"],
            "data": state.get("data"), "source": {"checkpoint": state["path"], "phase": state.get("phase"),
                                                  "epoch": state.get("epoch", -1) + 1}}
    return restored, meta


def _from_packed(source, model: Optional[nn.Module]):
    from .packed import load_packed, read_packed_header

    header = read_packed_header(source)
    meta = {key: header.get(key) for key in ("recipe", "seed", "model_spec", "data")}
    meta["source"] = {"packed": str(source), **(header.get("source") or {})}
    return load_packed(source, model=model), meta


def export_checkpoint(source: Union[str, os.PathLike], format: str = "packed",
                      out: Optional[Union[str, os.PathLike]] = None, *, model: Optional[nn.Module] = None,
                      opset: Optional[int] = None, weight_dtype: str = "auto",
                      integer_bias: bool = True) -> ExportResult:
    """Export the model of a training checkpoint (or run directory) as a packed file or ONNX.

    ``source`` may also be a packed file for ``format="onnx"``. ``model``: your float model, for checkpoints of a
    custom architecture. ``out`` defaults to :func:`default_output`. The ONNX options are those of
    :func:`~lowbit.export.onnx_export.export_onnx`.
    """
    from .onnx_export import DEFAULT_OPSET, export_onnx
    from .packed import is_packed_file, save_packed

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    source_path = Path(source)
    from_packed = source_path.is_file() and is_packed_file(source_path)
    if from_packed and format == "packed":
        raise ExportError(f"{str(source)!r} is a packed file already; export a checkpoint, or use --format onnx")
    restored, meta = (_from_packed if from_packed else _from_checkpoint)(source, model)
    out_path = Path(out) if out else default_output(source, format)
    data = meta.get("data") or {}
    if format == "packed":
        info = save_packed(restored, out_path, recipe=meta["recipe"], seed=meta["seed"],
                           model_spec=meta["model_spec"], data=meta.get("data"), source=meta["source"])
    else:
        spec = meta["model_spec"] or {}
        input_shape = spec.get("input_shape") or data.get("input_shape")
        metadata = {"recipe": meta["recipe"].get("name", ""), "input_mean": data.get("mean"),
                    "input_std": data.get("std"), "dataset": data.get("name"), "model": spec.get("name")}
        info = export_onnx(restored, out_path, input_shape=input_shape, opset=opset or DEFAULT_OPSET,
                           weight_dtype=weight_dtype, integer_bias=integer_bias,
                           metadata={k: v for k, v in metadata.items() if v is not None})
    return ExportResult(str(out_path), format, info, restored, meta.get("data"), int(meta.get("seed") or 0),
                        list(dict.fromkeys(info.notes)))


# ------------------------------------------------------------------------------------------------------- verify
def _test_batches(result: ExportResult, data_dir: Optional[str]):
    from ..data import BatchLoader, load_dataset

    data = result.data or {}
    if not data.get("name"):
        raise ExportError("the checkpoint does not say which dataset it was trained on; --verify needs it")
    splits = load_dataset(data["name"], data_dir or data.get("data_dir"), val_fraction=data.get("val_fraction", 0.1),
                          seed=result.seed, train_subset=data.get("train_subset"),
                          test_subset=data.get("test_subset"))
    return BatchLoader(splits.test, 1024, normalize=(splits.mean, splits.std))


def _verify(result: ExportResult, data_dir: Optional[str]) -> dict:
    """ONNX: agreement and max logit difference with PyTorch; packed: the rebuilt model's outputs, bit for bit."""
    import torch

    from .encode import as_exported
    from .packed import load_packed, read_packed_header

    batches = _test_batches(result, data_dir)
    if result.format == "onnx":
        from .verify import onnx_parity

        return onnx_parity(result.model, result.path, batches).to_dict()
    if not (read_packed_header(result.path).get("model_spec") or {}).get("name"):
        return {"skipped": "custom model: verify in Python with lowbit.load_packed(path, model=YourFloatModel())"}
    reference, rebuilt = as_exported(result.model), load_packed(result.path)
    samples = identical = 0
    with torch.no_grad():
        for x, _ in batches:
            same = torch.all(reference(x) == rebuilt(x), dim=1)
            samples, identical = samples + len(x), identical + int(same.sum())
    return {"samples": samples, "identical_outputs": identical}


# ---------------------------------------------------------------------------------------------------------- CLI
def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` command to an ``argparse`` sub-parser collection; returns its parser."""
    parser = subparsers.add_parser(
        "export", help="write a trained model as a bit-packed file or as ONNX",
        description="Export a checkpoint: --format packed writes every quantized weight bit-packed at its own bit "
                    "width (safetensors file, load with lowbit.load_packed); --format onnx writes integer weights "
                    "behind DequantizeLinear, QuantizeLinear/DequantizeLinear on quantized activations and "
                    "BatchNorm folded into the convolutions, for onnxruntime.")
    parser.add_argument("checkpoint", help="checkpoint file or run directory (or a packed file, with --format onnx)")
    parser.add_argument("--format", choices=FORMATS, default="packed", help="packed (default) or onnx")
    parser.add_argument("--out", help="output file (default: next to the checkpoint, NAME.packed.safetensors or "
                                      "NAME.onnx; model.* in a run directory)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 13 (default: 17)")
    parser.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="auto",
                        help="ONNX weight container: auto (int8 for grids within ±64, else uint8), int8 or uint8")
    parser.add_argument("--float-bias", action="store_true",
                        help="ONNX: keep every bias in float32 (no int32 biases; onnxruntime then fuses fewer "
                             "layers into integer kernels)")
    parser.add_argument("--verify", action="store_true",
                        help="run the test split through the exported model and compare with PyTorch")
    parser.add_argument("--data-dir", help="dataset directory for --verify, if it moved since training")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _summary(result: ExportResult) -> list[str]:
    info = result.info
    if result.format == "packed":
        return [f"wrote {result.path}: {info.file_bytes:,} bytes (codes {info.code_bytes:,} B for "
                f"{info.quantized_params:,} weights, float state {info.float_bytes:,} B, quantization parameters "
                f"{info.param_bytes:,} B, header {info.header_bytes:,} B)",
                f"float32: {info.float32_bytes:,} bytes, {info.compression:.1f}x larger; quantized weights "
                f"{info.weight_compression:.1f}x smaller than float32"]
    containers = sorted({w["container"] for w in info.weights.values()})
    return [f"wrote {result.path}: {info.file_bytes:,} bytes, opset {info.opset}; weights "
            f"{', '.join(containers)}; {len(info.folded)} BatchNorm folded; {len(info.integer_biases)} int32 biases"]


def cmd_export(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.checkpoint, args.format, args.out, opset=args.opset,
                               weight_dtype=args.weight_dtype, integer_bias=not args.float_bias)
    verified = _verify(result, args.data_dir) if args.verify else None
    if args.json:
        payload = {"path": result.path, "format": result.format, **result.info.to_dict(), "notes": result.notes}
        if verified is not None:
            payload["verify"] = verified
        print(json.dumps(payload, indent=2, default=str))
        return 0
    for line in _summary(result):
        print(line)
    for note in result.notes:
        print(f"note: {note}")
    if verified is not None:
        if "agree" in verified:
            print(f"verify: onnxruntime and PyTorch predict the same class on {verified['agree']}/"
                  f"{verified['samples']} test samples; max |logit difference| {verified['max_abs_diff']:.3g} "
                  f"(logits up to {verified['max_abs_logit']:.3g})")
        elif "samples" in verified:
            print(f"verify: rebuilt model outputs identical on {verified['identical_outputs']}/"
                  f"{verified['samples']} test samples")
        else:
            print(f"verify: {verified['skipped']}")
    return 0
