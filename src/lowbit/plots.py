"""Figures of a training run: curves, per-layer bit widths, and weight histograms with the quantization levels."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .convert import quantized_layers  # noqa: E402
from .errors import CheckpointError, ConfigError  # noqa: E402
from .runs import RunFiles, load_checkpoint  # noqa: E402

__all__ = ["plot_run", "plot_curves", "plot_bits", "plot_weight_histograms"]


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = list(range(1, len(history) + 1))
    ax_loss.plot(x, [r.get("loss") for r in history], label="train loss")
    if any("regularizer" in r for r in history):
        ax_loss.plot(x, [r.get("regularizer", float("nan")) for r in history], label="regularizer")
    for key, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test")):
        ax_acc.plot(x, [100 * r[key] if r.get(key) is not None else float("nan") for r in history], label=label)
    pretrain = sum(1 for r in history if r.get("phase") == "pretrain")
    for ax in (ax_loss, ax_acc):
        if pretrain:
            ax.axvline(pretrain + 0.5, color="grey", linestyle=":", label="quantization starts")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bits(history: list[dict], path: Path, title: str = "") -> Path:
    """Per-layer weight and activation bits: final values as bars, and their evolution when they change."""
    records = [r for r in history if "bits" in r]
    if not records:
        raise ConfigError("the run has no quantized epochs to plot bit widths for")
    final = records[-1]["bits"]
    names = list(final)
    evolves = any(r["bits"] != final for r in records)
    fig, axes = plt.subplots(1, 2 if evolves else 1, figsize=(12 if evolves else 7, 3.8), squeeze=False)
    ax = axes[0][0]
    positions = range(len(names))
    weight_bits = [final[n]["weight"] or 32 for n in names]
    input_bits = [final[n]["input"] or 0 for n in names]
    ax.bar([p - 0.2 for p in positions], weight_bits, width=0.4, label="weights")
    ax.bar([p + 0.2 for p in positions], input_bits, width=0.4, label="inputs (activations)")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bits")
    ax.set_title("final bit widths (32 = float, 0 = not quantized)", fontsize=9)
    ax.legend(fontsize=8)
    if evolves:
        ax2 = axes[0][1]
        epochs = [r["epoch"] for r in records]
        for name in names:
            ax2.plot(epochs, [r["bits"][name]["weight"] or 32 for r in records], label=name)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("weight bits")
        ax2.set_title("learned weight bit widths during training", fontsize=9)
        ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_weight_histograms(model: torch.nn.Module, path: Path, title: str = "", max_layers: int = 12) -> Path:
    """Histogram of each quantized layer's float weights, with its quantization levels as vertical lines."""
    layers = [(n, layer) for n, layer in quantized_layers(model) if layer.weight_quantizer is not None]
    layers = layers[:max_layers]
    if not layers:
        raise ConfigError("the model has no quantized weights to plot")
    cols = min(4, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, layer) in zip(axes.flat, layers):
        weight = layer.weight.detach().float().reshape(-1)
        encoded = layer.weight_quantizer.encode(layer.weight.detach())
        levels = torch.unique(encoded.dequantize().reshape(-1)) if encoded.axis is None else torch.tensor([])
        ax.hist(weight.numpy(), bins=120, color="tab:blue", alpha=0.8)
        for level in levels.tolist()[:64]:
            ax.axvline(level, color="tab:red", linewidth=0.6, alpha=0.7)
        ax.set_title(f"{name} ({encoded.bits} bit)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    fig.suptitle(title + " (red: levels used by the quantized weights)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(
    run_dir: Union[str, Path], out_dir: Union[str, Path, None] = None, *, reference: Optional[str] = None
) -> list[Path]:
    """Write curves.png, bits.png and weights.png for a run directory; returns the files written. ``reference``:
    the ``MODULE:CALLABLE`` of a run trained with ``--model MODULE:CALLABLE`` (imported only when given)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # the run's checkpoint file: plot its run
        run_dir = run_dir.parent
    files = RunFiles(run_dir)
    history = files.read_history()  # (checks that this is a run before anything is written)
    out = Path(out_dir) if out_dir else run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot write the figures into {str(out)!r}: {error.strerror or error}") from None
    metrics = files.read_metrics()
    title = f"{metrics['recipe']} on {metrics['dataset']} ({metrics['model']})" if metrics else run_dir.name
    written = [plot_curves(history, out / "curves.png", title)]
    if any("bits" in r for r in history):
        written.append(plot_bits(history, out / "bits.png", title))
        checkpoint = load_checkpoint(run_dir)
        spec = checkpoint.model_spec
        if checkpoint.quantized and spec.name is None and reference is None:
            how = (
                f"add --model {spec.reference} to rebuild it (imports that module; for runs you trust)"
                if spec.reference
                else "which lowbit cannot rebuild; in Python: plot_weight_histograms("
                "load_checkpoint(run_dir).restore_model(MyNet()), 'weights.png')"
            )
            warnings.warn(
                f"weights.png not written: {run_dir} holds a custom model ({spec.label}), {how}", stacklevel=2
            )
        elif checkpoint.quantized:
            model = checkpoint.restore_model(reference=reference)
            written.append(plot_weight_histograms(model, out / "weights.png", title))
    return written
