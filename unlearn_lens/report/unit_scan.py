"""One streamed pass per dataset that describes a few chosen units across their whole range.

For each chosen unit (an MLP neuron ``blocks.{l}.mlp.hook_post[..., i]`` or an attention
neuron ``blocks.{l}.attn.hook_z[..., h, d]``) and each dataset, :func:`scan_units` keeps,
over the counted tokens (BOS and padding excluded), never per token:

* statistics (:class:`~unlearn_lens.stats.RunningStats`) and the number of exact zeros;
* the ``k`` highest and the ``k`` lowest activations, with the activations a few tokens
  either side (the running top-k of the neuron explorer, run on ``x`` and on ``-x``);
* the unit's activations around ``sample`` counted tokens drawn uniformly at random before
  the pass (the same tokens for every unit), from which quantile bands are read;
* a histogram, on edges that every dataset shares.

The histograms are :class:`~unlearn_lens.ablations.HistogramBlock` (the histograms of peak
ablation) on a lattice: bin ``b`` of a unit covers ``[(s + b) w, (s + b + 1) w)`` with ``w``
a power of two. When a batch holds a value outside a unit's bins, its width is doubled
(and its start moved) until every value seen fits; on a lattice, doubling merges pairs of
bins exactly, so no value is ever counted in the wrong bin and no pass is needed to find
the range first. Every dataset's histogram of a unit is widened together, so they stay on
the same edges. A unit ends with between ``bins / 2`` and ``bins`` bins between its lowest
and highest value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from unlearn_lens.ablations import HistogramBlock
from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_device
from unlearn_lens.report.display import Unit
from unlearn_lens.report.explorer import RunningTopK, window_index
from unlearn_lens.stats import RunningStats, stream_units

__all__ = ["UnitScan", "histogram_edges", "scan_units"]

_FIRST_WIDTH = 2.0**-24  # the bin width a unit starts with; doubled as its values need


@dataclass
class UnitScan:
    """What :func:`scan_units` kept of the chosen units (in their order) on one dataset.

    Attributes:
        tokens: the token rows scanned.
        stats: ``[unit]`` statistics over the counted tokens.
        zeros: ``[unit]`` counted tokens where the unit is exactly 0.
        top_values, bottom_values: ``[unit k]`` the highest activations (highest first) and the
            lowest (lowest first); ``inf`` with the wrong sign where there were fewer tokens.
        top_positions, bottom_positions: ``[unit k]`` their flat positions ``row * row_length + pos`` (-1: none).
        top_windows, bottom_windows: ``[unit k window]`` the activations at ``pos - before .. pos + after``
            of the same row (NaN where there is no counted token).
        sample_positions: ``[sample]`` flat positions of the randomly drawn counted tokens.
        sample_windows: ``[sample unit window]`` the activations around them.
        hist: ``[unit]`` histograms (bins of non-zero values; zeros and non-finite values apart),
            on the lattice every dataset of the scan shares.
        context: ``(before, after)``.
    """

    tokens: TokenSet
    stats: RunningStats
    zeros: Float[torch.Tensor, " unit"]
    top_values: Float[torch.Tensor, "unit k"]
    top_positions: Int[torch.Tensor, "unit k"]
    top_windows: Float[torch.Tensor, "unit k window"]
    bottom_values: Float[torch.Tensor, "unit k"]
    bottom_positions: Int[torch.Tensor, "unit k"]
    bottom_windows: Float[torch.Tensor, "unit k window"]
    sample_positions: Int[torch.Tensor, " sample"]
    sample_windows: Float[torch.Tensor, "sample unit window"]
    hist: HistogramBlock
    context: tuple[int, int]


class _Lattice:
    """The shared bins of every dataset's histograms of some units: width ``w`` (a power of two) and start ``s``."""

    def __init__(self, n_units: int, bins: int, device: torch.device):
        self.bins = bins
        self.n_units = n_units
        self.device = device
        self.blocks: dict[str, HistogramBlock] = {}

    def block(self, name: str) -> HistogramBlock:
        """The histograms of dataset ``name`` (made empty, on the current bins, at the first call)."""
        if name not in self.blocks:
            lo = torch.zeros(self.n_units, dtype=torch.float64, device=self.device)
            block = HistogramBlock(lo, lo + self.bins * _FIRST_WIDTH, self.bins)
            if self.blocks:
                first = next(iter(self.blocks.values()))
                block.lo, block.width = first.lo.clone(), first.width.clone()
            self.blocks[name] = block
        return self.blocks[name]

    def _occupied(self, slots: slice, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lowest and highest lattice index holding a value of any dataset (``inf``, ``-inf``: none)."""
        blocks = list(self.blocks.values())
        filled = sum(b.counts[slots] for b in blocks) > 0
        zeros = sum(b.zeros[slots] for b in blocks) > 0
        index = s[:, None] + torch.arange(self.bins, device=s.device, dtype=torch.float64)
        first = torch.where(filled, index, math.inf).amin(1)
        last = torch.where(filled, index, -math.inf).amax(1)
        return torch.where(zeros, first.clamp(max=0), first), torch.where(zeros, last.clamp(min=0), last)

    def fit(self, x: Float[torch.Tensor, "tokens unit"], slots: slice) -> None:
        """Widen (and move) the bins of the units ``slots`` until they hold every finite value of ``x`` and before."""
        low, high = x.amin(0).double(), x.amax(0).double()
        if not bool(low.isfinite().all() and high.isfinite().all()):  # rare: leave the non-finite values out
            finite = x.isfinite()
            low = torch.where(finite, x, math.inf).amin(0).double()
            high = torch.where(finite, x, -math.inf).amax(0).double()
        head = next(iter(self.blocks.values()))
        w = head.width[slots]
        s = (head.lo[slots] / w).round()
        first, last = self._occupied(slots, s)
        low, high = (low / w).floor(), (high / w).floor()
        first, last = torch.minimum(first, low), torch.maximum(last, high)
        empty = first.isinf()  # no value yet: the bins stay where they are
        first, last = torch.where(empty, s, first), torch.where(empty, s, last)
        scale = torch.ones_like(w)
        while True:
            wide = ((last / scale).floor() - (first / scale).floor()) >= self.bins
            if not bool(wide.any()):
                break
            scale = torch.where(wide, scale * 2, scale)
        start = (first / scale).floor()
        for block in self.blocks.values():
            _rebin(block, slots, s, start, scale)


def _rebin(block: HistogramBlock, slots: slice, s: torch.Tensor, start: torch.Tensor, scale: torch.Tensor) -> None:
    """Move units ``slots`` of ``block`` from bins at lattice index ``s`` to ``scale`` times wider ones at ``start``.

    Every filled bin lands inside the new bins (the caller chose them so); on the lattice a
    wider bin is the union of whole narrower ones, so the counts move exactly.
    """
    if not bool(((start * scale != s) | (scale != 1)).any()):
        return
    old = s[:, None] + torch.arange(block.bins, device=s.device, dtype=torch.float64)[None, :]
    new_bin = ((old / scale[:, None]).floor() - start[:, None]).long()
    keep = (new_bin >= 0) & (new_bin < block.bins)
    new_bin = new_bin.clamp(0, block.bins - 1)
    for name in ("counts", "sums"):
        values = getattr(block, name)[slots]
        getattr(block, name)[slots] = torch.zeros_like(values).scatter_add_(1, new_bin, values * keep)
    block.width[slots] = block.width[slots] * scale
    block.lo[slots] = start * block.width[slots]


def histogram_edges(blocks: Sequence[HistogramBlock], unit: int) -> tuple[list[float], list[list[int]]]:
    """The edges and counts (zeros included, in the bin that holds 0) of one unit over its occupied bins.

    Args:
        blocks: histograms of several datasets on the same bins (a :class:`UnitScan`'s ``hist``).
        unit: the unit's index in the blocks.

    Returns:
        ``(edges, counts)``: ``len(edges) == n_bins + 1`` increasing edges, and one list of
        ``n_bins`` counts per block. Non-finite values are not counted.
    """
    lo, width, bins = float(blocks[0].lo[unit]), float(blocks[0].width[unit]), blocks[0].bins
    counts = [b.counts[unit].clone() for b in blocks]
    zero_bin = math.floor(-lo / width) if width > 0 else 0
    for c, b in zip(counts, blocks):
        if float(b.zeros[unit]) > 0:
            c[min(max(zero_bin, 0), bins - 1)] += b.zeros[unit]
    occupied = (torch.stack(counts).sum(0) > 0).nonzero().squeeze(1)
    if occupied.numel() == 0:
        return [lo, lo + width], [[0] for _ in blocks]
    first, last = int(occupied[0]), int(occupied[-1])
    edges = [lo + j * width for j in range(first, last + 2)]
    return edges, [[int(v) for v in c[first : last + 1].tolist()] for c in counts]


class _Group:
    """The running records of the chosen units of one hook (one kind and layer) on one dataset."""

    def __init__(self, columns: list[int], k: int, width: int, sample: torch.Tensor, device: torch.device):
        n = len(columns)
        self.columns = torch.tensor(columns, dtype=torch.long, device=device)
        self.stats = RunningStats((n,), device=device)
        self.zeros = torch.zeros(n, dtype=torch.float64, device=device)
        self.top = RunningTopK(n, k, width, device)
        self.bottom = RunningTopK(n, k, width, device)
        self.sample = sample.to(device)  # increasing counted indices
        self.sample_windows = torch.full((len(sample), n, width), math.nan, device=device)

    def update(
        self, rows: torch.Tensor, window_of: torch.Tensor, lattice: _Lattice, slots: slice, block: HistogramBlock
    ) -> None:
        x = rows.reshape(rows.shape[0], -1).index_select(1, self.columns).float()
        start = self.top.offset
        self.stats.update(x)
        self.zeros += (x == 0).sum(0).double()
        lattice.fit(x, slots)
        block.update(x, slots)
        lo, hi = torch.searchsorted(self.sample, torch.tensor([start, start + x.shape[0]], device=x.device)).tolist()
        if hi > lo:
            counted = window_of[self.sample[lo:hi]]  # [m window]
            local, inside = counted - start, counted >= 0
            picked = x[local.clamp(0, x.shape[0] - 1)]  # [m window unit]
            self.sample_windows[lo:hi] = picked.masked_fill(~inside[..., None], math.nan).transpose(1, 2)
        self.top.update(x, window_of)
        self.bottom.update(-x, window_of)


def _draw(n_tokens: int, n: int, seed: int) -> torch.Tensor:
    """``min(n, n_tokens)`` distinct counted indices among ``n_tokens``, drawn uniformly, increasing."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_tokens, generator=generator)[: min(n, n_tokens)].sort().values


def _groups(units: Sequence[Unit]) -> dict[tuple[str, int], tuple[list[int], slice]]:
    """The units of each hook: ``{(kind, layer): (flat columns, their slots in the order of the groups)}``."""
    by_hook: dict[tuple[str, int], list[int]] = {}
    for u in units:
        by_hook.setdefault((u.kind, u.layer), []).append(u.index)
    out, start = {}, 0
    for key, columns in by_hook.items():
        out[key] = (columns, slice(start, start + len(columns)))
        start += len(columns)
    return out


@torch.no_grad()
def scan_units(
    model: Any,
    datasets: Mapping[str, Sequence[str] | TokenSet],
    units: Sequence[Unit],
    *,
    k: int = 12,
    context: tuple[int, int] = (8, 3),
    sample: int = 200,
    bins: int = 64,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, UnitScan]:
    """Statistics, top and bottom tokens, a random sample and shared-edge histograms of some units, per dataset.

    One streamed pass per dataset (:func:`~unlearn_lens.stats.stream_units`); nothing is
    kept per token. Ties at the k-th value are broken arbitrarily.

    Args:
        model: a TransformerLens model, as it runs.
        datasets: ``{name: texts or TokenSet}``, scanned in order.
        units: the units, distinct (:class:`~unlearn_lens.report.display.Unit`).
        k: highest and lowest tokens kept per unit.
        context: tokens kept before and after each kept token.
        sample: counted tokens drawn at random per dataset (the same for every unit).
        bins: histogram bins per unit while scanning (between half and all of them are used).
        max_tokens: counted tokens scanned per dataset (None: all).
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.
        seed: seed of the sample's draw.

    Returns:
        ``{name: UnitScan}``, the units in the order given.

    Raises:
        UnlearnLensError: no units, units named twice, arguments out of range, or a process group.
    """
    if not units or len(set(units)) != len(units):
        raise UnlearnLensError("scan_units needs at least one unit, each named once")
    if k < 1 or min(context) < 0 or sample < 0 or bins < 2:
        raise UnlearnLensError(
            f"k >= 1, context >= 0, sample >= 0 and bins >= 2 are needed, got {k}, {context}, {sample}, {bins}"
        )
    device = model_device(model)
    before, after = context
    width = before + after + 1
    groups = _groups(units)
    order = torch.cat([torch.tensor([i for i, u in enumerate(units) if (u.kind, u.layer) == key]) for key in groups])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    lattice = _Lattice(len(units), bins, device)
    out = {}
    for d, (name, texts) in enumerate(datasets.items()):
        tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
        drawn = _draw(tokens.n_tokens, sample, seed + d)
        records = {key: _Group(columns, k, width, drawn, device) for key, (columns, _) in groups.items()}
        _stream(model, tokens, records, groups, lattice, lattice.block(name), context, batch_size)
        out[name] = _assemble(tokens, records, inverse, drawn, context)
    for name in out:  # the blocks were widened while later datasets were scanned
        state = lattice.blocks[name]._state()
        out[name].hist = HistogramBlock._from_state(
            {key: v.index_select(0, inverse.to(v.device)).cpu() for key, v in state.items()}
        )
    return out


def _stream(
    model: Any,
    tokens: TokenSet,
    records: Mapping[tuple[str, int], _Group],
    groups: Mapping[tuple[str, int], tuple[list[int], slice]],
    lattice: _Lattice,
    block: HistogramBlock,
    context: tuple[int, int],
    batch_size: int,
) -> None:
    """One streamed pass over ``tokens``, handing each hook's chosen units to their :class:`_Group`."""
    window_of = window_index(tokens, *context).to(model_device(model))

    def update(kind: str, layer: int, rows: torch.Tensor, workspace: Any) -> None:
        if (kind, layer) in records:
            records[kind, layer].update(rows, window_of, lattice, groups[kind, layer][1], block)

    seen = stream_units(
        model, tokens, update, batch_size=batch_size, progress=False, desc="dashboards", owner="scan_units"
    )
    if seen != tokens.n_tokens:
        raise UnlearnLensError("scan_units runs in one process: call it outside a torch.distributed group")


def _assemble(
    tokens: TokenSet,
    records: Mapping[tuple[str, int], _Group],
    inverse: torch.Tensor,
    drawn: torch.Tensor,
    context: tuple[int, int],
) -> UnitScan:
    """One dataset's :class:`UnitScan` (without its histograms), the units in the order asked for.

    ``inverse[i]`` is the slot of unit ``i`` among the groups' units, in the groups' order.
    """
    parts = list(records.values())
    flat = tokens.valid.reshape(-1).nonzero().squeeze(1)

    def cat(values: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return torch.cat([v.cpu() for v in values], dim).index_select(dim, inverse)

    def positions(index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        return torch.where(index >= 0, flat[index.clamp(min=0)] if flat.numel() else -1, -1).T

    stats = RunningStats((inverse.numel(),))
    for name in ("count", "_mean", "m2", "abs_sum", "sqrt_abs_sum", "pos_count", "_max"):
        setattr(stats, name, cat([getattr(g.stats, name) for g in parts]))
    return UnitScan(
        tokens=tokens,
        stats=stats,
        zeros=cat([g.zeros for g in parts]),
        top_values=cat([g.top.values.T for g in parts]),
        top_positions=cat([positions(g.top.index) for g in parts]),
        top_windows=cat([g.top.windows.transpose(0, 1) for g in parts]),
        bottom_values=-cat([g.bottom.values.T for g in parts]),
        bottom_positions=cat([positions(g.bottom.index) for g in parts]),
        bottom_windows=-cat([g.bottom.windows.transpose(0, 1) for g in parts]),
        sample_positions=flat[drawn] if drawn.numel() else drawn,
        sample_windows=cat([g.sample_windows for g in parts], 1),
        hist=HistogramBlock(torch.zeros(0), torch.zeros(0)),  # set by scan_units once every dataset is scanned
        context=context,
    )
