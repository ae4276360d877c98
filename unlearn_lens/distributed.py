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

A collective waits for every rank. :func:`init_from_env` bounds that wait (its
``timeout``, ``--dist-timeout`` on the command line), and a collective that fails,
because a rank is stuck, stopped or gone, raises one
:class:`~unlearn_lens.errors.UnlearnLensError` that says which rank stopped waiting.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
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


def _failure(op: str, exc: RuntimeError) -> str:
    """One line on a collective that failed: which rank, waiting for whom, and why (the backend's words)."""
    rank, size = world()
    other = f"rank {1 - rank}" if size == 2 else "another rank"
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(". ")[0]  # without gloo's source location
    if "timed out" in reason.lower():
        return (
            f"rank {rank} of {size} stopped waiting for {other} in {op} ({reason}): it is stuck or stopped "
            "(--dist-timeout, the timeout of init_from_env, sets how long ranks wait)"
        )
    return f"rank {rank} of {size}: {op} failed ({reason}); {other} stopped, was killed or failed"


@contextlib.contextmanager
def _collective(op: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        raise UnlearnLensError(_failure(op, exc)) from exc


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks (a new tensor, on ``tensor``'s device).

    Raises:
        UnlearnLensError: another rank did not take part (stuck past the timeout, stopped or gone).
    """
    if world()[1] == 1:
        return tensor.clone()
    work = tensor.detach().to(_device_for(tensor)).clone()
    with _collective("all_reduce"):
        torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
    return work.to(tensor.device)


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` of every rank, in rank order (all of one shape), on ``tensor``'s device.

    Raises:
        UnlearnLensError: another rank did not take part (stuck past the timeout, stopped or gone).
    """
    size = world()[1]
    if size == 1:
        return [tensor]
    work = tensor.detach().to(_device_for(tensor)).contiguous()
    out = [torch.empty_like(work) for _ in range(size)]
    with _collective("all_gather"):
        torch.distributed.all_gather(out, work)
    return [t.to(tensor.device) for t in out]


def init_from_env(device: str | None = None, timeout: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    The backend is ``nccl`` when the model is to run on CUDA (``device``, or by
    default when CUDA is available), else ``gloo``.

    Args:
        device: where the model runs (chooses the backend).
        timeout: seconds a rank waits for the others, in joining and in every
            collective, before it gives up (None: torch's default, 30 minutes for gloo).

    Returns:
        True if this call initialised a process group (the caller should destroy it).

    Raises:
        UnlearnLensError: the environment names a group that cannot be joined, or ``timeout`` is not positive.
    """
    if timeout is not None and not timeout > 0:
        raise UnlearnLensError(f"the timeout of the process group (--dist-timeout) must be over 0 s, got {timeout!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if not torch.distributed.is_available():
        raise UnlearnLensError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    wait = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
    try:
        torch.distributed.init_process_group(backend=backend, **wait)
    except Exception as exc:
        raise UnlearnLensError(f"could not join the process group ({backend}): {exc}") from exc
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
