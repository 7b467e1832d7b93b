"""Range Batch Normalization (Banner et al. 2018).

Standard BN divides by the batch standard deviation, a sum of squares that needs high precision. Range BN divides
by a scaled range instead, per channel over the ``n`` values of the batch (``n = B`` for 1d, ``B·H·W`` for 2d)::

    x_hat = (x - mu) / (C(n) * range(x - mu) + eps),     C(n) = 1 / sqrt(2 ln n),   range(z) = max(z) - min(z)
    y     = gamma * x_hat + beta

For Gaussian input ``0.325 σ <= C(n)·range <= 2 σ`` (paper's bound); in practice ``C(n)·range ≈ 1.7–1.8 σ``, so
the output is BN's up to a constant factor that gamma absorbs. ``estimator: chunked`` uses the authors' code
instead: the mean range over 16 chunks of size m, times ``0.5·0.35·(1 + sqrt(π ln 4)) / sqrt(2 ln m)`` (≈ σ).
Gradients flow through the mean, max and min. Running mean and scale (PyTorch's momentum convention) are used in eval
mode. An optional ``grad_quantizer`` quantizes the gradient arriving at the output (8-bit stochastic in Banner).

From a trained BatchNorm (:meth:`~_RangeBatchNorm.from_batchnorm`, or ``lowbit.load_float_state_dict``) the layer
starts as the same function: with ``k = E[scale] / σ`` of the estimator on Gaussian input (:func:`scale_per_std`;
paper ``k = C(n)·E[range_n] ≈ 1.78``, chunked ``≈ 0.92`` at ``n = 4096``), ``running_scale = k·sqrt(running_var +
eps_BN) - eps`` and ``gamma' = k·gamma``. Eval output is then BN's exactly, and the training-mode output BN's up to
the few per cent by which ``k`` varies with ``n`` (paper 1.69 at n = 200 to 1.83 at n = 1e5).

Numerics: statistics and the normalisation are computed in float32 for float16/bfloat16 inputs (the range of
activations of a few 10^4 overflows float16) and the output has the input's dtype. The running statistics, gamma and
beta keep the module's dtype: float32 under ``torch.autocast``; ``module.half()`` casts them, as it casts
BatchNorm's, and the float32 statistics are rounded into them. The first training batch must be non-empty and finite
(:class:`~lowbit.quantizers.numerics.InitializationError`, naming the module); later, a channel whose batch
statistic is not finite keeps its running value (the trainer reports the diverged loss), and an empty batch is
normalised with the running statistics and leaves them unchanged.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, Optional, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..quantizers.base import Quantizer
from ..quantizers.numerics import check_initializing_tensor, lerp_finite_, widen
from ..registry import Registry
from .gradient import quantize_gradient

__all__ = [
    "RangeBatchNorm1d",
    "RangeBatchNorm2d",
    "range_scale_constant",
    "scale_per_std",
    "gaussian_expected_range",
    "ESTIMATORS",
    "RANGE_BATCHNORMS",
    "RankReduction",
]

#: float BatchNorm class -> its Range BN replacement (``from_batchnorm``), for ``quantize.batchnorm.type: range``;
#: exact type match, like the quantized layers
RANGE_BATCHNORMS: Registry[type] = Registry("Range BatchNorm type")

ESTIMATORS = ("paper", "chunked")
CHUNKS = 16
_CHUNK_CONSTANT = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))


def range_scale_constant(n: int) -> float:
    """``C(n) = 1 / sqrt(2 ln n)``."""
    return 1.0 / math.sqrt(2.0 * math.log(max(n, 2)))


#: values per channel for which a trained BatchNorm's ``running_var`` is turned into a running scale (32 images of
#: 16×16, 4 of 32×32); ``k`` changes by under 5 % between n = 1000 and n = 1e5
REFERENCE_N = 4096


def gaussian_expected_range(n: int) -> float:
    """``E[max - min]`` of ``n`` samples of N(0, 1): ``∫ 1 - Φ(x)^n - (1 - Φ(x))^n dx`` (trapezoid rule, [-12, 12])."""
    x = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    cdf = torch.special.ndtr(x)
    return float(torch.trapezoid(1 - cdf**n - (1 - cdf) ** n, x))


@cache
def scale_per_std(estimator: str, n: int = REFERENCE_N) -> float:
    """``k = E[scale] / σ``: the training-mode scale estimate per standard deviation on Gaussian input with ``n`` values
    per channel. ``paper``: ``C(n)·E[range_n]``; ``chunked``: ``0.5·0.35·(1 + sqrt(π ln 4)) / sqrt(2 ln m)·E[range_m]``
    with ``m = n // 16`` (the paper's estimator below 32 values, as in training)."""
    if estimator == "chunked" and n >= 2 * CHUNKS:
        m = n // CHUNKS
        return _CHUNK_CONSTANT / math.sqrt(2.0 * math.log(m)) * gaussian_expected_range(m)
    return range_scale_constant(n) * gaussian_expected_range(max(n, 2))


class RankReduction(Protocol):
    """How :class:`_RangeNorm` combines its per-channel statistics over the ranks of a process group."""

    def range_statistics(
        self, n: int, mean: torch.Tensor, high: torch.Tensor, low: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From this rank's ``n``, mean, max and min: the global ``n``, mean, max and min, and per channel whether
        this rank holds the global max / min (1.0 or 0.0; exactly one rank per channel)."""
        ...

    def sum(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor summed over the ranks."""
        ...


def normalize_per_channel(
    x: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``y = a (x - mean) + beta`` per channel (dimension 1), ``a`` the per-channel factor (gamma over the scale),
    computed in float32 and returned in ``x``'s dtype: BatchNorm's and Range BN's output, plain or synchronized.

    ``y`` is computed in ``x``'s own shape: an output that is a view of a tensor made here (``.reshape`` of a
    flattened result) cannot be modified in place by the next layer (``ReLU(inplace=True)`` after BN, as in
    torchvision)."""
    shift = -mean * a if bias is None else bias - mean * a
    per_channel = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(per_channel), widen(x), a.reshape(per_channel)).to(x.dtype)


class _RangeNorm(torch.autograd.Function):
    """Training-mode Range BN (paper estimator) with its closed-form backward.

    With ``sigma = C(n) (max - min) + eps``, ``a = gamma / sigma`` and ``y = a (x - mu) + beta`` per channel::

        dL/dbeta  = Σ g                      dL/dgamma = Σ g (x - mu) / sigma
        dL/dx     = a (g - Σ g / n)  +  k (δ_argmax - δ_argmin),   k = -C(n) gamma Σ g (x - mu) / sigma^2

    The range's gradient goes to one maximum and one minimum per channel (a subgradient where values tie). One
    Function instead of autograd through mean/amax/amin/sub/div saves several full passes and copies of the
    activation per step. The incoming gradient is quantized first when a ``grad_quantizer`` is given.

    ``across`` (a :class:`RankReduction`, synchronized Range BN in ``nn/sync_bn.py``) makes the batch the global batch
    of every rank: ``n``, ``mu``, max and min are combined over the ranks in forward, ``Σ g`` and ``Σ g (x - mu)``
    are summed over the ranks for ``dL/dx``, and the range term goes only to the rank holding the global extreme.
    ``dL/dgamma`` and ``dL/dbeta`` stay this rank's sums (DistributedDataParallel averages them).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        eps: float,
        grad_quantizer: Optional[Quantizer],
        across: Optional[RankReduction] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_batch, channels = x.shape[:2]
        ctx.dtype = x.dtype
        flat = widen(x).reshape(n_batch, channels, -1)
        n = flat.shape[0] * flat.shape[2]
        mean = flat.mean(dim=(0, 2))
        # Reductions without indices (on CPU amax + amin are much faster than max/min with indices or aminmax
        # along a dim); the extremes are located in backward, within the one sample per channel that holds them.
        high_nc, low_nc = flat.amax(dim=2), flat.amin(dim=2)
        high, high_n = high_nc.max(dim=0)
        low, low_n = low_nc.min(dim=0)
        owns_high = owns_low = None  # without ranks this process holds every extreme
        if across is not None:
            n, mean, high, low, owns_high, owns_low = across.range_statistics(n, mean, high, low)
        c_n = range_scale_constant(n)
        scale = (high - low) * c_n
        sigma = scale + eps
        a = weight / sigma if weight is not None else 1.0 / sigma
        y = normalize_per_channel(x, mean, a, bias)
        ctx.save_for_backward(flat, mean, a, sigma, weight, high_n, low_n, owns_high, owns_low)
        ctx.c_n, ctx.n, ctx.shape, ctx.quantizer, ctx.across = c_n, n, x.shape, grad_quantizer, across
        ctx.mark_non_differentiable(mean, scale)
        return y, mean, scale

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor, _grad_mean: torch.Tensor, _grad_scale: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        flat, mean, a, sigma, weight, high_n, low_n, owns_high, owns_low = ctx.saved_tensors
        if ctx.quantizer is not None:
            with torch.no_grad():
                grad = ctx.quantizer(grad)
        g = widen(grad).reshape(flat.shape)
        sum_g = g.sum(dim=(0, 2))
        sum_g_centered = (g * flat).sum(dim=(0, 2)) - mean * sum_g  # Σ g (x - mu)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            total_g, total_g_centered = sum_g, sum_g_centered
            if ctx.across is not None:  # the sums over the global batch; the parameters' gradients stay this rank's
                total_g, total_g_centered = ctx.across.sum(sum_g, sum_g_centered)
            grad_x = torch.addcmul((-a * total_g / ctx.n)[None, :, None], g, a[None, :, None])
            gamma = weight if weight is not None else torch.ones_like(sigma)
            k = -ctx.c_n * gamma * total_g_centered / sigma.square()
            k_high = k if owns_high is None else k * owns_high  # zero on channels whose extreme another rank holds
            k_low = k if owns_low is None else k * owns_low
            channel = torch.arange(flat.shape[1], device=flat.device)
            high_l = flat[high_n, channel].argmax(dim=1)  # (C, L) slice: the sample holding each channel's max
            low_l = flat[low_n, channel].argmin(dim=1)
            grad_x.index_put_((high_n, channel, high_l), k_high, accumulate=True)
            grad_x.index_put_((low_n, channel, low_l), -k_low, accumulate=True)
            grad_x = grad_x.reshape(ctx.shape).to(ctx.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_g_centered / sigma
        if ctx.needs_input_grad[2]:
            grad_bias = sum_g
        return grad_x, grad_weight, grad_bias, None, None, None


class _RangeBatchNorm(nn.Module):
    _expected_dims: tuple[int, ...] = ()
    #: the module's path in its model (``"features.1"``), set by ``lowbit.quantize`` for error messages
    module_name: str = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        estimator: str = "paper",
        grad_quantizer: Optional[Quantizer] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(f"unknown Range BN estimator {estimator!r}; valid choices: {', '.join(ESTIMATORS)}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.estimator = estimator
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_scale", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.grad_quantizer = grad_quantizer
        # the first training batch is checked for finiteness (once per process: one host read, then never again)
        self._first_batch_checked = False

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, **options: Any) -> _RangeBatchNorm:
        """Replace a (trained) BatchNorm by a Range BN computing the same function (:meth:`load_batchnorm_state`)."""
        reference = bn.weight if bn.affine else bn.running_mean
        factory = {"device": reference.device, "dtype": reference.dtype} if reference is not None else {}
        layer = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum if bn.momentum is not None else 0.1,
            affine=bn.affine,
            **options,
            **factory,
        )
        layer.load_batchnorm_state(
            bn.weight,
            bn.bias,
            bn.running_mean if bn.track_running_stats else None,
            bn.running_var,
            bn.eps,
            bn.num_batches_tracked,
        )
        layer.train(bn.training)
        return layer

    @torch.no_grad()
    def load_batchnorm_state(
        self,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        bn_eps: float,
        num_batches_tracked: Optional[torch.Tensor] = None,
    ) -> None:
        """Take a BatchNorm's parameters and statistics so that this layer starts as the same function::

            k = scale_per_std(estimator)                       (E[training scale] / σ on Gaussian input)
            running_mean  = running_mean_BN
            running_scale = k·sqrt(running_var + eps_BN) - eps
            gamma         = k·gamma_BN,   beta = beta_BN

        In eval mode ``gamma (x - mu) / (running_scale + eps) = gamma_BN (x - mu) / sqrt(running_var + eps_BN)``
        exactly; in training the batch scale ``≈ k σ`` keeps the output BN's. Without affine parameters only the
        statistics are taken (the output is then BN's divided by ``k``, as for any Range BN). For a BatchNorm that
        never saw data (``num_batches_tracked == 0``: a model built from scratch) ``k = 1``: gamma and beta as they
        are, the running scale ``sqrt(running_var + eps_BN)``, as the paper's Range BN starts.
        """
        # A BatchNorm that never saw data (a model built from scratch) starts as the paper's Range BN (gamma 1, scale
        # from the initial variance); only a trained one is converted into the same function.
        trained = num_batches_tracked is not None and int(num_batches_tracked) > 0
        k = scale_per_std(self.estimator) if trained else 1.0
        if self.affine and weight is not None:
            self.weight.copy_(weight * k)
            self.bias.copy_(bias)
        if running_mean is not None and running_var is not None:
            self.running_mean.copy_(running_mean)
            sigma = torch.sqrt(running_var.to(torch.float64) + bn_eps)
            self.running_scale.copy_((k * sigma - self.eps).clamp_min(0.0))
        if num_batches_tracked is not None:
            self.num_batches_tracked.copy_(num_batches_tracked)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in self._expected_dims:
            raise ConfigError(
                f"{type(self).__name__} expects a {' or '.join(map(str, self._expected_dims))}-d "
                f"input, got shape {tuple(x.shape)}"
            )

    def _batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0] + list(range(2, x.dim()))
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        if self.estimator == "paper" or n < 2 * CHUNKS:
            spread = x.amax(dim=dims) - x.amin(dim=dims)  # = range(x - mu)
            return mean, spread * range_scale_constant(n)
        m = n // CHUNKS
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        chunks = per_channel[:, : m * CHUNKS].reshape(x.shape[1], CHUNKS, m)
        spread = (chunks.amax(dim=2) - chunks.amin(dim=2)).mean(dim=1)
        return mean, spread * (_CHUNK_CONSTANT / math.sqrt(2.0 * math.log(m)))

    def _check_first_batch(self, x: torch.Tensor) -> None:
        if not self._first_batch_checked:
            who = f"Range BatchNorm {self.module_name!r}" if self.module_name else "a Range BatchNorm"
            fix = "check the data and the layers before it; its first training batch must be finite"
            check_initializing_tensor(x, who, fix)
            self._first_batch_checked = True

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        lerp_finite_(self.running_mean, mean, self.momentum)
        lerp_finite_(self.running_scale, scale, self.momentum)
        self.num_batches_tracked.add_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        training = self.training and x.numel() > 0  # an empty batch has no statistics: normalised as in eval
        if training:
            self._check_first_batch(x)
        if training and self.estimator == "paper":
            y, mean, scale = _RangeNorm.apply(x, self.weight, self.bias, self.eps, self.grad_quantizer)
            self._update_running(mean, scale)
            return y
        work = widen(x)
        if training:
            mean, scale = self._batch_statistics(work)
            self._update_running(mean.detach(), scale.detach())
        else:
            mean, scale = widen(self.running_mean), widen(self.running_scale)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv = 1.0 / (scale + self.eps)
        if self.affine:
            inv = inv * self.weight
        y = (work - mean.reshape(shape)) * inv.reshape(shape)
        if self.affine:
            y = y + self.bias.reshape(shape)
        return quantize_gradient(y.to(x.dtype), self.grad_quantizer)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, estimator={self.estimator}"


@RANGE_BATCHNORMS.register(nn.BatchNorm1d, options={}, description="Range BN over (N, C) or (N, C, L)")
class RangeBatchNorm1d(_RangeBatchNorm):
    _expected_dims = (2, 3)


@RANGE_BATCHNORMS.register(nn.BatchNorm2d, options={}, description="Range BN over (N, C, H, W)")
class RangeBatchNorm2d(_RangeBatchNorm):
    _expected_dims = (4,)
