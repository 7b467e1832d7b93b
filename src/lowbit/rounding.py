"""Rounding to the integer grid, deterministic and stochastic, with reproducible randomness.

Every quantizer maps ``x / step`` to an integer. Three ways of doing it appear in the papers:

* round half to even: ``torch.round``; what ``torch.fake_quantize_*`` and GEMMLOWP use (LSQ, min-max).
* ``round_half_away(x) = sign(x) * floor(|x| + 1/2)``: Li & De's ``Q_d`` and Uhlich's eq. (1). It differs from
  ``torch.round`` only at exact ties (x = k + 1/2).
* ``stochastic_round(x) = floor(x + u)``, ``u ~ U[0, 1)``: rounds up with probability ``x - floor(x)``, hence
  ``E[stochastic_round(x)] = x`` and ``Var <= 1/4`` per element (Li & De's ``Q_s``; Banner's ``round(x + U(-1/2, 1/2))``
  has the same distribution). On a grid of two levels ``low < high`` the same rule reads ``high if x >= t else low``
  with ``t = low + (high - low)·u`` (:func:`stochastic_threshold`; BinaryConnect's stochastic binarization).

Quantizers draw ``u`` before their autograd Function and round inside it (:func:`stochastic_round_`): under
``torch.compile`` the draw is then an ordinary op of the graph, not a call on a Python object inside a Function.

Randomness comes from a :class:`NoiseSource` owned by each stochastic quantizer, not from torch's global
generator: a run is reproducible from its seed, dropout or data shuffling do not shift the rounding noise, and the
generator state travels in ``state_dict`` so a resumed run draws the same numbers it would have drawn unkilled.
A distributed run restarts the noise of quantizers that act on per-rank data at every step
(:meth:`NoiseSource.restart`, policy in :mod:`lowbit.train.rank_noise`).
"""

from __future__ import annotations

import copy
import zlib
from enum import Enum
from typing import Union

import numpy as np
import torch

from .errors import ConfigError

#: a clipping bound: a number, or a tensor that broadcasts against the input
Bound = Union[float, torch.Tensor]
__all__ = [
    "Rounding",
    "NoiseSource",
    "round_half_away",
    "outside_mask",
    "at_least",
    "stochastic_round",
    "stochastic_round_",
    "stochastic_threshold",
    "derive_seed",
]


class Rounding(str, Enum):
    """How a real value is mapped onto the grid."""

    NEAREST = "nearest"
    STOCHASTIC = "stochastic"

    @classmethod
    def parse(cls, value: str | Rounding) -> Rounding:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise ConfigError(f"unknown rounding {value!r}; valid choices: {valid}") from None


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that is a pure function of ``seed`` and ``keys`` (e.g. a layer name and slot).

    Uses CRC32 rather than ``hash()`` because Python salts string hashes per process.
    """
    mixed = int(seed) & 0xFFFFFFFF
    for key in keys:
        mixed = (mixed * 0x9E3779B1 + zlib.crc32(str(key).encode())) & 0x7FFFFFFFFFFFFFFF
    return mixed


class NoiseSource:
    """Seeded, checkpointable uniform noise for one stochastic quantizer.

    ``resolution_bits=24`` (the default) is float32's resolution: ``torch.rand`` with a lazily created
    ``torch.Generator``. ``resolution_bits=16`` is the fast source, which a recipe asks for explicitly
    (``noise_bits: 16``; Banner's gradients). On the CPU it draws 64-bit words from NumPy's
    ``PCG64DXSM`` and cuts each into four 16-bit uniforms ``(k + 1/2) / 2^16``: torch's CPU generator is a
    single-threaded Mersenne Twister at a few ns per number, which made drawing the noise the largest cost of
    stochastic rounding on big tensors (Banner's 8-bit gradients), while PCG64DXSM costs about 2 ns per 64-bit word,
    i.e. 0.5 ns per uniform. Stochastic rounding with it rounds up with a probability within ``2^-17`` of the exact
    one, and never where that probability is below ``2^-17`` (7.6e-6): too coarse for a weight stored on its grid,
    whose flip probability ``|update|/Δ`` is that small late in a decayed schedule. On other devices, and for
    half-precision tensors, it uses torch's generator (``torch.rand``), which is fast on GPUs.

    Inside ``torch.compile`` the noise comes from torch's global generator instead (seeded by the trainer from the
    run's seed): a generator object would split the compiled graph at every stochastic quantizer, while the
    compiler's own random numbers fuse into the surrounding kernels.

    ``state()`` / ``load_state()`` capture the generators; a quantizer stores them through
    ``nn.Module.get_extra_state`` so the noise continues exactly after a resume.

    ``seed`` is the quantizer's own seed (from the run's seed and the layer's name); the generators start from it,
    or from the ``stream_seed`` of the last :meth:`restart` (a distributed run restarts per-rank noise at every
    step from a seed derived from ``seed``, the step and the rank).
    """

    def __init__(self, seed: int = 0, resolution_bits: int = 24) -> None:
        if resolution_bits not in (16, 24):
            raise ConfigError(f"noise resolution must be 16 or 24 bits, got {resolution_bits}")
        self.seed = int(seed)
        self.stream_seed = self.seed  # what the generators start from (see restart)
        self.resolution_bits = resolution_bits
        self._generators: dict[str, torch.Generator] = {}  # one per device ("cpu", "cuda:0", ...), created lazily
        self._pending_states: dict[str, torch.Tensor] = {}  # restored states of generators not created yet
        self._words: np.random.PCG64DXSM | None = None
        self._pending_words: dict | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator for ``device``: each device has its own (seeded from ``seed``), so moving a model between
        devices never resets the noise of another device's generator, and each one's state is checkpointed."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.stream_seed)
            pending = self._pending_states.pop(key, None)
            if pending is not None:
                gen.set_state(pending)
            self._generators[key] = gen
        return gen

    def _word_generator(self) -> np.random.PCG64DXSM:
        if self._words is None:
            self._words = np.random.PCG64DXSM(self.stream_seed)
            if self._pending_words is not None:
                self._words.state = self._pending_words
            self._pending_words = None
        return self._words

    def restart(self, stream_seed: int) -> None:
        """Start every generator afresh from ``stream_seed`` (the next draws are a pure function of it); ``seed``,
        the quantizer's own seed from which callers derive ``stream_seed``, is kept."""
        self.stream_seed = int(stream_seed)
        self._generators, self._words = {}, None
        self._pending_states, self._pending_words = {}, None

    def uniform_like(self, x: torch.Tensor) -> torch.Tensor:
        """``u ~ U(0, 1)`` with the shape, dtype and device of ``x``."""
        if torch.compiler.is_compiling():
            return torch.rand_like(x)
        if self.resolution_bits == 16 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            return self._uniform16(x)  # (half-precision types would round the largest values up to 1.0)
        return torch.rand(x.shape, generator=self.generator(x.device), dtype=x.dtype, device=x.device)

    def _uniform16(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        # NumPy work is invisible to torch.profiler unless labelled
        with torch.profiler.record_function("lowbit::pcg64dxsm_words"):
            words = self._word_generator().random_raw((n + 3) // 4)  # uint64, four 16-bit fields each
        codes = torch.from_numpy(words.view(np.uint16)[:n])
        # (k + 1/2) / 2^16, exact in float32; copy_ converts uint16 quickly where arithmetic on it does not
        uniform = torch.empty(x.shape, dtype=torch.float32).copy_(codes.view(x.shape))
        return uniform.mul_(1.0 / 65536).add_(0.5 / 65536).to(x.dtype)

    def state(self) -> dict:
        """``generators``: the state of each device's generator (CPU byte tensors, by device name). Files written
        before per-device generators hold the CPU generator's state under ``generator`` (still read)."""
        states = dict(self._pending_states)
        states.update({key: gen.get_state() for key, gen in self._generators.items()})
        words = self._words.state if self._words is not None else self._pending_words
        return {
            "seed": self.seed,
            "stream_seed": self.stream_seed,
            "generators": states,
            "words": words,
            "resolution_bits": self.resolution_bits,
        }

    def load_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.stream_seed = int(state.get("stream_seed", self.seed))  # files written before restart() lack it
        self._generators, self._words = {}, None
        self._pending_states = dict(state.get("generators") or {})
        if state.get("generator") is not None:
            self._pending_states.setdefault("cpu", state["generator"])
        self._pending_words = state.get("words")

    def __deepcopy__(self, memo: dict) -> NoiseSource:
        # through state(): torch.Generator objects (CUDA ones in particular) are not deep-copyable everywhere
        twin = NoiseSource(self.seed, self.resolution_bits)
        twin.load_state(copy.deepcopy(self.state(), memo))
        return twin


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * floor(|x| + 1/2)``, as ``copysign(floor(|x| + 1/2), x)`` (three vectorised kernels)."""
    return torch.copysign(x.abs().add_(0.5).floor_(), x)


def outside_mask(x: torch.Tensor, low: Bound, high: Bound) -> torch.Tensor:
    """1.0 where ``x`` lies outside ``[low, high]``, 0.0 inside, as a float tensor.

    Computed as ``sign(|x - clamp(x, low, high)|)``: float kernels only, several times faster on CPU than building
    a bool mask with comparisons and consuming it with ``torch.where``.
    """
    return (x - torch.clamp(x, low, high)).abs_().sign_()


def at_least(x: torch.Tensor, bound: Bound) -> torch.Tensor:
    """1.0 where ``x >= bound``, 0.0 elsewhere, as a float tensor: ``min(sign(x - bound) + 1, 1)``, float kernels
    only, like :func:`outside_mask` (on CPU much faster than a bool mask consumed by ``where`` or ``masked_fill_``).
    """
    return torch.sub(x, bound).sign_().add_(1.0).clamp_max_(1.0)


def stochastic_round(x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """``floor(x + u)`` with ``u ~ U[0, 1)`` drawn from ``noise``: unbiased, ``P(up) = x - floor(x)``."""
    return stochastic_round_(x.clone(), noise.uniform_like(x))


def stochastic_round_(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``floor(x + u)`` in place, for noise ``u = noise.uniform_like(x)`` drawn beforehand."""
    return x.add_(u).floor_()


def stochastic_threshold(noise: NoiseSource, like: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``t = low + (high - low)·u``, ``u ~ U[0, 1)``, shaped like ``like``: ``x`` in ``[low, high]`` rounds to ``high``
    where ``x >= t``, with probability ``(x - low) / (high - low)`` (stochastic rounding between two levels)."""
    return noise.uniform_like(like).mul_(high - low).add_(low)
