"""The neuron explorer: every unit of a run in one searchable, sortable table, with its contexts.

Every MLP neuron (``blocks.{l}.mlp.hook_post[..., i]``) and attention neuron
(``blocks.{l}.attn.hook_z[..., h, d]``) gets a row: layer, index, kind, score, forget and
retain statistics (mean, mean |x|, P(x > 0), ratio of mean |x|) and the step that pruned
it; clicking a row opens its top-activating contexts on forget and on retain, coloured by
activation as in :mod:`unlearn_lens.report.cards`. :func:`top_activations` makes it in one
streamed forward pass per dataset (the loop of :func:`unlearn_lens.collect_stats`):
statistics as ``collect_stats`` keeps them, and a running top-k per unit across batches
(memory units x k, never per token) with the activations a few tokens either side, read
while their batch is in memory. :func:`explorer_html` stores each dataset's tokens once
(indices into a table of token strings) and per unit and context the position, the
activation and the window quantised to 25 levels (one character per token); sorting and
filtering run on typed arrays and index permutations, and only the rows in view are
drawn, so 10^5 units stay responsive. It needs no network and inserts all text as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import ModelDims, hook_name, model_device, model_dims
from unlearn_lens.report.cards import _VISIBLE, _Decoder
from unlearn_lens.results import PruneRun
from unlearn_lens.stats import ActivationStats, stream_units

__all__ = [
    "EXPLORER_CSS",
    "EXPLORER_FORMAT",
    "TopActivations",
    "explorer_data",
    "explorer_html",
    "top_activations",
    "unit_order",
]

EXPLORER_FORMAT = 1  # version of the data layout of explorer_data
LEVELS = 12  # window activations are stored as integers in [-LEVELS, LEVELS], in units of the unit's scale / LEVELS
_ALPHABET = "abcdefghijklmnopqrstuvwxy"  # level q is _ALPHABET[q + LEVELS]; "." marks a slot without a token


@dataclass
class TopActivations:
    """Statistics and top tokens of every unit (in :func:`unit_order`) on one dataset, by :func:`top_activations`.

    Attributes:
        tokens: the token rows scanned.
        stats: statistics of every unit over the counted tokens (BOS and padding excluded).
        values: ``[unit k]`` the k highest activations, highest first (``-inf``: fewer tokens).
        positions: ``[unit k]`` their flat positions ``row * row_length + pos`` in ``tokens`` (-1: none).
        windows: ``[unit k window]`` the activations at ``pos - before .. pos + after`` of the
            same row (NaN where that is no counted token).
        context: ``(before, after)``.
    """

    tokens: TokenSet
    stats: ActivationStats
    values: Float[torch.Tensor, "unit k"]
    positions: Int[torch.Tensor, "unit k"]
    windows: Float[torch.Tensor, "unit k window"]
    context: tuple[int, int]


class _RunningTopK:
    """The running top-k counted tokens of the units of one hook, with their activation windows."""

    def __init__(self, n_units: int, k: int, width: int, device: torch.device):
        self.values = torch.full((k, n_units), -math.inf, device=device)
        self.index = torch.full((k, n_units), -1, dtype=torch.long, device=device)
        self.windows = torch.full((k, n_units, width), math.nan, device=device)
        self.offset = 0  # counted tokens seen so far

    def update(self, x: Float[torch.Tensor, "tokens unit"], window_of: Int[torch.Tensor, "counted window"]) -> None:
        (n, n_units), k, chunk = x.shape, self.values.shape[0], 16
        if n <= 4 * k * chunk:
            values, local = torch.topk(x, min(k, n), dim=0)  # [k' unit]
        else:  # a unit's top k tokens lie in its k chunks of highest maximum: topk of those alone is 3x faster
            m = n - n % chunk
            blocks = torch.topk(x[:m].view(m // chunk, chunk, n_units).amax(1), k, dim=0).indices
            rows = (blocks[:, None, :] * chunk + torch.arange(chunk, device=x.device)[None, :, None]).flatten(0, 1)
            rows = torch.cat([rows, torch.arange(m, n, device=x.device)[:, None].expand(-1, n_units)])
            values, picked = torch.topk(x.gather(0, rows), k, dim=0)
            local = rows.gather(0, picked)
        index = local + self.offset
        counted = window_of[index]  # [k' unit window]: counted indices around each candidate (-1: none)
        slots, inside = counted - self.offset, counted >= 0  # rows of x: a token row lies in one batch
        units = torch.arange(n_units, device=x.device)[None, :, None]
        windows = x[slots.clamp(0, n - 1), units].masked_fill(~inside, math.nan)
        merged = torch.cat([self.values, values])
        keep = torch.topk(merged, k, dim=0).indices
        self.values = merged.gather(0, keep)
        self.index = torch.cat([self.index, index]).gather(0, keep)
        both = torch.cat([self.windows, windows])
        self.windows = both.gather(0, keep[..., None].expand(-1, -1, both.shape[-1]))
        self.offset += n


def _window_index(tokens: TokenSet, before: int, after: int) -> Int[torch.Tensor, "counted window"]:
    """For each counted token, the counted indices of ``pos - before .. pos + after`` in its row (-1: none)."""
    n_rows, width = tokens.valid.shape
    flat = tokens.valid.reshape(-1).nonzero().squeeze(1)
    counted_at = torch.full((n_rows * width,), -1, dtype=torch.long)
    counted_at[flat] = torch.arange(flat.numel())
    row, at = flat // width, (flat % width)[:, None] + torch.arange(-before, after + 1)[None, :]
    inside = (at >= 0) & (at < width)
    return torch.where(inside, counted_at[(row * width)[:, None] + at.clamp(0, width - 1)], -1)


@torch.no_grad()
def top_activations(
    model: Any,
    texts: Sequence[str] | TokenSet,
    *,
    k: int = 12,
    context: tuple[int, int] = (8, 3),
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> TopActivations:
    """Statistics and the top-``k`` activating tokens of every MLP and attention neuron, in one pass.

    Statistics are streamed as :func:`unlearn_lens.collect_stats` streams them; per unit a
    running top-k of the counted tokens (BOS and padding excluded), with the activations
    around each, is merged batch by batch. Ties at the k-th value are broken arbitrarily.

    Args:
        model: a TransformerLens model, as it runs (inside :func:`unlearn_lens.pruned` for a pruned one).
        texts: the dataset, as texts or a :class:`TokenSet`.
        k: tokens kept per unit.
        context: tokens kept before and after each top token.
        max_tokens: counted tokens scanned at most (None: all).
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.

    Raises:
        UnlearnLensError: ``k`` or ``context`` out of range, an invalid dataset, or a process group.
    """
    if k < 1 or min(context) < 0:
        raise UnlearnLensError(f"k must be positive and context non-negative, got k={k}, context={context}")
    dims, device, (before, after) = model_dims(model), model_device(model), context
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
    window_of = _window_index(tokens, before, after).to(device)
    stats, top = ActivationStats.empty(dims, device), {}

    def update(kind: str, layer: int, rows: torch.Tensor, workspace: Any) -> None:
        (stats.mlp if kind == "mlp" else stats.attn).update(rows, layer, workspace)
        x = rows.reshape(rows.shape[0], -1).float()
        if (kind, layer) not in top:
            top[kind, layer] = _RunningTopK(x.shape[1], k, before + after + 1, x.device)
        top[kind, layer].update(x, window_of)

    if (
        stream_units(
            model, tokens, update, batch_size=batch_size, progress=False, desc="explorer", owner="top_activations"
        )
        != tokens.n_tokens
    ):
        raise UnlearnLensError("top_activations runs in one process: call it outside a torch.distributed group")
    flat = tokens.valid.reshape(-1).nonzero().squeeze(1).to(device)
    parts: list[_RunningTopK] = [
        top.get((kind, layer))
        or _RunningTopK(
            dims.d_mlp if kind == "mlp" else dims.n_heads * dims.d_head, k, before + after + 1, device
        )  # no counted tokens at all
        for kind in ("mlp", "attn")
        for layer in range(dims.n_layers)
    ]
    positions = [torch.where(t.index >= 0, flat[t.index.clamp(min=0)] if flat.numel() else -1, -1).T for t in parts]
    stats.meta = {"n_tokens": stats.n_tokens}
    return TopActivations(
        tokens,
        stats,
        torch.cat([t.values.T for t in parts]).cpu(),
        torch.cat(positions).cpu(),
        torch.cat([t.windows.transpose(0, 1) for t in parts]).cpu(),
        (before, after),
    )


# --- the data of the page -------------------------------------------------------------------------------------


def unit_order(dims: ModelDims) -> list[tuple[str, int, int]]:
    """``(kind, layer, unit)`` of every unit in the explorer's order (attention ``unit`` = ``head * d_head + d``)."""
    return [("mlp", layer, i) for layer in range(dims.n_layers) for i in range(dims.d_mlp)] + [
        ("attn", layer, i) for layer in range(dims.n_layers) for i in range(dims.n_heads * dims.d_head)
    ]


def _flat(mlp: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:  # [layer d_mlp], [layer head d_head] -> [unit]
    return torch.cat([mlp.reshape(-1), attn.reshape(-1)]).cpu()


def _rounded(values: torch.Tensor, digits: int) -> list[float | None]:
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in values.double().tolist()]


def _distinct(values: torch.Tensor, positions: torch.Tensor, n: int, gap: int, width: int) -> torch.Tensor:
    """``[unit n]`` columns of the best ``n`` candidates per unit, at most one per ``gap``-token stretch of a row."""
    chosen = torch.full((values.shape[0], n), -1, dtype=torch.long)
    for u, (vals, pos) in enumerate(zip(values.tolist(), positions.tolist())):
        taken: list[int] = []
        for j, (v, p) in enumerate(zip(vals, pos)):
            if len(taken) == n or p < 0 or v == -math.inf:
                break
            if all(pos[i] // width != p // width or abs(pos[i] - p) > gap for i in taken):
                taken.append(j)
        chosen[u, : len(taken)] = torch.tensor(taken, dtype=torch.long)
    return chosen


def explorer_data(
    run: PruneRun,
    model: Any,
    forget_texts: Sequence[str] | TokenSet,
    retain_texts: Sequence[str] | TokenSet | None = None,
    *,
    max_tokens: int | None = 20_000,
    n_contexts: int = 3,
    context: tuple[int, int] = (8, 3),
    candidates: int | None = None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    digits: int = 4,
) -> dict[str, Any]:
    """The explorer's data: every unit's score, statistics, pruned step and top contexts, as JSON-ready columns.

    One :func:`top_activations` pass per dataset on ``model`` (give the unpruned one).
    Per-unit lists follow :func:`unit_order`; numbers keep ``digits`` significant
    digits, NaN and infinities become null. Keys: ``format``, ``dims``, ``hooks`` (hook
    name patterns); ``score`` (the run's ``initial_scores``, else ``scores``; null without),
    ``score_methods``, ``score_from``; ``step`` (the step that pruned each unit: 0 never,
    -1 pruned at a step the run does not record), ``step_known``, ``last_step``;
    ``window`` ``[before, after]``, ``levels``, ``n_contexts``; ``vocab`` (decoded token
    strings, newlines made visible), ``special`` (their indices of special tokens);
    ``scale`` (per unit, the largest |activation| in its stored windows); ``sets``, one per
    dataset: ``name``, ``n_tokens``, ``width`` (row length), ``tok`` (vocab index at every
    position of the rows, -1 for BOS and padding), ``mean``, ``abs_mean``, ``freq``
    (P(x > 0)) per unit, and per context ``unit * n_contexts + j``: ``pos`` (flat position,
    -1 none), ``act`` (activation) and ``win`` (one string, ``before + 1 + after``
    characters per context: level ``q`` is ``"abcdefghijklmnopqrstuvwxy"[q + levels]``,
    ``"."`` where there is no counted token).

    Args:
        run: the pruning run (its scores and pruned steps).
        model: the unpruned model the run was made on.
        forget_texts: forget dataset (texts or a :class:`TokenSet`).
        retain_texts: retain dataset, or None.
        max_tokens: counted tokens scanned per dataset.
        n_contexts: contexts per unit and dataset, at most one per ``before``-token stretch of a row.
        context: tokens shown before and after each top token.
        candidates: top tokens streamed per unit to choose the contexts from (default ``4 * n_contexts``).
        seq_len: row length (default: the run's).
        batch_size: rows per forward pass (default: the run's).
        digits: significant digits of the numbers.

    Raises:
        UnlearnLensError: the model does not fit the run, or invalid arguments.
    """
    dims = model_dims(model)
    if dims != run.dims:
        raise UnlearnLensError(f"the model has units {dims.to_dict()}, but the run was made for {run.dims.to_dict()}")
    if n_contexts < 0 or digits < 1:
        raise UnlearnLensError(f"n_contexts must be >= 0 and digits >= 1, got {n_contexts} and {digits}")
    before, after = context
    k = max(1, candidates if candidates is not None else 4 * n_contexts)
    datasets = {"forget": forget_texts} | ({} if retain_texts is None else {"retain": retain_texts})
    scans = {
        name: top_activations(
            model,
            texts,
            k=k,
            context=context,
            max_tokens=max_tokens,
            seq_len=seq_len if seq_len is not None else run.config.seq_len,
            batch_size=batch_size or run.config.batch_size,
        )
        for name, texts in datasets.items()
    }
    decode, vocab_of = _Decoder(getattr(model, "tokenizer", None)), {}
    for scan in scans.values():
        for token in sorted(set(scan.tokens.tokens[scan.tokens.valid].tolist())):
            vocab_of.setdefault(token, len(vocab_of))
    lut = torch.full((max([*vocab_of, 0]) + 1,), -1, dtype=torch.long)  # token id -> vocab index
    lut[torch.tensor(list(vocab_of), dtype=torch.long)] = torch.arange(len(vocab_of))
    chosen = {
        name: _distinct(s.values, s.positions, n_contexts, before, s.tokens.tokens.shape[1])
        for name, s in scans.items()
    }
    windows = {
        name: s.windows.gather(1, chosen[name].clamp(min=0)[..., None].expand(-1, -1, before + after + 1)).masked_fill(
            (chosen[name] < 0)[..., None], math.nan
        )
        for name, s in scans.items()
    }
    scale = torch.stack([w.abs().nan_to_num(0.0).amax((1, 2)) for w in windows.values()]).amax(0)
    sets = []
    for name, s in scans.items():
        c, block = chosen[name], s.stats
        level = (windows[name] / scale.clamp(min=1e-30)[:, None, None] * LEVELS).round().clamp(-LEVELS, LEVELS)
        codes = (level.nan_to_num(-LEVELS - 1) + LEVELS + 1).long().reshape(-1).tolist()
        sets.append(
            {
                "name": name,
                "n_tokens": s.tokens.n_tokens,
                "width": int(s.tokens.tokens.shape[1]),
                "tok": torch.where(s.tokens.valid, lut[s.tokens.tokens.clamp(0, lut.numel() - 1)], -1)
                .reshape(-1)
                .tolist(),
                "mean": _rounded(_flat(block.mlp.mean, block.attn.mean), digits),
                "abs_mean": _rounded(_flat(block.mlp.abs_mean, block.attn.abs_mean), digits),
                "freq": _rounded(_flat(block.mlp.freq, block.attn.freq), digits),
                "pos": torch.where(c >= 0, s.positions.gather(1, c.clamp(min=0)), -1).reshape(-1).tolist(),
                "act": _rounded(torch.where(c >= 0, s.values.gather(1, c.clamp(min=0)), math.nan).reshape(-1), digits),
                "win": "".join(("." + _ALPHABET)[q] for q in codes),
            }
        )
    scores = run.initial_scores if run.initial_scores is not None else run.scores
    steps = run.pruned_step
    return {
        "format": EXPLORER_FORMAT,
        "dims": dims.to_dict(),
        "hooks": {kind: hook_name(kind, 0).replace(".0.", ".{l}.", 1) for kind in ("mlp", "attn")},
        "score": None if scores is None else _rounded(_flat(scores.mlp, scores.attn), digits),
        "score_methods": None if scores is None else {kind: scores.method_of(kind) for kind in ("mlp", "attn")},
        "score_from": (
            ""
            if scores is None
            else "the unpruned model (step 1)"
            if run.initial_scores is not None
            else "the last step (the already pruned model)"
        ),
        "step": (_flat(*steps) if steps is not None else -_flat(run.masks.mlp, run.masks.attn).int()).tolist(),
        "step_known": steps is not None,
        "last_step": run.final.step,
        "window": [before, after],
        "levels": LEVELS,
        "n_contexts": n_contexts,
        "vocab": [decode(t).translate(_VISIBLE) for t in vocab_of],
        "special": [i for t, i in vocab_of.items() if t in decode.special],
        "scale": _rounded(scale, digits),
        "sets": sets,
    }


# --- the page component ---------------------------------------------------------------------------------------


def explorer_html(data: Mapping[str, Any], *, include_css: bool = True) -> str:
    """The explorer as one HTML fragment: markup, the data as JSON, inline JavaScript (and its style).

    The data sits in a ``<script type="application/json">`` with ``<``, ``>`` and ``&``
    escaped; the script puts every token and label in as text, never as HTML. For tests, a
    URL hash ``#ulx-test?q=...&sort=KEY&dir=asc|desc&open=ROW&scroll=ROW&bench=1`` searches,
    sorts, opens and scrolls after loading and writes what it saw (rows shown, first units
    and labels, units drawn, timings in ms) as JSON into ``<pre id="ulx-test-result">``.

    Args:
        data: from :func:`explorer_data` (or data of that layout).
        include_css: start with a ``<style>`` block (leave out when the page has :data:`EXPLORER_CSS`).

    Returns:
        The HTML fragment (one ``div.ulx`` and its script).
    """
    payload = (
        json.dumps(data, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return (
        (f"<style>{EXPLORER_CSS}</style>\n" if include_css else "")
        + '<div class="ulx" data-ulx><div class="ulx-bar"><input type="search" class="ulx-q" '
        'placeholder="search: L2 mlp 17 · L1.H3.D5 · attn · pruned · step2 · score>5 · ratio<0.5" '
        'aria-label="search units"><span class="ulx-count"></span></div>'
        '<div class="ulx-head" role="row"></div><div class="ulx-scroll"><div class="ulx-spacer">'
        '<div class="ulx-rows"></div></div></div><div class="ulx-detail"></div>'
        f'<script type="application/json" class="ulx-data">{payload}</script></div>\n'
        f"<script>{EXPLORER_JS}</script>\n"
    )


EXPLORER_CSS = """
.ulx{font-size:.86em;margin:10px 0}.ulx-bar{display:flex;gap:12px;align-items:center;margin-bottom:6px}
.ulx-q{flex:0 1 520px;padding:5px 8px;border:1px solid #aab7b8;border-radius:4px;font:inherit}.ulx-count{color:#5d6d7e}
.ulx-head,.ulx-row{display:grid;grid-template-columns:3.5em 6.5em 3.5em 6em repeat(7,minmax(5em,1fr)) 4.5em;column-gap:6px;align-items:center}
.ulx-head{border-bottom:2px solid #aab7b8;background:#f8f9f9;font-weight:600}
.ulx-head button{all:unset;cursor:pointer;padding:4px 2px;text-align:right;overflow-wrap:anywhere;line-height:1.2}
.ulx-head button:first-child,.ulx-row span:first-child{text-align:left}
.ulx-head button[aria-sort=ascending]::after{content:" ▲"}.ulx-head button[aria-sort=descending]::after{content:" ▼"}
.ulx-scroll{height:440px;overflow-y:auto;border:1px solid #eaecee;position:relative;contain:strict}
.ulx-spacer{position:relative}.ulx-rows{position:absolute;left:0;right:0;top:0}
.ulx-row{height:22px;border-bottom:1px solid #f2f3f4;cursor:pointer;font-variant-numeric:tabular-nums}
.ulx-row span{text-align:right;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.ulx-row:hover{background:#eaf2f8}.ulx-row.ulx-sel{background:#d6eaf8}.ulx-row.ulx-pruned span:last-child{color:#922b21}
.ulx-detail{margin-top:10px}.ulx-detail:empty::before{content:"Click a row for the unit's contexts.";color:#5d6d7e}
.ulx-card{border:1px solid #d5d8dc;border-radius:8px;padding:10px 14px}.ulx-card h3{margin:0 0 4px 0;font-size:1.05em}
.ulx-card h4{margin:10px 0 4px 0;font-size:.95em}.ulx-sub{color:#5d6d7e}.ulx-card table{border-collapse:collapse}
.ulx-card td,.ulx-card th{padding:2px 10px;border-bottom:1px solid #eaecee;text-align:right}
.ulx-card td:first-child,.ulx-card th:first-child{text-align:left}.ulx-card ol{margin:0;padding-left:1.6em}
.ulx-act{display:inline-block;min-width:4.5em;color:#5d6d7e;font-variant-numeric:tabular-nums}.ulx-none{color:#95a5a6}
.ulx-ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;background:#fbfcfc}
.ulx-max{outline:2px solid #17202a;font-weight:bold}.ulx-special{color:#95a5a6}
"""
"""Style sheet of the explorer (in :func:`explorer_html`, or once in the page head)."""

EXPLORER_JS = r"""(function () {
"use strict"; var ROW = 22, OVER = 10;
function num(v) { return v === null || v === undefined ? NaN : v; }
function col(a, n) { var o = new Float64Array(n); for (var i = 0; i < n; i++) o[i] = a ? num(a[i]) : NaN; return o; }
function fmt(v) {
  var a = Math.abs(v);
  if (v !== v || !isFinite(v)) return v !== v ? "–" : v > 0 ? "∞" : "−∞";
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4))); }
function el(tag, cls, text) {  // text goes in as text, never as HTML
  var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function Explorer(root) {
  var data = JSON.parse(root.querySelector(".ulx-data").textContent), $ = function (c) { return root.querySelector(c); };
  var dm = data.dims, DH = dm.d_head, DM = dm.d_mlp, HD = dm.n_heads * DH, nM = dm.n_layers * DM, n = nM + dm.n_layers * HD;
  var layer = new Float64Array(n), unit = new Float64Array(n), kind = new Float64Array(n), i, j;
  for (i = 0; i < n; i++) { j = i < nM ? i : i - nM; kind[i] = i < nM ? 0 : 1; layer[i] = Math.floor(j / (kind[i] ? HD : DM)); unit[i] = j % (kind[i] ? HD : DM); }
  var step = col(data.step, n), stepKey = new Float64Array(n), sets = data.sets, F = sets[0], R = sets[1] || null;
  for (i = 0; i < n; i++) stepKey[i] = step[i] > 0 ? step[i] : step[i] < 0 ? 1e9 : NaN;
  var fa = col(F.abs_mean, n), ra = col(R && R.abs_mean, n), ratio = new Float64Array(n), rn = R ? R.name : "retain";
  for (i = 0; i < n; i++) ratio[i] = fa[i] / ra[i];
  function label(i) { var u = unit[i]; return "L" + layer[i] + (kind[i] ? ".H" + Math.floor(u / DH) + ".D" + (u % DH) : ".N" + u); }
  var cols = [
    {key: "layer", label: "layer", v: layer},
    {key: "unit", label: "unit", v: unit, t: function (i) { return label(i).replace(/^L\d+\./, ""); }},
    {key: "kind", label: "kind", v: kind, t: function (i) { return kind[i] ? "attn" : "MLP"; }},
    {key: "score", label: "score", v: col(data.score, n), d: -1},
    {key: "f_abs", label: F.name + " mean|x|", v: fa, d: -1}, {key: "r_abs", label: rn + " mean|x|", v: ra, d: -1},
    {key: "ratio", label: "ratio", v: ratio, d: -1, title: F.name + " mean|x| / " + rn + " mean|x|"},
    {key: "f_freq", label: F.name + " P(x>0)", v: col(F.freq, n), d: -1}, {key: "r_freq", label: rn + " P(x>0)", v: col(R && R.freq, n), d: -1},
    {key: "f_mean", label: F.name + " mean", v: col(F.mean, n), d: -1}, {key: "r_mean", label: rn + " mean", v: col(R && R.mean, n), d: -1},
    {key: "step", label: "pruned", v: stepKey, title: "the step that pruned the unit",
     t: function (i) { return step[i] > 0 ? String(step[i]) : step[i] < 0 ? "?" : "–"; }}];
  var byKey = {}, all = new Uint32Array(n), order, view, sortKey, sortDir, sel = -1, pool = [], pending = false, timer;
  for (i = 0; i < n; i++) all[i] = i;
  var q = $(".ulx-q"), count = $(".ulx-count"), head = $(".ulx-head"), scroll = $(".ulx-scroll"), spacer = $(".ulx-spacer");
  var rows = $(".ulx-rows"), detail = $(".ulx-detail");
  cols.forEach(function (c) {
    var b = el("button", null, c.label);
    b.type = "button"; b.title = c.title || "sort by " + c.label; byKey[c.key] = c; c.button = b;
    b.addEventListener("click", function () { sortBy(c.key, sortKey === c.key ? -sortDir : c.d || 1); });
    head.appendChild(b); });
  function sortBy(key, dir) {  // an index permutation sorted on a typed array; NaN last, ties by unit order
    var v = byKey[key].v; sortKey = key; sortDir = dir; order = all.slice();
    order.sort(function (a, b) {
      var x = v[a], y = v[b];
      if (x !== x || y !== y) return x !== x ? (y !== y ? a - b : 1) : -1;
      return x === y ? a - b : (x < y ? -dir : dir); });
    cols.forEach(function (c) { c.button.setAttribute("aria-sort", c.key === key ? (dir > 0 ? "ascending" : "descending") : "none"); });
    filter(); }
  function parse(text) {  // every word must match: mlp attn pruned kept L2 L2.N17 L1.H3.D5 17 H3 D5 step2 score>5 ...
    var tests = [], bad = []; text.toLowerCase().split(/[\s,]+/).forEach(function (w) {
      var m, x, y, v, op; if (!w) return;
      if (w === "mlp" || w === "attn" || w === "attention") { x = w === "mlp" ? 0 : 1; tests.push(function (i) { return kind[i] === x; }); }
      else if (w === "pruned") tests.push(function (i) { return step[i] !== 0; });
      else if (w === "kept" || w === "unpruned") tests.push(function (i) { return step[i] === 0; });
      else if ((m = /^l(\d+)(?:\.(?:n(\d+)|h(\d+)(?:\.d(\d+))?))?$/.exec(w))) {
        x = +m[1]; tests.push(function (i) { return layer[i] === x; });
        if (m[2] !== undefined) parse("mlp " + m[2]).tests.forEach(function (t) { tests.push(t); });
        if (m[3] !== undefined) parse("h" + m[3] + (m[4] !== undefined ? " d" + m[4] : "")).tests.forEach(function (t) { tests.push(t); });
      } else if ((m = /^n?(\d+)$/.exec(w))) { x = +m[1]; tests.push(function (i) { return unit[i] === x; }); }
      else if ((m = /^([hd])(\d+)$/.exec(w))) {
        x = +m[2]; y = m[1] === "h";
        tests.push(function (i) { return kind[i] === 1 && (y ? Math.floor(unit[i] / DH) : unit[i] % DH) === x; });
      } else if ((m = /^(?:s|step)=?(\d+)$/.exec(w))) { x = +m[1]; tests.push(function (i) { return step[i] === x; }); }
      else if ((m = /^([a-z_]+)(<=|>=|<|>|=)(-?[0-9.]+(?:e[-+]?\d+)?)$/.exec(w)) && byKey[m[1]] && !isNaN(+m[3])) {
        v = m[1] === "step" ? step : byKey[m[1]].v; op = m[2]; x = +m[3];
        tests.push(function (i) { var a = v[i]; return op === ">" ? a > x : op === "<" ? a < x : op === ">=" ? a >= x : op === "<=" ? a <= x : a === x; });
      } else bad.push(w); });
    return {tests: tests, bad: bad}; }
  function filter() {
    var p = parse(q.value), t = p.tests, nt = t.length, out = new Uint32Array(n), k = 0, r, i, j, ok;
    for (r = 0; r < n; r++) {
      for (i = order[r], ok = true, j = 0; j < nt && ok; j++) ok = t[j](i);
      if (ok) out[k++] = i; }
    view = out.subarray(0, k);
    count.textContent = k.toLocaleString("en") + " of " + n.toLocaleString("en") + " units" +
      (p.bad.length ? " · not understood: " + p.bad.join(" ") : "");
    spacer.style.height = Math.max(k * ROW, 1) + "px";
    render(); }
  function render() {  // only the rows in view (and a few around) are in the DOM
    var top = scroll.scrollTop, h = scroll.clientHeight || 440, k, c, r, i;
    var first = Math.max(0, Math.floor(top / ROW) - OVER), last = Math.min(view.length, Math.ceil((top + h) / ROW) + OVER);
    rows.style.transform = "translateY(" + first * ROW + "px)";
    while (pool.length < last - first) {
      r = el("div", "ulx-row"); r.setAttribute("role", "row"); r.tabIndex = 0;
      cols.forEach(function () { r.appendChild(el("span")); });
      r.addEventListener("click", function () { open(+this.dataset.unit); });
      r.addEventListener("keydown", function (e) { if (e.key === "Enter") open(+this.dataset.unit); });
      rows.appendChild(r); pool.push(r); }
    for (k = 0; k < pool.length; k++) {
      r = pool[k]; r.style.display = k < last - first ? "" : "none"; if (k >= last - first) continue;
      i = view[first + k]; r.dataset.unit = i;
      r.className = "ulx-row" + (step[i] !== 0 ? " ulx-pruned" : "") + (i === sel ? " ulx-sel" : "");
      for (c = 0; c < cols.length; c++) r.children[c].textContent = cols[c].t ? cols[c].t(i) : fmt(cols[c].v[i]); } }
  scroll.addEventListener("scroll", function () {
    if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; render(); }); } });
  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(filter, 80); });
  function contexts(s, i, scale) {  // each token coloured by its stored level: red positive, blue negative
    var nc = data.n_contexts, before = data.window[0], W = before + data.window[1] + 1, ol = el("ol"), j, o;
    for (j = 0; j < nc; j++) {
      var c = i * nc + j, p = s.pos[c], li = el("li"), ctx = el("span", "ulx-ctx"); if (p < 0) continue;
      li.appendChild(el("span", "ulx-act", fmt(num(s.act[c]))));
      for (o = 0; o < W; o++) {
        var at = p - before + o, a = (s.win.charCodeAt(c * W + o) - 97 - data.levels) / data.levels, v = s.tok[at];
        if (at < 0 || Math.floor(at / s.width) !== Math.floor(p / s.width) || !(v >= 0) || a < -1) continue;
        var span = el("span", data.special.indexOf(v) >= 0 ? "ulx-special" : null, data.vocab[v] || "∅");
        span.style.background = a >= 0 ? "rgba(231,76,60," + a.toFixed(2) + ")" : "rgba(52,152,219," + (-a).toFixed(2) + ")";
        span.title = "≈ " + fmt(a * scale); if (at === p) span.className += " ulx-max";
        ctx.appendChild(span); }
      li.appendChild(ctx); ol.appendChild(li); }
    return ol.children.length ? ol : el("p", "ulx-none", "no tokens"); }
  function open(i) {
    var card = el("div", "ulx-card"), isA = kind[i] === 1, u = unit[i], table = el("table"), tr = el("tr");
    var method = data.score_methods ? data.score_methods[isA ? "attn" : "mlp"] : null;
    sel = i; render(); card.dataset.unit = i;
    card.appendChild(el("h3", null, (isA ? "attention neuron " : "MLP neuron ") + label(i)));
    card.appendChild(el("div", "ulx-sub", data.hooks[isA ? "attn" : "mlp"].replace("{l}", layer[i]) +
      (isA ? "[..., " + Math.floor(u / DH) + ", " + (u % DH) + "]" : "[..., " + u + "]") +
      (method ? " · score " + fmt(byKey.score.v[i]) + " ('" + method + "', " + data.score_from + ")" : " · no scores") + " · " +
      (step[i] > 0 ? "pruned at step " + step[i] : step[i] < 0 ? "pruned (the run does not record the step)" : "not pruned")));
    ["statistic"].concat(sets.map(function (s) { return s.name; }), R ? ["ratio"] : []).forEach(function (h) { tr.appendChild(el("th", null, h)); });
    table.appendChild(tr);
    [["mean |x|", "abs_mean", 1], ["mean", "mean", 0], ["P(x > 0)", "freq", 1]].forEach(function (st) {
      var r = el("tr");
      r.appendChild(el("td", null, st[0]));
      sets.forEach(function (s) { r.appendChild(el("td", null, fmt(num(s[st[1]][i])))); });
      if (R) r.appendChild(el("td", null, st[2] ? fmt(num(F[st[1]][i]) / num(R[st[1]][i])) : ""));
      table.appendChild(r); });
    card.appendChild(table);
    sets.forEach(function (s) {
      card.appendChild(el("h4", null, "Top contexts on " + s.name + " (" + s.n_tokens.toLocaleString("en") + " tokens scanned)"));
      card.appendChild(contexts(s, i, num(data.scale[i]))); });
    detail.replaceChildren(card); }
  sortBy(data.score ? "score" : "layer", data.score ? -1 : 1);
  return {sortBy: sortBy, filter: filter, open: open, q: q, view: function () { return view; }, label: label, rows: rows,
          scrollTo: function (k) { scroll.scrollTop = k * ROW; render(); }}; }
function selfTest(ex) {  // test hook: #ulx-test?q=...&sort=KEY&dir=asc&open=ROW&bench=1 -> JSON in pre#ulx-test-result
  var h = location.hash, p = new URLSearchParams(h.slice(h.indexOf("?") + 1)), ms = {}, v, first;
  if (h.indexOf("#ulx-test") !== 0) return;
  function time(name, f) { var t0 = performance.now(); f(); ms[name] = Math.max(ms[name] || 0, performance.now() - t0); }
  if (p.get("bench")) {
    ["score", "ratio", "layer", "f_abs", "step", "unit"].forEach(function (k) { time("sort", function () { ex.sortBy(k, -1); }); });
    ["mlp", "attn h2", "l3 pruned", "score>1", "ratio<0.5", ""].forEach(function (w) { time("filter", function () { ex.q.value = w; ex.filter(); }); }); }
  if (p.get("q") !== null) time("query", function () { ex.q.value = p.get("q"); ex.filter(); });
  if (p.get("sort")) time("sort_one", function () { ex.sortBy(p.get("sort"), p.get("dir") === "asc" ? 1 : -1); });
  v = ex.view(); first = Array.prototype.slice.call(v.subarray(0, 20));
  if (p.get("open") !== null && v.length) ex.open(v[+p.get("open")]);
  if (p.get("scroll")) ex.scrollTo(+p.get("scroll"));
  var drawn = Array.prototype.filter.call(ex.rows.children, function (r) { return r.style.display !== "none"; });
  var out = el("pre", null, JSON.stringify({shown: v.length, distinct: new Set(v).size, first: first, ms: ms,
    labels: first.map(function (i) { return ex.label(i); }), drawn: drawn.map(function (r) { return +r.dataset.unit; })}));
  out.id = "ulx-test-result"; document.body.appendChild(out); }
function init() {
  Array.prototype.forEach.call(document.querySelectorAll(".ulx[data-ulx]"), function (root) {
    if (!root.dataset.ulxReady) { root.dataset.ulxReady = "1"; selfTest(Explorer(root)); } }); }
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
"""
"""The explorer's script (in :func:`explorer_html`): it parses the data once and draws only the rows in view."""
