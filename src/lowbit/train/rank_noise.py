"""Where the random numbers of a distributed run come from: which noise is shared by every rank, which is each
rank's own, and how both are seeded so a run (and a resumed run) repeats exactly.

Two kinds of noise, told apart by the quantizer's ``role``:

* **Noise that acts on the weights** (``weight`` and ``bias`` quantizers: BinaryConnect's stochastic binarization,
  Li & De's stochastic rounding of the weights after every step in :class:`~lowbit.train.policies.GridWeights`) must
  be *identical on every rank*, or the ranks' weights drift apart. Each such quantizer keeps the one stream it has
  in a single process (its :class:`~lowbit.rounding.NoiseSource`, seeded from the run's seed and the layer's name,
  never from the rank); every rank makes the same draws in the same order, so the streams stay in step, and the
  stream's state is in the checkpoint (rank 0's, which is everyone's).
* **Noise that acts on per-rank data** (``activation`` and ``gradient`` quantizers: Banner's 8-bit stochastic
  gradient rounding, Range BatchNorm's gradient quantizer) must be *different on every rank*: the same stream on
  two shards would correlate the rounding errors that the gradient average is meant to average out. In a
  distributed run each such quantizer restarts its stream before every training step from

      ``derive_seed(quantizer seed, phase, epoch, step in epoch, rank)``

  (:func:`restart_rank_noise`). The numbers a step draws are then a pure function of (seed, step, rank), so a run
  resumed at the same world size redraws them without any per-rank generator state in the checkpoint (which holds
  rank 0's only). A single process is left as it always was (one continuing stream per quantizer), so adding this
  policy changed no single-process result.
* **Torch's global generator** (dropout, and any user layer that draws from it) is per rank in a distributed run,
  seeded at the start of every epoch from ``derive_seed(run seed, "global", phase, epoch, rank)``
  (:func:`seed_rank_globals`), so a resumed run continues exactly from the epoch it restarts at.

What is per rank differs in state by design: after a step, the generators of the per-rank quantizers hold different
states on different ranks; everything else (parameters, buffers, weight noise) is bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..convert import quantizers_of
from ..data import seed_everything
from ..quantizers import Quantizer
from ..rounding import derive_seed

__all__ = ["SHARED_NOISE_ROLES", "per_rank_quantizers", "restart_rank_noise", "seed_rank_globals"]

#: quantizer roles whose noise acts on the weights, the same on every rank
SHARED_NOISE_ROLES = ("weight", "bias")


def per_rank_quantizers(model: nn.Module) -> list[Quantizer]:
    """The stochastic quantizers of ``model`` that act on per-rank data (activations, gradients)."""
    return [q for q in quantizers_of(model) if q.noise is not None and q.role not in SHARED_NOISE_ROLES]


def restart_rank_noise(quantizers: Sequence[Quantizer], phase: str, epoch: int, step: int, rank: int) -> None:
    """Before training step ``step`` (0-based, within ``epoch`` of ``phase``) on ``rank``: every quantizer's stream
    restarts from ``derive_seed(its seed, phase, epoch, step, rank)``."""
    for quantizer in quantizers:
        quantizer.noise.restart(derive_seed(quantizer.noise.seed, phase, epoch, step, rank))


def seed_rank_globals(seed: int, phase: str, epoch: int, rank: int) -> None:
    """At the start of ``epoch`` of ``phase`` on ``rank``: torch's, Python's and NumPy's global generators from
    ``derive_seed(seed, "global", phase, epoch, rank)``."""
    seed_everything(derive_seed(seed, "global", phase, epoch, rank))
