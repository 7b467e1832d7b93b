"""``lowbit export``: write a trained model as a bit-packed file or as ONNX, optionally verified on its test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from torch import nn

from ..export.from_checkpoint import FORMATS, ExportResult
from ..export.grids import WEIGHT_DTYPES
from ..optional import require
from .options import add_epoch_option, add_model_reference_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a trained model as a bit-packed file or as ONNX",
        description="Export a checkpoint: --format packed writes every quantized weight bit-packed at its own bit "
        "width (safetensors file, load with lowbit.load_packed); --format onnx writes integer weights "
        "behind DequantizeLinear, QuantizeLinear/DequantizeLinear on quantized activations and "
        "BatchNorm folded into the convolutions, for onnxruntime.",
    )
    parser.add_argument("checkpoint", help="checkpoint file or run directory (or a packed file, with --format onnx)")
    add_epoch_option(parser)
    add_model_reference_option(parser)
    parser.add_argument("--format", choices=FORMATS, default="packed", help="packed (default) or onnx")
    parser.add_argument(
        "--out",
        help="output file (default: next to the checkpoint, NAME.packed.safetensors or "
        "NAME.onnx; model.* in a run directory)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 13 (default: 17)")
    parser.add_argument(
        "--weight-dtype",
        choices=WEIGHT_DTYPES,
        default="auto",
        help="ONNX weight container: auto (int8 for grids within ±64, else uint8), int8 or uint8",
    )
    parser.add_argument(
        "--float-bias",
        action="store_true",
        help="ONNX: keep every bias in float32 (no int32 biases; onnxruntime then fuses fewer "
        "layers into integer kernels)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="run the test split through the exported model and compare with PyTorch"
    )
    parser.add_argument("--data-dir", help="dataset directory for --verify, if it moved since training")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _summary(result: ExportResult) -> list[str]:
    info = result.info
    if result.format == "packed":
        return [
            f"wrote {result.path}: {info.file_bytes:,} bytes (codes {info.code_bytes:,} B for "
            f"{info.quantized_params:,} weights, float state {info.float_bytes:,} B, quantization parameters "
            f"{info.param_bytes:,} B, header {info.header_bytes:,} B)",
            f"float32: {info.float32_bytes:,} bytes, {info.compression:.1f}x larger; quantized weights "
            f"{info.weight_compression:.1f}x smaller than float32",
        ]
    containers = sorted({w["container"] for w in info.weights.values()})
    return [
        f"wrote {result.path}: {info.file_bytes:,} bytes, opset {info.opset}; weights "
        f"{', '.join(containers)}; {len(info.folded)} BatchNorm folded; {len(info.integer_biases)} int32 biases"
    ]


def _float_model(args: argparse.Namespace) -> Optional[nn.Module]:
    """The float architecture from ``--model MODULE:CALLABLE`` and the source's model description (checkpoint or
    packed file); ``None`` without ``--model``."""
    if args.model is None:
        return None
    from ..export.packed import is_packed_file, read_packed_header
    from ..runs import ModelSpec, load_checkpoint

    source = Path(args.checkpoint)
    if source.is_file() and is_packed_file(source):
        spec = ModelSpec(**(read_packed_header(source).get("model_spec") or {"name": None}))
    else:
        spec = load_checkpoint(source, args.epoch).model_spec
    return spec.build(args.model)


def run(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint, verify_export

    if args.format == "onnx":  # before any work: without the export extra, one line and nothing written
        require("onnx", "lowbit export --format onnx")
        if args.verify:
            require("onnxruntime", "lowbit export --format onnx --verify")
    result = export_checkpoint(
        args.checkpoint,
        args.format,
        args.out,
        model=_float_model(args),
        opset=args.opset,
        weight_dtype=args.weight_dtype,
        integer_bias=not args.float_bias,
        which=args.epoch,
    )
    verified = verify_export(result, args.data_dir) if args.verify else None
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
            print(
                f"verify: onnxruntime and PyTorch predict the same class on {verified['agree']}/"
                f"{verified['samples']} test samples; max |logit difference| {verified['max_abs_diff']:.3g} "
                f"(logits up to {verified['max_abs_logit']:.3g})"
            )
        elif "samples" in verified:
            print(
                f"verify: rebuilt model outputs identical on {verified['identical_outputs']}/"
                f"{verified['samples']} test samples"
            )
        else:
            print(f"verify: {verified['skipped']}")
    return 0
