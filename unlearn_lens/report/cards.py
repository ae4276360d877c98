"""Neuron cards: what single units respond to.

A card shows one MLP neuron (``blocks.{l}.mlp.hook_post[..., i]``) or attention
neuron (``blocks.{l}.attn.hook_z[..., h, d]``): its statistics on each dataset
(count, mean, population std, mean |x|, RMS, P(x > 0), max, and the forget / retain
ratio) and the contexts where it fires most strongly, each token coloured by the
unit's activation. Unlike :mod:`unlearn_lens.report.viz`, this module runs the model.

* :func:`unit_activations`: one unit's activation on every token of a dataset;
* :func:`neuron_card` / :func:`neuron_cards`: the HTML cards (one forward pass per
  dataset for any number of units).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import attached, hook_name, model_device, model_dims
from unlearn_lens.scoring import Scores
from unlearn_lens.stats import ActivationStats

__all__ = ["CARD_CSS", "neuron_card", "neuron_cards", "unit_activations"]

Dataset = Sequence[str] | TokenSet


def _check_kind(kind: str) -> None:
    if kind not in ("mlp", "attn"):
        raise UnlearnLensError(f"kind must be 'mlp' or 'attn', got {kind!r}")


CARD_CSS = """
.ul-card{border:1px solid #d5d8dc;border-radius:8px;padding:14px 16px;margin:14px 0;background:#fff}
.ul-card h3{margin:0 0 4px 0;font-size:1.05em}
.ul-card .ul-sub{color:#5d6d7e;font-size:.85em;margin-bottom:10px}
.ul-card .ul-sub code{font-size:1em}
.ul-card table.ul-stats{border-collapse:collapse;font-size:.85em;margin:6px 0 10px 0}
.ul-card table.ul-stats th,.ul-card table.ul-stats td{padding:3px 10px;border-bottom:1px solid #eaecee;text-align:right}
.ul-card table.ul-stats th:first-child,.ul-card table.ul-stats td:first-child{text-align:left}
.ul-card table.ul-stats thead th{border-bottom:2px solid #aab7b8}
.ul-card h4{margin:10px 0 4px 0;font-size:.9em}
.ul-card ol.ul-contexts{margin:0;padding-left:1.6em;font-size:.85em}
.ul-card ol.ul-contexts li{margin:3px 0}
.ul-card .ul-act{display:inline-block;min-width:4.5em;color:#5d6d7e;font-variant-numeric:tabular-nums}
.ul-card .ul-ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
  background:#fbfcfc;border-radius:3px;padding:1px 3px}
.ul-card .ul-tok{border-radius:2px}
.ul-card .ul-max{outline:2px solid #17202a;font-weight:bold}
.ul-card .ul-special{color:#95a5a6}
.ul-card .ul-none{color:#95a5a6;font-style:italic}
"""
"""Style sheet of the neuron cards (included once per page)."""

_STAT_ROWS = (
    ("tokens", "n"),
    ("mean", "mean"),
    ("std", "std"),
    ("mean |x|", "abs_mean"),
    ("RMS", "rms"),
    ("freq (x > 0)", "freq"),
    ("max", "max"),
)


@dataclass
class _Unit:
    kind: str
    layer: int
    index: int  # flat index: MLP neuron, or head * d_head + d
    head: int | None = None
    d: int | None = None

    @property
    def hook(self) -> str:
        return hook_name(self.kind, self.layer)

    @property
    def label(self) -> str:
        if self.kind == "mlp":
            return f"MLP neuron L{self.layer}.N{self.index}"
        return f"attention neuron L{self.layer}.H{self.head}.D{self.d}"

    @property
    def address(self) -> str:
        if self.kind == "mlp":
            return f"{self.hook}[..., {self.index}]"
        return f"{self.hook}[..., {self.head}, {self.d}]"


def _resolve_unit(model: Any, kind: str, layer: int, unit: int | tuple[int, int]) -> _Unit:
    _check_kind(kind)
    dims = model_dims(model)
    if not 0 <= int(layer) < dims.n_layers:
        raise UnlearnLensError(f"layer {layer} is out of range: the model has {dims.n_layers} layers")
    if kind == "mlp":
        if isinstance(unit, tuple) or not 0 <= int(unit) < dims.d_mlp:
            raise UnlearnLensError(f"MLP unit {unit!r} is out of range: d_mlp is {dims.d_mlp}")
        return _Unit("mlp", int(layer), int(unit))
    if isinstance(unit, tuple):
        head, d = (int(u) for u in unit)
    else:
        head, d = divmod(int(unit), dims.d_head)
    if not (0 <= head < dims.n_heads and 0 <= d < dims.d_head):
        raise UnlearnLensError(
            f"attention unit {unit!r} is out of range: {dims.n_heads} heads of {dims.d_head} neurons"
        )
    return _Unit("attn", int(layer), head * dims.d_head + d, head, d)


@torch.no_grad()
def _capture(model: Any, tokens: TokenSet, units: Sequence[_Unit], batch_size: int) -> list[torch.Tensor]:
    """Activations ``[rows pos]`` (float32, CPU) of each unit over all of ``tokens``, in one pass."""
    found: list[list[torch.Tensor]] = [[] for _ in units]
    hooks = []
    by_hook: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_hook.setdefault(u.hook, []).append(i)
    for name, members in by_hook.items():

        def fn(activation: torch.Tensor, hook: Any, members: list[int] = members) -> None:
            for i in members:
                u = units[i]
                x = activation[..., u.index] if u.kind == "mlp" else activation[..., u.head, u.d]
                found[i].append(x.detach().to("cpu", torch.float32))

        hooks.append((name, fn))
    device = model_device(model)
    with attached(model, hooks):
        for batch in tokens.batches(batch_size, device):
            model(batch.tokens)
    return [torch.cat(parts, 0) for parts in found]


def unit_activations(
    model: Any,
    texts: Dataset,
    layer: int,
    unit: int | tuple[int, int],
    kind: str = "mlp",
    *,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> tuple[TokenSet, torch.Tensor]:
    """Activations of one unit on every token of a dataset.

    Args:
        model: a TransformerLens model.
        texts: texts or a :class:`TokenSet`.
        layer: the layer.
        unit: MLP neuron index; for ``kind="attn"`` a flat index ``head * d_head + d``
            or a ``(head, d)`` tuple.
        kind: ``"mlp"`` (``blocks.{layer}.mlp.hook_post``) or ``"attn"`` (``hook_z``).
        max_tokens: counted tokens to use at most.
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.

    Returns:
        ``(tokens, activations)``: the token rows used and ``[rows pos]`` activations
        (BOS and padding positions are included; ``tokens.valid`` tells them apart).
    """
    u = _resolve_unit(model, kind, layer, unit)
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
    return tokens, _capture(model, tokens, [u], batch_size)[0]


def _stats_from_activations(acts: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    x = acts[valid].double()
    n = x.numel()
    if n == 0:
        return {name: math.nan for _, name in _STAT_ROWS} | {"n": 0}
    mean = float(x.mean())
    return {
        "n": n,
        "mean": mean,
        "std": float(x.std(unbiased=False)),
        "abs_mean": float(x.abs().mean()),
        "rms": float(x.pow(2).mean().sqrt()),
        "freq": float((x > 0).double().mean()),
        "max": float(x.max()),
    }


def _stats_from_object(stats: ActivationStats, u: _Unit) -> dict[str, float]:
    block = stats.mlp if u.kind == "mlp" else stats.attn
    index = (u.layer, u.index) if u.kind == "mlp" else (u.layer, u.head, u.d)
    return {
        "n": int(block.count[index]),
        "mean": float(block.mean[index]),
        "std": float(block.std[index]),
        "abs_mean": float(block.abs_mean[index]),
        "rms": float(block.rms[index]),
        "freq": float(block.freq[index]),
        "max": float(block.max[index]),
    }


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.4g}"


_VISIBLE = str.maketrans({"\n": "↵\n", "\t": "→", "\r": "␍"})


class _Decoder:
    """Token id -> display text, cached."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            text = self.tokenizer.decode([token]) if self.tokenizer is not None else f"<{token}>"
            self.cache[token] = text
        return self.cache[token]


def _top_positions(acts: torch.Tensor, valid: torch.Tensor, n: int, gap: int) -> list[tuple[int, int]]:
    """The ``n`` highest-activating valid positions, at most one per ``gap``-token stretch of a row."""
    flat = acts.masked_fill(~valid, -math.inf).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    width = acts.shape[1]
    chosen: list[tuple[int, int]] = []
    for idx in order.tolist():
        if flat[idx] == -math.inf or len(chosen) >= n:
            break
        row, pos = divmod(idx, width)
        if any(r == row and abs(p - pos) <= gap for r, p in chosen):
            continue
        chosen.append((row, pos))
    return chosen


def _token_span(text: str, token: int, act: float, scale: float, is_max: bool, special: bool) -> str:
    a = max(-1.0, min(1.0, act / scale)) if scale > 0 else 0.0
    colour = f"rgba(231,76,60,{abs(a):.2f})" if a >= 0 else f"rgba(52,152,219,{abs(a):.2f})"
    classes = "ul-tok" + (" ul-max" if is_max else "") + (" ul-special" if special else "")
    body = html.escape(text.translate(_VISIBLE)) or "∅"
    return (
        f'<span class="{classes}" style="background:{colour}" data-token="{token}" '
        f'title="token {token}: {act:.4g}">{body}</span>'
    )


def _render_contexts(
    tokens: TokenSet, acts: torch.Tensor, decode: _Decoder, n_contexts: int, before: int, after: int, scale: float
) -> str:
    chosen = _top_positions(acts, tokens.valid, n_contexts, gap=before)
    if not chosen:
        return '<p class="ul-none">no tokens</p>'
    items = []
    for row, pos in chosen:
        start, stop = max(1, pos - before), min(tokens.tokens.shape[1], pos + after + 1)
        spans = []
        for p in range(start, stop):
            if not bool(tokens.valid[row, p]):
                continue
            tok = int(tokens.tokens[row, p])
            spans.append(_token_span(decode(tok), tok, float(acts[row, p]), scale, p == pos, tok in decode.special))
        items.append(
            f'<li><span class="ul-act">{float(acts[row, pos]):.3g}</span>'
            f'<span class="ul-ctx">{"".join(spans)}</span></li>'
        )
    return f'<ol class="ul-contexts">{"".join(items)}</ol>'


def _datasets(texts: Any, forget_texts: Dataset | None, retain_texts: Dataset | None) -> dict[str, Dataset]:
    out: dict[str, Dataset] = {}
    if isinstance(texts, Mapping):
        out.update(texts)
    elif texts is not None:
        out["texts"] = texts
    if forget_texts is not None:
        out["forget"] = forget_texts
    if retain_texts is not None:
        out["retain"] = retain_texts
    if not out:
        raise UnlearnLensError("neuron cards need texts: a dataset, {'forget': ..., 'retain': ...}, or forget_texts=")
    return out


def neuron_cards(
    model: Any,
    texts: Dataset | Mapping[str, Dataset] | None,
    units: Sequence[tuple[int, int | tuple[int, int]]],
    kind: str = "mlp",
    *,
    forget_texts: Dataset | None = None,
    retain_texts: Dataset | None = None,
    n_contexts: int = 5,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
    stats: Mapping[str, ActivationStats] | None = None,
    scores: Scores | None = None,
    masks: Masks | None = None,
    context: tuple[int, int] = (16, 4),
    include_css: bool = True,
) -> list[str]:
    """HTML cards for several units at once (one forward pass per dataset).

    See :func:`neuron_card` for the arguments; ``units`` is a list of ``(layer, unit)``.

    Returns:
        One HTML string per unit, in order.
    """
    if n_contexts < 0:
        raise UnlearnLensError(f"n_contexts must be non-negative, got {n_contexts}")
    resolved = [_resolve_unit(model, kind, layer, unit) for layer, unit in units]
    datasets = _datasets(texts, forget_texts, retain_texts)
    if stats is not None:
        unknown = set(stats) - set(datasets)
        if unknown:
            raise UnlearnLensError(
                f"stats given for {sorted(unknown)}, which are not among the datasets {sorted(datasets)}"
            )
    decode = _Decoder(getattr(model, "tokenizer", None))
    captured: dict[str, tuple[TokenSet, list[torch.Tensor]]] = {}
    for name, data in datasets.items():
        tokens = as_token_set(model, data, seq_len=seq_len, max_tokens=max_tokens)
        captured[name] = (tokens, _capture(model, tokens, resolved, batch_size))
    before, after = context
    cards = []
    for i, u in enumerate(resolved):
        table = {
            name: (
                _stats_from_object(stats[name], u)
                if stats is not None and name in stats
                else _stats_from_activations(acts[i], tokens.valid)
            )
            for name, (tokens, acts) in captured.items()
        }
        scale = max(
            (float(acts[i][tokens.valid].abs().max()) if tokens.n_tokens else 0.0) for tokens, acts in captured.values()
        )
        head = [f"<h3>{html.escape(u.label)}</h3>", f'<div class="ul-sub"><code>{html.escape(u.address)}</code>']
        if scores is not None:
            s = scores.mlp[u.layer, u.index] if u.kind == "mlp" else scores.attn[u.layer, u.head, u.d]
            head.append(f" · score {float(s):.4g} ('{html.escape(scores.method_of(u.kind))}')")
        if masks is not None:
            m = masks.mlp[u.layer, u.index] if u.kind == "mlp" else masks.attn[u.layer, u.head, u.d]
            head.append(" · <b>pruned</b>" if bool(m) else " · not pruned")
        source = (
            "statistics from the given ActivationStats"
            if stats is not None
            else "statistics over the tokens scanned here (BOS and padding excluded)"
        )
        head.append(f" · {source}</div>")
        names = list(captured)
        ratio_col = "forget" in table and "retain" in table
        header = "".join(f"<th>{html.escape(n)}</th>" for n in names) + (
            "<th>forget / retain</th>" if ratio_col else ""
        )
        rows = []
        for label, key in _STAT_ROWS:
            cells = "".join(f"<td>{_fmt(table[n][key])}</td>" for n in names)
            if ratio_col:
                f, r = table["forget"][key], table["retain"][key]
                ratio = f / r if key not in ("n", "mean", "max") and r else None
                cells += f"<td>{_fmt(ratio) if ratio is not None else ''}</td>"
            rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
        stats_html = (
            f'<table class="ul-stats"><thead><tr><th>statistic</th>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        contexts = []
        for name, (tokens, acts) in captured.items():
            contexts.append(f"<h4>Top {n_contexts} contexts on {html.escape(name)}</h4>")
            contexts.append(_render_contexts(tokens, acts[i], decode, n_contexts, before, after, scale))
        style = f"<style>{CARD_CSS}</style>" if include_css else ""
        cards.append(
            f'{style}<div class="ul-card" data-layer="{u.layer}" data-unit="{u.index}" data-kind="{u.kind}">'
            f"{''.join(head)}{stats_html}{''.join(contexts)}</div>"
        )
    return cards


def neuron_card(
    model: Any,
    texts: Dataset | Mapping[str, Dataset] | None,
    layer: int,
    unit: int | tuple[int, int],
    kind: str = "mlp",
    *,
    forget_texts: Dataset | None = None,
    retain_texts: Dataset | None = None,
    n_contexts: int = 5,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
    stats: Mapping[str, ActivationStats] | None = None,
    scores: Scores | None = None,
    masks: Masks | None = None,
    context: tuple[int, int] = (16, 4),
    include_css: bool = True,
) -> str:
    """An HTML card of one unit: its statistics per dataset and its top-activating contexts.

    Activations are read at ``blocks.{layer}.mlp.hook_post`` (``[batch pos d_mlp]``) or
    ``blocks.{layer}.attn.hook_z`` (``[batch pos head d_head]``) of ``model`` as it is
    (run it inside :func:`unlearn_lens.pruned` to see a pruned model). Tokens are
    coloured by activation: red positive, blue negative, scaled by the largest
    |activation| of the unit over all datasets; the top token of each context is outlined.

    Args:
        model: a TransformerLens model with a tokenizer.
        texts: one dataset (texts or a :class:`TokenSet`), or ``{"forget": ..., "retain": ...}``
            (any names), or None when ``forget_texts`` / ``retain_texts`` are given.
        layer: the layer.
        unit: MLP neuron index; for ``kind="attn"`` a flat index ``head * d_head + d`` or
            a ``(head, d)`` tuple.
        kind: ``"mlp"`` or ``"attn"``.
        forget_texts: the forget dataset (added as ``"forget"``).
        retain_texts: the retain dataset (added as ``"retain"``).
        n_contexts: top contexts shown per dataset.
        max_tokens: counted tokens scanned per dataset.
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.
        stats: ``{dataset name: ActivationStats}`` to take the statistics table from
            (e.g. a run's ``forget_stats``); by default they are computed over the
            scanned tokens (count, mean, population std, mean |x|, RMS, freq x > 0, max).
        scores: show the unit's score.
        masks: show whether the unit is pruned.
        context: tokens shown before and after the top token.
        include_css: start with a ``<style>`` block (leave out when the page has :data:`CARD_CSS`).

    Returns:
        The card as an HTML string (a ``div`` of class ``ul-card``; all text escaped).
    """
    return neuron_cards(
        model,
        texts,
        [(layer, unit)],
        kind,
        forget_texts=forget_texts,
        retain_texts=retain_texts,
        n_contexts=n_contexts,
        max_tokens=max_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        stats=stats,
        scores=scores,
        masks=masks,
        context=context,
        include_css=include_css,
    )[0]
