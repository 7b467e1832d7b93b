"""Rounding to the integer grid, deterministic and stochastic, with reproducible randomness.

Every quantizer maps ``x / step`` to an integer. Three ways of doing it appear in the papers:

* ``round_half_even(x)``: ``torch.round``; what ``torch.fake_quantize_*`` and GEMMLOWP use (LSQ, min-max).
* ``round_half_away(x) = sign(x) * floor(|x| + 1/2)``: Li & De's ``Q_d`` and Uhlich's eq. (1). It differs from
  ``torch.round`` only at exact ties (x = k + 1/2).
* ``stochastic_round(x) = floor(x + u)``, ``u ~ U[0, 1)``: rounds up with probability ``x - floor(x)``, hence
  ``E[stochastic_round(x)] = x`` and ``Var <= 1/4`` per element (Li & De's ``Q_s``; Banner's ``round(x + U(-1/2, 1/2))``
  has the same distribution).

Randomness comes from a :class:`NoiseSource` owned by each stochastic quantizer, not from torch's global
generator: a run is reproducible from its seed, dropout or data shuffling do not shift the rounding noise, and the
generator state travels in ``state_dict`` so a resumed run draws the same numbers it would have drawn unkilled.
"""

from __future__ import annotations

import zlib
from enum import Enum

import torch

__all__ = [
    "Rounding",
    "NoiseSource",
    "round_half_even",
    "round_half_away",
    "outside_mask",
    "stochastic_round",
    "derive_seed",
]


class Rounding(str, Enum):
    """How a real value is mapped onto the grid."""

    NEAREST = "nearest"
    STOCHASTIC = "stochastic"

    @classmethod
    def parse(cls, value: "str | Rounding") -> "Rounding":
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown rounding {value!r}; valid choices: {valid}") from None


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that is a pure function of ``seed`` and ``keys`` (e.g. a layer name and slot).

    Uses CRC32 rather than ``hash()`` because Python salts string hashes per process.
    """
    mixed = int(seed) & 0xFFFFFFFF
    for key in keys:
        mixed = (mixed * 0x9E3779B1 + zlib.crc32(str(key).encode())) & 0x7FFFFFFFFFFFFFFF
    return mixed


class NoiseSource:
    """A seeded ``torch.Generator`` created lazily on the device of the first tensor it serves.

    ``state()`` / ``load_state()`` make it checkpointable; a quantizer stores them through
    ``nn.Module.get_extra_state`` so the noise continues exactly after a resume.
    """

    def __init__(self, seed: int = 0, resolution_bits: int = 24):
        if resolution_bits not in (12, 24):
            raise ValueError(f"noise resolution must be 12 or 24 bits, got {resolution_bits}")
        self.seed = int(seed)
        self.resolution_bits = resolution_bits
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._generator = None
        self._pending_state = None

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None and device.type == "cpu":
                gen.set_state(self._pending_state)
            self._pending_state = None
            self._generator = gen
        return gen

    def uniform_like(self, x: torch.Tensor) -> torch.Tensor:
        """``u ~ U[0, 1)`` with the shape, dtype and device of ``x``.

        Inside ``torch.compile`` the noise comes from torch's global generator instead (seeded by the trainer from
        the run's seed): a Generator object would split the compiled graph at every stochastic quantizer, while
        the compiler's own random numbers fuse into the surrounding kernels.
        """
        if torch.compiler.is_compiling():
            return torch.rand_like(x)
        generator = self.generator(x.device)
        if self.resolution_bits == 24 or x.numel() < 2:
            return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self._split_uniform(x, generator)

    @staticmethod
    def _split_uniform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Two 12-bit uniforms from each 24-bit draw, halving the generator's work (the CPU's mt19937 costs about
        4 ns a number, the largest part of quantizing big gradient tensors stochastically).

        ``torch.rand`` returns ``k / 2^24`` with ``k`` uniform on 24 bits; its high and low 12 bits are independent
        uniforms. Each becomes ``(j + 1/2) / 4096``: stochastic rounding then rounds up with a probability within
        ``2^-13`` of the exact one, a bias below ``2^-13`` of a grid step.
        """
        n = x.numel()
        half = (n + 1) // 2
        scaled = torch.rand(half, generator=generator, dtype=torch.float32, device=x.device).mul_(4096.0)
        out = torch.empty(2 * half, dtype=torch.float32, device=x.device)
        high, low = out[:half], out[half:]
        torch.floor(scaled, out=high)  # k // 4096, exact in float32
        torch.sub(scaled, high, out=low)  # (k mod 4096) / 4096, exact
        high.add_(0.5).mul_(1.0 / 4096)
        low.add_(0.5 / 4096)
        return out[:n].view(x.shape).to(x.dtype)

    def state(self) -> dict:
        gen_state = None
        if self._generator is not None and self._generator.device.type == "cpu":
            gen_state = self._generator.get_state()
        elif self._pending_state is not None:
            gen_state = self._pending_state
        return {"seed": self.seed, "generator": gen_state, "resolution_bits": self.resolution_bits}

    def load_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._pending_state = state.get("generator")


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * floor(|x| + 1/2)``, as ``copysign(floor(|x| + 1/2), x)`` (three vectorised kernels)."""
    return torch.copysign(x.abs().add_(0.5).floor_(), x)


def outside_mask(x: torch.Tensor, low, high) -> torch.Tensor:
    """1.0 where ``x`` lies outside ``[low, high]``, 0.0 inside, as a float tensor.

    Computed as ``sign(|x - clamp(x, low, high)|)``: float kernels only, several times faster on CPU than building
    a bool mask with comparisons and consuming it with ``torch.where``.
    """
    return (x - torch.clamp(x, low, high)).abs_().sign_()


def stochastic_round(x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """``floor(x + u)`` with ``u ~ U[0, 1)``: unbiased, ``P(up) = x - floor(x)``."""
    return torch.floor(x + noise.uniform_like(x))
