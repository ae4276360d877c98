"""Unit dashboards: everything about one unit that a researcher inspects, as one JSON-ready record.

For each chosen MLP neuron (``blocks.{l}.mlp.hook_post[..., i]``) or attention neuron
(``blocks.{l}.attn.hook_z[..., h, d]``) of a run, :func:`unit_dashboards` gathers:

1. its activation distribution on forget and on retain: histograms on shared edges, the
   fraction of tokens where it fires (x > 0) and where it is exactly 0, and its statistics
   (one streamed pass per dataset, :func:`~unlearn_lens.report.unit_scan.scan_units`);
2. examples across its whole range: the top and bottom contexts on each dataset (at most
   one per stretch of a row, :func:`~unlearn_lens.report.display.distinct_top`), and
   examples from quantile bands of its activation over a uniform random sample of tokens;
   BOS is never an example;
3. its direct logit effect (:func:`unlearn_lens.logit_effect.logit_effects`): the tokens it
   promotes and suppresses most, and a histogram over the whole vocabulary;
4. the effect of ablating it alone with the run's ablation on its top examples: the change
   of log p(actual next token) at each position, and its mean on forget and on retain
   (:func:`~unlearn_lens.report.ablation_effect.ablation_effects`);
5. its place in the run: score, rank, the step that pruned it.

The record's layout is :data:`FIELDS` (and :data:`EXAMPLE_FIELDS` for an example), version
:data:`DASHBOARD_VERSION`; :func:`unlearn_lens.report.export.export_dashboards` writes them, one
record per line.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.logit_effect import final_norm, logit_effects
from unlearn_lens.models import UNIT_KINDS, ModelDims, model_dims
from unlearn_lens.report.ablation_effect import ablation_effects
from unlearn_lens.report.display import TokenDecoder, Unit, distinct_top
from unlearn_lens.report.unit_scan import UnitScan, histogram_edges, scan_units
from unlearn_lens.results import PruneRun

__all__ = [
    "DASHBOARD_FORMAT",
    "DASHBOARD_VERSION",
    "EXAMPLE_FIELDS",
    "FIELDS",
    "DashboardConfig",
    "choose_units",
    "unit_dashboards",
]

DASHBOARD_FORMAT = "unlearn_lens.dashboard"
DASHBOARD_VERSION = 1
"""Raised when a field is removed, renamed or changes its meaning; adding a field keeps it."""

FIELDS = {
    "format": '"unlearn_lens.dashboard"',
    "version": "the version of this layout (1)",
    "unit": '"L{l}.mlp.{i}" or "L{l}.attn.H{h}.D{d}"',
    "layer": "the layer l",
    "kind": '"mlp" (blocks.{l}.mlp.hook_post[..., i]) or "attn" (blocks.{l}.attn.hook_z[..., h, d])',
    "index": "the unit's flat index in its layer: i, or h * d_head + d",
    "head": "the attention head h (null for an MLP neuron)",
    "d": "the coordinate d within the head (null for an MLP neuron)",
    "hook": "the TransformerLens hook the unit is read at",
    "score": "the run's score of the unit: on the unpruned model (initial_scores), else the last step's; null "
    "without scores",
    "score_method": "the scoring method of the unit's kind, null without scores",
    "rank": "1-based rank of the score among all units of its kind (1: the most forget-specific), null without",
    "rank_in_layer": "1-based rank of the score among the units of its kind in its layer, null without",
    "pruned": "whether the run pruned the unit",
    "pruned_step": "the step that pruned it; null when kept, or when the run does not record the step",
    "stats": "per dataset: tokens (counted tokens scanned: BOS and padding excluded), rows (token rows scanned), "
    "mean, std, abs_mean, rms, min, max, fires (fraction with x > 0), zeros (fraction with x == 0)",
    "histogram": "edges (increasing, n + 1) and per dataset n counts on those edges; each dataset's counts sum "
    "to its stats.tokens",
    "top": "the highest activations: per dataset (forget first) the best examples, at most one per stretch of "
    "context[0] tokens of a row, highest first; each with delta_logprob",
    "bottom": "the lowest (most negative) activations, chosen alike, lowest first",
    "quantiles": "bands of equal size of the activation over a uniform random sample of tokens of every dataset, "
    "lowest band first, each {range: [lo, hi], examples: [...]}; bands of one same value are shown once",
    "logits": "the direct logit effect: promoted and suppressed (lists of [token, value], the largest and the "
    "smallest), histogram (edges, counts) over the whole vocabulary, and norm (how the final norm entered)",
    "ablation_effect": "ablation (the run's method for the unit's kind), and per dataset the mean change of log p "
    "(actual next token) over the positions of its top examples, and positions: how many",
}
"""The fields of a dashboard record, one line each."""

EXAMPLE_FIELDS = {
    "dataset": '"forget" or "retain"',
    "tokens": "the tokens of the context, decoded (BOS and padding left out)",
    "token_ids": "their ids",
    "acts": "the unit's activation at each of them",
    "max_pos": "the index in tokens of the example's token (the top, bottom or sampled one)",
    "row": "the row of the dataset's packed token rows (as the run packs them) the context comes from",
    "pos": "the position of the example's token in that row (the row starts with BOS at 0)",
    "start": "the position in the row of tokens[0]",
    "text": "where the token came from: source, index (the text's number in the source) and token (its counted "
    "token in that text), or null when unknown",
    "delta_logprob": "top examples only: at each token, the change of log p(next token) when the unit alone is "
    "ablated with the run's ablation (null where the next token is not in the row)",
}
"""The fields of an example, one line each."""


@dataclass(frozen=True)
class DashboardConfig:
    """How much each dashboard shows, and how many tokens it reads.

    Attributes:
        n_top: top examples per dataset.
        n_bottom: bottom examples per dataset.
        n_bands: quantile bands.
        per_band: examples per band.
        context: tokens shown before and after an example's token.
        sample: counted tokens drawn at random per dataset, from which the bands are read.
        max_tokens: counted tokens scanned per dataset (None: all).
        n_logits: promoted and suppressed tokens listed.
        logit_bins: bins of the histogram over the vocabulary.
        seq_len: row length (None: the run's).
        batch_size: rows per forward pass (None: the run's).
        seed: seed of the sample and of resample ablation.
    """

    n_top: int = 5
    n_bottom: int = 5
    n_bands: int = 5
    per_band: int = 4
    context: tuple[int, int] = (8, 3)
    sample: int = 200
    max_tokens: int | None = 20_000
    n_logits: int = 10
    logit_bins: int = 40
    seq_len: int | None = None
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        counts = {name: getattr(self, name) for name in ("n_top", "n_bottom", "n_bands", "per_band", "sample")}
        if min(counts.values()) < 0 or self.n_logits < 1 or self.logit_bins < 1 or min(self.context) < 0:
            raise UnlearnLensError(f"dashboard settings must be non-negative (and n_logits, logit_bins >= 1): {self}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UnlearnLensError(f"max_tokens must be positive, got {self.max_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- which units ----------------------------------------------------------------------------------------------


def _scores(run: PruneRun) -> Any:
    return run.initial_scores if run.initial_scores is not None else run.scores


def _ranked(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values`` ``[..., n]`` along the last axis, highest first, NaN last, ties by index."""
    key = torch.where(values.isnan(), -math.inf, values.double())
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, values.shape[-1] + 1).expand_as(order).contiguous())
    return ranks


def choose_units(run: PruneRun, spec: str | Iterable[str] = "pruned,top:200") -> list[Unit]:
    """The units a spec names, each once, in the order the spec names them.

    Args:
        run: the run (its masks and scores).
        spec: comma-separated (or a list of) ``pruned`` (every pruned unit), ``top:N`` (the N
            highest scores, MLP and attention together, as the explorer sorts them), ``all``,
            or unit names ``L2.mlp.17`` / ``L1.attn.H3.D5``.

    Raises:
        UnlearnLensError: an unknown word, a unit the model does not have, or ``top:N`` without scores.
    """
    dims = run.dims
    words = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: dict[Unit, None] = {}
    every = [
        Unit.of(kind, layer, i, dims)
        for kind in UNIT_KINDS
        for layer in range(dims.n_layers)
        for i in range(dims.n_units(kind) // dims.n_layers)
    ]
    for word in (w.strip() for w in words):
        if not word:
            continue
        if word == "all":
            chosen.update(dict.fromkeys(every))
        elif word == "pruned":
            masks = run.masks
            chosen.update(dict.fromkeys(u for u in every if bool(_at(u, masks.mlp, masks.attn))))
        elif word.startswith("top:"):
            chosen.update(dict.fromkeys(_top(run, every, word)))
        else:
            chosen[Unit.parse(word, dims)] = None
    return list(chosen)


def _top(run: PruneRun, every: list[Unit], word: str) -> list[Unit]:
    try:
        n = int(word[4:])
    except ValueError:
        raise UnlearnLensError(f"{word!r}: top:N needs a whole number N") from None
    scores = _scores(run)
    if scores is None:
        raise UnlearnLensError(f"{word!r}: the run has no scores to rank units by")
    flat = torch.cat([scores.mlp.reshape(-1), scores.attn.reshape(-1)])
    ranks = _ranked(flat)
    finite = flat.isfinite()
    return [every[i] for i in torch.argsort(ranks).tolist()[: max(n, 0)] if bool(finite[i])]


def _at(u: Unit, mlp: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The unit's entry of per-unit tensors ``[layer d_mlp]`` and ``[layer head d_head]``."""
    return mlp[u.layer, u.index] if u.kind == "mlp" else attn[u.layer].reshape(-1)[u.index]


# --- examples -------------------------------------------------------------------------------------------------


def _sig(value: float, digits: int = 6) -> float | None:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


class _Rows:
    """One dataset's token rows: examples cut from them, and where their tokens came from."""

    def __init__(self, name: str, tokens: TokenSet, decode: TokenDecoder):
        self.name, self.tokens, self.decode = name, tokens, decode
        self.width = int(tokens.tokens.shape[1])
        self.counted = tokens.valid.reshape(-1).long().cumsum(0) - 1  # counted index of each flat position
        self.span_starts = []
        total = 0
        for span in tokens.spans:
            self.span_starts.append(total)
            total += span.n_tokens

    def source(self, flat: int) -> dict[str, Any] | None:
        """``{source, index, token}`` of the token at a flat position, or None where the spans are unknown."""
        if not self.tokens.spans:
            return None
        c = int(self.counted[flat])
        j = bisect.bisect_right(self.span_starts, c) - 1
        span, offset = self.tokens.spans[j], c - self.span_starts[j]
        t = bisect.bisect_right(span.ends, offset)
        if t >= len(span.ends):
            return None
        return {"source": span.source, "index": span.first + t, "token": offset - (span.ends[t - 1] if t else 0)}

    def example(self, flat: int, window: torch.Tensor, before: int) -> dict[str, Any]:
        """The example at flat position ``flat`` with the activations ``window`` around it (NaN: no counted token)."""
        row, pos = divmod(int(flat), self.width)
        inside = window.isfinite().nonzero().squeeze(1).tolist()
        first, last = inside[0], inside[-1]  # counted tokens of a row are consecutive
        start = pos - before + first
        ids = self.tokens.tokens[row, start : start + last - first + 1].tolist()
        return {
            "dataset": self.name,
            "tokens": [self.decode(t) for t in ids],
            "token_ids": ids,
            "acts": [_sig(v) for v in window[first : last + 1].tolist()],
            "max_pos": before - first,
            "row": row,
            "pos": pos,
            "start": start,
            "text": self.source(flat),
        }


def _chosen(values: torch.Tensor, positions: torch.Tensor, n: int, gap: int, width: int, sign: float) -> list[int]:
    """Indices of the best ``n`` candidates, at most one per ``gap``-token stretch of a row (``sign`` -1: lowest)."""
    return distinct_top((sign * values).tolist(), positions.tolist(), n, gap, width)


def _extremes(scan: UnitScan, rows: _Rows, u: int, n: int, which: str) -> list[dict[str, Any]]:
    values, positions, windows = (getattr(scan, f"{which}_{part}")[u] for part in ("values", "positions", "windows"))
    before = scan.context[0]
    picked = _chosen(values, positions, n, before, rows.width, 1.0 if which == "top" else -1.0)
    return [rows.example(int(positions[j]), windows[j], before) for j in picked]


def _bands(scans: dict[str, UnitScan], rows: dict[str, _Rows], u: int, config: DashboardConfig) -> list[dict]:
    """Quantile bands of the unit's activation over the sampled tokens of every dataset, lowest first."""
    pool = []  # (value, dataset, sample index)
    for name, scan in scans.items():
        centre = scan.sample_windows[:, u, scan.context[0]]
        pool += [(v, name, j) for j, v in enumerate(centre.tolist()) if math.isfinite(v)]
    pool.sort(key=lambda p: p[0])
    bands = []
    n = min(config.n_bands, len(pool))
    for b in range(n):
        members = pool[b * len(pool) // n : (b + 1) * len(pool) // n]
        if not members:
            continue
        picks = sorted({round(i * (len(members) - 1) / max(config.per_band - 1, 1)) for i in range(config.per_band)})
        examples = []
        for i in picks[: config.per_band]:
            _, name, j = members[i]
            scan = scans[name]
            examples.append(
                rows[name].example(int(scan.sample_positions[j]), scan.sample_windows[j, u], scan.context[0])
            )
        band = {"range": [_sig(members[0][0]), _sig(members[-1][0])], "examples": examples}
        if bands and band["range"] == bands[-1]["range"] and band["range"][0] == band["range"][1]:
            continue  # one value (the zeros of a ReLU, say) fills several bands: shown once
        bands.append(band)
    return bands


# --- statistics, logits, place in the run ---------------------------------------------------------------------


def _stats(scan: UnitScan, u: int) -> dict[str, Any]:
    s = scan.stats
    n = int(s.count[u])
    if n == 0:
        return {"tokens": 0, "rows": len(scan.tokens)}
    return {
        "tokens": n,
        "rows": len(scan.tokens),
        "mean": _sig(float(s.mean[u])),
        "std": _sig(float(s.std[u])),
        "abs_mean": _sig(float(s.abs_mean[u])),
        "rms": _sig(float(s.rms[u])),
        "min": _sig(float(scan.bottom_values[u, 0])),
        "max": _sig(float(s.max[u])),
        "fires": _sig(float(s.pos_count[u]) / n),
        "zeros": _sig(float(scan.zeros[u]) / n),
    }


def _logit_record(effect: torch.Tensor, decode: TokenDecoder, config: DashboardConfig, norm: str) -> dict[str, Any]:
    """Promoted and suppressed tokens and the histogram of one unit's direct logit effect ``[d_vocab]``."""
    n = min(config.n_logits, effect.numel())
    high = torch.topk(effect, n)
    low = torch.topk(-effect, n)
    counts = torch.histc(effect, bins=config.logit_bins, min=float(effect.min()), max=float(effect.max()))
    lo, hi = float(effect.min()), float(effect.max())
    edges = [lo + (hi - lo) * j / config.logit_bins for j in range(config.logit_bins + 1)]
    return {
        "promoted": [[decode(int(t)), _sig(float(v))] for v, t in zip(high.values, high.indices)],
        "suppressed": [[decode(int(t)), _sig(-float(v))] for v, t in zip(low.values, low.indices)],
        "histogram": {"edges": [_sig(e) for e in edges], "counts": [int(c) for c in counts.tolist()]},
        "norm": norm,
    }


class _Place:
    """Score, method, ranks and pruned step of the units of a run (the ranks sorted once per kind)."""

    def __init__(self, run: PruneRun):
        self.run, self.scores = run, _scores(run)
        self.ranks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for kind in UNIT_KINDS if self.scores is not None else ():
            values = self.scores.of(kind)
            by_layer = values.reshape(values.shape[0], -1)
            self.ranks[kind] = (_ranked(by_layer.reshape(-1)).view_as(by_layer), _ranked(by_layer))

    def __call__(self, u: Unit) -> dict[str, Any]:
        out: dict[str, Any] = {"score": None, "score_method": None, "rank": None, "rank_in_layer": None}
        if self.scores is not None:
            overall, in_layer = self.ranks[u.kind]
            out = {
                "score": _sig(float(self.scores.of(u.kind)[u.layer].reshape(-1)[u.index])),
                "score_method": self.scores.scoring_of(u.kind),
                "rank": int(overall[u.layer, u.index]),
                "rank_in_layer": int(in_layer[u.layer, u.index]),
            }
        masks, steps = self.run.masks, self.run.pruned_step
        pruned = bool(_at(u, masks.mlp, masks.attn))
        step = int(_at(u, *steps)) if pruned and steps is not None else None
        return out | {"pruned": pruned, "pruned_step": step}


# --- the records ----------------------------------------------------------------------------------------------


def _effects(
    model: Any, run: PruneRun, units: Sequence[Unit], records: list[dict[str, Any]], rows: dict[str, _Rows], seed: int
) -> None:
    """Add ``delta_logprob`` to every top example and ``ablation_effect`` to every record."""
    token_rows, requests, owners = {}, [], []
    for u, record in zip(units, records):
        for example in record["top"]:
            key = (example["dataset"], example["row"])
            token_rows[key] = rows[example["dataset"]].tokens.tokens[example["row"]]
            stop = min(example["start"] + len(example["tokens"]) + 1, rows[example["dataset"]].width)
            requests.append((u, key, stop))
            owners.append(example)
    found = ablation_effects(model, run.ablation, token_rows, requests, seed=seed) if requests else []
    for example, delta, (_, _, stop) in zip(owners, found, requests):
        r = rows[example["dataset"]]
        valid = r.tokens.valid[example["row"]]
        shown = []
        for i in range(len(example["tokens"])):
            p = example["start"] + i  # delta[p] is the change of log p(token p + 1)
            shown.append(_sig(float(delta[p]), 4) if p + 1 < stop and bool(valid[p + 1]) else None)
        example["delta_logprob"] = shown
    for u, record in zip(units, records):
        summary: dict[str, Any] = {"ablation": run.ablation.methods[u.kind], "positions": {}}
        for name in rows:
            values = [v for e in record["top"] if e["dataset"] == name for v in e["delta_logprob"] if v is not None]
            summary[name] = _sig(sum(values) / len(values), 4) if values else None
            summary["positions"][name] = len(values)
        record["ablation_effect"] = summary


def unit_dashboards(
    run: PruneRun,
    model: Any,
    forget_texts: Sequence[str] | TokenSet,
    retain_texts: Sequence[str] | TokenSet | None = None,
    units: Sequence[Unit] | str | None = None,
    config: DashboardConfig | None = None,
) -> list[dict[str, Any]]:
    """The dashboard record (:data:`FIELDS`) of each chosen unit of a run.

    Args:
        run: the run (scores, masks, pruned steps and its ablation).
        model: the unpruned model the run was made on.
        forget_texts: the forget dataset (texts or a :class:`TokenSet`).
        retain_texts: the retain dataset, or None.
        units: the units (:class:`~unlearn_lens.report.display.Unit`), or a spec for
            :func:`choose_units` (default ``"pruned,top:200"``).
        config: what to show (default :class:`DashboardConfig`).

    Returns:
        One record per unit, in order.

    Raises:
        UnlearnLensError: the model does not fit the run, or invalid units or settings.
    """
    config = config or DashboardConfig()
    dims = model_dims(model)
    if dims != run.dims:
        raise UnlearnLensError(f"the model has units {dims.to_dict()}, but the run was made for {run.dims.to_dict()}")
    units = choose_units(run, units if units is not None else "pruned,top:200") if not _is_units(units) else units
    if not units:
        return []
    datasets = {"forget": forget_texts} | ({} if retain_texts is None else {"retain": retain_texts})
    scans = scan_units(
        model,
        datasets,
        units,
        k=4 * max(config.n_top, config.n_bottom, 1),
        context=config.context,
        sample=config.sample,
        max_tokens=config.max_tokens,
        seq_len=config.seq_len or run.config.seq_len,
        batch_size=config.batch_size or run.config.batch_size,
        seed=config.seed,
    )
    decode = TokenDecoder(getattr(model, "tokenizer", None))
    rows = {name: _Rows(name, scan.tokens, decode) for name, scan in scans.items()}
    logits = _logits(model, units, dims)
    norm = final_norm(model).describe()
    blocks = [scan.hist for scan in scans.values()]
    place = _Place(run)
    records = []
    for i, u in enumerate(units):
        edges, counts = histogram_edges(blocks, i)
        record = {"format": DASHBOARD_FORMAT, "version": DASHBOARD_VERSION, "unit": u.name, "layer": u.layer}
        record |= {"kind": u.kind, "index": u.index, "head": u.head, "d": u.d, "hook": u.hook} | place(u)
        record["stats"] = {name: _stats(scan, i) for name, scan in scans.items()}
        record["histogram"] = {"edges": [_sig(e, 8) for e in edges]} | dict(zip(scans, counts))
        record["top"] = [e for n, s in scans.items() for e in _extremes(s, rows[n], i, config.n_top, "top")]
        record["bottom"] = [e for n, s in scans.items() for e in _extremes(s, rows[n], i, config.n_bottom, "bottom")]
        record["quantiles"] = _bands(scans, rows, i, config)
        record["logits"] = _logit_record(logits[i], decode, config, norm)
        records.append(record)
    _effects(model, run, units, records, rows, config.seed)
    return records


def _is_units(units: Any) -> bool:
    return isinstance(units, Sequence) and not isinstance(units, str) and all(isinstance(u, Unit) for u in units)


def _logits(model: Any, units: Sequence[Unit], dims: ModelDims) -> list[torch.Tensor]:
    """The direct logit effect ``[d_vocab]`` of each unit, one weight read per layer and kind."""
    by_hook: dict[tuple[str, int], list[int]] = {}
    for i, u in enumerate(units):
        by_hook.setdefault((u.kind, u.layer), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(units)
    for (kind, layer), members in by_hook.items():
        effects = logit_effects(model, kind, layer, [units[i].index for i in members])
        for i, effect in zip(members, effects):
            out[i] = effect
    return out
