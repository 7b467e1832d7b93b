"""Learned-range quantizers with inferred bit widths (Uhlich et al., ICLR 2020).

Uniform grid (paper eq. 1, official-code form)::

    Q_U(x; d, q_max) = d * round(clip(x, -q_max, q_max) / d)      (unsigned: clip to [0, q_max], which is the ReLU)

Power-of-two grid (paper eq. 2; q_min, q_max are powers of two)::

    Q_P(x) = sign(x) * { 0                 if |x| < q_min / sqrt(2)      (only with a zero code)
                         q_min             if |x| < q_min
                         2^round(log2|x|)  if q_min <= |x| < q_max
                         q_max             if |x| >= q_max }

Zero code: as in the official code, power-of-two *weights and biases* have no zero level (``with_zero: false``;
|x| < q_min maps to ±q_min) and activations have one (``with_zero: true``). Either way the magnitudes take
``ceil(log2(log2(q_max/q_min) + 1))`` bits and one more bit is charged: the sign bit of a signed grid, the zero
code of an unsigned one. A signed grid with a zero code (``with_zero: true`` on weights, an option of lowbit's)
needs both and is charged two.

Each grid has three parametrizations by two learned scalars; the third quantity follows from
``q_max = (2^(b-1) - 1) d`` (signed; ``2^b - 1`` unsigned) or ``q_max = q_min 2^(2^(b-1) - 1)`` (pow2, signed):

=====  ==================  ======================================================
name   learned             derived
=====  ==================  ======================================================
U1     b, d                q_max = d (2^n - 1),            n = round(b) - signed
U2     b, q_max            d = q_max / (2^n - 1)  (then pow2 if ``pow2_step``)
U3     d, q_max            b inferred (recommended)
P1     b, q_max            q_min = q_max 2^-(2^n - 1),     n = round(b) - signed - with_zero
P2     b, q_min            q_max = q_min 2^(2^n - 1)
P3     q_min, q_max        b inferred (recommended)
=====  ==================  ======================================================

``round`` on b and the power-of-two snapping of d, q_min, q_max use straight-through estimators, so the partial
derivatives are those of the paper's table (e.g. U3: ``dQ/dd = (Q - x)/d`` inside the range and 0 outside,
``dQ/dq_max = sign(x)`` outside and 0 inside; ``dQ/dx`` = 1 inside, 0 outside).

Bit width. U3 and P3 infer it from the quantities actually used (the official code rounds q_max to a multiple of d
first)::

    uniform:  b = ceil(log2(round(q_max/d) + 1)) + signed
    pow2:     b = ceil(log2(log2(q_max/q_min) + 1)) + signed + with_zero

U1, U2, P1 and P2 learn b and are charged ``round(clip(b, b_box))``, as the official code charges them (for U2 the
power-of-two snapping of d can make the grid's inferred width differ from it by a bit; the memory is what b says).
``bit_width()`` returns it with a straight-through ceil (round) so that a memory budget can push the parameters.

Gradient clipping under a memory budget (``clip_param_grads_``): as in the official code, only U3 (grads of d and
q_max to ``[-d, d]``) and P3 (grads of q_min and q_max to ``[-q_min, q_min]``); U1, U2, P1 and P2 are never clipped.
Parameters are clipped into boxes after every step (``project_``): d in [2^-8, 1], q_max in [2^-8, 127] (weights) or
[2^-8, 255] (activations), b in [2, 8] (weights) or [1, 8] (activations), and d <= q_max, q_min <= q_max.

Numerics: the initialisation (from the first tensor, which must be non-empty and finite) and the quantization are
computed in float32 for float16/bfloat16 inputs; the output has the input's dtype.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..rounding import at_least, round_half_away
from .base import EVAL_MODE_OPTION, QUANTIZERS, Quantizer, bits_option, ceil_ste, pow2_ste, round_ste
from .codes import QuantizedTensor, index_dtype
from .grids import HALF_AWAY, IntegerGrid, Pow2Grid, float32
from .numerics import cast_back, widen

__all__ = ["ParametricUniformQuantizer", "ParametricPow2Quantizer", "make_parametric", "PARAMETRIZATIONS"]

PARAMETRIZATIONS = {
    "U1": ("b", "d"),
    "U2": ("b", "q_max"),
    "U3": ("d", "q_max"),
    "P1": ("b", "q_max"),
    "P2": ("b", "q_min"),
    "P3": ("q_min", "q_max"),
}

D_BOX = (2.0**-8, 1.0)
QMIN_BOX = (2.0**-15, 256.0)
QMAX_BOX = {"weight": (2.0**-8, 127.0), "bias": (2.0**-8, 127.0), "activation": (2.0**-8, 255.0)}
B_BOX = {"weight": (2.0, 8.0), "bias": (2.0, 8.0), "activation": (1.0, 8.0)}
SQRT_HALF = math.sqrt(0.5)
LN2 = math.log(2.0)


def _clip_steps(s: torch.Tensor, high: torch.Tensor, signed: bool) -> torch.Tensor:
    """``s`` clipped to ``[-high, high]`` (signed) or ``[0, high]``, as a new tensor."""
    return s.clamp_min(-high).clamp_max_(high) if signed else s.clamp(min=0.0).clamp_max_(high)


class _ClipRoundFunction(torch.autograd.Function):
    """``Q = d * round(clip(x, lo, q_max) / d)`` with closed-form gradients for x, d and q_max.

    Computed in units of the step, ``s = x / d`` clipped to ``[lo/d, q_max/d]``: division is monotonic, so this is
    bit-for-bit ``clip(x)/d`` (what ``encode`` computes), and the same two saved tensors as LSQ serve the backward.
    Bounds are 0-dim tensors (no host sync on accelerators), applied with ``clamp_min``/``clamp_max``, which on CPU
    are faster than ``clamp(x, lo, hi)`` with tensor bounds.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, d: torch.Tensor, q_max: torch.Tensor, signed: bool) -> torch.Tensor:
        high = q_max / d
        s = x / d
        c = _clip_steps(s, high, signed)
        # round half away from zero; for c >= 0 that is floor(c + 1/2)
        q = round_half_away(c) if signed else c.add_(0.5).floor_()
        ctx.save_for_backward(s, q, d, high)
        ctx.signed = signed
        return q * d

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        s, q, d, high = ctx.saved_tensors
        c = _clip_steps(s, high, ctx.signed)
        # the gradient where x lies outside the range: grad * sign(|s - c|), float kernels only (no bool mask)
        grad_outside = (s - c).abs_().sign_().mul_(grad)
        grad_x = grad - grad_outside
        flat_g, flat_c = grad.reshape(-1), c.reshape(-1)
        # dQ/dd = round(c/d) - c/d (STE through round), in step units: q - c
        grad_d = torch.dot(flat_g, q.reshape(-1)) - torch.dot(flat_g, flat_c)
        # dQ/dq_max = +1 above the range, -1 below it (signed), 0 below zero (unsigned): outside the range that is
        # c / high, since there c is +-high, or 0 for the unsigned lower bound
        grad_q = torch.dot(grad_outside.reshape(-1), flat_c) / high
        return grad_x, grad_d.reshape(d.shape), grad_q.reshape(high.shape), None


class _U3StepRange(torch.autograd.Function):
    """U3's ``(d, q_max)`` from its learned scalars, as one autograd node::

        d = pow2(clip(d_param, D_BOX))   (or clip only),       q_max = max(clip(q_param, box), d)

    Backward is what autograd through ``clamp``, the straight-through ``pow2`` (``d pow2(v)/dv = pow2(v)/v``) and
    ``maximum`` (ties split the gradient in halves) gives, in a handful of 0-dim kernels instead of about twenty:
    these scalars are recomputed in every forward and for every memory-budget evaluation, so their per-op dispatch
    cost, not arithmetic, is what they cost.
    """

    @staticmethod
    def forward(
        ctx: Any,
        d_param: torch.Tensor,
        q_param: torch.Tensor,
        d_box: tuple[float, float],
        q_box: tuple[float, float],
        pow2: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d_clipped = d_param.clamp(*d_box)
        d = torch.exp2(torch.round(torch.log2(d_clipped))) if pow2 else d_clipped
        q_clipped = q_param.clamp(*q_box)
        q_max = torch.maximum(q_clipped, d)
        ctx.save_for_backward(d_param, q_param, d_clipped, d, q_clipped)
        ctx.boxes = (d_box, q_box)
        return d, q_max

    @staticmethod
    def backward(ctx: Any, grad_d: torch.Tensor, grad_q: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        d_param, q_param, d_clipped, d, q_clipped = ctx.saved_tensors
        (d_low, d_high), (q_low, q_high) = ctx.boxes
        share_q = (torch.sign(q_clipped - d) + 1) * 0.5  # maximum's gradient split: 1, 1/2 at a tie, 0
        grad_d_used = grad_d + grad_q * (1 - share_q)
        grad_d_param = grad_d_used * (d / d_clipped) * ((d_param >= d_low) & (d_param <= d_high))
        grad_q_param = grad_q * share_q * ((q_param >= q_low) & (q_param <= q_high))
        return grad_d_param, grad_q_param, None, None, None


class _UniformBits(torch.autograd.Function):
    """``b = ceil(log2(round(q_max/d) + 1)) + signed`` with straight-through ceil and round, as one autograd node.

    Backward (the STEs pass the gradient of ``log2(q_max/d + 1)`` taken at the rounded ratio ``r``)::

        db/dq_max = 1 / ((r + 1) ln 2 · d),        db/dd = -q_max / ((r + 1) ln 2 · d^2)
    """

    @staticmethod
    def forward(ctx: Any, d: torch.Tensor, q_max: torch.Tensor, signed: int) -> torch.Tensor:
        ratio = torch.round(q_max / d)
        ctx.save_for_backward(d, q_max, ratio)
        return torch.ceil(torch.log2(ratio + 1)) + signed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        d, q_max, ratio = ctx.saved_tensors
        grad_ratio = grad / ((ratio + 1) * (LN2 * d))
        return -grad_ratio * q_max / d, grad_ratio, None


def _level_signs(x: torch.Tensor, no_zero_code: bool) -> torch.Tensor:
    """``sign(x)``; on a grid without a zero code, ``x = 0`` gets +1 (it maps to +q_min, a level of the grid)."""
    signs = torch.sign(x)
    return signs.add_(0.5).sign_() if no_zero_code else signs


class _Pow2Function(torch.autograd.Function):
    """Power-of-two quantization with nnabla's gradients: ``|Q|/|x|`` in the rounding region, ``sign(x)`` to the
    bound that clips (q_min below, q_max above), nothing through the zero region.

    The rounded magnitude ``p = 2^round(log2|x|)`` is computed once and saved (inside ``[q_min, q_max)`` it equals
    the clipped one, since both bounds are powers of two), bounds are applied with ``clamp_min``/``clamp_max``, region
    masks are float 0/1 tensors and region sums dot products, so the backward recomputes no logarithms.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, q_min: torch.Tensor, q_max: torch.Tensor, signed: bool, with_zero: bool
    ) -> torch.Tensor:
        if not signed:
            x = torch.relu(x)
        a = x.abs()
        mag = torch.exp2(round_half_away(torch.log2(a))).clamp_min_(q_min).clamp_max_(q_max)
        if with_zero:
            mag.mul_(at_least(a, q_min * SQRT_HALF))  # |x| < q_min / sqrt(2) rounds to the zero code
        ctx.save_for_backward(x, mag, q_min, q_max)
        ctx.with_zero = with_zero
        ctx.no_zero_code = not with_zero
        return _level_signs(x, ctx.no_zero_code).mul_(mag)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, mag, q_min, q_max = ctx.saved_tensors
        a = x.abs()
        above_min = at_least(a, q_min)
        high = at_least(a, q_max)
        # |Q|/|x| in the rounding region q_min <= |x| < q_max; |x| >= q_min > 0 there, the clamp only keeps the
        # masked-out values finite. Unsigned: x was passed through a ReLU, so x <= 0 has |x| = 0 and sign 0.
        grad_x = (grad * mag).div_(a.clamp_min(1e-30)).mul_(above_min - high)
        low = 1.0 - above_min
        if ctx.with_zero:
            low.mul_(at_least(a, q_min * SQRT_HALF))
        gs = (grad * _level_signs(x, ctx.no_zero_code)).reshape(-1)
        grad_qmin = torch.dot(gs, low.reshape(-1))
        grad_qmax = torch.dot(gs, high.reshape(-1))
        return grad_x, grad_qmin.reshape(q_min.shape), grad_qmax.reshape(q_max.shape), None, None


class _ParametricBase(Quantizer):
    def __init__(
        self,
        *,
        parametrization: str,
        signed: Union[bool, str, None],
        init_bits: int,
        role: str,
        eval_mode: str,
        seed: int,
        frozen: tuple[str, ...] = (),
    ) -> None:
        super().__init__(role=role, rounding="nearest", eval_mode=eval_mode, seed=seed)
        self.parametrization = parametrization
        if signed is None:
            signed = "auto" if role == "activation" else True
        # "auto": decided from the first tensor (unsigned after a ReLU, as in the paper; signed for the raw input)
        self.auto_sign = signed == "auto"
        self._signed = bool(signed) if not self.auto_sign else False
        self.register_buffer("is_signed", torch.tensor(self._signed))
        self.init_bits = int(init_bits)
        box_role = "activation" if role == "activation" else "weight"
        self.b_box = B_BOX[box_role]
        self.qmax_box = QMAX_BOX[box_role]
        first, second = PARAMETRIZATIONS[parametrization]
        # the two learned scalars, registered under the names the paper uses
        unknown = [name for name in frozen if name not in (first, second)]
        if unknown:
            raise ConfigError(f"{parametrization} learns {first} and {second}; cannot freeze {', '.join(unknown)}")
        for name in (first, second):
            # frozen scalars keep their initial value: e.g. U2 with b frozen is a homogeneous net with learned q_max
            self.register_parameter(name, nn.Parameter(torch.tensor(1.0), requires_grad=name not in frozen))
        self.learned_names = (first, second)

    def _decide_sign(self, x: torch.Tensor) -> None:
        if self.auto_sign:
            self._signed = bool(x.min() < 0)
            self.is_signed.fill_(self._signed)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._signed = bool(self.is_signed)

    @property
    def bits(self) -> int:
        with torch.no_grad():
            return int(round(float(self.bit_width())))

    def _n_bits(self, extra: int = 0) -> torch.Tensor:
        """``round(clip(b)) - signed - extra`` with a straight-through round."""
        low, high = self.b_box
        return round_ste(torch.clamp(self.b, low, high)) - int(self._signed) - extra

    def learns_bits(self) -> bool:
        """U1, U2, P1, P2: b is a learned scalar (charged as ``round(clip(b))``, never gradient-clipped)."""
        return "b" in self.learned_names

    def learned_bit_width(self) -> torch.Tensor:
        """``round(clip(b, b_box))`` with a straight-through round: what the official code charges U1/U2/P1/P2."""
        return round_ste(torch.clamp(self.b, *self.b_box))

    @torch.no_grad()
    def clip_param_grads_(self) -> None:
        """Uhlich's rule while a memory budget is on, for U3 and P3 only (as in the official code): the gradients of
        the learned scalars clipped to ``[-d, d]`` (U3) or ``[-q_min, q_min]`` (P3). U1, U2, P1 and P2 learn b and
        are left alone."""
        if self.learns_bits():
            return
        bound = float(self.step_value())
        for name in self.learned_names:
            p = getattr(self, name)
            if p.grad is not None:
                p.grad.clamp_(-bound, bound)

    def step_value(self) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        params = ", ".join(f"{n}={getattr(self, n).item():.4g}" for n in self.learned_names)
        return f"{self.parametrization}, " + super().extra_repr() + f", signed={self._signed}, {params}"


class ParametricUniformQuantizer(_ParametricBase):
    kind = "parametric"

    def __init__(
        self,
        *,
        parametrization: str = "U3",
        signed: Union[bool, str, None] = None,
        init_bits: int = 4,
        pow2_step: bool = True,
        frozen: tuple[str, ...] = (),
        role: str = "weight",
        eval_mode: str = "deterministic",
        seed: int = 0,
    ) -> None:
        super().__init__(
            parametrization=parametrization,
            signed=signed,
            init_bits=init_bits,
            role=role,
            eval_mode=eval_mode,
            seed=seed,
            frozen=tuple(frozen),
        )
        self.pow2_step = bool(pow2_step)

    # ---------------------------------------------------------------------------------- derived quantities
    def _levels_per_side(self, n: torch.Tensor) -> torch.Tensor:
        return torch.exp2(n) - 1  # 2^n - 1 positive levels

    def _snap(self, d: torch.Tensor) -> torch.Tensor:
        return pow2_ste(d) if self.pow2_step else d

    def step_and_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (d, q_max) actually used by the forward pass, differentiable w.r.t. the learned scalars."""
        p = self.parametrization
        if p == "U1":
            n = self._n_bits()
            d = self._snap(torch.clamp(self.d, *D_BOX))
            return d, d * self._levels_per_side(n)
        if p == "U2":
            n = self._n_bits()
            q_max = torch.clamp(self.q_max, *self.qmax_box)
            return self._snap(q_max / self._levels_per_side(n)), q_max
        return _U3StepRange.apply(self.d, self.q_max, D_BOX, self.qmax_box, self.pow2_step)

    def step_value(self) -> torch.Tensor:
        return self.step_and_range()[0].detach()

    def bit_width(self) -> torch.Tensor:
        if self.learns_bits():
            return self.learned_bit_width()
        d, q_max = self.step_and_range()
        return _UniformBits.apply(d, q_max, int(self._signed))

    # ------------------------------------------------------------------------------------ initialisation
    def reset_parameters_from(self, x: torch.Tensor) -> None:
        x = widen(x)
        self._decide_sign(x)
        b0 = self.init_bits
        if self.role == "activation":
            d0 = 2.0**-3
            levels = 2**b0 - 1 if not self._signed else 2 ** (b0 - 1) - 1
        else:
            levels = 2 ** (b0 - 1) - 1 if self._signed else 2**b0 - 1
            ratio = max(float(x.abs().max()), 1e-8) / levels
            d0 = 2.0 ** (math.ceil(math.log2(ratio)) if b0 > 4 else math.floor(math.log2(ratio)))
            d0 = min(max(d0, D_BOX[0]), D_BOX[1])
        values = {"b": float(b0), "d": d0, "q_max": d0 * levels}
        for name in self.learned_names:
            getattr(self, name).fill_(values[name])
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        if hasattr(self, "b"):
            self.b.clamp_(*self.b_box)
        if hasattr(self, "d"):
            self.d.clamp_(*D_BOX)
        if hasattr(self, "q_max"):
            self.q_max.clamp_(*self.qmax_box)
            if hasattr(self, "d"):
                self.q_max.copy_(torch.maximum(self.q_max, self.d))

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_initialize(x)
        if self.passthrough_now:
            return x
        d, q_max = self.step_and_range()
        work = widen(x)
        return cast_back(_ClipRoundFunction.apply(work, d, q_max, self._signed), x.dtype)

    def deterministic_grid(self) -> IntegerGrid:
        """Levels ``-k .. k`` (signed) or ``0 .. k`` of step ``d``, ``k = round(q_max / d)``."""
        self.require_initialized()
        with torch.no_grad():
            d, q_max = self.step_and_range()
            k = int(torch.round(q_max / d))
        return IntegerGrid(float32(d), 0, -k if self._signed else 0, k, HALF_AWAY)

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        self.maybe_initialize(x)
        with torch.no_grad():
            d, q_max = self.step_and_range()
            k = int(torch.round(q_max / d))
            lo = -q_max if self._signed else torch.zeros_like(q_max)
            q = round_half_away(torch.clamp(x.detach(), lo, q_max) / d)
            qmin = -k if self._signed else 0
            # U2 is charged round(b) (official accounting), but snapping d to a power of two can leave more levels
            # than b bits index: the codes get the bits the grid needs
            bits = max(self.bits, int(_UniformBits.apply(d, q_max, int(self._signed))))
            return QuantizedTensor(
                indices=(q - qmin).to(index_dtype(bits)),
                bits=bits,
                scale=d.clone(),
                zero_point=torch.zeros((), dtype=x.dtype),
                qmin=qmin,
            )


class ParametricPow2Quantizer(_ParametricBase):
    kind = "parametric"

    def __init__(
        self,
        *,
        parametrization: str = "P3",
        signed: Union[bool, str, None] = None,
        init_bits: int = 4,
        with_zero: Optional[bool] = None,
        frozen: tuple[str, ...] = (),
        role: str = "weight",
        eval_mode: str = "deterministic",
        seed: int = 0,
    ) -> None:
        super().__init__(
            parametrization=parametrization,
            signed=signed,
            init_bits=init_bits,
            role=role,
            eval_mode=eval_mode,
            seed=seed,
            frozen=tuple(frozen),
        )
        # the official code: no zero level for (signed) weights and biases, a zero level for activations; an
        # unsigned weight grid keeps one for the values its ReLU sets to 0
        self._with_zero_option = with_zero
        self._resolve_with_zero()

    def _resolve_with_zero(self) -> None:
        option = self._with_zero_option
        self.with_zero = (self.role == "activation" or not self._signed) if option is None else bool(option)

    def _decide_sign(self, x: torch.Tensor) -> None:
        super()._decide_sign(x)
        self._resolve_with_zero()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._resolve_with_zero()

    def _exponents(self, n: torch.Tensor) -> torch.Tensor:
        return torch.exp2(n) - 1  # log2(q_max / q_min) for n magnitude bits

    def range_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_min, q_max), powers of two, differentiable w.r.t. the learned scalars."""
        p = self.parametrization
        if p == "P1":
            q_max = pow2_ste(torch.clamp(self.q_max, *self.qmax_box))
            return q_max * torch.exp2(-self._exponents(self._n_bits(int(self.with_zero)))), q_max
        if p == "P2":
            q_min = pow2_ste(torch.clamp(self.q_min, *QMIN_BOX))
            return q_min, q_min * torch.exp2(self._exponents(self._n_bits(int(self.with_zero))))
        q_max = pow2_ste(torch.clamp(self.q_max, *self.qmax_box))
        q_min = pow2_ste(torch.minimum(torch.clamp(self.q_min, *QMIN_BOX), q_max))
        return q_min, q_max

    def step_value(self) -> torch.Tensor:
        return self.range_bounds()[0].detach()

    def bit_width(self) -> torch.Tensor:
        if self.learns_bits():
            return self.learned_bit_width()
        q_min, q_max = self.range_bounds()
        width = ceil_ste(torch.log2(torch.log2(q_max / q_min) + 1)) + int(self._signed) + int(self.with_zero)
        # the official code's max(..., bitwidth_min): a collapsed range (q_min = q_max) is charged b_box's minimum,
        # not the single sign bit that its one magnitude level needs
        return torch.clamp_min(width, self.b_box[0])

    def reset_parameters_from(self, x: torch.Tensor) -> None:
        x = widen(x)
        self._decide_sign(x)
        b0 = self.init_bits
        n = b0 - int(self._signed) - int(self.with_zero)
        if self.role == "activation":
            q_max = 2.0  # pow2 of the uniform activation init 1.875
        else:
            q_max = 2.0 ** round(math.log2(max(float(x.abs().max()), 1e-8)))
        q_max = min(max(q_max, self.qmax_box[0]), self.qmax_box[1])
        values = {"b": float(b0), "q_max": q_max, "q_min": q_max * 2.0 ** -(2**n - 1)}
        for name in self.learned_names:
            getattr(self, name).fill_(values[name])
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        if hasattr(self, "b"):
            self.b.clamp_(*self.b_box)
        if hasattr(self, "q_max"):
            self.q_max.clamp_(*self.qmax_box)
        if hasattr(self, "q_min"):
            self.q_min.clamp_(*QMIN_BOX)
            if hasattr(self, "q_max"):
                self.q_min.copy_(torch.minimum(self.q_min, self.q_max))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_initialize(x)
        if self.passthrough_now:
            return x
        q_min, q_max = self.range_bounds()
        work = widen(x)
        y = _Pow2Function.apply(work, q_min, q_max, self._signed, self.with_zero)
        return cast_back(y, x.dtype)

    def deterministic_grid(self) -> Pow2Grid:
        self.require_initialized()
        with torch.no_grad():
            q_min, q_max = self.range_bounds()
            # the threshold as forward computes it: a float32 tensor times a Python float
            threshold = float32(q_min * SQRT_HALF) if self.with_zero else None
        return Pow2Grid(float32(q_min), float32(q_max), threshold, self._signed)

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        self.maybe_initialize(x)
        with torch.no_grad():
            q_min, q_max = self.range_bounds()
            values = _Pow2Function.apply(x.detach(), q_min, q_max, self._signed, self.with_zero)
            k = int(round(math.log2(float(q_max / q_min))))
            magnitudes = [2.0**e for e in range(k + 1)]  # in units of q_min
            levels = (
                ([-m for m in reversed(magnitudes)] if self._signed else [])
                + ([0.0] if self.with_zero else [])
                + magnitudes
            )
            table = torch.tensor(levels, dtype=x.dtype, device=x.device)
            ratio = values / q_min
            # index of each value in the sorted table (exact: values are table entries times q_min)
            indices = torch.searchsorted(table, ratio.reshape(-1).contiguous()).reshape(x.shape)
            bits = self.bits
            return QuantizedTensor(
                indices=indices.to(index_dtype(bits)),
                bits=bits,
                scale=q_min.clone(),
                zero_point=torch.zeros((), dtype=x.dtype, device=x.device),
                table=table,
            )


PARAMETRIC_OPTIONS = {
    "parametrization": {
        "enum": list(PARAMETRIZATIONS),
        "default": "U3",
        "description": "U1 (b,d), U2 (b,q_max), U3 (d,q_max), P1 (b,q_max), P2 (b,q_min), P3 (q_min,q_max)",
    },
    "signed": {
        "enum": [True, False, "auto", None],
        "default": None,
        "description": "auto: decided from the first tensor; null: signed for weights, auto for activations",
    },
    "init_bits": bits_option(2, 8, default=4),
    "pow2_step": {"type": "boolean", "description": "U1-U3: snap d to a power of two (official code); default true"},
    "with_zero": {
        "type": "boolean",
        "description": "P1-P3: a zero level; default as the official code: none for signed weights and biases "
        "(|x| < q_min maps to +-q_min), one for activations and unsigned grids. On a signed grid it costs one more bit",
    },
    "frozen": {
        "type": "array",
        "items": {"enum": ["b", "d", "q_max", "q_min"]},
        "uniqueItems": True,
        "default": [],
        "description": "learned scalars kept at their initial value (e.g. [b]: fixed bit width)",
    },
    "eval_mode": EVAL_MODE_OPTION,
}


def make_parametric(*, parametrization: str = "U3", **options: Any) -> _ParametricBase:
    """Build the uniform (U1-U3) or power-of-two (P1-P3) learned quantizer named by ``parametrization``."""
    key = str(parametrization).upper()
    if key not in PARAMETRIZATIONS:
        raise ConfigError(f"unknown parametrization {parametrization!r}; valid choices: {', '.join(PARAMETRIZATIONS)}")
    cls = ParametricUniformQuantizer if key.startswith("U") else ParametricPow2Quantizer
    if cls is ParametricUniformQuantizer and "with_zero" in options:
        raise ConfigError("with_zero applies to the power-of-two parametrizations P1-P3 only")
    if cls is ParametricPow2Quantizer and "pow2_step" in options:
        raise ConfigError("pow2_step applies to the uniform parametrizations U1-U3 only")
    return cls(parametrization=key, **options)


QUANTIZERS.register(
    "parametric",
    make_parametric,
    options=PARAMETRIC_OPTIONS,
    keywords_from=(ParametricUniformQuantizer, ParametricPow2Quantizer),
)
