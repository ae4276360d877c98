"""Scores, selection, masks and the random baseline."""

from __future__ import annotations

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.scoring import head_scores, random_masks_like


@pytest.fixture(scope="module")
def stats_pair(gpt2):
    forget = ul.collect_stats(gpt2, CODE, max_tokens=400, progress=False)
    retain = ul.collect_stats(gpt2, PROSE, max_tokens=400, progress=False)
    return forget, retain


@pytest.mark.parametrize(
    "method, attr",
    [("abs", "abs_mean"), ("freq", "freq"), ("rms", "rms"), ("std", "std"), ("sqrt", "sqrt_abs_mean")],
)
def test_ratio_methods(stats_pair, method, attr):
    forget, retain = stats_pair
    s = ul.score(forget, retain, scoring=method)
    torch.testing.assert_close(s.mlp, getattr(forget.mlp, attr) / (getattr(retain.mlp, attr) + 1e-3))
    torch.testing.assert_close(s.attn, getattr(forget.attn, attr) / (getattr(retain.attn, attr) + 1e-4))
    s2 = ul.score(forget, retain, scoring=method, mlp_eps=0.5, attn_eps=0.25)
    torch.testing.assert_close(s2.mlp, getattr(forget.mlp, attr) / (getattr(retain.mlp, attr) + 0.5))
    torch.testing.assert_close(s2.attn, getattr(forget.attn, attr) / (getattr(retain.attn, attr) + 0.25))


def test_wanda_weighs_rms_by_the_output_weights(gpt2, stats_pair):
    from unlearn_lens.pruning import output_norms

    forget, retain = stats_pair
    norms = output_norms(gpt2)
    dims = ul.ModelDims.of(gpt2)
    # by hand: GPT-2's MLP output projection is a Conv1D with weight [d_mlp, d_model]; attention's c_proj likewise
    for layer in range(dims.n_layers):
        block = gpt2.original_model.transformer.h[layer]
        torch.testing.assert_close(norms["mlp"][layer], block.mlp.c_proj.weight.double().norm(dim=1))
        by_hand = block.attn.c_proj.weight.double().norm(dim=1).reshape(dims.n_heads, dims.d_head)
        torch.testing.assert_close(norms["attn"][layer], by_hand)
    s = ul.score(forget, retain, scoring="wanda", output_norms=norms)
    torch.testing.assert_close(s.mlp, forget.mlp.rms * norms["mlp"] / (retain.mlp.rms * norms["mlp"] + 1e-3))
    torch.testing.assert_close(s.attn, forget.attn.rms * norms["attn"] / (retain.attn.rms * norms["attn"] + 1e-4))
    # the norm acts through eps: a unit whose output weights shrink scores lower, all else equal
    small = {"mlp": norms["mlp"] * 1e-3, "attn": norms["attn"]}
    shrunk = ul.score(forget, retain, scoring="wanda", output_norms=small)
    assert bool((shrunk.mlp <= s.mlp + 1e-12).all()) and bool((shrunk.mlp < s.mlp).any())
    with pytest.raises(ul.UnlearnLensError, match="needs the norms of the units' output weights"):
        ul.score(forget, retain, scoring="wanda")
    run = ul.selective_prune(
        gpt2,
        CODE,
        PROSE,
        ul.PruneConfig(mlp_frac=0.1, n_steps=1, collect_tokens=200, eval_tokens=100, seq_len=32, scoring="wanda"),
        progress=False,
    )
    assert run.initial_scores.mlp_scoring == "wanda" and run.masks.n_mlp == round(0.1 * dims.n_mlp)


def test_mean_and_rand(stats_pair):
    forget, retain = stats_pair
    s = ul.score(forget, retain, scoring="mean")
    torch.testing.assert_close(s.mlp, (forget.mlp.mean - retain.mlp.mean).abs())
    a, b, c = (ul.score(forget, retain, scoring="rand", seed=k) for k in (1, 1, 2))
    assert torch.equal(a.mlp, b.mlp) and not torch.equal(a.mlp, c.mlp)
    assert abs(float(a.mlp.mean())) < 0.3 and 0.7 < float(a.mlp.std()) < 1.3


def test_bad_method_and_mismatched_stats(stats_pair, native_gated):
    forget, retain = stats_pair
    with pytest.raises(ul.UnlearnLensError, match="unknown scoring method 'magic'"):
        ul.score(forget, retain, scoring="magic")
    other = ul.collect_stats(native_gated, PROSE, max_tokens=100, progress=False)
    with pytest.raises(ul.UnlearnLensError, match="different models"):
        ul.score(forget, other)


def _scores(mlp, attn):
    return ul.Scores(torch.as_tensor(mlp, dtype=torch.float64), torch.as_tensor(attn, dtype=torch.float64))


def test_global_selection_counts_and_order():
    torch.manual_seed(0)
    s = _scores(torch.rand(3, 100), torch.rand(3, 4, 5))
    m = ul.select(s, mlp_frac=0.05, attn_frac=0.1)
    assert m.n_mlp == 15 and m.n_attn == 6
    chosen = s.mlp[m.mlp]
    assert float(chosen.min()) >= float(s.mlp[~m.mlp].max())


def test_per_layer_selection():
    torch.manual_seed(0)
    s = _scores(torch.rand(3, 100) * torch.tensor([[1.0], [10.0], [100.0]]), torch.rand(3, 4, 5))
    glob = ul.select(s, mlp_frac=0.1)
    assert glob.mlp_counts() == [0, 0, 30]
    per = ul.select(s, mlp_frac=0.1, per_layer=True)
    assert per.mlp_counts() == [10, 10, 10]


def test_exclude_is_never_reselected():
    torch.manual_seed(0)
    s = _scores(torch.rand(2, 50), torch.rand(2, 2, 4))
    first = ul.select(s, mlp_frac=0.1, attn_frac=0.25)
    second = ul.select(s, mlp_frac=0.1, attn_frac=0.25, exclude=first)
    assert not (first.mlp & second.mlp).any() and not (first.attn & second.attn).any()
    assert second.n_mlp == 10 and second.n_attn == 4
    # the second pick is the next-best block of scores
    assert float(s.mlp[second.mlp].max()) <= float(s.mlp[first.mlp].min())


def test_ties_break_deterministically():
    s = _scores(torch.ones(2, 10), torch.ones(2, 2, 2))
    m = ul.select(s, mlp_frac=0.15, attn_frac=0.25)
    assert m.mlp.reshape(-1).nonzero().squeeze(1).tolist() == [0, 1, 2]
    assert m.attn.reshape(-1).nonzero().squeeze(1).tolist() == [0, 1]
    assert m == ul.select(s, mlp_frac=0.15, attn_frac=0.25)


@pytest.mark.parametrize("agg", ["mean", "median"])
def test_whole_heads(agg):
    attn = torch.zeros(2, 3, 4, dtype=torch.float64)
    attn[1, 2] = torch.tensor([5.0, 5.0, 5.0, 0.0])  # high mean and median
    attn[0, 1] = torch.tensor([100.0, 0.0, 0.0, 0.0])  # high mean, low median
    s = _scores(torch.rand(2, 8), attn)
    m = ul.select(s, attn_frac=1 / 6, heads=True, head_agg=agg)  # one head of six
    head = (1, 2) if agg == "median" else (0, 1)
    assert m.attn[head].all() and m.n_attn == 4
    assert torch.equal(s.heads(agg), head_scores(attn, agg))


@pytest.mark.parametrize("frac", [-0.1, 1.5, float("nan")])
def test_fraction_out_of_range(frac):
    s = _scores(torch.rand(2, 8), torch.rand(2, 2, 2))
    with pytest.raises(ul.UnlearnLensError, match="fraction in \\[0, 1\\]"):
        ul.select(s, mlp_frac=frac)


def test_mask_algebra_and_counts():
    a = ul.Masks(torch.tensor([[True, False], [False, False]]), torch.zeros(2, 1, 2, dtype=torch.bool))
    b = ul.Masks(torch.tensor([[False, False], [True, True]]), torch.ones(2, 1, 2, dtype=torch.bool))
    c = a | b
    assert c.mlp_counts() == [1, 2] and c.attn_counts() == [2, 2] and c.n_mlp == 3
    with pytest.raises(ul.UnlearnLensError, match="do not fit"):
        _ = a | ul.Masks(torch.zeros(3, 2, dtype=torch.bool), torch.zeros(3, 1, 2, dtype=torch.bool))


def test_random_masks_like_keeps_per_layer_counts():
    torch.manual_seed(0)
    s = _scores(torch.rand(4, 64) ** torch.arange(1, 5)[:, None], torch.rand(4, 2, 8))
    sel = ul.select(s, mlp_frac=0.2, attn_frac=0.1)
    r1, r2 = random_masks_like(sel, seed=1), random_masks_like(sel, seed=2)
    assert r1.mlp_counts() == sel.mlp_counts() and r1.attn_counts() == sel.attn_counts()
    assert r1 == random_masks_like(sel, seed=1) and r1 != r2
    r3 = random_masks_like(sel, seed=3, exclude=r1)
    assert not (r3.mlp & r1.mlp).any()


def test_random_masks_like_keeps_whole_heads():
    s = _scores(torch.rand(3, 16), torch.rand(3, 4, 8))
    sel = ul.select(s, attn_frac=0.25, heads=True)
    assert sel.whole_heads and sel.n_attn == 3 * 8
    for seed in range(5):
        r = random_masks_like(sel, seed=seed)
        counts = r.head_counts()
        assert counts.dtype != torch.bool and set(counts.unique().tolist()) <= {0, 8}
        assert r.attn_counts() == sel.attn_counts()
    neurons = random_masks_like(sel, seed=0, heads=False)
    assert not neurons.whole_heads and neurons.attn_counts() == sel.attn_counts()


def test_scoring_per_unit_kind(stats_pair):
    forget, retain = stats_pair
    s = ul.score(forget, retain, mlp_scoring="freq", attn_scoring="mean")
    assert (s.mlp_scoring, s.attn_scoring) == ("freq", "mean")
    torch.testing.assert_close(s.mlp, forget.mlp.freq / (retain.mlp.freq + 1e-3))
    torch.testing.assert_close(s.attn, (forget.attn.mean - retain.attn.mean).abs())
    shared = ul.score(forget, retain, scoring="rms", attn_scoring="abs")
    torch.testing.assert_close(shared.mlp, ul.score(forget, retain, scoring="rms").mlp)
    torch.testing.assert_close(shared.attn, ul.score(forget, retain, scoring="abs").attn)
    with pytest.raises(ul.UnlearnLensError, match="unknown mlp_scoring method 'magic'"):
        ul.score(forget, retain, mlp_scoring="magic")


def test_scores_file_round_trip(stats_pair, tmp_path):
    s = ul.score(*stats_pair, mlp_scoring="std", attn_scoring="sqrt")
    s.save(tmp_path / "s.safetensors")
    back = ul.Scores.load(tmp_path / "s.safetensors")
    assert torch.equal(back.mlp, s.mlp) and torch.equal(back.attn, s.attn)
    assert (back.mlp_scoring, back.attn_scoring, back.config) == ("std", "sqrt", s.config)


def test_mask_files(gpt2, native_gated, tmp_path):
    dims = ul.ModelDims.of(gpt2)
    m = ul.Masks.empty(dims)
    m.mlp[1, 3] = True
    m.save(tmp_path / "m.safetensors")
    assert ul.Masks.load(tmp_path / "m.safetensors", model=gpt2) == m
    with pytest.raises(ul.UnlearnLensError, match="was made for a model with"):
        ul.Masks.load(tmp_path / "m.safetensors", model=native_gated)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ul.UnlearnLensError, match="not a readable safetensors file"):
        ul.Masks.load(tmp_path / "bad.safetensors")
