"""What a pruned unit is replaced by: zero, mean, peak and resample ablation.

The paper ablates a pruned unit to 0 or to its mean on the retain set. Two further
ablations keep the unit closer to what the rest of the model expects:

* **peak**: the unit is held at the *mode* of its retain distribution, the value it
  takes most often (Pochinkov et al. 2024, "Investigating Neuron Ablation in Attention
  Heads: The Case for Peak Activation Centering", arXiv 2408.17322). For a ReLU unit
  that is silent on most tokens the mode is 0 while the mean is not.
* **resample**: at every token the unit takes the value it had at a random retain
  token (all pruned units of one hook point take the values of the same retain token).

The mode comes from a streamed per-unit histogram, :class:`ActivationHistogram`: each
unit gets ``bins`` equal bins over ``mean ± 4 std`` of its retain statistics (values
outside are counted apart), and exact zeros are counted apart too, as a point mass of
their own (a ReLU unit is exactly 0 on most tokens). The mode is 0 if the zeros
outnumber every bin (ties included), else the mean of the values in the fullest bin
(the lowest such bin on ties): exact for the zeros of a ReLU, and within a bin width
otherwise. Memory: ``2 * units * bins`` float64 numbers (counts and sums; 64 bins:
1 KiB per unit), and histograms with the same ranges merge by addition, exactly, like
the statistics.

Resample needs actual retain activations: :class:`ActivationSample` keeps every unit's
activation at ``n`` retain tokens drawn uniformly at random (``n * units`` numbers,
float32). It exists only as hooks: no weight edit reproduces a per-token random value.

:func:`collect_ablation_values` fills either or both in one pass over the retain
tokens; :func:`unlearn_lens.pruned` takes them as ``peaks=`` and ``sample=``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from unlearn_lens._io import read_safetensors, write_safetensors
from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.distributed import gather, shard, sum_across, world
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import UNIT_KINDS, ModelDims, model_dims, model_fingerprint, model_label, model_name, per_kind
from unlearn_lens.stats import ActivationStats, RunningStats, stream_units

__all__ = [
    "ABLATIONS",
    "ABLATION_FILES",
    "Ablation",
    "ActivationHistogram",
    "ActivationSample",
    "HistogramBlock",
    "collect_ablation_values",
]

ABLATIONS = ("zero", "mean", "peak", "resample")
"""Ablations: 0, the retain mean, the retain mode (peak), a random retain token's value (resample)."""

_HIST_FIELDS = ("lo", "width", "counts", "sums", "zeros", "outside")

RANGE_STDS = 4.0
"""Each unit's histogram spans its retain mean ± this many standard deviations."""


class HistogramBlock:
    """Histograms of a block of units with shape ``unit_shape``, each over its own range.

    Attributes:
        lo, width: ``[*units]`` float64: bin ``b`` of a unit covers ``[lo + b * width, lo + (b + 1) * width)``
            (the last bin includes its upper end).
        counts, sums: ``[*units, bins]`` float64: non-zero values in each bin, and their sum.
        zeros: ``[*units]`` float64: values exactly 0.
        outside: ``[*units]`` float64: non-zero values outside the range.
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bins: int = 64):
        if bins < 1:
            raise UnlearnLensError(f"a histogram needs at least one bin, got bins={bins}")
        if lo.shape != hi.shape:
            raise UnlearnLensError(f"histogram range bounds differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        self.bins = int(bins)
        self.lo = lo.to(torch.float64).clone()
        span = (hi.to(torch.float64) - self.lo).clamp(min=0)
        # a unit with no spread gets a unit-width bin 0 starting at its only value
        self.width = torch.where(span > 0, span / bins, torch.ones_like(span))
        kw = {"dtype": torch.float64, "device": self.lo.device}
        self.counts = torch.zeros(*self.lo.shape, bins, **kw)
        self.sums = torch.zeros(*self.lo.shape, bins, **kw)
        self.zeros = torch.zeros(self.lo.shape, **kw)
        self.outside = torch.zeros(self.lo.shape, **kw)

    @property
    def unit_shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    @torch.no_grad()
    def update(self, x: Float[torch.Tensor, "tokens ..."], index: Any = Ellipsis) -> None:
        """Add the activations ``x`` ``[tokens, *units]`` to the units at ``index`` (e.g. one layer)."""
        n = x.shape[0]
        if n == 0:
            return
        lo = self.lo[index].reshape(-1)
        width = self.width[index].reshape(-1)
        values = x.reshape(n, -1).to(device=lo.device, dtype=torch.float64)
        units = values.shape[1]
        pos = (values - lo) / width
        zero = values == 0
        inside = (pos >= 0) & (pos <= self.bins) & ~zero
        bin_of = pos.floor().clamp_(0, self.bins - 1).long()
        flat = (bin_of + torch.arange(units, device=lo.device) * self.bins)[inside]
        size = units * self.bins
        self.counts[index] += torch.bincount(flat, minlength=size).to(torch.float64).view(self.counts[index].shape)
        self.sums[index] += torch.bincount(flat, weights=values[inside], minlength=size).view(self.sums[index].shape)
        self.zeros[index] += zero.sum(0).to(torch.float64).view(self.zeros[index].shape)
        self.outside[index] += (~inside & ~zero).sum(0).to(torch.float64).view(self.outside[index].shape)

    @property
    def mode(self) -> torch.Tensor:
        """``[*units]`` float64: 0 where the zeros outnumber every bin, else the mean of the fullest bin's values.

        A unit that saw no value in its range and no zero gets ``lo``.
        """
        top = self.counts.argmax(-1, keepdim=True)
        count = self.counts.gather(-1, top).squeeze(-1)
        total = self.sums.gather(-1, top).squeeze(-1)
        binned = torch.where(count > 0, total / count.clamp(min=1), self.lo)
        return torch.where((self.zeros >= count) & (self.zeros > 0), torch.zeros_like(binned), binned)

    def merge(self, other: HistogramBlock) -> HistogramBlock:
        """Histograms of both samples together (the ranges must be the same)."""
        if (
            other.unit_shape != self.unit_shape
            or other.bins != self.bins
            or not torch.equal(other.lo, self.lo)
            or not torch.equal(other.width, self.width)
        ):
            raise UnlearnLensError("histograms merge only over the same units, bins and ranges")
        out = self._copy()
        out.counts += other.counts
        out.sums += other.sums
        out.zeros += other.zeros
        out.outside += other.outside
        return out

    def _copy(self) -> HistogramBlock:
        out = HistogramBlock.__new__(HistogramBlock)
        out.bins = self.bins
        for name in _HIST_FIELDS:
            setattr(out, name, getattr(self, name).clone())
        return out

    def _state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _HIST_FIELDS}

    @classmethod
    def _from_state(cls, state: dict[str, torch.Tensor]) -> HistogramBlock:
        out = cls.__new__(cls)
        out.bins = int(state["counts"].shape[-1])
        for name in _HIST_FIELDS:
            setattr(out, name, state[name].to(torch.float64))
        return out

    @classmethod
    def around(cls, stats: RunningStats, bins: int, stds: float = RANGE_STDS) -> HistogramBlock:
        """Empty histograms over ``mean ± stds * std`` of each unit of ``stats``."""
        mean, std = stats.mean, stats.std
        return cls(mean - stds * std, mean + stds * std, bins)


@dataclass
class ActivationHistogram:
    """Per-unit histograms of every MLP and attention neuron on one dataset; its ``mode`` gives peak ablation.

    Attributes:
        mlp: histograms of shape ``[layer d_mlp]`` (+ bins).
        attn: histograms of shape ``[layer head d_head]`` (+ bins).
        meta: free-form record (model, tokens, bins).
    """

    mlp: HistogramBlock
    attn: HistogramBlock
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> ModelDims:
        n_layers, d_mlp = self.mlp.unit_shape
        _, n_heads, d_head = self.attn.unit_shape
        return ModelDims(n_layers, d_mlp, n_heads, d_head)

    def values(self, kind: str) -> torch.Tensor:
        """The peak (mode) of every unit of one kind: ``[layer d_mlp]`` or ``[layer head d_head]``."""
        return getattr(self, kind).mode

    def merge(self, other: ActivationHistogram) -> ActivationHistogram:
        return ActivationHistogram(self.mlp.merge(other.mlp), self.attn.merge(other.attn), dict(self.meta))

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (atomically)."""
        tensors = {
            f"{kind}.{name}": value for kind in UNIT_KINDS for name, value in getattr(self, kind)._state().items()
        }
        write_safetensors(
            path, tensors, {"format": "unlearn_lens.ActivationHistogram", "meta": json.dumps(self.meta, default=str)}
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> ActivationHistogram:
        tensors, metadata = read_safetensors(path, "unlearn_lens.ActivationHistogram", device)
        try:
            blocks = [
                HistogramBlock._from_state({n: tensors[f"{kind}.{n}"] for n in _HIST_FIELDS}) for kind in UNIT_KINDS
            ]
        except KeyError as exc:
            raise UnlearnLensError(f"histogram file {str(path)!r} lacks tensor {exc}") from exc
        return cls(*blocks, json.loads(metadata.get("meta", "{}")))


@dataclass
class ActivationSample:
    """Every unit's activation at ``n`` retain tokens drawn at random; the pool of resample ablation.

    Attributes:
        mlp: ``[n layer d_mlp]`` float32.
        attn: ``[n layer head d_head]`` float32.
        meta: free-form record (model, tokens, seed).
    """

    mlp: torch.Tensor
    attn: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.mlp.shape[0])

    @property
    def dims(self) -> ModelDims:
        _, n_layers, d_mlp = self.mlp.shape
        _, _, n_heads, d_head = self.attn.shape
        return ModelDims(n_layers, d_mlp, n_heads, d_head)

    def save(self, path: str | os.PathLike) -> None:
        write_safetensors(
            path,
            {"mlp": self.mlp, "attn": self.attn},
            {"format": "unlearn_lens.ActivationSample", "meta": json.dumps(self.meta, default=str)},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> ActivationSample:
        tensors, metadata = read_safetensors(path, "unlearn_lens.ActivationSample", device)
        if set(tensors) != {"mlp", "attn"} or tensors["mlp"].shape[0] != tensors["attn"].shape[0]:
            raise UnlearnLensError(f"sample file {str(path)!r} does not hold an activation sample")
        return cls(tensors["mlp"], tensors["attn"], json.loads(metadata.get("meta", "{}")))


def _draw(n_tokens: int, n: int, seed: int) -> torch.Tensor:
    """``min(n, n_tokens)`` distinct positions among ``n_tokens``, drawn uniformly, in increasing order."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_tokens, generator=gen)[: min(n, n_tokens)].sort().values


def _check_request(model: Any, dims: ModelDims, stats: ActivationStats, bins: int | None, sample_tokens: int) -> None:
    """Refuse statistics of another model, or a call that asks for nothing (or for a negative sample)."""
    if stats.dims != dims:
        raise UnlearnLensError(
            f"statistics for a model with {stats.dims.to_dict()} do not fit {model_name(model)!r} ({dims.to_dict()})"
        )
    if bins is None and sample_tokens <= 0:
        raise UnlearnLensError("collect_ablation_values needs bins (peak) or sample_tokens > 0 (resample)")
    if sample_tokens < 0:
        raise UnlearnLensError(f"sample_tokens must be >= 0, got {sample_tokens}")


def _sample_slots(
    tokens: TokenSet, dims: ModelDims, sample_tokens: int, seed: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's share of the resample pool: the counted positions it keeps, and zeroed buffers for them.

    Returns:
        ``(take, pool)``: increasing positions among this rank's counted tokens, and
        ``{"mlp": [n layer d_mlp], "attn": [n layer head d_head]}`` float32 (empty without a sample).
    """
    if sample_tokens <= 0:
        return torch.empty(0, dtype=torch.long), {}
    rank, size = world()
    share = -(-sample_tokens // size)
    n_mine = shard(tokens).n_tokens
    if n_mine < share:
        raise UnlearnLensError(
            f"resample ablation asks for {sample_tokens:,} retain tokens but only "
            f"{n_mine * size:,} are available; lower the sample size"
        )
    take = _draw(n_mine, share, seed + rank)
    pool = {
        kind: torch.zeros(len(take), *shape, dtype=torch.float32)
        for kind, shape in (("mlp", dims.mlp_shape), ("attn", dims.attn_shape))
    }
    return take, pool


@torch.no_grad()
def collect_ablation_values(
    model: Any,
    texts: Sequence[str] | TokenSet,
    stats: ActivationStats,
    *,
    bins: int | None = 64,
    sample_tokens: int = 0,
    seed: int = 0,
    max_tokens: int | None = 100_000,
    batch_size: int = 8,
    seq_len: int | None = None,
    progress: bool = True,
) -> tuple[ActivationHistogram | None, ActivationSample | None]:
    """The retain histograms (peak ablation) and activation sample (resample ablation), in one pass.

    Args:
        model: the (unpruned) model.
        texts: the retain dataset, as texts or a :class:`TokenSet`.
        stats: statistics of the model on the same tokens; they set each unit's range.
        bins: histogram bins per unit (None: no histogram).
        sample_tokens: tokens to keep for resample ablation (0: no sample).
        seed: seed of the sample's draw.
        max_tokens, batch_size, seq_len, progress: as :func:`unlearn_lens.collect_stats`.

    Returns:
        ``(histogram, sample)``; each None when not asked for. Under a process group
        every rank returns the same: histograms are summed, and each rank
        contributes ``ceil(sample_tokens / world size)`` tokens of its own rows.

    Raises:
        UnlearnLensError: ``stats`` are for another model, or nothing is asked for.
    """
    dims = model_dims(model)
    _check_request(model, dims, stats, bins, sample_tokens)
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
    size = world()[1]
    hist = None
    if bins is not None:
        hist = ActivationHistogram(HistogramBlock.around(stats.mlp, bins), HistogramBlock.around(stats.attn, bins))
    take, pool = _sample_slots(tokens, dims, sample_tokens, seed)
    seen = {"mlp": [0] * dims.n_layers, "attn": [0] * dims.n_layers}

    def update(kind: str, layer: int, rows: torch.Tensor, workspace: Any) -> None:
        if hist is not None:
            getattr(hist, kind).update(rows, layer)
        if len(take):
            start = seen[kind][layer]
            lo, hi = torch.searchsorted(take, torch.tensor([start, start + rows.shape[0]])).tolist()
            if hi > lo:
                picked = (take[lo:hi] - start).to(rows.device)
                pool[kind][lo:hi, layer] = rows.index_select(0, picked).float().cpu()
            seen[kind][layer] = start + rows.shape[0]

    stream_units(
        model,
        tokens,
        update,
        batch_size=batch_size,
        progress=progress,
        desc="collect ablation values",
        owner="collect_ablation_values",
    )
    meta = {"model": model_label(model), "fingerprint": model_fingerprint(model), "n_tokens": tokens.n_tokens}
    if hist is not None:
        if size > 1:
            for block in (hist.mlp, hist.attn):
                for name in ("counts", "sums", "zeros", "outside"):
                    setattr(block, name, sum_across(getattr(block, name)))
        hist.meta = {**meta, "bins": bins, "range_stds": RANGE_STDS}
    sample = None
    if len(take):
        if size > 1:
            pool = {kind: torch.cat(gather(value.to(stats.mlp.count.device))).cpu() for kind, value in pool.items()}
        sample = ActivationSample(pool["mlp"], pool["attn"], {**meta, "seed": seed, "n": int(pool["mlp"].shape[0])})
    return hist, sample


ABLATION_FILES = {"means": "means.safetensors", "peaks": "peaks.safetensors", "sample": "resample.safetensors"}
"""The file of each retain value of an :class:`Ablation` in a run directory."""

_VALUES = {  # method -> (field of Ablation, its type, what to pass)
    "mean": ("means", ActivationStats, "retain ActivationStats"),
    "peak": ("peaks", ActivationHistogram, "a retain ActivationHistogram from collect_ablation_values"),
    "resample": ("sample", ActivationSample, "a retain ActivationSample from collect_ablation_values"),
}
_LOADERS = {"means": ActivationStats.load, "peaks": ActivationHistogram.load, "sample": ActivationSample.load}


@dataclass(frozen=True, eq=False)
class Ablation:
    """What pruned units are replaced by: a method per unit kind, and the retain values those methods need.

    One value carries the whole ablation of a run: :func:`unlearn_lens.pruned`,
    :func:`unlearn_lens.prune_weights_`, relearning and membership take it as one argument,
    and :class:`~unlearn_lens.results.PruneRun` owns, saves and loads it
    (``run.ablation``), so a saved run is applied again with
    ``ul.pruned(model, run.masks, run.ablation)``.

    Attributes:
        mlp, attn: the method of each unit kind: ``"zero"``, ``"mean"``, ``"peak"`` or ``"resample"``.
        means: retain statistics (``"mean"``: each unit reads its retain mean).
        peaks: retain histograms (``"peak"``: each unit reads the mode of its retain distribution).
        sample: retain activations at random tokens (``"resample"``: each unit reads its value at one
            of them, drawn per position).
    """

    mlp: str = "zero"
    attn: str = "zero"
    means: ActivationStats | None = field(default=None, repr=False)
    peaks: ActivationHistogram | None = field(default=None, repr=False)
    sample: ActivationSample | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for kind in UNIT_KINDS:
            if getattr(self, kind) not in ABLATIONS:
                raise UnlearnLensError(
                    f"unknown {kind}_ablation {getattr(self, kind)!r}; choose one of {', '.join(ABLATIONS)}"
                )
        for name, cls, what in _VALUES.values():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise UnlearnLensError(f"{name} must be {what}, got a {type(value).__name__}")

    @classmethod
    def of(
        cls,
        ablation: str | Ablation = "zero",
        *,
        mlp_ablation: str | None = None,
        attn_ablation: str | None = None,
        means: ActivationStats | None = None,
        peaks: ActivationHistogram | None = None,
        sample: ActivationSample | None = None,
    ) -> Ablation:
        """The ablation that loose arguments describe (the short form of :func:`unlearn_lens.pruned`).

        Args:
            ablation: the method of both unit kinds, or an :class:`Ablation` (returned as it is;
                the other arguments must then be left out).
            mlp_ablation, attn_ablation: per-kind methods (None: ``ablation``).
            means, peaks, sample: the retain values the methods need.

        Raises:
            UnlearnLensError: an unknown method, or an :class:`Ablation` together with loose arguments.
        """
        loose = {"mlp_ablation": mlp_ablation, "attn_ablation": attn_ablation, "means": means}
        loose.update(peaks=peaks, sample=sample)
        if isinstance(ablation, Ablation):
            given = sorted(name for name, value in loose.items() if value is not None)
            if given:
                raise UnlearnLensError(f"an Ablation carries its own methods and values; do not also pass {given}")
            return ablation
        if not isinstance(ablation, str):
            raise UnlearnLensError(f"ablation must be a method name or an Ablation, got {type(ablation).__name__}")
        methods = per_kind(ablation, mlp_ablation, attn_ablation, what="ablation", choices=ABLATIONS)
        return cls(methods["mlp"], methods["attn"], means=means, peaks=peaks, sample=sample)

    @property
    def methods(self) -> dict[str, str]:
        """The method of each unit kind: ``{"mlp": ..., "attn": ...}``."""
        return {"mlp": self.mlp, "attn": self.attn}

    def needs(self, kinds: tuple[str, ...] = UNIT_KINDS) -> list[str]:
        """The retain values (``"means"``, ``"peaks"``, ``"sample"``) that the methods of ``kinds`` read."""
        wanted = {self.methods[kind] for kind in kinds}
        return [name for method, (name, _, _) in _VALUES.items() if method in wanted]

    def with_values(
        self,
        means: ActivationStats | None = None,
        peaks: ActivationHistogram | None = None,
        sample: ActivationSample | None = None,
    ) -> Ablation:
        """The same methods with these retain values (those the methods do not read are dropped)."""
        values = {"means": means, "peaks": peaks, "sample": sample}
        needed = self.needs()
        return Ablation(self.mlp, self.attn, **{k: v if k in needed else None for k, v in values.items()})

    def check(self, dims: ModelDims, kinds: tuple[str, ...] = UNIT_KINDS, model: str = "") -> None:
        """Check that the values the methods of ``kinds`` read are here and fit a model of ``dims``.

        Raises:
            UnlearnLensError: a value is missing or was made for another model.
        """
        for method, (name, _, what) in _VALUES.items():
            if not any(self.methods[kind] == method for kind in kinds):
                continue
            value = getattr(self, name)
            if value is None:
                raise UnlearnLensError(f"ablation {method!r} needs {name}= ({what}), got none")
            if value.dims != dims:
                raise UnlearnLensError(
                    f"{name} come from a model with {value.dims.to_dict()}, not {model or 'this model'} "
                    f"({dims.to_dict()})"
                )

    def constant(self, kind: str) -> torch.Tensor | None:
        """Every unit's replacement value under a constant method (None for zero and resample).

        Returns:
            ``[layer d_mlp]`` or ``[layer head d_head]``: the retain means (mean) or modes (peak).
        """
        method = self.methods[kind]
        if method == "mean" and self.means is not None:
            return getattr(self.means, kind).mean
        if method == "peak" and self.peaks is not None:
            return self.peaks.values(kind)
        return None

    def to_dict(self) -> dict[str, str]:
        """The methods (the retain values are tensors, saved apart by :meth:`save`)."""
        return dict(self.methods)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the retain values it holds into ``directory`` (see :data:`ABLATION_FILES`)."""
        for name, file in ABLATION_FILES.items():
            value = getattr(self, name)
            if value is not None:
                value.save(os.path.join(directory, file))

    @classmethod
    def load(cls, directory: str | os.PathLike, methods: dict[str, str]) -> Ablation:
        """The ablation with ``methods`` (``{"mlp": ..., "attn": ...}``) and the retain values in ``directory``."""
        values = {}
        for name, file in ABLATION_FILES.items():
            path = os.path.join(directory, file)
            values[name] = _LOADERS[name](path) if os.path.isfile(path) else None
        return cls(methods["mlp"], methods["attn"], **values)
