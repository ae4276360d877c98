"""Checkpoints of the pruning loop: a run so far, its tokens, and the lock that keeps a second process off it.

A checkpoint is a directory ``OUT.partial`` that :func:`~unlearn_lens.selective_prune`
writes after every step (rank 0 only, each file atomically):

* ``run/``: the run so far, as :meth:`PruneRun.save <unlearn_lens.results.PruneRun.save>` writes it;
* ``tokens.safetensors``: the statistics and evaluation tokens of both datasets
  (:data:`TOKEN_SETS`), so that a resumed run reads exactly the tokens the interrupted one did;
* ``checkpoint.json``: the last step, whether the loop finished, and the settings the
  command line stored with it (what it runs after the loop).

Everything read back is checked before any work (:func:`load_checkpoint`): a file no run
wrote, token ids outside the model's vocabulary, or a run for another model is refused
with one error that names the file. :func:`checkpoint_lock` lets one process at a time
write a checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unlearn_lens._io import read_json, read_safetensors, write_json, write_safetensors
from unlearn_lens.data import TokenSet
from unlearn_lens.distributed import is_main
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_dims, model_name
from unlearn_lens.results import PruneRun

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: checkpoints are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TOKEN_SETS",
    "checkpoint_lock",
    "checkpoint_tokens",
    "load_checkpoint",
    "read_checkpoint_settings",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

TOKEN_SETS = ("forget_collect", "forget_eval", "retain_collect", "retain_eval")
"""The token sets of a run, as a checkpoint stores them: statistics and evaluation tokens of forget and retain."""


def save_checkpoint(
    path: Path, run: PruneRun, data: Any, finished: bool, settings: dict[str, Any] | None = None
) -> None:
    """The run so far, as a directory a later call can resume from (each part written atomically; rank 0 only).

    ``data`` holds the four token sets of :data:`TOKEN_SETS` as attributes of those names.
    """
    if not is_main():
        return
    if not (path / "tokens.safetensors").is_file():
        tensors = {
            f"{name}.{part}": getattr(getattr(data, name), part).to(torch.uint8 if part == "valid" else torch.int64)
            for name in TOKEN_SETS
            for part in ("tokens", "valid")
        }
        write_safetensors(path / "tokens.safetensors", tensors, {"format": "unlearn_lens.Checkpoint"})
    run.save(path / "run", overwrite=True)
    state = {"format": 1, "step": run.final.step, "finished": finished, "settings": settings}
    write_json(path / "checkpoint.json", state)


def _check_token_tensors(file: Path, tensors: dict[str, torch.Tensor], d_vocab: int | None) -> None:
    """Refuse token tensors of a checkpoint that no run wrote: wrong dtypes or dims, ids outside the vocabulary.

    Each token set is ``{name}.tokens``, integer ids ``[rows pos]``, and ``{name}.valid``,
    0 or 1 (bool or uint8) of the same shape; every set has one row length.

    Raises:
        UnlearnLensError: naming the file and the tensor.
    """
    where = f"checkpoint file {str(file)!r}"
    widths = set()
    for name in TOKEN_SETS:
        missing = [f"{name}.{part}" for part in ("tokens", "valid") if f"{name}.{part}" not in tensors]
        if missing:
            raise UnlearnLensError(f"{where} has no tensor {missing[0]!r}: the checkpoint is incomplete")
        key, tokens, valid = f"{name}.tokens", tensors[f"{name}.tokens"], tensors[f"{name}.valid"]
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise UnlearnLensError(
                f"{where}: tensor {key!r} is {tokens.dtype} of shape {list(tokens.shape)}, not integer token ids "
                "[rows, pos]"
            )
        if valid.shape != tokens.shape:
            raise UnlearnLensError(
                f"{where}: tensor {name + '.valid'!r} has shape {list(valid.shape)}, not that of {key!r} "
                f"{list(tokens.shape)}"
            )
        if valid.dtype not in (torch.bool, torch.uint8) or bool((valid.to(torch.uint8) > 1).any()):
            raise UnlearnLensError(f"{where}: tensor {name + '.valid'!r} ({valid.dtype}) is not 0 or 1 throughout")
        if tokens.numel() and d_vocab is not None:
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= d_vocab:
                raise UnlearnLensError(
                    f"{where}: tensor {key!r} holds token id {low if low < 0 else high}, outside the vocabulary "
                    f"of the model [0, {d_vocab:,})"
                )
        widths.add(tokens.shape[1])
    if len(widths) > 1:
        raise UnlearnLensError(f"{where}: its token sets have rows of different lengths {sorted(widths)}")


def _d_vocab(model: Any) -> int | None:
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    return d_vocab if isinstance(d_vocab, int) and d_vocab > 0 else None


def load_checkpoint(path: Path, model: Any = None) -> tuple[PruneRun, list[TokenSet], dict[str, Any]]:
    """A checkpoint's run, token sets (in the order of :data:`TOKEN_SETS`) and state, checked before any work.

    With ``model``, the run must be for a model of its unit shapes and the token ids
    within its vocabulary.
    """
    state = read_json(path / "checkpoint.json")
    if not isinstance(state, dict) or not isinstance(state.get("finished"), bool):
        raise UnlearnLensError(f"checkpoint {str(path)!r} is incomplete (checkpoint.json has no 'finished' flag)")
    run = PruneRun.load(path / "run")
    if model is not None and run.dims != model_dims(model):
        raise UnlearnLensError(
            f"checkpoint {str(path)!r} is for a model with {run.dims.to_dict()}, not "
            f"{model_name(model)!r} ({model_dims(model).to_dict()})"
        )
    if model is not None:
        run.check_model(model)  # same shapes, and the same weights by fingerprint
    tensors, _ = read_safetensors(path / "tokens.safetensors", "unlearn_lens.Checkpoint")
    _check_token_tensors(path / "tokens.safetensors", tensors, None if model is None else _d_vocab(model))
    sets = [TokenSet(tensors[f"{name}.tokens"].long(), tensors[f"{name}.valid"].bool()) for name in TOKEN_SETS]
    return run, sets, state


def checkpoint_tokens(path: str | os.PathLike, model: Any = None) -> tuple[TokenSet, TokenSet]:
    """The forget and retain tokens a checkpoint holds (statistics tokens, then evaluation tokens).

    Given to :func:`random_baseline` or to the report, they are split exactly as the
    checkpointed run split them.

    Args:
        path: the checkpoint directory.
        model: the model to resume with; if given, the checkpoint must fit it (unit
            shapes, token ids within its vocabulary).

    Raises:
        UnlearnLensError: the checkpoint is incomplete or corrupt (naming the file and
            tensor), or does not fit ``model``.
    """
    _, (forget_collect, forget_eval, retain_collect, retain_eval), _ = load_checkpoint(Path(path), model)
    return TokenSet.concat([forget_collect, forget_eval]), TokenSet.concat([retain_collect, retain_eval])


def read_checkpoint_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The settings stored with a checkpoint by ``selective_prune(..., checkpoint_settings=...)``, or None.

    The command line keeps there what it runs after the loop (the random baselines), so
    that a resumed run does what the interrupted one would have done.
    """
    state = read_json(Path(path) / "checkpoint.json")
    settings = state.get("settings") if isinstance(state, dict) else None
    return settings if isinstance(settings, dict) else None


def _lock_file(path: str | os.PathLike) -> Path:
    full = Path(os.path.abspath(path))
    return full.with_name(full.name + ".lock")


_HELD: collections.Counter[tuple[Path, int]] = collections.Counter()  # (lock file, thread) -> depth of its holds


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for a lock alone, deepest first, up to one that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _acquire(lock: Path, path: str | os.PathLike) -> int | None:
    """Take the lock file ``lock`` of checkpoint ``path``; return its open descriptor (None: cannot lock here)."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UnlearnLensError(f"cannot create the lock of checkpoint {str(path)!r} ({exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "(pid unknown)"
            os.close(fd)
            raise UnlearnLensError(
                f"checkpoint {str(path)!r} is in use by process {holder}, another run writing it (its lock is "
                f"{str(lock)!r}): wait for that run to end, or write to another output directory"
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            logger.warning("cannot lock %s (%s): a second run writing this checkpoint would not be refused", lock, exc)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its last holder removed it as it was opened: lock the file now there
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def checkpoint_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the checkpoint directory ``path`` for the block: one run at a time writes it.

    The lock is an ``fcntl.flock`` on the file ``<path>.lock`` beside the directory,
    which holds the holder's process id (for the message that refuses a second run)
    and is removed on release. The kernel drops the lock of a process that ends, so a
    crashed run leaves no stale lock, at most a file that the next run takes over. The
    thread that holds it may take it again (the command line holds it around
    :func:`selective_prune`); under a process group only rank 0, which alone writes,
    takes it; without ``fcntl`` (Windows) nothing is locked.

    Raises:
        UnlearnLensError: another process, or another thread of this one, holds it.
    """
    lock = _lock_file(path)
    key = (lock, threading.get_ident())
    nested = _HELD[key] > 0 or fcntl is None or not is_main()
    created = [] if nested else _missing_dirs(lock.parent)
    try:
        fd = None if nested else _acquire(lock, path)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] += 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)
        _remove_empty(created)
