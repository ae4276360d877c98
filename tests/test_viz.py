"""Structure of the figures of unlearn_lens.report.viz and of the neuron-card HTML, on real runs of a tiny model."""

from __future__ import annotations

import dataclasses
import html
import math
import re

import numpy as np
import pytest
import torch
from _viz_support import forget_falling, interpolated_retain, tiny

import unlearn_lens as ul
from unlearn_lens import viz
from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name
from unlearn_lens.report.cards import neuron_card
from unlearn_lens.scoring import Scores, head_scores, top_units
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
    mean = Scores(torch.rand(2, 64, dtype=torch.float64), torch.rand(2, 4, 8, dtype=torch.float64), "mean", "mean")
    fig = viz.specialisation_map(mean, t.run.masks)
    heat = fig.data[0]
    assert "log10" not in heat.colorbar.title.text and "log10" not in fig.layout.title.subtitle.text
    assert "not a ratio" in fig.layout.title.subtitle.text
    np.testing.assert_allclose(np.asarray(heat.z)[0], np.sort(mean.mlp[0].numpy())[::-1])
    rand = Scores(torch.randn(2, 64, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64), "rand", "rand")
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
    # Attention neurons are flattened head-major: unit head * d_head + d.
    for layer, trace in enumerate(attn.data):
        expected = [
            float(np.log10(max(float(scores.attn[layer, h, d]), 1e-6)))
            for h in range(dims.n_heads)
            for d in range(dims.d_head)
        ]
        np.testing.assert_allclose(np.asarray(trace.y), expected)


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
    assert len(viz.pruning_effects(t.run).data) == 12, "a single run brings its baseline"
    alone = dataclasses.replace(t.run, baseline=None)
    assert len(viz.pruning_effects(alone).data) == 6


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
    # Neither run of the untrained tiny model halves forget top-1: no headline markers.
    assert all(run.retain_at_forget(0.5) is None for run in runs.values())
    assert len(fig.data) == 1 + 3 * len(runs)
    assert fig.data[0].name.startswith("equal damage")
    (vline,) = fig.layout.shapes
    assert (vline.x0, vline.x1) == (0.5, 0.5)
    annotations = [a.text for a in fig.layout.annotations]
    assert len(annotations) == len(runs) + 1 and "forget top-1 = 50%" in annotations
    for name, run in runs.items():
        area = run.separability_area()
        xs, _ = run.relative_path()
        fill = next(tr for tr in fig.data if tr.fill == "toself" and tr.name.startswith(f"{name}:"))
        assert fill.meta["separability_area"] == pytest.approx(area, abs=1e-12)
        assert fill.name == f"{name}: area {area:.3f} (closed from step {run.final.step} to (0, 0))"
        (text,) = [a for a in annotations if a.startswith(f"<b>{name}</b>")]
        assert f"forget never reached 50% (last step: {xs[-1]:.0%})" in text
        assert f"area {area:.3f}, closed from the last step (depends on where the run stopped)" in text
        # The shaded polygon has exactly the area the run reports (clockwise, so negative).
        assert abs(_shoelace(list(fill.x), list(fill.y))) == pytest.approx(area, abs=1e-9)
        path = next(tr for tr in fig.data if tr.name == f"{name} steps")
        assert (path.x[0], path.y[0]) == (1.0, 1.0)
        assert len(path.x) == len(run.history)
        f0, r0 = run.base.forget.top1, run.base.retain.top1
        np.testing.assert_allclose(path.x[1:], [s.forget.top1 / f0 for s in run.history[1:]])
        np.testing.assert_allclose(path.y[1:], [s.retain.top1 / r0 for s in run.history[1:]])
        closure = next(tr for tr in fig.data if tr.name == f"{name} closure")
        assert (closure.x, closure.y) == ((path.x[-1], 0.0), (path.y[-1], 0.0))
    assert fig.layout.xaxis.title.text == "forget top-1 / unpruned"
    assert fig.layout.yaxis.title.text == "retain top-1 / unpruned"
    topk = viz.separability_trajectory(t.run, metric="topk")
    assert topk.data[1].meta["separability_area"] == pytest.approx(t.run.separability_area("topk"))
    with pytest.raises(ul.UnlearnLensError):
        viz.separability_trajectory(t.run, metric="loss")


def test_separability_trajectory_marks_where_forget_halves(t):
    run = forget_falling(t.run, (0.8, 0.3))
    expected = interpolated_retain(run, 0.5)
    assert expected is not None and run.retain_at_forget(0.5) == pytest.approx(expected, abs=1e-12)
    fig = viz.separability_trajectory(run)  # with its (random) baseline, which does not get there
    stars = [tr for tr in fig.data if tr.meta and "retain_at_forget" in tr.meta]
    assert len(stars) == 1 and len(fig.data) == 1 + 3 * 2 + 1
    (star,) = stars
    assert star.meta == {"retain_at_forget": pytest.approx(expected, abs=1e-12), "level": 0.5}
    assert (tuple(star.x), star.y[0]) == ((0.5,), pytest.approx(expected, abs=1e-12))
    assert star.marker.symbol == "star" and star.showlegend is not False
    assert star.name == f"selective: retain {expected:.1%} at forget 50%"
    annotations = [a.text for a in fig.layout.annotations]
    assert any(
        a.startswith("<b>selective</b>") and f"retain top-1 = {expected:.1%} at forget 50%" in a for a in annotations
    )
    # The star lies on the path: between steps 1 and 2, on the straight segment joining them.
    path = next(tr for tr in fig.data if tr.name == "selective steps")
    (x1, x2), (y1, y2) = path.x[1:3], path.y[1:3]
    assert (x1, x2) == pytest.approx((0.8, 0.3))
    assert star.y[0] == pytest.approx(y1 + (y2 - y1) * (x1 - 0.5) / (x1 - x2))
    # Another level moves the marker; one that is never reached removes it.
    at_70 = viz.separability_trajectory(dataclasses.replace(run, baseline=None), level=0.7)
    (star70,) = [tr for tr in at_70.data if tr.meta and "retain_at_forget" in tr.meta]
    assert star70.x[0] == 0.7 and star70.y[0] == pytest.approx(interpolated_retain(run, 0.7))
    at_10 = viz.separability_trajectory(dataclasses.replace(run, baseline=None), level=0.1)
    assert not [tr for tr in at_10.data if tr.meta and "retain_at_forget" in tr.meta]
    assert any("forget never reached 10% (last step: 30%)" in a.text for a in at_10.layout.annotations)


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


# --- top units (the report's choice of neuron cards) ----------------------------------------------------------


def test_top_units_are_the_highest_initial_scores(t):
    scores = t.run.initial_scores
    units = top_units(scores, 5)
    values = [float(scores.mlp[layer, unit]) for layer, unit in units]
    assert values == sorted(values, reverse=True)
    assert values[0] == float(scores.mlp.max())
    assert len(set(units)) == 5
    assert values == scores.mlp.reshape(-1).topk(5).values.tolist()


def test_top_units_nonfinite_scores(t):
    base = t.run.initial_scores
    assert torch.isfinite(base.mlp).all() and torch.isfinite(base.attn).all()
    mlp, attn = base.mlp.clone(), base.attn.clone()
    mlp[1, 3], mlp[0, 7], mlp[0, 2] = math.inf, math.nan, -math.inf
    attn[1, 2, 3], attn[0, 0, 1] = math.inf, math.nan
    scores = Scores(mlp, attn, base.mlp_scoring, base.attn_scoring)
    n_mlp = mlp.numel()

    kept = top_units(scores, n_mlp, exclude_nonfinite=False)
    assert kept[0] == (1, 3), "+inf ranks first"
    assert kept[-1] == (0, 2), "-inf ranks last"
    assert (0, 7) not in kept and len(kept) == n_mlp - 1, "NaN is never returned"
    assert all(not math.isnan(float(mlp[u])) for u in kept)
    finite = top_units(scores, n_mlp)
    assert len(finite) == n_mlp - 3 and {(1, 3), (0, 7), (0, 2)}.isdisjoint(finite)
    assert finite[0] == kept[1] and finite == kept[1:-1]
    assert float(mlp[finite[0]]) == float(mlp[torch.isfinite(mlp)].max())

    d_head = t.run.dims.d_head
    (first,) = top_units(scores, 1, "attn", exclude_nonfinite=False)
    assert first == (1, 2 * d_head + 3), "attention units are flat: head * d_head + d"
    everything = top_units(scores, attn.numel(), "attn", exclude_nonfinite=False)
    assert (0, 1) not in everything and len(everything) == attn.numel() - 1
    assert (1, 2 * d_head + 3) not in top_units(scores, attn.numel(), "attn")
    assert top_units(scores, 0) == []


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
    card = neuron_card(t.model, {"forget": t.code, "retain": t.prose}, layer, unit, max_tokens=400)
    assert card.startswith("<style>") and '<div class="ul-card"' in card
    assert f"MLP neuron L{layer}.N{unit}" in card and f"blocks.{layer}.mlp.hook_post[..., {unit}]" in card
    table = _stats_table(card)
    assert list(table) == ["tokens", "mean", "std", "mean |x|", "RMS", "freq (x &gt; 0)", "max"]
    for col, texts in enumerate((t.code, t.prose)):
        tokens = as_token_set(t.model, texts, seq_len=None, max_tokens=400)
        stats = ul.collect_stats(t.model, tokens, max_tokens=None, progress=False)
        expected = {
            "tokens": stats.n_tokens,
            "mean": stats.mlp.mean,
            "std": stats.mlp.std,
            "mean |x|": stats.mlp.abs_mean,
            "RMS": stats.mlp.rms,
            "freq (x &gt; 0)": stats.mlp.freq,
            "max": stats.mlp.max,
        }
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
    card = neuron_card(t.model, t.code, 0, 3, max_tokens=300, n_contexts=2, include_css=False)
    assert not card.startswith("<style>")
    assert "Top 2 contexts on texts" in card
    assert len(re.findall(r"ul-max", card)) == 2
    stats = {"forget": t.run.forget_stats, "retain": t.run.retain_stats}
    card = neuron_card(
        t.model,
        None,
        0,
        3,
        forget_texts=t.code,
        retain_texts=t.prose,
        stats=stats,
        max_tokens=300,
        scores=t.run.initial_scores,
        masks=t.run.masks,
    )
    table = _stats_table(card)
    assert table["tokens"][0] == f"{t.run.forget_stats.n_tokens:,}"
    assert float(table["mean"][1]) == pytest.approx(float(t.run.retain_stats.mlp.mean[0, 3]), rel=2e-3, abs=1e-6)
    assert "statistics from the given ActivationStats" in card
    assert f"score {float(t.run.initial_scores.mlp[0, 3]):.4g}" in card
    assert ("<b>pruned</b>" in card) == bool(t.run.masks.mlp[0, 3])


def test_neuron_card_attn_units(t):
    d_head = t.run.dims.d_head
    head, d = 2, 3
    flat = neuron_card(t.model, t.code, 1, head * d_head + d, kind="attn", max_tokens=300)
    pair = neuron_card(t.model, t.code, 1, (head, d), kind="attn", max_tokens=300)
    assert flat == pair
    assert f"attention neuron L1.H{head}.D{d}" in flat and f"blocks.1.attn.hook_z[..., {head}, {d}]" in flat
    tokens, acts = _captured(t.model, t.code, attn_hook_name(1), (head, d), 300)
    x = acts[tokens.valid].double()
    assert float(_stats_table(flat)["mean"][0]) == pytest.approx(float(x.mean()), rel=2e-3, abs=1e-6)
    with pytest.raises(ul.UnlearnLensError, match="out of range"):
        neuron_card(t.model, t.code, 1, (4, 0), kind="attn")
    with pytest.raises(ul.UnlearnLensError, match="out of range"):
        neuron_card(t.model, t.code, 0, 64)
    with pytest.raises(ul.UnlearnLensError, match="layer"):
        neuron_card(t.model, t.code, 2, 0)
    with pytest.raises(ul.UnlearnLensError, match="texts"):
        neuron_card(t.model, None, 0, 0)


def test_neuron_card_escapes_html(t):
    texts = ["<script>alert('x')</script> & <b>bold</b>"] * 20
    card = neuron_card(t.model, texts, 0, 0, max_tokens=200)
    assert "<script>" not in card and "<b>bold" not in card
    assert "&lt;" in card and "&amp;" in card
