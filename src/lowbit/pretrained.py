"""Load a trained float model's state dict into an already quantized model.

A quantized model's ``state_dict`` holds the float model's keys (weights, biases, BatchNorm parameters and buffers)
plus its quantizers' keys, and Range BN keeps ``running_scale`` where BatchNorm had ``running_var``. Loading a float
checkpoint therefore fails strictly on the quantizer keys, and a non-strict load leaves every data-dependent quantizer
parameter as it was set from the old (random) weights: LSQ and Uhlich scales several times off, Range BN's running
scale at 1. :func:`load_float_state_dict` loads exactly the float keys, then sets those parameters again:

* weight and bias quantizers from the loaded tensors (the same data-free initialisation ``lowbit.quantize`` runs);
* Range BN from the BatchNorm's weight, bias and running statistics (``RangeBatchNorm.load_batchnorm_state``:
  running scale ``k·sqrt(running_var + eps)``, gamma ``k·gamma``; the same function as the BatchNorm);
* activation quantizers from ``calibration`` (:func:`lowbit.calibrate`), or else from the first batch they see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from .calibrate import Batch, calibrate, mark_trained_weights
from .errors import ConfigError
from .nn.range_bn import _RangeBatchNorm
from .quantizers.base import Quantizer

__all__ = ["load_float_state_dict", "float_state_keys"]

_SHOWN = 5  # keys named in an error message before "and N more"


def _named(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _range_batchnorms(model: nn.Module) -> dict[str, _RangeBatchNorm]:
    return {name: m for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, _RangeBatchNorm)}


def float_state_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keys a float checkpoint of ``model`` has, with the tensor each one is loaded into (Range BN's
    ``running_var`` maps to its ``running_scale``, whose shape it shares); quantizer keys are left out."""
    quantizer_prefixes = tuple(
        f"{name}." for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, Quantizer)
    )
    range_bn_prefixes = {f"{name}." for name in _range_batchnorms(model)}
    keys = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key.startswith(quantizer_prefixes):
            continue
        prefix, _, leaf = key.rpartition(".")
        if f"{prefix}." in range_bn_prefixes and leaf == "running_scale":
            key = f"{prefix}.running_var"
        keys[key] = tensor
    return keys


def _check_keys(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_named(missing)}")
    if unexpected:
        hint = (
            " (quantizer keys: this is a quantized checkpoint; load it with model.load_state_dict)"
            if any("quantizer." in k for k in unexpected)
            else ""
        )
        problems.append(f"unexpected keys {_named(unexpected)}{hint}")
    mismatched = [
        f"{k!r}: {tuple(state_dict[k].shape)} in the checkpoint, {tuple(t.shape)} in the model"
        for k, t in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(t.shape)
    ]
    if mismatched:
        more = f" and {len(mismatched) - _SHOWN} more" if len(mismatched) > _SHOWN else ""
        problems.append(f"shape mismatches {'; '.join(mismatched[:_SHOWN])}{more}")
    if problems:
        raise ConfigError(
            "the float state dict does not fit the quantized model: "
            + "; ".join(problems)
            + "; it must come from the same architecture as the model that was quantized"
        )


def load_float_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], calibration: Optional[Batch] = None
) -> nn.Module:
    """Load a float model's ``state_dict`` into the quantized ``model`` and re-initialise its data-dependent
    quantizer parameters from the loaded weights (and activation quantizers from ``calibration``, a batch of inputs).

    Every float key must be present and no other (:class:`ConfigError` naming the keys, and the shapes when they
    differ); nothing is changed then. Quantizer parameters given explicitly in the recipe are kept. Returns
    ``model``.
    """
    expected = float_state_keys(model)
    _check_keys(expected, state_dict)
    range_bns = _range_batchnorms(model)
    with torch.no_grad():
        for key, target in expected.items():
            prefix, _, leaf = key.rpartition(".")
            if prefix in range_bns and leaf in ("weight", "bias", "running_mean", "running_var"):
                continue  # Range BN takes the BatchNorm's state as a whole, below
            target.copy_(state_dict[key])
        for name, range_bn in range_bns.items():
            entry = {leaf: state_dict.get(f"{name}.{leaf}") for leaf in ("weight", "bias", "running_mean")}
            range_bn.load_batchnorm_state(
                entry["weight"],
                entry["bias"],
                entry["running_mean"],
                state_dict.get(f"{name}.running_var"),
                range_bn.eps,  # from_batchnorm keeps the BatchNorm's eps
                state_dict.get(f"{name}.num_batches_tracked"),  # a trained BatchNorm: the same function
            )
    _reinitialize_parameter_quantizers(model)
    mark_trained_weights(model)
    if calibration is not None:
        calibrate(model, calibration)
    else:
        for quantizer in model.modules():
            if isinstance(quantizer, Quantizer) and quantizer.role not in ("weight", "bias"):
                quantizer.forget_initialization()  # set again by the first batch they see
    return model


def _reinitialize_parameter_quantizers(model: nn.Module) -> None:
    """Weight and bias quantizers: forget the old initialisation and run the data-free one on the loaded tensors."""
    for module in model.modules():
        for slot in ("weight", "bias"):
            quantizer = getattr(module, f"{slot}_quantizer", None)
            tensor = getattr(module, slot, None)
            if isinstance(quantizer, Quantizer) and isinstance(tensor, torch.Tensor):
                quantizer.forget_initialization()
                quantizer.maybe_initialize(tensor)
