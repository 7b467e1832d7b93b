"""Export the model of a training checkpoint (:func:`export_checkpoint`), and check the exported file against the
trained model on its test split (:func:`verify_export`); ``lowbit export`` calls both.

The source is a run directory or its checkpoint file (the model of the best epoch is exported); for ONNX a
packed file works too. Bad input raises :class:`~lowbit.export.errors.ExportError` or
:class:`~lowbit.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from .errors import ExportError

if TYPE_CHECKING:
    from ..data import BatchLoader

__all__ = ["export_checkpoint", "verify_export", "ExportResult", "FORMATS", "default_output"]

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
    """``RUN/model.packed.safetensors`` for a run directory, ``DIR/NAME.onnx`` for ``DIR/NAME.safetensors``, ..."""
    source = Path(source)
    if source.is_dir():
        return source / f"model{SUFFIXES[fmt]}"
    name = source.name.removesuffix(".packed.safetensors")
    return source.with_name(Path(name).stem + SUFFIXES[fmt])


def _never_quantized(path: str, recipe: str, phase: Optional[str]) -> ExportError:
    why = (
        "was written during float pre-training, before quantization"
        if phase == "pretrain"
        else f"holds a float model (recipe {recipe!r} quantizes nothing)"
    )
    return ExportError(
        f"checkpoint {path!r} {why}: there are no integer weights to export; train with a quantizing "
        f"recipe (e.g. 'lowbit train --recipe lsq-w8a8') and export that run"
    )


def _refuse_run_files(out: Path, source: Path) -> None:
    """An export never writes over its source or over a run's own files (its checkpoint, log, metrics)."""
    from ..runs import RunFiles

    run_files = {RunFiles(out.parent).checkpoint.name, RunFiles(out.parent).log.name, RunFiles(out.parent).metrics.name}
    same = out.exists() and source.exists() and out.resolve() == source.resolve()
    if same or (out.exists() and out.name in run_files):
        raise ExportError(
            f"--out {str(out)!r} would overwrite {'the source' if same else 'a file of the run'}; choose another --out"
        )


def _from_checkpoint(
    source: Union[str, os.PathLike], model: Optional[nn.Module], which: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    from ..nn.layers import QuantizedLayer
    from ..runs import load_checkpoint

    checkpoint = load_checkpoint(source, which)
    path = str(checkpoint.path)
    if not checkpoint.quantized:
        raise _never_quantized(path, checkpoint.recipe_name, checkpoint.phase)
    restored = checkpoint.restore_model(model)
    if not any(isinstance(m, QuantizedLayer) for m in restored.modules()):
        raise _never_quantized(path, checkpoint.recipe_name, checkpoint.phase)
    meta = {
        "recipe": checkpoint.recipe,
        "seed": checkpoint.seed,
        "model_spec": asdict(checkpoint.model_spec),
        "data": asdict(checkpoint.data) if checkpoint.data is not None else None,
        "source": {"checkpoint": path, "phase": checkpoint.phase, "epoch": checkpoint.epoch + 1},
    }
    return restored, meta


def _from_packed(
    source: Union[str, os.PathLike], model: Optional[nn.Module], which: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    from .packed import load_packed, read_packed_header

    header = read_packed_header(source)
    meta = {key: header.get(key) for key in ("recipe", "seed", "model_spec", "data")}
    meta["source"] = {"packed": str(source), **(header.get("source") or {})}
    return load_packed(source, model=model), meta


def export_checkpoint(
    source: Union[str, os.PathLike],
    format: str = "packed",
    out: Optional[Union[str, os.PathLike]] = None,
    *,
    model: Optional[nn.Module] = None,
    opset: Optional[int] = None,
    weight_dtype: str = "auto",
    integer_bias: bool = True,
    which: str = "best",
) -> ExportResult:
    """Export the model of a training checkpoint (or run directory) as a packed file or ONNX.

    ``source`` may also be a packed file for ``format="onnx"``. ``model``: your float model, for checkpoints of a
    custom architecture. ``which``: the checkpoint's ``"best"`` epoch (default) or its ``"last"`` one (see
    :meth:`lowbit.runs.Checkpoint.view`). ``out`` defaults to :func:`default_output`. The ONNX options are those of
    :func:`~lowbit.export.onnx_export.export_onnx`.
    """
    from .onnx_export import DEFAULT_OPSET, export_onnx
    from .packed import is_packed_file, save_packed

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    source_path = Path(source)
    # a damaged packed file may not show its lowbit metadata: its name says what it is, and load_packed what is wrong
    from_packed = source_path.is_file() and (
        is_packed_file(source_path) or source_path.name.endswith(SUFFIXES["packed"])
    )
    if from_packed and format == "packed":
        raise ExportError(f"{str(source)!r} is a packed file already; export a checkpoint, or use --format onnx")
    restored, meta = (_from_packed if from_packed else _from_checkpoint)(source, model, which)
    out_path = Path(out) if out else default_output(source, format)
    _refuse_run_files(out_path, source_path)
    data = meta.get("data") or {}
    if format == "packed":
        info = save_packed(
            restored,
            out_path,
            recipe=meta["recipe"],
            seed=meta["seed"],
            model_spec=meta["model_spec"],
            data=meta.get("data"),
            source=meta["source"],
        )
    else:
        spec = meta["model_spec"] or {}
        input_shape = spec.get("input_shape") or data.get("input_shape")
        metadata = {
            "recipe": meta["recipe"].get("name", ""),
            "input_mean": data.get("mean"),
            "input_std": data.get("std"),
            "dataset": data.get("name"),
            "model": spec.get("name"),
        }
        dtype_name = data.get("input_dtype") or "float32"
        info = export_onnx(
            restored,
            out_path,
            input_shape=input_shape,
            input_dtype=getattr(torch, dtype_name, torch.float32),
            opset=opset or DEFAULT_OPSET,
            weight_dtype=weight_dtype,
            integer_bias=integer_bias,
            metadata={k: v for k, v in metadata.items() if v is not None},
        )
    return ExportResult(
        str(out_path),
        format,
        info,
        restored,
        meta.get("data"),
        int(meta.get("seed") or 0),
        list(dict.fromkeys(info.notes)),
    )


# ------------------------------------------------------------------------------------------------------- verify
def _test_batches(result: ExportResult, data_dir: Optional[str]) -> BatchLoader:
    from ..data import BatchLoader, load_dataset

    data = result.data or {}
    if data.get("user"):
        raise ExportError(
            f"the checkpoint was trained on your own data ({data.get('name')}), which lowbit cannot load; --verify "
            f"needs it: compare in Python, e.g. lowbit.export.verify.onnx_parity(model, path, your_batches)"
        )
    if not data.get("name"):
        raise ExportError("the checkpoint does not say which dataset it was trained on; --verify needs it")
    splits = load_dataset(
        data["name"],
        data_dir or data.get("data_dir"),
        val_fraction=data.get("val_fraction", 0.1),
        seed=result.seed,
        train_subset=data.get("train_subset"),
        test_subset=data.get("test_subset"),
    )
    return BatchLoader(splits.test, 1024, normalize=(splits.mean, splits.std))


def verify_export(result: ExportResult, data_dir: Optional[str] = None) -> dict:
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
