"""Measurements taken on a trained model after its run, stored in the cell's raw JSON.

The papers register them under the names their cells use (:attr:`lowbit.reproduce.paper.Paper.probes`):

* ``sign_eval`` (BinaryConnect): the test accuracy of a BC-stoch net evaluated three ways on the same checkpoint:
  with its real-valued weights W (the paper's protocol), with sign(W) (the ablation), and with real W after
  re-estimating the BatchNorm statistics for the real weights (a diagnostic: training-time BN statistics were
  accumulated with the *sampled binary* weights, whose pre-activations have a larger variance than those of W).
* ``weights`` (LSQ / Bin Regularization): per quantized layer, the mean distance ``|w - Q(w)| / s`` of the latent
  weights to their quantization level in units of the step ``s``, the fraction within ``0.05 s`` of a level, and
  a histogram of ``w / s``.
* ``memory`` (Uhlich): weight memory ``S_w = sum_l N_l b_l`` in KB (weights and biases at their quantizers' bits),
  the budget (the same net at a homogeneous bit width, the paper's ``BUDGET_BITS``), and the per-layer bit widths.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Optional, Union

import torch
from torch import nn

from ..convert import quantized_layers
from ..data import BatchLoader, DatasetSplits, TensorSplit
from ..summary import BITS_PER_KB, model_summary
from ..train.regularizers import level_distance, weight_memory_bits

__all__ = ["accuracy", "sign_eval", "weight_statistics", "memory_usage", "run_probes", "selected_checkpoint"]

HIST_BIN = 0.02  # histogram bin width in units of the step


@torch.no_grad()
def accuracy(model: nn.Module, split: TensorSplit, splits: DatasetSplits, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``split``, normalised like the trainer's batches."""
    model.eval()
    correct = seen = 0
    for x, y in BatchLoader(split, batch_size, normalize=(splits.mean, splits.std)):
        correct += (model(x).argmax(1) == y).sum().item()
        seen += y.numel()
    return correct / max(seen, 1)


def _weight_quantizers(model: nn.Module) -> list:
    return [layer.weight_quantizer for _, layer in quantized_layers(model) if layer.weight_quantizer is not None]


@torch.no_grad()
def _reestimate_batchnorm(model: nn.Module, splits: DatasetSplits, batch_size: int, max_samples: int = 5000) -> None:
    """Recompute BN running statistics with the model's eval-time weights (quantizers kept in eval mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for q in _weight_quantizers(model):
        q.eval()  # eval mode: BC-stoch passes the real weights through
    seen = 0
    for x, _ in BatchLoader(
        splits.train, batch_size, shuffle=True, seed=0, normalize=(splits.mean, splits.std), drop_last=True
    ):
        model(x)
        seen += x.shape[0]
        if seen >= max_samples:
            break
    model.eval()


def sign_eval(model: nn.Module, splits: DatasetSplits, batch_size: int = 100) -> dict:
    """Test accuracy with real W, with sign(W), and with real W after re-estimating BatchNorm statistics."""
    real = accuracy(model, splits.test, splits)
    signed = copy.deepcopy(model)
    for q in _weight_quantizers(signed):
        q.eval_mode = "deterministic"
    sign = accuracy(signed, splits.test, splits)
    refit = copy.deepcopy(model)
    for q in _weight_quantizers(refit):
        q.eval_mode = "float"
    _reestimate_batchnorm(refit, splits, batch_size)
    refit_accuracy = accuracy(refit, splits.test, splits)
    return {"test_acc_real_w": real, "test_acc_sign_w": sign, "test_acc_real_w_bn_refit": refit_accuracy}


@torch.no_grad()
def weight_statistics(model: nn.Module) -> dict:
    """Per layer and over the low-bit layers: distance of the latent weights to the levels, in steps."""
    layers, low_near, low_dist, low_count = {}, 0.0, 0.0, 0
    for name, layer in quantized_layers(model):
        q = layer.weight_quantizer
        if q is None:
            continue
        relative_error, ratio, bits = level_distance(layer.weight, q)
        lo, hi = -(2 ** (bits - 1)) - 1.0, float(2 ** (bits - 1))  # one step beyond the signed code range
        entry = {
            "bits": bits,
            "count": int(ratio.numel()),
            "mean_distance": float(relative_error.mean()),
            "near_level": float((relative_error <= 0.05).float().mean()),
        }
        if bits <= 4:
            n_bins = int(round((hi - lo) / HIST_BIN))
            entry["histogram"] = {"lo": lo, "hi": hi, "counts": torch.histc(ratio, n_bins, lo, hi).int().tolist()}
        layers[name] = entry
    low = {n: e for n, e in layers.items() if e["bits"] < 8} or layers
    for entry in low.values():
        low_near += entry["near_level"] * entry["count"]
        low_dist += entry["mean_distance"] * entry["count"]
        low_count += entry["count"]
    return {
        "layers": layers,
        "near_level": low_near / max(low_count, 1),
        "mean_distance": low_dist / max(low_count, 1),
        "layers_counted": sorted(low),
    }


@torch.no_grad()
def memory_usage(model: nn.Module, budget_bits: float = 3.0) -> dict:
    """``S_w`` in KB, the memory of the same net at homogeneous bit widths (``budget_kb`` at ``budget_bits``, the
    reproduction's budget), and the per-layer bit widths."""
    counts = {
        name: sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)
        for name, layer in quantized_layers(model)
    }
    n = sum(counts.values())
    bits = model_summary(model).per_layer_bits()
    return {
        "weight_kb": float(weight_memory_bits(model)) / BITS_PER_KB,
        "budget_kb": n * budget_bits / BITS_PER_KB,
        "budget_bits": budget_bits,
        "homogeneous_kb": {str(b): n * b / BITS_PER_KB for b in (2, 3, 4, 8)},
        "params": int(n),
        "layer_shares": {name: c / n for name, c in counts.items()},
        "bits": bits,
    }


def run_probes(
    probes: Mapping[str, Callable[[nn.Module, DatasetSplits], dict]], model: nn.Module, splits: DatasetSplits
) -> dict:
    """``name -> probe(model, splits)`` for every probe of a cell, taken on the checkpoint its table reports."""
    return {name: probe(model, splits) for name, probe in probes.items()}


def selected_checkpoint(run_dir: Union[str, os.PathLike], select: str) -> Optional[str]:
    """The checkpoint a table reports: ``"best"`` for best-validation selections when an epoch qualified, else
    ``"last"`` (the final epoch); ``None`` when the run wrote no checkpoint."""
    from pathlib import Path

    from ..runs import Checkpoint, RunFiles, has_best_epoch

    files = RunFiles(Path(run_dir))
    if not files.checkpoint.exists():
        return None
    best = Checkpoint.read_fields(files.checkpoint).get("best")
    if select in ("best_val", "best_budget") and has_best_epoch(best):
        return "best"
    return "last"
