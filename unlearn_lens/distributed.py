"""Data-parallel collection and evaluation over a ``torch.distributed`` process group.

When a default process group is initialised (``torchrun --nproc-per-node N -m
unlearn_lens prune ...``, or ``torch.distributed.init_process_group`` in a script),
every collection and evaluation pass splits its token rows into disjoint shards, one
per rank (rank ``r`` of ``N`` takes rows ``r, r + N, r + 2N, ...``), and combines
what the ranks measured exactly:

* statistics: every rank's float64 state is gathered and merged in rank order
  (Chan's update for the moments, sums for the rest), so every rank ends with the
  same statistics, bit for bit, equal to one process's up to float64 rounding;
* evaluation: the counts (hits, summed loss, targets) are summed across ranks.

Scores and selections are then computed identically on every rank, so all ranks
hold the same masks; the command line writes outputs on rank 0 only. Without a
process group (or inside :func:`local`) nothing is sharded. ``gloo`` serves CPU
processes, ``nccl`` GPUs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError

__all__ = ["gather", "init_from_env", "is_main", "local", "shard", "sum_across", "world"]

_local = threading.local()


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` without a process group or inside :func:`local`)."""
    if getattr(_local, "off", False) or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Work of this process alone (e.g. rank 0 drawing a report): nothing is sharded or combined inside."""
    before = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = before


def shard(tokens: TokenSet, rank: int | None = None, size: int | None = None) -> TokenSet:
    """The rows of ``tokens`` that rank ``rank`` of ``size`` processes (default: this process's share)."""
    if rank is None or size is None:
        rank, size = world()
    if size == 1:
        return tokens
    return TokenSet(tokens.tokens[rank::size], tokens.valid[rank::size])


def _device_for(tensor: torch.Tensor) -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cpu") if backend == "gloo" else tensor.device


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks (a new tensor, on ``tensor``'s device)."""
    if world()[1] == 1:
        return tensor.clone()
    work = tensor.detach().to(_device_for(tensor)).clone()
    torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
    return work.to(tensor.device)


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` of every rank, in rank order (all of one shape), on ``tensor``'s device."""
    size = world()[1]
    if size == 1:
        return [tensor]
    work = tensor.detach().to(_device_for(tensor)).contiguous()
    out = [torch.empty_like(work) for _ in range(size)]
    torch.distributed.all_gather(out, work)
    return [t.to(tensor.device) for t in out]


def init_from_env(device: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    The backend is ``nccl`` when the model is to run on CUDA (``device``, or by
    default when CUDA is available), else ``gloo``.

    Returns:
        True if this call initialised a process group (the caller should destroy it).

    Raises:
        UnlearnLensError: the environment names a group that cannot be joined.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if not torch.distributed.is_available():
        raise UnlearnLensError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    try:
        torch.distributed.init_process_group(backend=backend)
    except Exception as exc:
        raise UnlearnLensError(f"could not join the process group ({backend}): {exc}") from exc
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
