"""Streaming, mergeable per-unit activation statistics.

For every unit (MLP neuron or attention neuron) and every counted token of a
dataset (real tokens other than the BOS position) we keep, in float64:

* ``count`` N, the running ``mean`` and ``m2`` = sum of squared deviations from it
  (Chan et al.'s parallel update), so ``std`` (population) stays exact even for a
  unit with mean 1e4 and std 1e-2;
* the sums of ``|x|`` and ``sqrt|x|``, the number of tokens with ``x > 0``, and the max.

From these: ``mean``, ``std``, ``abs_mean`` = mean |x|, ``rms`` = sqrt(mean x^2)
= sqrt(var + mean^2), ``sqrt_abs_mean`` = mean sqrt|x|, ``freq`` = P(x > 0), ``max``.

Activations are never stored per token: a forward hook reduces each batch to
per-unit sums (in float32 at least, whatever the model's dtype, after subtracting a
shift close to the mean, so no precision is lost) and merges them into the float64
totals.
Two runs merge exactly: ``a.merge(b)`` equals collecting on the concatenation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from unlearn_lens._io import read_safetensors, write_safetensors
from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.distributed import gather, is_main, shard, world
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.kernels import RowMask, Workspace, accumulation_dtype, batch_sums, masked_mean, masked_sums
from unlearn_lens.models import (
    ModelDims,
    attached,
    attn_hook_name,
    exclusive,
    mlp_hook_name,
    model_device,
    model_dims,
    model_fingerprint,
    model_label,
)

__all__ = ["ActivationStats", "RunningStats", "collect_stats", "stream_units"]

logger = logging.getLogger(__name__)

_FIELDS = ("count", "mean", "m2", "abs_sum", "sqrt_abs_sum", "pos_count", "max")


class RunningStats:
    """Running statistics of a block of units with shape ``unit_shape``.

    All state is float64 and lives on ``device``. Properties return float64 tensors
    of ``unit_shape``.
    """

    def __init__(self, unit_shape: Sequence[int], device: torch.device | str | None = None):
        self.unit_shape = tuple(int(s) for s in unit_shape)
        kw = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros(self.unit_shape, **kw)
        self._mean = torch.zeros(self.unit_shape, **kw)
        self.m2 = torch.zeros(self.unit_shape, **kw)
        self.abs_sum = torch.zeros(self.unit_shape, **kw)
        self.sqrt_abs_sum = torch.zeros(self.unit_shape, **kw)
        self.pos_count = torch.zeros(self.unit_shape, **kw)
        self._max = torch.full(self.unit_shape, -torch.inf, **kw)
        self._seen: set[Any] = set()  # block indices that have received a batch

    # --- derived statistics -------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation."""
        return (self.m2 / self.count.clamp(min=1)).clamp(min=0).sqrt()

    @property
    def var(self) -> torch.Tensor:
        return (self.m2 / self.count.clamp(min=1)).clamp(min=0)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / self.count.clamp(min=1)

    @property
    def rms(self) -> torch.Tensor:
        """sqrt(mean x^2) = sqrt(var + mean^2)."""
        return (self.var + self._mean**2).sqrt()

    @property
    def sqrt_abs_mean(self) -> torch.Tensor:
        return self.sqrt_abs_sum / self.count.clamp(min=1)

    @property
    def freq(self) -> torch.Tensor:
        """Fraction of tokens with x > 0."""
        return self.pos_count / self.count.clamp(min=1)

    @property
    def max(self) -> torch.Tensor:
        return self._max.clone()

    @property
    def n_tokens(self) -> int:
        return int(self.count.reshape(-1)[0]) if self.count.numel() else 0

    # --- updates -------------------------------------------------------------
    def _merge_moments(self, index: Any, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al.'s parallel update: fold (count, mean, m2) of another sample into ``index``."""
        n_a = self.count[index]
        n = n_a + n_b
        safe = n.clamp(min=1)  # both empty: everything stays 0
        delta = mean_b - self._mean[index]
        self._mean[index] += delta * (n_b / safe)
        self.m2[index] += m2_b + delta**2 * (n_a * n_b / safe)
        self.count[index] = n

    @torch.no_grad()
    def update(
        self,
        x: Float[torch.Tensor, "rows ..."],
        index: Any = Ellipsis,
        workspace: Workspace | None = None,
        mask: RowMask | None = None,
    ) -> None:
        """Add a batch of activations ``x`` ``[rows, *units]`` to the units at ``index``.

        Args:
            x: activations of one batch: every row counts, unless ``mask`` is given.
            index: the block the batch belongs to (e.g. one layer: ``3``).
            workspace: reusable scratch buffers (saves re-allocating them every batch).
            mask: which rows of ``x`` count; the sums then come from the fused
                reduction (:func:`unlearn_lens.kernels.masked_sums`), without copying rows.
        """
        n = x.shape[0] if mask is None else mask.count
        if n == 0:
            return
        flat = x.reshape(x.shape[0], -1)
        acc = accumulation_dtype(flat.dtype)
        if mask is None and flat.dtype != acc:
            flat = flat.to(acc)
        # The shift only has to be near each unit's mean: the running mean once this
        # block has data, else the batch's own mean (one extra pass, first batch only).
        key = index if isinstance(index, (int, type(Ellipsis))) else None
        if key is not None and key in self._seen:
            shift = self._mean[index].reshape(-1).to(device=flat.device, dtype=acc)
        elif mask is None:
            shift = flat.sum(0).div_(n)
        else:
            shift = masked_mean(flat, mask.valid, n, acc)
        if mask is None:
            sums = batch_sums(flat, shift, workspace)
        else:
            sums = masked_sums(flat, mask.valid, shift, compiled=mask.compiled)
        # the sums of a layer on another device (a model split by a device map) come over once per batch
        shape = self.unit_shape[1:] if index is not Ellipsis else self.unit_shape
        s1, s2, abs_sum, sqrt_sum, pos, top = sums.to(self.count.device).view(6, *shape)
        mean_d = s1 / n
        m2_b = (s2 - s1 * mean_d).clamp_(min=0)
        n_b = torch.tensor(float(n), dtype=torch.float64, device=self.count.device)
        self._merge_moments(index, n_b, shift.to(self.count.device, torch.float64).view(shape) + mean_d, m2_b)
        self.abs_sum[index] += abs_sum
        self.sqrt_abs_sum[index] += sqrt_sum
        self.pos_count[index] += pos
        torch.maximum(self._max[index], top, out=self._max[index])
        if key is not None:
            self._seen.add(key)

    def merge(self, other: RunningStats) -> RunningStats:
        """A new RunningStats equal to collecting on both datasets."""
        if other.unit_shape != self.unit_shape:
            raise UnlearnLensError(f"cannot merge statistics of shape {other.unit_shape} into {self.unit_shape}")
        out = self.copy()
        device = out.count.device
        out._merge_moments(Ellipsis, other.count.to(device), other._mean.to(device), other.m2.to(device))
        out.abs_sum = out.abs_sum + other.abs_sum.to(out.abs_sum.device)
        out.sqrt_abs_sum = out.sqrt_abs_sum + other.sqrt_abs_sum.to(out.sqrt_abs_sum.device)
        out.pos_count = out.pos_count + other.pos_count.to(out.pos_count.device)
        out._max = torch.maximum(out._max, other._max.to(out._max.device))
        return out

    def copy(self) -> RunningStats:
        out = RunningStats(self.unit_shape, device=self.count.device)
        for name, value in self._state().items():
            setattr(out, _ATTR[name], value.clone())
        return out

    def _state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, _ATTR[name]) for name in _FIELDS}

    @classmethod
    def _from_state(cls, state: dict[str, torch.Tensor]) -> RunningStats:
        out = cls(state["count"].shape, device=state["count"].device)
        for name in _FIELDS:
            setattr(out, _ATTR[name], state[name].to(torch.float64))
        return out

    def to(self, device: torch.device | str) -> RunningStats:
        return RunningStats._from_state({k: v.to(device) for k, v in self._state().items()})

    def combined_across_ranks(self) -> RunningStats:
        """The statistics of every rank of the process group, merged in rank order (the same on every rank)."""
        states = {name: gather(value) for name, value in self._state().items()}
        parts = [RunningStats._from_state({name: states[name][r] for name in _FIELDS}) for r in range(world()[1])]
        out = parts[0]
        for part in parts[1:]:
            out = out.merge(part)
        return out


_ATTR = {
    "count": "count",
    "mean": "_mean",
    "m2": "m2",
    "abs_sum": "abs_sum",
    "sqrt_abs_sum": "sqrt_abs_sum",
    "pos_count": "pos_count",
    "max": "_max",
}


@dataclass
class ActivationStats:
    """Statistics of every MLP neuron and attention neuron of a model on one dataset.

    Attributes:
        mlp: statistics of shape ``[layer d_mlp]``.
        attn: statistics of shape ``[layer head d_head]``.
        meta: free-form record (model name, dataset label, token count, ...).
    """

    mlp: RunningStats
    attn: RunningStats
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, dims: ModelDims, device: torch.device | str | None = None) -> ActivationStats:
        return cls(RunningStats(dims.mlp_shape, device), RunningStats(dims.attn_shape, device))

    @property
    def dims(self) -> ModelDims:
        n_layers, d_mlp = self.mlp.unit_shape
        _, n_heads, d_head = self.attn.unit_shape
        return ModelDims(n_layers, d_mlp, n_heads, d_head)

    @property
    def n_tokens(self) -> int:
        return self.mlp.n_tokens

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Statistics of both datasets together (exactly as if collected in one run)."""
        if other.dims != self.dims:
            raise UnlearnLensError(f"cannot merge statistics of a {other.dims} model into a {self.dims} model")
        meta = {**self.meta, "n_tokens": self.n_tokens + other.n_tokens}
        return ActivationStats(self.mlp.merge(other.mlp), self.attn.merge(other.attn), meta)

    def to(self, device: torch.device | str) -> ActivationStats:
        return ActivationStats(self.mlp.to(device), self.attn.to(device), dict(self.meta))

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (atomically: a temporary file, then a rename)."""
        tensors = {
            f"{kind}.{name}": value.contiguous().cpu()
            for kind, stats in (("mlp", self.mlp), ("attn", self.attn))
            for name, value in stats._state().items()
        }
        metadata = {
            "format": "unlearn_lens.ActivationStats",
            "dims": json.dumps(self.dims.to_dict()),
            "meta": json.dumps(self.meta, default=str),
        }
        write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> ActivationStats:
        """Read statistics written by :meth:`save`.

        Raises:
            UnlearnLensError: the file is missing, corrupt, or not a statistics file.
        """
        tensors, metadata = read_safetensors(path, "unlearn_lens.ActivationStats", device)
        try:
            mlp = RunningStats._from_state({n: tensors[f"mlp.{n}"] for n in _FIELDS})
            attn = RunningStats._from_state({n: tensors[f"attn.{n}"] for n in _FIELDS})
        except KeyError as exc:
            raise UnlearnLensError(f"statistics file {str(path)!r} lacks tensor {exc}") from exc
        return cls(mlp, attn, json.loads(metadata.get("meta", "{}")))


def _model_dtype(model: Any) -> torch.dtype:
    """The dtype the model computes in: its config's, else that of its first floating-point weight."""
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    return weight.dtype if weight is not None else torch.float32


class _StopForward(Exception):
    """Raised by the last hook of a batch: nothing after it is needed."""


Update = Callable[..., None]
"""``update(kind, layer, rows, workspace)``: consume one batch's counted activations ``[tokens, *units]``;
in masked mode ``update(kind, layer, x, workspace, mask)`` gets the whole activation and a :class:`RowMask`."""


class _Collector:
    """Forward hooks that hand each batch's counted activations of every unit to ``update``.

    By default the counted rows are gathered into a dense block first; with
    ``masked=True`` each hook passes its whole activation and a mask of the counted
    rows instead (for the fused reduction, which needs no copy).

    Once every hook has seen the batch, the last one stops the forward pass: the
    rest of the model (the last layer's output projection, the final norm and the
    unembedding, often a third of the compute) is never needed.
    """

    def __init__(self, update: Update, masked: bool = False):
        self.update = update
        self.masked = masked
        self.rows: torch.Tensor | None = None
        self.valid: dict[torch.device, torch.Tensor] = {}
        self.count = 0
        self.workspace = Workspace()
        self.n_hooks = 0
        self.fired = 0

    def set_batch(self, valid: Bool[torch.Tensor, "batch pos"]) -> int:
        """Take the next batch's counted positions; returns how many there are."""
        flat = valid.reshape(-1)
        if self.masked:
            self.valid = {flat.device: flat.clone()}  # its own storage: the same for every batch
            self.count = int(flat.sum())
        else:
            self.rows = flat.nonzero().squeeze(1)
            self.count = self.rows.numel()
        self.fired = 0
        return self.count

    def _mask(self, device: torch.device) -> RowMask:
        valid = self.valid.get(device)
        if valid is None:  # a layer on another device (a model split by a device map)
            valid = self.valid[device] = next(iter(self.valid.values())).to(device)
        return RowMask(valid, self.count)

    def hook(self, kind: str, layer: int, unit_shape: tuple[int, ...]) -> Any:
        self.n_hooks += 1

        def fn(activation: torch.Tensor, hook: Any) -> None:
            x = activation.detach().reshape(-1, *unit_shape)
            if self.masked:
                self.update(kind, layer, x, self.workspace, self._mask(x.device))
            else:
                assert self.rows is not None
                rows = self.workspace.get(f"rows-{kind}", (self.rows.numel(), *x.shape[1:]), x)
                index = self.rows if self.rows.device == x.device else self.rows.to(x.device)
                torch.index_select(x, 0, index, out=rows)
                self.update(kind, layer, rows, self.workspace)
            self.fired += 1
            if self.fired == self.n_hooks:
                raise _StopForward

        return fn

    def run(self, model: Any, tokens: torch.Tensor) -> None:
        """One forward pass over ``tokens``, stopped once every hook has fired."""
        try:
            model(tokens)
        except _StopForward:
            pass


@torch.no_grad()
def stream_units(
    model: Any,
    tokens: TokenSet,
    update: Update,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
    owner: str,
    masked: bool = False,
) -> int:
    """Run ``model`` over this process's share of ``tokens``, handing every unit's activations to ``update``.

    The loop behind :func:`collect_stats` and the other streamed per-unit records: BOS
    and padding are left out, batches go in order, and each forward pass stops after
    the last MLP and attention hooks. With ``masked=True``, ``update`` gets each hook's
    whole activation and a :class:`~unlearn_lens.kernels.RowMask` rather than the
    gathered rows.

    Returns:
        The number of counted tokens this process saw.
    """
    if batch_size <= 0:
        raise UnlearnLensError(f"batch_size must be positive, got {batch_size}")
    dims = model_dims(model)
    collector = _Collector(update, masked)
    hooks = []
    for layer in range(dims.n_layers):
        hooks.append((mlp_hook_name(layer), collector.hook("mlp", layer, dims.mlp_shape[1:])))
        hooks.append((attn_hook_name(layer), collector.hook("attn", layer, dims.attn_shape[1:])))
    part = shard(tokens)  # this process's rows (all of them without a process group)
    bar = tqdm(total=part.n_tokens, desc=desc, unit="tok", disable=not (progress and is_main()), leave=False)
    with exclusive(model, owner), attached(model, hooks):
        for batch in part.batches(batch_size, model_device(model)):
            n_batch = collector.set_batch(batch.valid)
            collector.run(model, batch.tokens)
            bar.update(n_batch)
    bar.close()
    return part.n_tokens


@torch.no_grad()
def collect_stats(
    model: Any,
    texts: Sequence[str] | TokenSet,
    *,
    max_tokens: int | None = 100_000,
    batch_size: int = 8,
    seq_len: int | None = None,
    progress: bool = True,
    desc: str = "collect",
    fused: bool | None = None,
    compat: str = "none",
) -> ActivationStats:
    """Stream activation statistics of every MLP and attention neuron over a dataset.

    Each forward pass stops once the last MLP and attention hooks have fired, so the
    logits are never computed (and hooks on later hook points do not fire).

    Statistics describe the model as it runs: to collect them on a pruned model,
    call this inside :func:`unlearn_lens.pruned` (its hooks were added first, so the
    statistics see the ablated values)::

        with ul.pruned(model, masks, ablation="mean", means=retain_stats):
            stats = ul.collect_stats(model, forget)

    Args:
        model: a TransformerLens model (see :func:`unlearn_lens.load_model`).
        texts: the dataset, as texts or an already tokenised :class:`TokenSet`.
        max_tokens: counted tokens to use (BOS and padding excluded); None for all.
        batch_size: rows per forward pass.
        seq_len: row length (default: the model's context, at most 256).
        progress: show a progress bar.
        desc: progress bar label.
        fused: reduce each hook's activation with one kernel compiled by ``torch.compile`` that
            reads it in place (:func:`unlearn_lens.kernels.masked_sums`) rather than
            gathering the counted rows and reducing them eagerly. Default (None): on
            CUDA only; on CPU the eager path is faster. Both give the same statistics
            to float32 rounding.
        compat: how texts become rows: ``"taker"`` counts every position of one text
            per row, as the reference implementation does
            (:func:`unlearn_lens.data.token_budgets`); ignored for a :class:`TokenSet`.

    Under a ``torch.distributed`` process group each rank collects on its share of
    the rows and all ranks return the merged statistics (:mod:`unlearn_lens.distributed`).

    Returns:
        :class:`ActivationStats` with ``mlp`` ``[layer d_mlp]`` and ``attn`` ``[layer head d_head]``.
    """
    dims = model_dims(model)
    device = model_device(model)
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens, compat=compat)
    stats = ActivationStats.empty(dims, device)

    if fused is None:
        fused = torch.device(device).type == "cuda"

    def update(kind: str, layer: int, x: torch.Tensor, workspace: Workspace, mask: RowMask | None = None) -> None:
        (stats.mlp if kind == "mlp" else stats.attn).update(x, layer, workspace, mask)

    n_part = stream_units(
        model, tokens, update, batch_size=batch_size, progress=progress, desc=desc, owner="collect_stats", masked=fused
    )
    meta: dict[str, Any] = {"model": model_label(model), "fingerprint": model_fingerprint(model)}
    meta["dtype"] = str(_model_dtype(model)).removeprefix("torch.")  # what the reference casts statistics to
    if world()[1] > 1:
        meta["rank_tokens"] = [int(t) for t in gather(torch.tensor([n_part], device=device))]
        stats = ActivationStats(stats.mlp.combined_across_ranks(), stats.attn.combined_across_ranks())
    stats.meta = {**meta, "n_tokens": stats.n_tokens}
    return stats
