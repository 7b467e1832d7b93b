"""Training on several processes with ``torch.distributed``: the launch that ``torchrun`` describes, the process group,
and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m lowbit train ...`` starts N copies of the command, each with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in its environment. :func:`setup` sees them and joins the
process group: gloo for a CPU run, NCCL for CUDA. Without those variables nothing here does anything and a run is
the usual single process.

Every collective has a timeout (``LOWBIT_DIST_TIMEOUT`` seconds, default 300): a rank that dies makes the others
stop with :class:`DistributedError` instead of waiting forever (under ``torchrun`` the launcher also stops the
other workers as soon as one fails).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterable, Iterator
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, LowbitError

__all__ = [
    "DistributedError",
    "launched",
    "device_of_this_rank",
    "setup",
    "teardown",
    "abandon",
    "abandoned",
    "active",
    "rank",
    "world_size",
    "is_main",
    "broadcast_state",
    "sum_across",
    "gather_batch",
    "share_from_main",
    "shard_batches",
    "collective_errors",
    "stop",
]

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(LowbitError, RuntimeError):
    """Another process of a distributed run died or stopped answering (or the process group cannot form)."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` all set)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def _timeout() -> datetime.timedelta:
    raw = os.environ.get("LOWBIT_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"LOWBIT_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise ConfigError(f"LOWBIT_DIST_TIMEOUT must be positive, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def device_of_this_rank(device: torch.device) -> torch.device:
    """The device this process trains on: under ``torchrun``, ``cuda`` (or ``auto`` on a GPU machine) becomes the GPU
    of the process's ``LOCAL_RANK`` (one process per GPU, as NCCL requires), made the current CUDA device; otherwise
    ``device`` itself. A GPU index given under a launch of several local processes is refused: every process would
    take that one GPU."""
    if device.type != "cuda" or not launched():
        return device
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None:
        if local_world > 1:
            raise ConfigError(
                f"--device {device} with {local_world} processes on this machine would put every process on one GPU; "
                f"give --device cuda (each process takes the GPU of its LOCAL_RANK) and choose the GPUs with "
                f"CUDA_VISIBLE_DEVICES"
            )
        torch.cuda.set_device(device)  # NCCL and the CUDA generators use the current device
        return device
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise ConfigError(
            f"process LOCAL_RANK {local_rank} has no GPU of its own: {visible} CUDA device(s) visible; start at most "
            f"{visible} processes per machine (--nproc-per-node) or train on the CPU (--device cpu)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: torch.device) -> bool:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA); ``False`` when not launched
    (a single process). Joining twice is a no-op."""
    if not launched():
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if device.type == "cuda" else "gloo"
    with collective_errors():
        dist.init_process_group(backend=backend, timeout=_timeout())
    return True


def stop(code: int) -> NoReturn:
    """End this process now, with ``code``. After another rank died, gloo's background threads can abort an ordinary
    interpreter exit ("terminate called without an active exception", status -6), so the streams are flushed and
    the process leaves without running that teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_abandoned = False


def abandon() -> None:
    """This rank failed (an error of its own, e.g. a diverged loss on its chunk) while the others may be inside a
    collective: it must not wait for them at a barrier (they would answer only after the timeout), so the group is
    left as it is and the process should end with :func:`stop` once its error is printed; the launcher then stops
    the other workers."""
    global _abandoned
    _abandoned = active() and world_size() > 1


def abandoned() -> bool:
    """Whether :func:`abandon` was called in a distributed run (the process should leave through :func:`stop`)."""
    return _abandoned


def teardown() -> None:
    """Leave the process group (after the last collective), once every rank got here: a rank destroying its gloo
    group while another still uses it can abort the process at exit."""
    if dist.is_initialized() and not _abandoned:
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one rank of an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the process that prints and writes the run directory (every process of a single-process run)."""
    return rank() == 0


def broadcast_state(module: nn.Module, *, parameters: bool = True, buffers: bool = True) -> None:
    """Copy rank 0's parameters and/or buffers of ``module`` into every other rank, in place.

    Quantizers keep a Python-side ``initialized`` flag mirroring their buffer; every rank has run the same forward
    before this, so the flags agree and only the values need copying."""
    if not active():
        return
    tensors: list[torch.Tensor] = []
    if parameters:
        tensors += [p.data for p in module.parameters()]
    if buffers:
        tensors += list(module.buffers())
    with torch.no_grad(), collective_errors():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (float64, so per-epoch counts and loss sums stay exact enough)."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    with collective_errors():
        dist.all_reduce(total)
    return total.tolist()


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch whose chunks the ranks hold: every rank's ``x`` concatenated in rank order along the first
    dimension, on every rank (the inverse of :func:`shard_batches`; chunks may differ in length)."""
    if not active():
        return x
    x = x.contiguous()
    world = world_size()
    with collective_errors():
        lengths = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(lengths, torch.tensor(len(x), dtype=torch.long, device=x.device))
        sizes = [int(n) for n in lengths]
        padded = x.new_zeros((max(sizes), *x.shape[1:]))  # all_gather needs equal shapes
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def share_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (pickled; for small objects and a checkpoint to resume from)."""
    if not active():
        return value
    holder = [value]
    with collective_errors():
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shard_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rank: int, world: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's part of every global batch: rank ``r`` of ``W`` takes the ``r``-th of ``W`` contiguous chunks
    (``tensor_split``), so across the ranks every sample of the epoch is seen exactly once.

    A *last* global batch with fewer than ``2·W`` samples would leave some rank with zero or one sample (no gradient,
    or a BatchNorm that cannot normalise one sample); it is merged into the batch before it. Only the last one: a
    batch size below ``2·W`` is refused by the trainer, not merged away."""
    held: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last two batches seen: the final one may be merged
    for batch in batches:
        held.append(batch)
        if len(held) == 3:
            x, y = held.pop(0)
            yield x.tensor_split(world)[rank], y.tensor_split(world)[rank]
    if len(held) == 2 and len(held[1][1]) < 2 * world:
        held = [(torch.cat([held[0][0], held[1][0]]), torch.cat([held[0][1], held[1][1]]))]
    for x, y in held:
        yield x.tensor_split(world)[rank], y.tensor_split(world)[rank]


def _is_collective_failure(error: BaseException) -> bool:
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("gloo", "nccl", "timed out", "connection closed by peer", "connection reset")
    )


@contextlib.contextmanager
def collective_errors() -> Iterator[None]:
    """Turn a failed collective (a rank died, a timeout) into a one-line :class:`DistributedError`."""
    try:
        yield
    except LowbitError:
        raise
    except (RuntimeError, OSError) as error:
        if not _is_collective_failure(error) and not isinstance(error, OSError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedError(
            f"rank {rank() if active() else os.environ.get('RANK', '?')}: another process of the distributed run "
            f"stopped or did not answer within {_timeout().total_seconds():g} s ({first}); see that process's "
            f"output for its error (LOWBIT_DIST_TIMEOUT sets the wait)"
        ) from None
