"""Synchronized BatchNorm and Range BN: batch statistics over the global batch of every rank of a distributed run.

On several processes each rank normalises its own shard of the batch; with :func:`synchronize_batchnorms` every
``nn.BatchNorm1d/2d/3d`` and Range BN computes its training-mode statistics over the concatenation of all ranks'
shards instead, forward and backward, as one process holding the whole batch would (up to float rounding).

BatchNorm, from each rank's count ``n_r``, mean ``mu_r`` and sum of squared deviations ``M2_r`` (one all-gather of
``2C + 1`` numbers per layer; Chan et al.'s pairwise combination, which has none of the cancellation of ``Σx²``)::

    N = Σ n_r     mu = Σ n_r mu_r / N     M2 = Σ M2_r + Σ n_r (mu_r - mu)²     var = M2 / N   (running_var: M2/(N-1))
    y = gamma (x - mu) / sqrt(var + eps) + beta
    dL/dx = gamma / sqrt(var + eps) · (g - Σg / N - x_hat · Σ g x_hat / N)      (Σ over the global batch: one
                                                                                 all-reduce of 2C numbers)

Range BN: one all-gather of ``(n_r, mu_r, max_r, min_r)`` gives ``N`` (so ``C(N)``), the global mean, max and min;
its backward sums ``Σ g`` and ``Σ g (x - mu)`` over the ranks and gives the range term ``k (δ_argmax - δ_argmin)``
only to the rank holding the global extreme (the lowest such rank where ranks tie, which is where the extreme lies
first in the concatenated batch). The closed form itself is :class:`~lowbit.nn.range_bn._RangeNorm`'s. The
``chunked`` estimator's chunks would have to be cut from the global batch; it is refused.

Gradients of gamma and beta are this rank's sums: DistributedDataParallel averages them over the ranks, and the
average of the per-rank losses' means is the global batch's mean loss, so the result is the one-process gradient.

Why not ``torch.nn.SyncBatchNorm``: it refuses CPU tensors (gloo), and one implementation for gloo and NCCL is the
one the tests here check. The synchronized classes subclass the plain ones and add only a forward; outside a process
group of more than one rank, and in eval mode, they are the plain layers. State dict keys are unchanged, so a
checkpoint loads into an ordinary model. The global count ``N`` is read on the host (``C(N)`` and the divisions take
a Python number): on CUDA one device synchronisation per layer and step.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from ..quantizers.numerics import widen
from .range_bn import RangeBatchNorm1d, RangeBatchNorm2d, _RangeBatchNorm, _RangeNorm, normalize_per_channel

__all__ = [
    "SynchronizedBatchNorm1d",
    "SynchronizedBatchNorm2d",
    "SynchronizedBatchNorm3d",
    "SynchronizedRangeBatchNorm1d",
    "SynchronizedRangeBatchNorm2d",
    "synchronize_batchnorms",
    "unsynchronize_batchnorms",
    "unsynchronized_type",
    "synchronizing",
]


def synchronizing() -> bool:
    """Whether this process is one rank of an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _require_samples(n_local: int, who: str) -> None:
    # every rank must take part in the layer's collectives; a rank without samples would have to be handled by all
    if n_local == 0:
        raise ConfigError(
            f"synchronized {who} got an empty batch on rank {dist.get_rank()}; every rank needs at least one sample "
            f"per step (the trainer's shards always have one)"
        )


def _count(n: int, like: torch.Tensor) -> torch.Tensor:
    # float64: exact for any count (float32 rounds above 2^24 values per channel); read back on the host for C(N)
    return torch.tensor([float(n)], dtype=torch.float64, device=like.device)


class _ProcessGroupReduction:
    """The cross-rank reductions of synchronized BN over the default process group (a ``RankReduction``)."""

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        """``(world, len(local))``: every rank's ``local``, in rank order."""
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.stack(parts)

    def moments(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Global ``N``, mean and ``M2`` from this rank's (float64 for the combination)."""
        channels = mean.numel()
        local = torch.cat([_count(n, mean), mean.double(), m2.double()])
        rows = self._gather(local)
        counts, means, m2s = rows[:, :1], rows[:, 1 : 1 + channels], rows[:, 1 + channels :]
        total = counts.sum()
        global_mean = (counts * means).sum(dim=0) / total
        global_m2 = m2s.sum(dim=0) + (counts * (means - global_mean).square()).sum(dim=0)
        return int(total.item()), global_mean.to(mean.dtype), global_m2.to(mean.dtype)

    def range_statistics(
        self, n: int, mean: torch.Tensor, high: torch.Tensor, low: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        channels = mean.numel()
        local = torch.cat([_count(n, mean), mean.double(), high.double(), low.double()])
        rows = self._gather(local)
        counts = rows[:, :1]
        means, highs, lows = rows[:, 1:].split(channels, dim=1)
        total = counts.sum()
        global_mean = (counts * means).sum(dim=0) / total
        # max/min along a dim return the first extreme: the lowest rank among ties
        global_high, high_rank = highs.max(dim=0)
        global_low, low_rank = lows.min(dim=0)
        me = dist.get_rank()
        dtype = mean.dtype
        owns_high, owns_low = (high_rank == me).to(dtype), (low_rank == me).to(dtype)
        global_high, global_low = global_high.to(dtype), global_low.to(dtype)
        return int(total.item()), global_mean.to(dtype), global_high, global_low, owns_high, owns_low

    def sum(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        packed = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(packed)
        return tuple(packed.split([t.numel() for t in tensors]))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm over the global batch (module docstring) with its closed-form backward; returns
    ``y``, the global mean and the unbiased global variance (for the running statistics)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_batch, channels = x.shape[:2]
        flat = widen(x).reshape(n_batch, channels, -1)
        n_local = flat.shape[0] * flat.shape[2]
        _require_samples(n_local, "BatchNorm")
        var, mean = torch.var_mean(flat, dim=(0, 2), correction=0)
        across = _ProcessGroupReduction()
        n, mean, m2 = across.moments(n_local, mean, var * n_local)
        if n < 2:  # BatchNorm's own condition, on the global batch
            raise ValueError(f"Expected more than 1 value per channel when training, got {n} over every rank")
        invstd = torch.rsqrt(m2 / n + eps)
        a = invstd if weight is None else weight * invstd
        y = normalize_per_channel(x, mean, a, bias)
        ctx.save_for_backward(flat, mean, invstd, a)
        ctx.n, ctx.shape, ctx.dtype, ctx.affine, ctx.across = n, x.shape, x.dtype, weight is not None, across
        unbiased = m2 / (n - 1)
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor, _grad_mean: torch.Tensor, _grad_var: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        flat, mean, invstd, a = ctx.saved_tensors
        g = widen(grad).reshape(flat.shape)
        sum_g = g.sum(dim=(0, 2))
        sum_g_centered = (g * (flat - mean[None, :, None])).sum(dim=(0, 2))  # Σ g (x - mu), this rank's
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            total_g, total_g_centered = ctx.across.sum(sum_g, sum_g_centered)
            # dL/dx = a (g - Σg/N) - a invstd² Σg(x - mu)/N · (x - mu)
            slope = (-a * invstd.square() * total_g_centered / ctx.n)[None, :, None]
            offset = (-a * total_g / ctx.n)[None, :, None]
            grad_x = g * a[None, :, None] + slope * (flat - mean[None, :, None]) + offset
            grad_x = grad_x.reshape(ctx.shape).to(ctx.dtype)
        if ctx.affine and ctx.needs_input_grad[1]:
            grad_weight = sum_g_centered * invstd
        if ctx.affine and ctx.needs_input_grad[2]:
            grad_bias = sum_g
        return grad_x, grad_weight, grad_bias, None


class _SynchronizedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm whose training-mode statistics are over every rank's batch (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and synchronizing()):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        y, mean, unbiased = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y


class SynchronizedBatchNorm1d(_SynchronizedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics over every rank's batch."""


class SynchronizedBatchNorm2d(_SynchronizedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with statistics over every rank's batch."""


class SynchronizedBatchNorm3d(_SynchronizedBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with statistics over every rank's batch."""


def _refuse_chunked(module: _RangeBatchNorm, name: str) -> None:
    if module.estimator != "paper":
        where = repr(name or module.module_name or type(module).__name__)
        raise ConfigError(
            f"Range BN {where} uses estimator {module.estimator!r}, which cannot be synchronized across ranks "
            f"(its chunks would have to be cut from the global batch); use quantize.batchnorm.estimator: paper, "
            f"or leave train.sync_batchnorm false"
        )


class _SynchronizedRangeBatchNorm(_RangeBatchNorm):
    """A Range BN (paper estimator) whose training-mode statistics are over every rank's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and synchronizing()):
            return super().forward(x)
        self._check_input(x)
        _refuse_chunked(self, "")
        _require_samples(x.numel(), "Range BatchNorm")
        self._check_first_batch(x)
        y, mean, scale = _RangeNorm.apply(
            x, self.weight, self.bias, self.eps, self.grad_quantizer, _ProcessGroupReduction()
        )
        self._update_running(mean, scale)
        return y


class SynchronizedRangeBatchNorm1d(_SynchronizedRangeBatchNorm, RangeBatchNorm1d):
    """:class:`~lowbit.nn.range_bn.RangeBatchNorm1d` with statistics over every rank's batch."""


class SynchronizedRangeBatchNorm2d(_SynchronizedRangeBatchNorm, RangeBatchNorm2d):
    """:class:`~lowbit.nn.range_bn.RangeBatchNorm2d` with statistics over every rank's batch."""


#: plain layer type -> its synchronized subclass (exact types: a user's subclass may compute something else)
SYNCHRONIZED: dict[type, type] = {
    nn.BatchNorm1d: SynchronizedBatchNorm1d,
    nn.BatchNorm2d: SynchronizedBatchNorm2d,
    nn.BatchNorm3d: SynchronizedBatchNorm3d,
    RangeBatchNorm1d: SynchronizedRangeBatchNorm1d,
    RangeBatchNorm2d: SynchronizedRangeBatchNorm2d,
}
_PLAIN: dict[type, type] = {synced: plain for plain, synced in SYNCHRONIZED.items()}


def unsynchronized_type(module: nn.Module) -> type:
    """The plain layer type of a synchronized BatchNorm / Range BN (``nn.BatchNorm2d`` for a
    ``SynchronizedBatchNorm2d``); any other module's own type."""
    return _PLAIN.get(type(module), type(module))


def synchronize_batchnorms(model: nn.Module) -> list[str]:
    """Make every ``nn.BatchNorm1d/2d/3d`` and Range BN of ``model`` synchronized, in place; returns their names.

    The modules stay the same objects and only change class (to a subclass adding the synchronized forward), so
    their parameters (and an optimizer holding them), buffers, hooks, names and state-dict keys are unchanged.
    Already synchronized layers (and ``nn.SyncBatchNorm``) are left as they are. A Range BN with the ``chunked``
    estimator is refused (:class:`~lowbit.errors.ConfigError`); other BatchNorm subclasses stay per rank, with a
    warning, as does a model without any BatchNorm."""
    converted, left = [], []
    targets = []
    for name, module in model.named_modules():
        kind = type(module)
        if kind in SYNCHRONIZED:
            if isinstance(module, _RangeBatchNorm):
                _refuse_chunked(module, name)
            targets.append((name, module))
        elif kind in _PLAIN or isinstance(module, nn.SyncBatchNorm):
            continue
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, _RangeBatchNorm)):
            left.append(f"{name} ({kind.__name__})")
    for name, module in targets:  # after every check: a refusal leaves the model unchanged
        module.__class__ = SYNCHRONIZED[type(module)]
        converted.append(name)
    if left:
        warnings.warn(
            f"BatchNorm layers of other types keep per-rank statistics (only nn.BatchNorm1d/2d/3d and Range BN are "
            f"synchronized): {', '.join(left)}",
            UserWarning,
            stacklevel=2,
        )
    elif not converted and not any(type(m) in _PLAIN for m in model.modules()):
        warnings.warn("the model has no BatchNorm or Range BN layer: nothing to synchronize", UserWarning, stacklevel=2)
    return converted


def unsynchronize_batchnorms(model: nn.Module) -> list[str]:
    """Undo :func:`synchronize_batchnorms` in place (the same modules back in their plain classes); their names."""
    names = []
    for name, module in model.named_modules():
        if type(module) in _PLAIN:
            module.__class__ = _PLAIN[type(module)]
            names.append(name)
    return names
