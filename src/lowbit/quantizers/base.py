"""The quantizer protocol shared by every family, and the integer encoding that export reads.

A quantizer answers one question: *which grid, and how is a value rounded onto it*. It does not know which layer
or slot it serves (weight, activation, gradient); the layer tells it its ``role`` once, for role-dependent defaults
such as signedness or initialisation. In a distributed run the role also decides where a stochastic quantizer's
noise comes from: the same stream on every rank for ``weight``/``bias``, a per-rank stream restarted at every step
for ``activation``/``gradient`` (:mod:`lowbit.train.rank_noise`).

Protocol (every quantizer is an ``nn.Module``):

* ``forward(x)``: the fake-quantized tensor (same shape and dtype as ``x``) with the straight-through gradient the
  paper defines;
* ``bits``: the bit width as a Python int, inferred from learned parameters where the bit width is not fixed. The
  model summary, memory budgets, export and plots read this attribute and nothing else;
* ``bit_width()``: the same number as a tensor; for learned parametrizations it carries a straight-through gradient
  (``b + sg(ceil(b) - b)``) so that a memory penalty can reach the parameters;
* ``signed``: whether the grid has negative levels;
* ``encode(x)``: the integer codes and scale/offset of the deterministic quantization of ``x``
  (:class:`QuantizedTensor`), with ``encode(x).dequantize() == forward(x)`` in eval mode;
* ``eval_grid()``: the grid ``forward`` applies in eval mode, as data (:mod:`lowbit.quantizers.grids`: integer
  affine, affine with a real zero point, power-of-two, sign), or ``None`` when eval passes values through
  (``eval_mode: float``). Families implement ``deterministic_grid()``; both raise :class:`GridUnavailable` when the
  grid is not fixed (never initialised, or a range recomputed from every tensor). ONNX export reads this and
  nothing else of an activation quantizer;
* ``clip_range()``: the interval a float latent copy should be clipped to (BinaryConnect), or ``None``;
* ``project_()``: called after every optimizer step to keep learned parameters in their valid box.

Numerics (:mod:`lowbit.quantizers.numerics`): statistics and learned-parameter arithmetic run in float32 for float16
and bfloat16 inputs, outputs keep the input's dtype, and parameters and buffers keep the module's dtype (float32
under ``torch.autocast``; ``module.half()`` casts them). The data-dependent initialisation (``maybe_initialize``)
refuses an empty or non-finite tensor with an :class:`InitializationError` naming the module (``module_name``, set
by ``lowbit.quantize``). After initialisation an empty tensor passes through every quantizer.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ..rounding import NoiseSource, Rounding
from .codes import QuantizedTensor, index_dtype, integer_range
from .grids import Grid, GridUnavailable
from .numerics import InitializationError, check_initializing_tensor

__all__ = [
    "Quantizer",
    "QUANTIZERS",
    "QuantizedTensor",
    "ROLES",
    "EVAL_MODES",
    "ROUNDING_OPTION",
    "EVAL_MODE_OPTION",
    "NOISE_BITS_OPTION",
    "DEFAULT_NOISE_BITS",
    "bits_option",
    "ceil_ste",
    "round_ste",
    "pow2_ste",
    "integer_range",
    "index_dtype",
    "Grid",
    "GridUnavailable",
    "InitializationError",
]

ROLES = ("weight", "activation", "gradient", "bias")
EVAL_MODES = ("deterministic", "float")

# JSON-schema fragments for the recipe options every family shares (each family lists its own in ``OPTIONS``)
ROUNDING_OPTION = {
    "enum": ["nearest", "stochastic"],
    "description": "round to nearest, or stochastic unbiased rounding (training only)",
}
#: the noise resolution of stochastic rounding when a recipe leaves ``noise_bits`` unset: float32's 24 bits for every
#: role. The fast 16-bit source (CPU only) is an explicit choice, for tensors whose noise is redrawn every step
#: (Banner's gradients ask for it); on a stored weight it would freeze every flip whose probability |update|/Δ is
#: below 2^-17, which a decayed schedule reaches
DEFAULT_NOISE_BITS = 24
#: roles whose stochastic rounding decides a stored value: 16-bit noise there is warned about
STORED_ROLES = ("weight", "bias")
NOISE_BITS_OPTION = {
    "enum": [16, 24],
    "description": "stochastic rounding's uniform noise: 24 bits (float32's resolution, the default) or the fast "
    "16-bit CPU source, which rounds up with a probability within 2^-17 of the exact one and never when that "
    "probability is below 2^-17 (on a GPU, for half-precision tensors and under torch.compile the noise is "
    "torch's own, 24 bits, whatever this says)",
}
EVAL_MODE_OPTION = {
    "enum": list(EVAL_MODES),
    "default": "deterministic",
    "description": "in eval mode: deterministic rounding, or the float values (BinaryConnect-stoch)",
}


def bits_option(low: int, high: int, default: Optional[int] = None) -> dict[str, Any]:
    option = {"type": "integer", "minimum": low, "maximum": high, "description": "bit width"}
    if default is not None:
        option["default"] = default
    return option


#: recipe ``type`` -> constructor taking keyword options plus ``role`` and ``seed``; each family registers itself in
#: its own module, with its ``OPTIONS`` (JSON schema) as the recipe options
QUANTIZERS: Registry[str] = Registry("quantizer type")


class Quantizer(nn.Module):
    """Base class: stores role and evaluation mode, owns the noise source and the lazy-initialisation flag."""

    #: name used in recipes (``type: <kind>``); set by each subclass
    kind: ClassVar[str] = ""
    #: JSON schema of the recipe options (constructor keywords besides ``role`` and ``seed``)
    OPTIONS: ClassVar[dict] = {}
    #: the quantizer's path in its model (``"features.4.input_quantizer"``), set by ``lowbit.quantize`` so that
    #: errors can say which layer; empty for a quantizer built by hand
    module_name: str = ""
    #: the data-dependent parameters were given explicitly (an ``init_step`` or ``step`` in the recipe): they are
    #: kept when a new float model is loaded under this quantizer (:meth:`forget_initialization`)
    init_given: bool = False
    #: how many processes the global batch is split over (set by the trainer of a distributed run): a quantizer
    #: whose gradient depends on the batch size (LSQ's activation gradient scale) counts the global batch, so that
    #: the gradients DDP averages equal one process's
    batch_shards: int = 1

    def __init__(
        self,
        *,
        role: str = "weight",
        rounding: str = "nearest",
        eval_mode: str = "deterministic",
        noise_bits: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise ConfigError(f"unknown quantizer role {role!r}; valid roles: {', '.join(ROLES)}")
        if eval_mode not in EVAL_MODES:
            raise ConfigError(f"unknown eval_mode {eval_mode!r}; valid choices: {', '.join(EVAL_MODES)}")
        self.role = role
        self.rounding = Rounding.parse(rounding)
        self.eval_mode = eval_mode
        stochastic = self.rounding is Rounding.STOCHASTIC
        if noise_bits is not None and not stochastic:
            warnings.warn(
                f"noise_bits: {noise_bits} has no effect on {self.role} quantizer with rounding: nearest (it sets the "
                f"noise of stochastic rounding); remove it or set rounding: stochastic",
                UserWarning,
                stacklevel=3,
            )
        if noise_bits == 16 and stochastic and role in STORED_ROLES:
            warnings.warn(
                f"noise_bits: 16 on a {role} quantizer: stochastic rounding of a stored {role} then never rounds up "
                f"where the probability is below 2^-17 (small late updates are lost); use 24, the default, unless "
                f"the speed of the 16-bit source matters more",
                UserWarning,
                stacklevel=3,
            )
        bits = DEFAULT_NOISE_BITS if noise_bits is None else noise_bits
        self.noise = NoiseSource(seed, resolution_bits=bits) if stochastic else None
        # Data-dependent initialisation (LSQ step, Uhlich ranges) happens once; the flag is a buffer so a loaded
        # checkpoint is not re-initialised, and mirrored in a Python bool so the hot path does not read a tensor.
        self.register_buffer("initialized", torch.tensor(False), persistent=True)
        self._is_initialized = False

    # ----------------------------------------------------------------------------------------------- protocol
    # Fixed-width families set ``_bits`` and ``_signed`` in their constructor; learned parametrizations override
    # ``bits`` to infer it from their parameters.
    _bits: int
    _signed: bool

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def signed(self) -> bool:
        return self._signed

    def bit_width(self) -> torch.Tensor:
        """Bit width as a tensor (differentiable through an STE for learned parametrizations)."""
        return torch.tensor(float(self.bits))

    def encode(self, x: torch.Tensor) -> QuantizedTensor:
        raise NotImplementedError

    def eval_grid(self) -> Optional[Grid]:
        """The grid ``forward`` applies in eval mode; ``None`` when it passes values through (``eval_mode: float``)."""
        return None if self.eval_mode == "float" else self.deterministic_grid()

    def deterministic_grid(self) -> Grid:
        """The grid of deterministic rounding (what eval mode applies unless ``eval_mode: float``, and what
        ``encode`` writes codes on); raises :class:`GridUnavailable` if it is not fixed."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its grid")

    def clip_range(self) -> Optional[tuple[float, float]]:
        return None

    @torch.no_grad()
    def project_(self) -> None:
        """Clip learned parameters back into their valid box (no-op for fixed grids)."""

    def reset_parameters_from(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation from a representative tensor; families that need it override."""

    # -------------------------------------------------------------------------------------------- helpers
    @property
    def stochastic_now(self) -> bool:
        """Stochastic rounding is used in training only; evaluation is deterministic."""
        return self.noise is not None and self.training

    @property
    def passthrough_now(self) -> bool:
        """True in eval mode when the recipe asks to evaluate with the float (latent) values (BC-stoch)."""
        return not self.training and self.eval_mode == "float"

    def describe(self) -> str:
        """``"the activation quantizer 'features.4.input_quantizer'"``, for messages."""
        return f"the {self.role} quantizer" + (f" {self.module_name!r}" if self.module_name else "")

    def check_initializing_tensor(self, x: torch.Tensor) -> None:
        """Raise :class:`InitializationError` (naming this quantizer) unless ``x`` is non-empty and finite."""
        if self.role in ("weight", "bias"):
            fix = f"check the float model's {self.role}s (a diverged pretraining?) before quantizing it"
        else:
            fix = f"check the data and the layers that compute this {self.role}; the first training batch sets it"
        check_initializing_tensor(x, self.describe(), fix)

    def maybe_initialize(self, x: torch.Tensor) -> None:
        """Initialise the data-dependent parameters from ``x`` unless done already; ``x`` must be non-empty and
        finite (:class:`InitializationError` otherwise, and nothing is changed)."""
        if not self._is_initialized:
            self.check_initializing_tensor(x)
            with torch.no_grad():
                self.reset_parameters_from(x.detach())
            self.mark_initialized()

    def mark_initialized(self) -> None:
        """Record that the data-dependent parameters are set (given explicitly, or from a first tensor)."""
        self.initialized.fill_(True)
        self._is_initialized = True

    def forget_initialization(self) -> None:
        """Undo the data-dependent initialisation, so the next tensor sets it again (a trained float model was loaded
        under this quantizer, or a calibration batch is about to run); parameters given explicitly (``init_given``)
        are kept."""
        if not self.init_given:
            self.initialized.fill_(False)
            self._is_initialized = False

    def require_initialized(self) -> None:
        """Raise :class:`GridUnavailable` unless the data-dependent parameters are set."""
        if not self._is_initialized:
            raise GridUnavailable(
                f"the {self.role} quantizer has never seen data, so its grid is not set; train the "
                f"model (or run a batch through it in train mode) first"
            )

    def get_extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.state() if self.noise is not None else None}

    def set_extra_state(self, state: Optional[dict[str, Any]]) -> None:
        if self.noise is not None and state and state.get("noise") is not None:
            self.noise.load_state(state["noise"])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._is_initialized = bool(self.initialized)

    def extra_repr(self) -> str:
        parts = [f"role={self.role}", f"bits={self._bits_repr()}"]
        if self.rounding is Rounding.STOCHASTIC:
            parts.append("rounding=stochastic")
        if self.eval_mode != "deterministic":
            parts.append(f"eval_mode={self.eval_mode}")
        return ", ".join(parts)

    def _bits_repr(self) -> str:
        try:
            return str(self.bits)
        except Exception:  # learned grids before initialisation
            return "?"


def ceil_ste(x: torch.Tensor) -> torch.Tensor:
    """``ceil`` in the forward pass, identity gradient (``x + sg(ceil(x) - x)``)."""
    return x + (torch.ceil(x) - x).detach()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round`` in the forward pass, identity gradient."""
    return x + (torch.round(x) - x).detach()


def pow2_ste(x: torch.Tensor) -> torch.Tensor:
    """``2 ** round(log2 x)`` with a straight-through round: ``d/dx = pow2(x) / x``."""
    return torch.exp2(round_ste(torch.log2(x)))
