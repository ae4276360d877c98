"""Neuron cards: what single units respond to.

A card shows one MLP neuron (``blocks.{l}.mlp.hook_post[..., i]``) or attention
neuron (``blocks.{l}.attn.hook_z[..., h, d]``): its statistics on each dataset
(count, mean, population std, mean |x|, RMS, P(x > 0), max, and the forget / retain
ratio) and the contexts where it fires most strongly, each token coloured by the
unit's activation. Unlike :mod:`unlearn_lens.report.viz`, this module runs the model.

* :func:`unit_activations`: one unit's activation on every token of a dataset;
* :func:`neuron_cards` / :func:`neuron_card`: the HTML cards (one forward pass per
  dataset for any number of units), rendered from ``templates/card.html.j2`` and styled by
  :func:`card_css`. Labels, token texts, colours and the choice of contexts follow
  :mod:`unlearn_lens.report.display`, as the neuron explorer's do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from markupsafe import Markup

from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import attached, check_kind, model_device, model_dims
from unlearn_lens.report.display import TokenDecoder, Unit, distinct_top, ramp_colour
from unlearn_lens.report.templating import render, static_text
from unlearn_lens.scoring import Scores
from unlearn_lens.stats import ActivationStats

__all__ = ["card_css", "neuron_card", "neuron_cards", "unit_activations"]

Dataset = Sequence[str] | TokenSet

_STAT_ROWS = (
    ("tokens", "n"),
    ("mean", "mean"),
    ("std", "std"),
    ("mean |x|", "abs_mean"),
    ("RMS", "rms"),
    ("freq (x > 0)", "freq"),
    ("max", "max"),
)
_NO_RATIO = ("n", "mean", "max")  # statistics whose forget / retain ratio means nothing


def card_css() -> Markup:
    """The style sheet of the neuron cards (``report/static/card.css``), to include once per page."""
    return static_text("card.css")


def _resolve_unit(model: Any, kind: str, layer: int, unit: int | tuple[int, int]) -> Unit:
    check_kind(kind)
    dims = model_dims(model)
    if not 0 <= int(layer) < dims.n_layers:
        raise UnlearnLensError(f"layer {layer} is out of range: the model has {dims.n_layers} layers")
    if kind == "mlp":
        if isinstance(unit, tuple) or not 0 <= int(unit) < dims.d_mlp:
            raise UnlearnLensError(f"MLP unit {unit!r} is out of range: d_mlp is {dims.d_mlp}")
        return Unit("mlp", int(layer), int(unit))
    if isinstance(unit, tuple):
        head, d = (int(u) for u in unit)
    else:
        head, d = divmod(int(unit), dims.d_head)
    if not (0 <= head < dims.n_heads and 0 <= d < dims.d_head):
        raise UnlearnLensError(
            f"attention unit {unit!r} is out of range: {dims.n_heads} heads of {dims.d_head} neurons"
        )
    return Unit("attn", int(layer), head * dims.d_head + d, head, d)


@torch.no_grad()
def _capture(model: Any, tokens: TokenSet, units: Sequence[Unit], batch_size: int) -> list[torch.Tensor]:
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


def _stats_from_object(stats: ActivationStats, u: Unit) -> dict[str, float]:
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


def _top_positions(acts: torch.Tensor, valid: torch.Tensor, n: int, gap: int) -> list[tuple[int, int]]:
    """``(row, pos)`` of the ``n`` highest valid activations, at most one per ``gap``-token stretch of a row."""
    flat = acts.masked_fill(~valid, -math.inf).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    positions, width = order.tolist(), acts.shape[1]
    chosen = distinct_top(flat[order].tolist(), positions, n, gap, width)
    return [divmod(positions[j], width) for j in chosen]


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


def _at(u: Unit, mlp: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The unit's entry of per-unit tensors ``[layer d_mlp]`` and ``[layer head d_head]``."""
    if u.kind == "mlp":
        return mlp[u.layer, u.index]
    return attn[u.layer, u.head, u.d]


@dataclass
class _Scan:
    """One dataset's token rows and each unit's activations ``[rows pos]`` on them."""

    tokens: TokenSet
    acts: list[torch.Tensor]


@dataclass
class _Cards:
    """What the cards of one :func:`neuron_cards` call share: the scanned datasets and what to show."""

    scans: dict[str, _Scan]
    decode: TokenDecoder
    stats: Mapping[str, ActivationStats] | None
    scores: Scores | None
    masks: Masks | None
    n_contexts: int
    context: tuple[int, int]
    css: Markup | None

    def card(self, i: int, u: Unit) -> str:
        """The card of the ``i``-th unit, ``u``."""
        columns, rows = self._statistics(i, u)
        scale = max(
            float(scan.acts[i][scan.tokens.valid].abs().max()) if scan.tokens.n_tokens else 0.0
            for scan in self.scans.values()
        )
        datasets = [
            {"name": name, "contexts": self._contexts(scan.tokens, scan.acts[i], scale)}
            for name, scan in self.scans.items()
        ]
        score = None if self.scores is None else _at(u, self.scores.mlp, self.scores.attn)
        if self.stats is not None:
            source = "statistics from the given ActivationStats"
        else:
            source = "statistics over the tokens scanned here (BOS and padding excluded)"
        return render(
            "card.html.j2",
            css=self.css,
            unit=u,
            score=None if score is None else f"{float(score):.4g}",
            method=None if self.scores is None else self.scores.scoring_of(u.kind),
            pruned=None if self.masks is None else bool(_at(u, self.masks.mlp, self.masks.attn)),
            source=source,
            columns=columns,
            rows=rows,
            n_contexts=self.n_contexts,
            datasets=datasets,
        )

    def _statistics(self, i: int, u: Unit) -> tuple[list[str], list[dict[str, Any]]]:
        """The statistics table: its column names and rows (label and cells, a forget / retain ratio last)."""
        table = {}
        for name, scan in self.scans.items():
            if self.stats is not None and name in self.stats:
                table[name] = _stats_from_object(self.stats[name], u)
            else:
                table[name] = _stats_from_activations(scan.acts[i], scan.tokens.valid)
        names = list(table)
        with_ratio = "forget" in table and "retain" in table
        rows = []
        for label, key in _STAT_ROWS:
            cells = [_fmt(table[name][key]) for name in names]
            if with_ratio:
                forget, retain = table["forget"][key], table["retain"][key]
                cells.append(_fmt(forget / retain) if key not in _NO_RATIO and retain else "")
            rows.append({"label": label, "cells": cells})
        return names + (["forget / retain"] if with_ratio else []), rows

    def _contexts(self, tokens: TokenSet, acts: torch.Tensor, scale: float) -> list[dict[str, Any]]:
        """The unit's top contexts on one dataset: the top activation and every token of the window around it."""
        before, after = self.context
        contexts = []
        for row, pos in _top_positions(acts, tokens.valid, self.n_contexts, gap=before):
            start, stop = max(1, pos - before), min(tokens.tokens.shape[1], pos + after + 1)
            shown = [p for p in range(start, stop) if bool(tokens.valid[row, p])]
            contexts.append(
                {
                    "value": f"{float(acts[row, pos]):.3g}",
                    "tokens": [
                        self._token(int(tokens.tokens[row, p]), float(acts[row, p]), scale, p == pos) for p in shown
                    ],
                }
            )
        return contexts

    def _token(self, token: int, act: float, scale: float, is_max: bool) -> dict[str, Any]:
        classes = ["ul-tok"]
        if is_max:
            classes.append("ul-max")
        if token in self.decode.special:
            classes.append("ul-special")
        return {
            "id": token,
            "text": self.decode.shown(token),
            "value": f"{act:.4g}",
            "colour": ramp_colour(act, scale),
            "classes": " ".join(classes),
        }


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
    """HTML cards of units: their statistics per dataset and their top-activating contexts, in one pass per dataset.

    Activations are read at ``blocks.{layer}.mlp.hook_post`` (``[batch pos d_mlp]``) or
    ``blocks.{layer}.attn.hook_z`` (``[batch pos head d_head]``) of ``model`` as it is
    (run it inside :func:`unlearn_lens.pruned` to see a pruned model). Tokens are
    coloured by activation: red positive, blue negative, scaled by the largest
    |activation| of the unit over all datasets; the top token of each context is outlined.

    Args:
        model: a TransformerLens model with a tokenizer.
        texts: one dataset (texts or a :class:`TokenSet`), or ``{"forget": ..., "retain": ...}``
            (any names), or None when ``forget_texts`` / ``retain_texts`` are given.
        units: ``(layer, unit)`` of each card; ``unit`` is the MLP neuron index, or for
            ``kind="attn"`` a flat index ``head * d_head + d`` or a ``(head, d)`` tuple.
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
        scores: show each unit's score.
        masks: show whether each unit is pruned.
        context: tokens shown before and after the top token.
        include_css: start each card with a ``style`` element (leave out when the page has
            :func:`card_css`).

    Returns:
        One HTML string per unit, in order (a ``div`` of class ``ul-card``; all text escaped).

    Raises:
        UnlearnLensError: a unit or layer out of range, an unknown kind, no texts, or ``stats``
            of a dataset that is not given.
    """
    if n_contexts < 0:
        raise UnlearnLensError(f"n_contexts must be non-negative, got {n_contexts}")
    resolved = [_resolve_unit(model, kind, layer, unit) for layer, unit in units]
    datasets = _datasets(texts, forget_texts, retain_texts)
    unknown = set(stats or ()) - set(datasets)
    if unknown:
        raise UnlearnLensError(
            f"stats given for {sorted(unknown)}, which are not among the datasets {sorted(datasets)}"
        )
    scans = {}
    for name, data in datasets.items():
        tokens = as_token_set(model, data, seq_len=seq_len, max_tokens=max_tokens)
        scans[name] = _Scan(tokens, _capture(model, tokens, resolved, batch_size))
    cards = _Cards(
        scans=scans,
        decode=TokenDecoder(getattr(model, "tokenizer", None)),
        stats=stats,
        scores=scores,
        masks=masks,
        n_contexts=n_contexts,
        context=context,
        css=card_css() if include_css else None,
    )
    return [cards.card(i, u) for i, u in enumerate(resolved)]


def neuron_card(
    model: Any,
    texts: Dataset | Mapping[str, Dataset] | None,
    layer: int,
    unit: int | tuple[int, int],
    kind: str = "mlp",
    **options: Any,
) -> str:
    """The HTML card of one unit: :func:`neuron_cards` of ``[(layer, unit)]``.

    Args:
        model: a TransformerLens model with a tokenizer.
        texts: the datasets, as for :func:`neuron_cards`.
        layer: the layer.
        unit: MLP neuron index; for ``kind="attn"`` a flat index ``head * d_head + d`` or
            a ``(head, d)`` tuple.
        kind: ``"mlp"`` or ``"attn"``.
        **options: the keyword arguments of :func:`neuron_cards` (``forget_texts``,
            ``retain_texts``, ``n_contexts``, ``max_tokens``, ``stats``, ``scores``, ``masks``, ...).

    Returns:
        The card as an HTML string (a ``div`` of class ``ul-card``; all text escaped).
    """
    return neuron_cards(model, texts, [(layer, unit)], kind, **options)[0]
