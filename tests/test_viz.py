"""Structure of the figures of unlearn_lens.viz and of the neuron-card HTML, on real runs of a tiny model."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pytest
import torch
from _viz_support import tiny

import unlearn_lens as ul
from unlearn_lens import viz
from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name
from unlearn_lens.scoring import Scores, head_scores
from unlearn_lens.stats import as_token_set


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    return tiny(tmp_path_factory)


def _log10(x: torch.Tensor) -> np.ndarray:
    return x.double().clamp(min=1e-6).log10().numpy()


# --- specialisation map --------------------------------------------------------------------------------------


def test_specialisation_map_mlp(t):
    scores, masks, dims = t.run.initial_scores, t.run.masks, t.run.dims
    fig = viz.specialisation_map(scores, masks)
    assert [tr.type for tr in fig.data] == ["heatmap", "scatter"]
    heat, marks = fig.data
    z = np.asarray(heat.z)
    assert z.shape == (dims.n_layers, dims.d_mlp)
    order = np.asarray(heat.customdata)
    for layer in range(dims.n_layers):
        assert np.all(np.diff(z[layer]) <= 0), "units are sorted by descending score within each layer"
        assert sorted(order[layer].tolist()) == list(range(dims.d_mlp)), "customdata is a permutation of units"
        np.testing.assert_allclose(z[layer], _log10(scores.mlp[layer])[order[layer]])
    # One marker per pruned unit, each at the sorted position of a pruned unit.
    assert len(marks.x) == masks.n_mlp == int(masks.mlp.sum())
    for rank, layer, unit in zip(marks.x, marks.y, marks.customdata):
        assert order[layer][rank] == unit
        assert bool(masks.mlp[layer, unit])
    assert fig.layout.title.text.startswith("Specialisation map of MLP neurons")
    assert "rank within layer" in fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text == "layer"
    assert heat.colorbar.title.text == "log10 score"
    assert "log10" in fig.layout.title.subtitle.text


def test_specialisation_map_attn(t):
    scores, masks, dims = t.run.initial_scores, t.run.masks, t.run.dims
    fig = viz.specialisation_map(scores, masks, kind="attn")
    heat, marks = fig.data
    assert np.asarray(heat.z).shape == (dims.n_layers, dims.n_heads * dims.d_head)
    assert len(marks.x) == masks.n_attn
    flat = masks.attn.reshape(dims.n_layers, -1)
    assert all(bool(flat[layer, unit]) for layer, unit in zip(marks.y, marks.customdata))
    assert "attention neurons" in fig.layout.title.text


def test_specialisation_map_without_masks_and_non_ratio_scores(t):
    fig = viz.specialisation_map(t.run.initial_scores)
    assert [tr.type for tr in fig.data] == ["heatmap"]
    mean = Scores(torch.rand(2, 64, dtype=torch.float64), torch.rand(2, 4, 8, dtype=torch.float64), method="mean")
    fig = viz.specialisation_map(mean, t.run.masks)
    heat = fig.data[0]
    assert "log10" not in heat.colorbar.title.text and "log10" not in fig.layout.title.subtitle.text
    assert "not a ratio" in fig.layout.title.subtitle.text
    np.testing.assert_allclose(np.asarray(heat.z)[0], np.sort(mean.mlp[0].numpy())[::-1])
    rand = Scores(torch.randn(2, 64, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64), method="rand")
    assert "random" in viz.specialisation_map(rand).layout.title.subtitle.text
    with pytest.raises(ul.UnlearnLensError, match="kind"):
        viz.specialisation_map(t.run.initial_scores, kind="heads")


# --- heads and distributions ---------------------------------------------------------------------------------


def test_head_map(t):
    scores, masks, dims = t.run.initial_scores, t.run.masks, t.run.dims
    fig = viz.head_map(scores, masks)
    assert [tr.type for tr in fig.data] == ["heatmap", "heatmap"]
    score_z, share_z = (np.asarray(tr.z) for tr in fig.data)
    assert score_z.shape == share_z.shape == (dims.n_layers, dims.n_heads)
    np.testing.assert_allclose(score_z, _log10(head_scores(scores.attn, "mean")))
    np.testing.assert_allclose(share_z, masks.attn.float().mean(-1).numpy())
    assert share_z.sum() > 0
    titles = [a.text for a in fig.layout.annotations]
    assert "head score (mean)" in titles and "share of head pruned" in titles
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    median = viz.head_map(scores, agg="median")
    assert len(median.data) == 1
    np.testing.assert_allclose(np.asarray(median.data[0].z), _log10(head_scores(scores.attn, "median")))


def test_score_distributions(t):
    scores, dims = t.run.initial_scores, t.run.dims
    fig = viz.score_distributions(scores)
    assert [tr.type for tr in fig.data] == ["box"] * dims.n_layers
    for layer, trace in enumerate(fig.data):
        assert len(trace.y) == dims.d_mlp
        np.testing.assert_allclose(np.asarray(trace.y), _log10(scores.mlp[layer]))
    assert fig.layout.xaxis.title.text == "layer"
    assert fig.layout.yaxis.title.text.startswith("log10 score")
    attn = viz.score_distributions(scores, kind="attn")
    assert all(len(tr.y) == dims.n_heads * dims.d_head for tr in attn.data)


# --- run histories -------------------------------------------------------------------------------------------


def test_pruning_effects(t):
    runs = t.runs
    fig = viz.pruning_effects(runs)
    assert len(fig.data) == 3 * 2 * len(runs)
    assert {tr.type for tr in fig.data} == {"scatter"}
    assert [a.text for a in fig.layout.annotations] == ["top-1 accuracy", "top-10 accuracy", "loss (nats/token)"]
    dims = t.run.dims
    total = dims.n_layers * dims.d_mlp + dims.n_layers * dims.n_heads * dims.d_head
    for name, run in runs.items():
        expected_x = [(s.n_mlp + s.n_attn) / total for s in run.history]
        for dataset in ("forget", "retain"):
            traces = [tr for tr in fig.data if tr.name == f"{name} · {dataset}"]
            assert len(traces) == 3
            for trace, metric in zip(traces, ("top1", "topk", "loss")):
                np.testing.assert_allclose(trace.x, expected_x)
                np.testing.assert_allclose(trace.y, [getattr(getattr(s, dataset), metric) for s in run.history])
    assert fig.layout.xaxis.title.text == "share of MLP + attention neurons pruned"
    assert fig.layout.yaxis.title.text == "accuracy" and fig.layout.yaxis3.title.text == "loss"
    single = viz.pruning_effects(t.run)
    assert len(single.data) == 6


def test_pruning_effects_mlp_only_x_axis(t):
    run = t.run
    mlp_only = ul.PruneRun.from_dict(run.to_dict())
    for s in mlp_only.history:
        s.new_attn = [0] * len(s.new_attn)
        s.attn_counts = [0] * len(s.attn_counts)
    fig = viz.pruning_effects({"selective": mlp_only})
    assert fig.layout.xaxis.title.text == "share of MLP neurons pruned"
    d = run.dims
    np.testing.assert_allclose(fig.data[0].x, [s.n_mlp / (d.n_layers * d.d_mlp) for s in run.history])


def _shoelace(xs, ys) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]))


def test_separability_trajectory(t):
    runs = t.runs
    fig = viz.separability_trajectory(runs)
    assert len(fig.data) == 1 + 3 * len(runs)
    assert fig.data[0].name.startswith("equal damage")
    annotations = [a.text for a in fig.layout.annotations]
    assert len(annotations) == len(runs)
    for name, run in runs.items():
        area = run.separability_area()
        fill = next(tr for tr in fig.data if tr.fill == "toself" and tr.name.startswith(f"{name}:"))
        assert fill.meta["separability_area"] == pytest.approx(area, abs=1e-12)
        assert f"{area:.3f}" in fill.name
        assert any(name in a and f"separability area = {area:.3f}" in a for a in annotations)
        # The shaded polygon has exactly the area the pipeline reports (clockwise, so negative).
        assert abs(_shoelace(list(fill.x), list(fill.y))) == pytest.approx(area, abs=1e-9)
        path = next(tr for tr in fig.data if tr.name == f"{name} steps")
        assert (path.x[0], path.y[0]) == (1.0, 1.0)
        assert len(path.x) == len(run.history)
        f0, r0 = run.base.forget.top1, run.base.retain.top1
        np.testing.assert_allclose(path.x[1:], [s.forget.top1 / f0 for s in run.history[1:]])
        np.testing.assert_allclose(path.y[1:], [s.retain.top1 / r0 for s in run.history[1:]])
    assert fig.layout.xaxis.title.text == "forget top-1 / unpruned"
    assert fig.layout.yaxis.title.text == "retain top-1 / unpruned"
    topk = viz.separability_trajectory(t.run, metric="topk")
    assert topk.data[1].meta["separability_area"] == pytest.approx(t.run.separability_area("topk"))
    with pytest.raises(ul.UnlearnLensError):
        viz.separability_trajectory(t.run, metric="loss")


def test_pruned_per_layer(t):
    run, dims = t.run, t.run.dims
    fig = viz.pruned_per_layer(run)
    assert [tr.type for tr in fig.data] == ["bar"] * (len(run.history) - 1)
    assert fig.layout.barmode == "stack"
    assert [tr.name for tr in fig.data] == [f"step {s.step}" for s in run.history[1:]]
    stacked = np.sum([np.asarray(tr.y) for tr in fig.data], axis=0)
    assert stacked.tolist() == run.final.mlp_counts == run.masks.mlp_counts()
    assert list(fig.data[0].x) == list(range(dims.n_layers))
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "MLP neurons pruned"
    attn = viz.pruned_per_layer(run, kind="attn")
    assert np.sum([np.asarray(tr.y) for tr in attn.data], axis=0).tolist() == run.masks.attn_counts()
    assert attn.layout.yaxis.title.text == "attention neurons pruned"


def test_figures_never_show(t, monkeypatch):
    import plotly.graph_objects as go

    def fail(*args, **kwargs):
        raise AssertionError("a viz function called .show()")

    monkeypatch.setattr(go.Figure, "show", fail)
    viz.specialisation_map(t.run.initial_scores, t.run.masks)
    viz.head_map(t.run.initial_scores, t.run.masks)
    viz.score_distributions(t.run.initial_scores)
    viz.pruning_effects(t.runs)
    viz.separability_trajectory(t.runs)
    viz.pruned_per_layer(t.run)


# --- neuron cards --------------------------------------------------------------------------------------------


def _stats_table(card: str) -> dict[str, list[str]]:
    """{statistic: [cells...]} of a card's statistics table."""
    body = re.search(r'<table class="ul-stats">.*?<tbody>(.*?)</tbody>', card).group(1)
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body):
        cells = re.findall(r"<td>(.*?)</td>", row)
        rows[cells[0]] = cells[1:]
    return rows


def _captured(model, texts, hook: str, index, max_tokens: int):
    """Activations of one unit over a dataset, captured here independently of viz."""
    tokens = as_token_set(model, texts, seq_len=None, max_tokens=max_tokens)
    parts = []
    with attached(model, [(hook, lambda act, hook: parts.append(act[(..., *index)].detach().clone()))]):
        with torch.no_grad():
            model(tokens.tokens)
    return tokens, torch.cat(parts)


def test_neuron_card_mlp_stats_and_top_tokens(t):
    layer, unit = 1, 5
    card = viz.neuron_card(t.model, {"forget": t.code, "retain": t.prose}, layer, unit, max_tokens=400)
    assert card.startswith("<style>") and '<div class="ul-card"' in card
    assert f"MLP neuron L{layer}.N{unit}" in card and f"blocks.{layer}.mlp.hook_post[..., {unit}]" in card
    table = _stats_table(card)
    assert list(table) == ["tokens", "mean", "std", "mean |x|", "RMS", "freq (x &gt; 0)", "max"]
    for col, texts in enumerate((t.code, t.prose)):
        tokens = as_token_set(t.model, texts, seq_len=None, max_tokens=400)
        stats = ul.collect_stats(t.model, tokens, max_tokens=None, progress=False)
        expected = {"tokens": stats.n_tokens, "mean": stats.mlp.mean, "std": stats.mlp.std,
                    "mean |x|": stats.mlp.abs_mean, "RMS": stats.mlp.rms, "freq (x &gt; 0)": stats.mlp.freq,
                    "max": stats.mlp.max}
        assert table["tokens"][col] == f"{stats.n_tokens:,}"
        for key, value in expected.items():
            if key != "tokens":
                assert float(table[key][col]) == pytest.approx(float(value[layer, unit]), rel=2e-3, abs=1e-6), key
    ratio = float(table["mean |x|"][2])
    assert ratio == pytest.approx(float(table["mean |x|"][0]) / float(table["mean |x|"][1]), rel=2e-3)

    # The outlined token of the first forget context is the unit's top-activating token.
    tokens, acts = _captured(t.model, t.code, mlp_hook_name(layer), (unit,), 400)
    acts = acts.masked_fill(~tokens.valid, -math.inf)
    top = int(tokens.tokens.reshape(-1)[acts.reshape(-1).argmax()])
    forget_part, retain_part = card.split("Top 5 contexts on retain")
    assert "Top 5 contexts on forget" in forget_part
    outlined = re.findall(r'class="ul-tok ul-max[^"]*"[^>]*data-token="(\d+)"[^>]*>([^<]*)<', forget_part)
    assert len(outlined) == 5
    assert int(outlined[0][0]) == top
    shown = html.escape(t.model.tokenizer.decode([top]).replace("\n", "↵\n").replace("\t", "→"))
    assert outlined[0][1] == (shown or "∅")
    first_act = float(re.search(r'<span class="ul-act">([^<]+)</span>', forget_part).group(1))
    assert first_act == pytest.approx(float(acts.max()), rel=1e-2)
    assert len(re.findall(r"ul-max", retain_part)) == 5


def test_neuron_card_single_dataset_and_given_stats(t):
    card = viz.neuron_card(t.model, t.code, 0, 3, max_tokens=300, n_contexts=2, include_css=False)
    assert not card.startswith("<style>")
    assert "Top 2 contexts on texts" in card
    assert len(re.findall(r"ul-max", card)) == 2
    stats = {"forget": t.run.forget_stats, "retain": t.run.retain_stats}
    card = viz.neuron_card(t.model, None, 0, 3, forget_texts=t.code, retain_texts=t.prose, stats=stats,
                           max_tokens=300, scores=t.run.initial_scores, masks=t.run.masks)
    table = _stats_table(card)
    assert table["tokens"][0] == f"{t.run.forget_stats.n_tokens:,}"
    assert float(table["mean"][1]) == pytest.approx(float(t.run.retain_stats.mlp.mean[0, 3]), rel=2e-3, abs=1e-6)
    assert "statistics from the given ActivationStats" in card
    assert f"score {float(t.run.initial_scores.mlp[0, 3]):.4g}" in card
    assert ("<b>pruned</b>" in card) == bool(t.run.masks.mlp[0, 3])


def test_neuron_card_attn_units(t):
    d_head = t.run.dims.d_head
    head, d = 2, 3
    flat = viz.neuron_card(t.model, t.code, 1, head * d_head + d, kind="attn", max_tokens=300)
    pair = viz.neuron_card(t.model, t.code, 1, (head, d), kind="attn", max_tokens=300)
    assert flat == pair
    assert f"attention neuron L1.H{head}.D{d}" in flat and f"blocks.1.attn.hook_z[..., {head}, {d}]" in flat
    tokens, acts = _captured(t.model, t.code, attn_hook_name(1), (head, d), 300)
    x = acts[tokens.valid].double()
    assert float(_stats_table(flat)["mean"][0]) == pytest.approx(float(x.mean()), rel=2e-3, abs=1e-6)
    with pytest.raises(ul.UnlearnLensError, match="out of range"):
        viz.neuron_card(t.model, t.code, 1, (4, 0), kind="attn")
    with pytest.raises(ul.UnlearnLensError, match="out of range"):
        viz.neuron_card(t.model, t.code, 0, 64)
    with pytest.raises(ul.UnlearnLensError, match="layer"):
        viz.neuron_card(t.model, t.code, 2, 0)
    with pytest.raises(ul.UnlearnLensError, match="texts"):
        viz.neuron_card(t.model, None, 0, 0)


def test_neuron_card_escapes_html(t):
    texts = ["<script>alert('x')</script> & <b>bold</b>"] * 20
    card = viz.neuron_card(t.model, texts, 0, 0, max_tokens=200)
    assert "<script>" not in card and "<b>bold" not in card
    assert "&lt;" in card and "&amp;" in card
