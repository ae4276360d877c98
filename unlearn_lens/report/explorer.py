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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from markupsafe import Markup

from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import UNIT_KINDS, ModelDims, hook_name, model_device, model_dims
from unlearn_lens.report.display import TokenDecoder, distinct_top, ramp_colours, unit_templates
from unlearn_lens.report.templating import render, script_json, static_text
from unlearn_lens.results import PruneRun
from unlearn_lens.stats import ActivationStats, stream_units

__all__ = [
    "EXPLORER_FORMAT",
    "TopActivations",
    "explorer_css",
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


class RunningTopK:
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


def window_index(tokens: TokenSet, before: int, after: int) -> Int[torch.Tensor, "counted window"]:
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
    window_of = window_index(tokens, before, after).to(device)
    stats, top = ActivationStats.empty(dims, device), {}

    def update(kind: str, layer: int, rows: torch.Tensor, workspace: Any) -> None:
        (stats.mlp if kind == "mlp" else stats.attn).update(rows, layer, workspace)
        x = rows.reshape(rows.shape[0], -1).float()
        if (kind, layer) not in top:
            top[kind, layer] = RunningTopK(x.shape[1], k, before + after + 1, x.device)
        top[kind, layer].update(x, window_of)

    seen = stream_units(
        model, tokens, update, batch_size=batch_size, progress=False, desc="explorer", owner="top_activations"
    )
    if seen != tokens.n_tokens:
        raise UnlearnLensError("top_activations runs in one process: call it outside a torch.distributed group")
    flat = tokens.valid.reshape(-1).nonzero().squeeze(1).to(device)
    parts: list[RunningTopK] = []
    for kind in UNIT_KINDS:
        for layer in range(dims.n_layers):
            if (kind, layer) not in top:  # no counted tokens at all
                n_units = dims.d_mlp if kind == "mlp" else dims.n_heads * dims.d_head
                top[kind, layer] = RunningTopK(n_units, k, before + after + 1, device)
            parts.append(top[kind, layer])
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
    """``[unit n]`` columns of the best ``n`` candidates per unit (:func:`~unlearn_lens.report.display.distinct_top`).

    -1 fills the columns of a unit with fewer than ``n`` distinct candidates.
    """
    chosen = torch.full((values.shape[0], n), -1, dtype=torch.long)
    for u, (vals, pos) in enumerate(zip(values.tolist(), positions.tolist())):
        taken = distinct_top(vals, pos, n, gap, width)
        chosen[u, : len(taken)] = torch.tensor(taken, dtype=torch.long)
    return chosen


def _vocabulary(scans: Mapping[str, TopActivations]) -> tuple[dict[int, int], torch.Tensor]:
    """The tokens of the scanned rows: ``{token id: vocab index}`` and the lookup table ``[id]`` -> index (-1: none).

    Indices follow the datasets in order, the ids of each in increasing order.
    """
    vocab_of: dict[int, int] = {}
    for scan in scans.values():
        for token in sorted(set(scan.tokens.tokens[scan.tokens.valid].tolist())):
            vocab_of.setdefault(token, len(vocab_of))
    lut = torch.full((max([*vocab_of, 0]) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(list(vocab_of), dtype=torch.long)] = torch.arange(len(vocab_of))
    return vocab_of, lut


def _chosen_windows(windows: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``[unit n window]``: the windows ``[unit k window]`` of the chosen candidates ``[unit n]`` (NaN: none)."""
    index = chosen.clamp(min=0)[..., None].expand(-1, -1, windows.shape[-1])
    return windows.gather(1, index).masked_fill((chosen < 0)[..., None], math.nan)


def _window_codes(windows: torch.Tensor, scale: torch.Tensor) -> str:
    """Windows ``[unit n window]`` quantised to ``LEVELS`` of each unit's ``scale``, one letter per token."""
    level = (windows / scale.clamp(min=1e-30)[:, None, None] * LEVELS).round().clamp(-LEVELS, LEVELS)
    codes = (level.nan_to_num(-LEVELS - 1) + LEVELS + 1).long().reshape(-1).tolist()
    return "".join(("." + _ALPHABET)[q] for q in codes)


def _dataset_data(
    name: str, scan: TopActivations, chosen: torch.Tensor, win: str, lut: torch.Tensor, digits: int
) -> dict[str, Any]:
    """One entry of ``sets`` (see :func:`explorer_data`): the dataset's tokens, statistics and chosen contexts."""
    tokens, block, picked = scan.tokens, scan.stats, chosen.clamp(min=0)
    tok = torch.where(tokens.valid, lut[tokens.tokens.clamp(0, lut.numel() - 1)], -1)
    act = torch.where(chosen >= 0, scan.values.gather(1, picked), math.nan)
    return {
        "name": name,
        "n_tokens": tokens.n_tokens,
        "width": int(tokens.tokens.shape[1]),
        "tok": tok.reshape(-1).tolist(),
        "mean": _rounded(_flat(block.mlp.mean, block.attn.mean), digits),
        "abs_mean": _rounded(_flat(block.mlp.abs_mean, block.attn.abs_mean), digits),
        "freq": _rounded(_flat(block.mlp.freq, block.attn.freq), digits),
        "pos": torch.where(chosen >= 0, scan.positions.gather(1, picked), -1).reshape(-1).tolist(),
        "act": _rounded(act.reshape(-1), digits),
        "win": win,
    }


def _score_from(run: PruneRun) -> str:
    """Which model the explorer's scores were collected on."""
    if run.initial_scores is not None:
        return "the unpruned model (step 1)"
    if run.scores is not None:
        return "the last step (the already pruned model)"
    return ""


def _pruned_steps(run: PruneRun) -> list[int]:
    """The step that pruned each unit (0: never; -1: pruned, at a step the run does not record)."""
    if run.pruned_step is not None:
        return _flat(*run.pruned_step).tolist()
    return (-_flat(run.masks.mlp, run.masks.attn).int()).tolist()


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
    ``window`` ``[before, after]``, ``levels``, ``n_contexts``; ``vocab`` (the decoded
    tokens as shown: :func:`~unlearn_lens.report.display.token_text`), ``special`` (their
    indices of special tokens); ``scale`` (per unit, the largest |activation| in its stored windows); ``sets``, one per
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
    decode = TokenDecoder(getattr(model, "tokenizer", None))
    vocab_of, lut = _vocabulary(scans)
    chosen = {
        name: _distinct(s.values, s.positions, n_contexts, before, s.tokens.tokens.shape[1])
        for name, s in scans.items()
    }
    windows = {name: _chosen_windows(s.windows, chosen[name]) for name, s in scans.items()}
    scale = torch.stack([w.abs().nan_to_num(0.0).amax((1, 2)) for w in windows.values()]).amax(0)
    scores = run.initial_scores if run.initial_scores is not None else run.scores
    return {
        "format": EXPLORER_FORMAT,
        "dims": dims.to_dict(),
        "hooks": {kind: hook_name(kind, 0).replace(".0.", ".{l}.", 1) for kind in UNIT_KINDS},
        "score": None if scores is None else _rounded(_flat(scores.mlp, scores.attn), digits),
        "score_methods": None if scores is None else {kind: scores.scoring_of(kind) for kind in UNIT_KINDS},
        "score_from": _score_from(run),
        "step": _pruned_steps(run),
        "step_known": run.pruned_step is not None,
        "last_step": run.final.step,
        "window": [before, after],
        "levels": LEVELS,
        "n_contexts": n_contexts,
        "vocab": [decode.shown(t) for t in vocab_of],
        "special": [i for t, i in vocab_of.items() if t in decode.special],
        "scale": _rounded(scale, digits),
        "sets": [
            _dataset_data(name, scan, chosen[name], _window_codes(windows[name], scale), lut, digits)
            for name, scan in scans.items()
        ],
    }


# --- the page component ---------------------------------------------------------------------------------------


def explorer_css() -> Markup:
    """The style sheet of the explorer (``report/static/explorer.css``), to include once per page."""
    return static_text("explorer.css")


def _display(data: Mapping[str, Any]) -> dict[str, Any]:
    """The display rules the script follows: each kind's unit texts as templates, and the colour of each level."""
    return {
        "units": {kind: unit_templates(kind) for kind in UNIT_KINDS},
        "ramp": ramp_colours(data["levels"]),
    }


def explorer_html(
    data: Mapping[str, Any], *, include_css: bool = True, dashboards: Mapping[str, Any] | None = None
) -> str:
    """The explorer as one HTML fragment: its frame, its data and display rules as JSON, its script (and style).

    The fragment is ``templates/explorer.html.j2``; the script is ``static/explorer.js``.
    The data and the display rules (:mod:`unlearn_lens.report.display`: the unit texts and
    the colour of each activation level) sit in ``script`` elements of type ``application/json``
    with ``<``, ``>`` and ``&`` escaped; the script puts every token and label in as text,
    never as HTML. For tests, a URL hash
    ``#ulx-test?q=...&sort=KEY&dir=asc|desc&open=ROW&scroll=ROW&bench=1&hover=1&show=1`` searches, sorts,
    opens, points at the opened unit's first top token and scrolls (``show``: the page to the
    opened unit) after loading and writes
    what it saw (rows shown, first units and labels, units drawn, timings in ms, what the
    pointer showed, the resources the page fetched) as JSON into ``<pre id="ulx-test-result">``.

    With ``dashboards`` (:func:`~unlearn_lens.report.dashboard_view.page_data`, keyed by
    row index), a row that has one opens the unit's dashboard (``static/dashboard.js``)
    instead of its card.

    Args:
        data: from :func:`explorer_data` (or data of that layout).
        include_css: start with a ``style`` element (leave out when the page has :func:`explorer_css`
            and the dashboards' style sheet).
        dashboards: unit dashboards, or None.

    Returns:
        The HTML fragment (one ``div.ulx`` and its scripts).
    """
    css = None
    if include_css:
        css = explorer_css() if dashboards is None else Markup(explorer_css() + "\n" + static_text("dashboard.css"))
    return render(
        "explorer.html.j2",
        css=css,
        data=script_json(data),
        display=script_json(_display(data)),
        script=static_text("explorer.js"),
        dashboards=None if dashboards is None else script_json(dashboards),
        dashboard_script=None if dashboards is None else static_text("dashboard.js"),
    )
