"""PNG figures of the reproduction, drawn only from the raw JSON (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .results import CellStats

__all__ = ["curves_figure", "toy_figure", "histogram_figure", "bits_figure", "gradient_figure", "mean_curve"]

DPI = 110


def mean_curve(stats: CellStats, key: str = "test_acc", as_error: bool = True) -> Optional[tuple]:
    """(epochs, mean over seeds) of a per-epoch quantity of the training phase, or None without history."""
    runs = []
    for record in stats.records:
        values = [h.get(key) for h in record.get("history", []) if h.get("phase") == "train"]
        if values and all(v is not None for v in values):
            runs.append(values)
    if not runs:
        return None
    length = min(len(r) for r in runs)
    arr = np.asarray([r[:length] for r in runs], dtype=float)
    if as_error:
        arr = 100.0 * (1.0 - arr)
    return np.arange(1, length + 1), arr.mean(axis=0)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves_figure(panels: list, path: Path, title: str = "", loss_panel: bool = False) -> Optional[Path]:
    """One panel per ``(panel title, [(label, CellStats), ...])``: mean test error per epoch (and, with
    ``loss_panel``, a first panel of the training loss of the first group)."""
    drawn = [(t, [(label, mean_curve(s)) for label, s in group]) for t, group in panels]
    drawn = [(t, [(label, c) for label, c in group if c is not None]) for t, group in drawn]
    drawn = [(t, g) for t, g in drawn if g]
    if not drawn:
        return None
    n = len(drawn) + (1 if loss_panel else 0)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    axes = list(axes[0])
    if loss_panel:
        ax = axes.pop(0)
        for label, s in panels[0][1]:
            curve = mean_curve(s, "loss", as_error=False)
            if curve is not None:
                ax.plot(*curve, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax, (panel_title, group) in zip(axes, drawn):
        for label, (x, y) in group:
            ax.plot(x, y, label=label, marker="o", markersize=2.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error % (mean over seeds)")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _plain_log_ticks(ax: Axes) -> None:
    """Label a log y axis of percentages with plain numbers (``12``, ``15``), not ``1.2 x 10^1``."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def toy_figure(toy: dict, path: Path) -> Path:
    """Li & De's convex toy: f - f* versus the learning rate for every method."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    lrs = toy["lrs"]
    styles = {
        "float": ("black", "-", "o"),
        "R": ("tab:red", "-", "s"),
        "SR": ("tab:orange", "-", "^"),
        "BC-det": ("tab:blue", "-", "v"),
        "BC-det float copy": ("tab:blue", ":", "v"),
        "BC-stoch": ("tab:green", "-", "D"),
        "BC-stoch float copy": ("tab:green", ":", "D"),
    }
    for key, (color, line, marker) in styles.items():
        values = np.maximum(np.asarray(toy["gaps"][key]), 1e-6)
        label = {
            "float": "float SGD",
            "BC-det": "BC-det, deployed Q(w_r)",
            "BC-stoch": "BC-stoch, deployed Q(w_r)",
            "BC-det float copy": "BC-det, float copy w_r",
            "BC-stoch float copy": "BC-stoch, float copy w_r",
        }
        ax.plot(lrs, values, line, color=color, marker=marker, markersize=4, label=label.get(key, key))
    ax.axhline(
        toy["rounded_ls_gap"], color="grey", linestyle="--", linewidth=1, label="rounding the optimum onto the grid"
    )
    ax.axhline(toy["init_gap"], color="grey", linestyle="-.", linewidth=1, label="initial point (w = 0)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel("f − f*  (mean over the last 10 % of steps)")
    s = toy["settings"]
    ax.set_title(
        f"least squares n={s['n']}, d={s['d']}, Δ={s['delta']}, batch {s['batch']}, {s['steps']} steps", fontsize=10
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def histogram_figure(rows: list, path: Path) -> Optional[Path]:
    """Weight histograms in units of the step, one row per bit width, one column per layer.

    ``rows``: ``[(bits, [(label, {layer: histogram}), ...])]``; the first series of a row is drawn as grey bars
    (LSQ), the others as coloured steps (with BR)."""
    rows = [(bits, [(label, h) for label, h in series if h]) for bits, series in rows]
    rows = [(bits, series) for bits, series in rows if len(series) >= 2]
    if not rows:
        return None
    layers = sorted({name for _, series in rows for name in series[0][1]})
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(4.8 * len(layers), 2.9 * len(rows)), squeeze=False)
    colors = ["tab:red", "tab:blue", "tab:green"]
    for i, (bits, series) in enumerate(rows):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for k, (label, hists) in enumerate(series):
                hist = hists.get(layer)
                if hist is None:
                    continue
                counts = np.asarray(hist["counts"], dtype=float)
                edges = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
                density = counts / max(counts.sum(), 1)
                if k == 0:
                    ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="0.6", label=label)
                else:
                    ax.step(
                        edges[:-1],
                        density,
                        where="post",
                        color=colors[(k - 1) % len(colors)],
                        linewidth=0.8,
                        label=label,
                    )
            for level in range(-(2 ** (bits - 1)), 2 ** (bits - 1)):
                ax.axvline(level, color="black", linewidth=0.4, linestyle=":")
            ax.set_title(f"{bits}-bit, layer {layer}", fontsize=9)
            ax.set_xlabel("w / s (levels at the integers)")
            ax.set_ylabel("fraction of weights")
            ax.legend(fontsize=7)
    return _save(fig, path)


def bits_figure(
    allocations: list,
    path: Path,
    budget_text: str = "",
    budget_bits: Optional[float] = None,
    shares: Optional[dict] = None,
) -> Optional[Path]:
    """Grouped bars of the learned per-layer weight bit widths: ``[(label, {layer: bits})]`` (seed 0); a dashed
    line at the homogeneous width whose memory is the budget; ``shares``: each layer's fraction of the weights."""
    allocations = [(label, bits) for label, bits in allocations if bits]
    if not allocations:
        return None
    layers = list(allocations[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(layers) + 2), 3.8))
    width = 0.8 / len(allocations)
    for i, (label, bits) in enumerate(allocations):
        xs = np.arange(len(layers)) + (i - (len(allocations) - 1) / 2) * width
        ax.bar(xs, [bits.get(layer) or 0 for layer in layers], width=width, label=label)
    if budget_bits:
        ax.axhline(
            budget_bits,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"homogeneous {budget_bits:g}-bit net (= the budget)",
        )
    ax.set_xticks(np.arange(len(layers)))
    names = [
        f"{layer}\n{100 * shares[layer]:.1f} % of weights" if shares and layer in shares else layer for layer in layers
    ]
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("weight bits")
    ax.set_title(
        "learned weight bit width per layer (seed 0)" + (f" — {budget_text}" if budget_text else ""), fontsize=9
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


def gradient_figure(grads: dict, path: Path) -> Path:
    """Mean and largest |dQ/dtheta| of U1/U2/U3 versus the bit width, x ~ N(0, 1), q_max = 3."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bits = grads["bits"]
    colors = {"U1": "tab:red", "U2": "tab:orange", "U3": "tab:green"}
    for ax, kind in zip(axes, ("mean", "max")):
        for key, values in grads[kind].items():
            param_set, name = key.split("/")
            style = "-" if name in ("b",) else ("--" if name == "d" else ":")
            ax.plot(
                bits,
                np.maximum(values, 1e-6),
                style,
                color=colors[param_set],
                marker="o",
                markersize=3,
                label=f"{param_set}: ∂Q/∂{name}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("bit width b")
        ax.set_ylabel(f"{kind} |∂Q/∂θ| over x ~ N(0, 1)")
        ax.set_title(f"{kind} over samples (q_max = {grads['q_max']:g} = 3σ fixed)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path)
