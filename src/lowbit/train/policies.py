"""Update policies: how quantized weights are stored and updated around any torch optimizer.

Li & De's comparison is three policies on one quantizer:

* ``latent`` (BinaryConnect, BC; :class:`LatentWeights`): the layer keeps float weights ``W``; the forward pass uses
  ``Q(W)``, the gradient ``dC/dQ(W)`` updates ``W``. With ``clip`` the float weights are clipped to the quantizer's
  range after every step (BinaryConnect: ``[-H, H]``), and ``lr_scale: glorot`` multiplies each binarized layer's
  step by ``1 / sqrt(1.5 / (fan_in + fan_out))`` (dense: fan_in = inputs, fan_out = units; conv: ``k_h k_w C_in``
  and ``k_h k_w C_out``). ``init: uniform`` re-draws the float weights from ``U(lo, hi)`` over the quantizer's range
  before training (BinaryConnect: ``U(-H, H)``), so that the float weights and their binarization have similar
  scales (which matters for evaluating BC-stoch with the float weights). Weights that come from a trained float
  model (``lowbit.quantize(..., calibration=batch)``, ``lowbit.load_float_state_dict``, a run's pre-training or
  ``--init-from``) are kept instead, clipped to that range, unless ``reinit_trained: true`` asks to re-draw them
  too; either way ``start()`` says what it did (a warning, or the trainer's log).
* ``grid`` (R / SR; :class:`GridWeights`): the weights themselves live on the grid. After every optimizer step they
  are written back as ``W <- Q(W)`` with the weight quantizer's own rounding (nearest: R, stochastic: SR); no float
  copy of the weights is kept, only the optimizer's moments stay float.

Both also call ``project_()`` on every quantizer (LSQ step > 0, Uhlich parameter boxes). A recipe names its policy in
``train.policy.type``; :func:`build_policy` looks it up in :data:`POLICIES`.

A policy runs inside any ``torch.optim.Optimizer`` through PyTorch's optimizer step hooks: ``policy.attach(optimizer)``
(or :func:`attach_policy`) calls ``start()`` once, then registers ``after_step()`` as a step post-hook, so LR
schedulers, ``torch.amp.GradScaler`` (a skipped step runs no hook) and frameworks that expect a real optimizer see the
user's own object. The trainer's :class:`~lowbit.train.step.TrainingStep` uses the same hook.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..calibrate import TRAINED_WEIGHTS
from ..convert import quantized_layers, quantizers_of
from ..errors import ConfigError
from ..quantizers.binary import glorot_scale
from ..registry import Registry

__all__ = [
    "UpdatePolicy",
    "LatentWeights",
    "GridWeights",
    "POLICIES",
    "build_policy",
    "glorot_lr_scale",
    "attach_policy",
    "PolicyOptimizer",
]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def glorot_lr_scale(weight: torch.Tensor) -> float:
    """BinaryConnect's ``W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out))`` for a Linear or Conv2d weight: the
    reciprocal of its Glorot ``H`` (:func:`lowbit.quantizers.binary.glorot_scale`)."""
    return 1.0 / glorot_scale(weight)


#: recipe ``train.policy.type`` -> update policy class, constructed as ``cls(model, **options)``
POLICIES: Registry[str] = Registry("update policy")

#: options every policy takes
SHARED_OPTIONS = {
    "lr_scale": {
        "enum": ["none", "glorot"],
        "default": "none",
        "description": "BinaryConnect's per-layer step scale 1/sqrt(1.5/(fan_in+fan_out))",
    },
    "init": {
        "enum": ["keep", "uniform"],
        "default": "keep",
        "description": "uniform: re-draw quantized weights from U(range) before training (BC: U(-H, H)); "
        "weights from a trained float model are kept, clipped to the range",
    },
    "reinit_trained": {
        "type": "boolean",
        "default": False,
        "description": "init: uniform also re-draws weights that come from a trained float model",
    },
}


class UpdatePolicy(ABC):
    """How a quantized model's weights are stored and updated around any optimizer (one subclass per policy).

    ``start()`` once before training, ``after_step()`` after every optimizer step, ``step_scales()`` for the
    optimizer's parameter groups. Subclasses say whether the stored weights live on the grid (``weights_on_grid``)
    and what happens to them after a step (:meth:`update_weights`).
    """

    #: the stored weights are already on the weight quantizer's grid (layers then skip quantizing them)
    weights_on_grid: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, *, lr_scale: str = "none", init: str = "keep", reinit_trained: bool = False
    ) -> None:
        if init not in ("keep", "uniform"):
            raise ConfigError(f"unknown weight init {init!r}; valid choices: keep, uniform")
        self.lr_scale = lr_scale
        self.init = init
        self.reinit_trained = bool(reinit_trained)
        self.model = model
        layers = [layer for _, layer in quantized_layers(model) if layer.weight_quantizer is not None]
        self._weighted = [(layer.weight, layer.weight_quantizer) for layer in layers]
        self._trained = [getattr(layer, TRAINED_WEIGHTS, False) for layer in layers]
        #: what ``start()`` did to the weights (``None`` before it ran, or when it left them as they were)
        self.init_report: Optional[str] = None
        for layer in layers:
            layer.weights_on_grid = self.weights_on_grid
        self._quantizers = quantizers_of(model)

    def step_scales(self) -> dict[int, float]:
        """Per-parameter multiplier of the learning rate (``id(param) -> scale``), for the Glorot LR scale."""
        if self.lr_scale != "glorot":
            return {}
        return {id(w): glorot_lr_scale(w) for w, _ in self._weighted}

    @torch.no_grad()
    def start(self, notify: Optional[Callable[[str], None]] = None) -> None:
        """Put the weights in their policy's state before training (re-drawn for ``init: uniform``, on the grid
        for ``grid``). Not called when a run resumes.

        ``init: uniform`` re-draws weights from ``U(range)``, except those from a trained float model (unless
        ``reinit_trained``), which are clipped to the range instead; what was done goes to ``notify`` (the trainer's
        log) or, without one, is a warning."""
        if self.init == "uniform":
            redrawn = kept = 0
            for (weight, quantizer), trained in zip(self._weighted, self._trained):
                bounds = quantizer.clip_range()
                if bounds is None:
                    raise ConfigError(f"init: uniform needs a quantizer with a fixed range; {quantizer.kind} has none")
                if trained and not self.reinit_trained:
                    weight.clamp_(*bounds)
                    kept += 1
                else:
                    weight.uniform_(*bounds)
                    redrawn += 1
            self.init_report = self._describe_init(redrawn, kept)
            (notify or _warn)(self.init_report)
        self.after_step()

    def _describe_init(self, redrawn: int, kept: int) -> str:
        parts = []
        if kept:
            parts.append(
                f"kept the trained weights of {kept} layer(s), clipped to the weight quantizer's range "
                f"(set train.policy.reinit_trained: true to re-draw them)"
            )
        if redrawn:
            why = (
                "as asked by reinit_trained"
                if self.reinit_trained and any(self._trained)
                else "not from a trained model"
            )
            parts.append(f"re-drew the weights of {redrawn} layer(s) from U(range) ({why})")
        return "init: uniform: " + "; ".join(parts)

    @torch.no_grad()
    def after_step(self) -> None:
        """Keep every quantizer's parameters in their box (LSQ step > 0, Uhlich ranges), then the policy's own
        weight update."""
        for quantizer in self._quantizers:
            quantizer.project_()
        self.update_weights()

    @abstractmethod
    def update_weights(self) -> None:
        """What the policy does to the stored weights after an optimizer step (under ``no_grad``)."""

    def attach(self, optimizer: torch.optim.Optimizer, *, start: bool = True) -> RemovableHandle:
        """Apply the policy after every ``optimizer.step()`` (a step post-hook); returns the hook's handle
        (``handle.remove()`` detaches it).

        ``start`` calls :meth:`start` now, once, before the first step: build the optimizer from the quantized model's
        parameters, attach, then train. Pass ``start=False`` when the weights come from a checkpoint (a resumed run):
        ``start`` would re-draw (``init: uniform``) or re-round them. A step that ``torch.amp.GradScaler`` skips (inf
        or NaN gradients) runs no hook, so the weights stay as they were.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"attach the update policy to a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self.is_attached(optimizer):
            raise ConfigError("the update policy is already attached to this optimizer (it would run twice per step)")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if self._weighted and not any(id(weight) in held for weight, _ in self._weighted):
            raise ConfigError(
                "the optimizer holds none of the quantized weights of the policy's model: build it from the "
                "quantized model's parameters (after lowbit.quantize), then attach the policy"
            )
        if start:
            self.start()
        return optimizer.register_step_post_hook(self._after_optimizer_step)

    def is_attached(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether this policy runs after ``optimizer``'s steps."""
        hooks = getattr(optimizer, "_optimizer_step_post_hooks", {})
        return any(hook == self._after_optimizer_step for hook in hooks.values())

    def _after_optimizer_step(self, _optimizer: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        self.after_step()


@POLICIES.register(
    "latent",
    options={
        "clip": {
            "type": "boolean",
            "default": True,
            "description": "latent: clip weights to the quantizer's range after each step",
        },
        **SHARED_OPTIONS,
    },
)
class LatentWeights(UpdatePolicy):
    """BC: float weights ``W``, the forward pass uses ``Q(W)``; with ``clip``, ``W <- clip(W, lo, hi)`` after each step
    over the weight quantizer's range (BinaryConnect: ``[-H, H]``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        clip: bool = True,
        lr_scale: str = "none",
        init: str = "keep",
        reinit_trained: bool = False,
    ) -> None:
        super().__init__(model, lr_scale=lr_scale, init=init, reinit_trained=reinit_trained)
        self.clip = clip

    def update_weights(self) -> None:
        if not self.clip:
            return
        for weight, quantizer in self._weighted:
            bounds = quantizer.clip_range()  # read now: a data-dependent range may have been set or loaded since
            if bounds is not None:
                weight.clamp_(*bounds)


@POLICIES.register("grid", options=SHARED_OPTIONS)
class GridWeights(UpdatePolicy):
    """R / SR: the weights live on the grid; ``W <- Q(W)`` after each step with the weight quantizer's training-time
    rounding (nearest: R, stochastic: SR). No float copy of the weights is kept.

    SR's noise is the weight quantizer's own stream (seeded from the run's seed and the layer's name): in a
    distributed run every rank draws the same numbers, so the rounded weights stay identical across ranks
    (:mod:`lowbit.train.rank_noise`)."""

    weights_on_grid = True

    def update_weights(self) -> None:
        for weight, quantizer in self._weighted:
            was_training = quantizer.training
            quantizer.train()  # the training-time rounding (stochastic for SR)
            weight.copy_(quantizer(weight))
            quantizer.train(was_training)


def build_policy(model: nn.Module, spec: Mapping[str, Any]) -> UpdatePolicy:
    """The policy a recipe's ``train.policy`` describes (``type`` defaults to ``latent``), with its own options.

    The recipe section accepts the options of every policy (``clip`` is filled in for ``grid`` too); each policy
    takes only those it declares."""
    policy = POLICIES.component(spec.get("type", "latent"))
    return policy.factory(model, **policy.option_values(spec))


def attach_policy(optimizer: torch.optim.Optimizer, policy: UpdatePolicy, *, start: bool = True) -> RemovableHandle:
    """``policy.attach(optimizer, start=start)``: run the update policy after every step of your own optimizer::

    qmodel = lowbit.quantize(model, "sr-adam")
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=1e-3)
    attach_policy(optimizer, GridWeights(qmodel))  # calls policy.start() now
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    """
    return policy.attach(optimizer, start=start)


def PolicyOptimizer(optimizer: torch.optim.Optimizer, policy: UpdatePolicy) -> torch.optim.Optimizer:  # noqa: N802
    """Deprecated: use ``policy.attach(optimizer)`` (or :func:`attach_policy`). Attaches the policy and returns
    ``optimizer`` itself (a real ``torch.optim.Optimizer``, so LR schedulers accept it)."""
    warnings.warn(
        "PolicyOptimizer is deprecated: use policy.attach(optimizer) or lowbit.train.attach_policy(optimizer, policy), "
        "which keeps your torch.optim.Optimizer (LR schedulers and gradient scalers work with it)",
        DeprecationWarning,
        stacklevel=2,
    )
    policy.attach(optimizer)
    return optimizer
