"""Evaluation, the iterative loop, the random baseline and the separability area."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CODE, PROSE, our_hooks

import unlearn_lens as ul


def test_evaluate_matches_manual_computation(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:5], seq_len=20)
    result = ul.evaluate(gpt2, tokens, topk=3, progress=False)
    with torch.no_grad():
        logits = gpt2(tokens.tokens)[:, :-1]
    target, keep = tokens.tokens[:, 1:], tokens.valid[:, 1:]
    lg, tg = logits[keep], target[keep]
    loss = torch.nn.functional.cross_entropy(lg, tg).item()
    assert result.n_tokens == int(keep.sum())
    assert result.top1 == pytest.approx((lg.argmax(-1) == tg).float().mean().item())
    assert result.topk == pytest.approx((lg.topk(3).indices == tg[:, None]).any(-1).float().mean().item())
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_skip_common_drops_the_most_frequent_targets(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=20)
    full = ul.evaluate(gpt2, tokens, progress=False)
    target, keep = tokens.tokens[:, 1:], tokens.valid[:, 1:]
    counts = torch.bincount(target[keep])
    top3 = counts.argsort(descending=True, stable=True)[:3]
    skipped = ul.evaluate(gpt2, tokens, skip_common=3, progress=False)
    assert skipped.n_tokens == full.n_tokens - int(counts[top3].sum())
    with pytest.raises(ul.UnlearnLensError, match="skip_common"):
        ul.evaluate(gpt2, tokens, skip_common=-1)


def test_evaluate_with_masks_equals_context(gpt2):
    masks = ul.Masks.empty(ul.model_dims(gpt2))
    masks.mlp[:, ::3] = True
    with ul.pruned(gpt2, masks):
        inside = ul.evaluate(gpt2, CODE, max_tokens=300, progress=False)
    assert ul.evaluate(gpt2, CODE, max_tokens=300, masks=masks, progress=False) == inside
    assert our_hooks(gpt2) == 0


CFG = dict(ff_frac=0.1, attn_frac=0.05, n_steps=3, collect_tokens=300, eval_tokens=300, seq_len=32)


@pytest.fixture(scope="module")
def run(gpt2):
    return ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**CFG), progress=False)


def test_loop_prunes_round_frac_per_step_and_never_reselects(run, gpt2):
    dims = ul.model_dims(gpt2)
    assert len(run.history) == 4 and run.history[0].n_mlp == 0
    per_step_mlp = round(0.1 * dims.n_layers * dims.d_mlp)
    per_step_attn = round(0.05 * dims.n_layers * dims.n_heads * dims.d_head)
    for prev, cur in zip(run.history, run.history[1:]):
        assert sum(cur.new_mlp) == per_step_mlp and sum(cur.new_attn) == per_step_attn
        # cumulative masks only grow, by exactly the new units
        assert (prev.masks.mlp & ~cur.masks.mlp).sum() == 0
        assert cur.masks.n_mlp == prev.masks.n_mlp + per_step_mlp
        assert cur.masks.mlp_counts() == cur.mlp_counts
    assert run.masks == run.history[-1].masks
    assert our_hooks(gpt2) == 0


def test_same_seed_same_masks(run, gpt2):
    again = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**CFG), progress=False)
    assert all(a.masks == b.masks for a, b in zip(run.history, again.history))
    assert again.history[-1].forget == run.history[-1].forget


def test_rand_scoring_depends_on_seed(gpt2):
    cfg = {**CFG, "scoring": "rand", "n_steps": 1}
    a = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=1), progress=False)
    b = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=1), progress=False)
    c = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=2), progress=False)
    assert a.masks == b.masks and a.masks != c.masks


def test_random_baseline_copies_per_layer_counts(run, gpt2):
    base = ul.selective_prune(gpt2, CODE, PROSE, run.config, baseline="random", reference=run, progress=False)
    assert base.kind == "random" and len(base.history) == len(run.history)
    for sel, rnd in zip(run.history, base.history):
        assert sel.new_mlp == rnd.new_mlp and sel.new_attn == rnd.new_attn
        assert sel.mlp_counts == rnd.mlp_counts
    assert base.masks != run.masks
    assert base.history[0].forget == run.history[0].forget  # same unpruned model and tokens
    free = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**{**CFG, "n_steps": 2}), baseline="random",
                              progress=False)
    assert sum(free.history[1].new_mlp) == sum(run.history[1].new_mlp)


def test_mean_ablation_run_records_means(gpt2):
    r = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**{**CFG, "ablation": "mean", "n_steps": 2}),
                           progress=False)
    assert r.means is not None and r.means.n_tokens == 300


def test_stop_at_forget_target(gpt2):
    cfg = ul.PruneConfig(**{**CFG, "ff_frac": 0.15, "n_steps": 6, "stop_at_forget_top1": 0.98})
    r = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    rel = [s.forget.top1 / r.history[0].forget.top1 for s in r.history]
    # it stops at the first step at or below the target, and not before
    assert all(v > 0.98 for v in rel[1:-1])
    assert rel[-1] <= 0.98 or len(r.history) == cfg.n_steps + 1
    full = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**{**CFG, "ff_frac": 0.15, "n_steps": 6}),
                              progress=False)
    assert len(full.history) == 7
    assert [s.forget for s in full.history[: len(r.history)]] == [s.forget for s in r.history]


def test_json_round_trip(run):
    data = json.loads(run.to_json())
    assert data["kind"] == "selective" and len(data["steps"]) == 4
    assert data["steps"][1]["new_mlp"] == run.history[1].new_mlp
    assert data["summary"]["separability_area"] == pytest.approx(run.separability_area())
    back = ul.PruneRun.from_dict(data)
    assert back.history[2].forget == run.history[2].forget
    assert back.config == run.config and back.separability_area() == pytest.approx(run.separability_area())


def _history(points):
    rows = []
    for i, (f, r) in enumerate(points):
        ev = lambda v: ul.EvalResult(top1=v, topk=v, loss=1.0, perplexity=math.e, n_tokens=10)  # noqa: E731
        rows.append(ul.StepRecord(i, [0], [0], [0], [0], ev(f), ev(r)))
    return rows


def test_separability_area_geometry():
    # retain untouched while forget falls to 0: the whole unit square
    assert ul.separability_area(_history([(0.5, 0.5), (0.0, 0.5)])) == pytest.approx(1.0)
    # both fall together (the diagonal): half the square
    assert ul.separability_area(_history([(0.4, 0.4), (0.2, 0.2)])) == pytest.approx(0.5)
    # stops early at (0.5, 1.0): a unit rectangle to x=0.5 then a triangle to the origin
    assert ul.separability_area(_history([(0.3, 0.3), (0.15, 0.3)])) == pytest.approx(0.5 * 1 + 0.5 * 1 / 2)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"ff_frac": 1.5}, "ff_frac must be a fraction"),
        ({"attn_frac": -0.1}, "attn_frac must be a fraction"),
        ({"ff_frac": 0.0, "attn_frac": 0.0}, "nothing would be pruned"),
        ({"n_steps": 0}, "n_steps must be at least 1"),
        ({"scoring": "magic"}, "unknown scoring method"),
        ({"ablation": "noise"}, "unknown ablation"),
        ({"stop_at_forget_top1": 2.0}, "stop_at_forget_top1"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ul.UnlearnLensError, match=match):
        ul.PruneConfig(**bad)
    with pytest.raises(ul.UnlearnLensError, match="unknown PruneConfig fields"):
        ul.PruneConfig.from_dict({"frac": 0.1})


def test_config_dict_round_trip():
    cfg = ul.PruneConfig(ff_frac=0.05, heads=True, seq_len=64)
    assert ul.PruneConfig.from_dict(cfg.to_dict()) == cfg
