"""Evaluation, the iterative loop, the random baseline, the run record and its directory.

Behaviour tests of the loop run on the bundled demo model (code top-1 about 0.39,
prose top-1 about 0.28, far above chance) with small token budgets, so that what
they assert (forget falls faster than retain, the loop stops at its target) is a
property of the method and not of noise.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CODE, PROSE, our_hooks

import unlearn_lens as ul
from unlearn_lens.pipeline import _Data
from unlearn_lens.results import StepRecord, retain_at_forget, separability_area


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
    # the same pass also measures every target, common ones included
    assert full.all_tokens is None and skipped.all_tokens.n_tokens == full.n_tokens
    assert (skipped.all_tokens.top1, skipped.all_tokens.topk) == (full.top1, full.topk)
    assert skipped.all_tokens.loss == pytest.approx(full.loss, rel=1e-12)
    with torch.no_grad():
        logits = gpt2(tokens.tokens)[:, :-1]
    kept = keep & ~torch.isin(target, top3)
    assert skipped.top1 == pytest.approx((logits[kept].argmax(-1) == target[kept]).float().mean().item())
    assert ul.EvalResult.from_dict(skipped.to_dict()) == skipped and "all_tokens" not in full.to_dict()
    with pytest.raises(ul.UnlearnLensError, match="skip_common"):
        ul.evaluate(gpt2, tokens, skip_common=-1)


def test_evaluate_inside_pruned_sees_the_pruned_model(gpt2):
    import copy

    masks = ul.Masks.empty(ul.ModelDims.of(gpt2))
    masks.mlp[:, ::3] = True
    clean = ul.evaluate(gpt2, CODE, max_tokens=300, progress=False)
    with ul.pruned(gpt2, masks):
        inside = ul.evaluate(gpt2, CODE, max_tokens=300, progress=False)
    assert our_hooks(gpt2) == 0
    edited = ul.prune_weights_(copy.deepcopy(gpt2), masks)
    by_weights = ul.evaluate(edited, CODE, max_tokens=300, progress=False)
    assert inside.loss != clean.loss
    assert inside.loss == pytest.approx(by_weights.loss, rel=1e-5) and inside.top1 == by_weights.top1


# --- the loop on the demo model -------------------------------------------------------------------------------

DEMO_CFG = dict(
    mlp_frac=0.08,
    attn_frac=0.02,
    n_steps=3,
    ablation="mean",
    collect_tokens=2_000,
    eval_tokens=2_000,
    seq_len=128,
    batch_size=16,
)


@pytest.fixture(scope="module")
def demo():
    model = ul.load_model("demo", device="cpu")
    return model, ul.load_texts("demo:code"), ul.load_texts("demo:prose")


@pytest.fixture(scope="module")
def demo_run(demo):
    model, code, prose = demo
    run = ul.selective_prune(model, code, prose, ul.PruneConfig(**DEMO_CFG), progress=False)
    run.baseline = ul.random_baseline(model, code, prose, run, progress=False)
    return run


def test_loop_prunes_round_frac_per_step_and_never_reselects(demo_run):
    dims = demo_run.dims
    assert len(demo_run.history) == 4 and demo_run.base.n_mlp == 0
    for prev, cur in zip(demo_run.history, demo_run.history[1:]):
        assert sum(cur.new_mlp) == round(0.08 * dims.n_mlp) and sum(cur.new_attn) == round(0.02 * dims.n_attn)
        assert (prev.masks.mlp & ~cur.masks.mlp).sum() == 0  # cumulative masks only grow...
        assert cur.masks.n_mlp == prev.masks.n_mlp + sum(cur.new_mlp)  # ...by exactly the new units
        assert cur.masks.mlp_counts() == cur.mlp_counts
    assert demo_run.masks == demo_run.final.masks


def test_selective_pruning_hits_forget_harder_than_retain_and_than_random(demo_run):
    base, final = demo_run.base, demo_run.final
    assert base.forget.top1 > 0.3 and base.retain.top1 > 0.2  # a model far above chance on both
    forget_rel = final.forget.top1 / base.forget.top1
    retain_rel = final.retain.top1 / base.retain.top1
    assert forget_rel < 0.9 and retain_rel > forget_rel + 0.05
    rnd = demo_run.baseline.final
    assert rnd.forget.top1 / base.forget.top1 > forget_rel + 0.05


def test_random_baseline_copies_per_layer_counts_and_config(demo_run):
    rnd = demo_run.baseline
    assert rnd.strategy == "random" and len(rnd.history) == len(demo_run.history)
    for sel, r in zip(demo_run.history, rnd.history):
        assert (sel.new_mlp, sel.new_attn, sel.mlp_counts, sel.attn_counts) == (
            r.new_mlp,
            r.new_attn,
            r.mlp_counts,
            r.attn_counts,
        )
    assert rnd.masks != demo_run.masks
    assert rnd.config == demo_run.config and rnd.ablation is demo_run.ablation
    assert rnd.base.forget == demo_run.base.forget and rnd.base.retain == demo_run.base.retain


def test_baseline_follows_a_reference_with_another_config(gpt2):
    """Token budgets, row length and ablation come from the reference, never from PruneConfig() defaults."""
    cfg = ul.PruneConfig(
        mlp_frac=0.1,
        attn_frac=0.05,
        n_steps=2,
        ablation="mean",
        attn_ablation="zero",
        collect_tokens=250,
        eval_tokens=180,
        seq_len=24,
        batch_size=3,
        seed=4,
    )
    ref = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    rnd = ul.random_baseline(gpt2, CODE, PROSE, ref, progress=False)
    assert rnd.config == cfg and rnd.ablation is ref.ablation
    assert rnd.base.forget.n_tokens == ref.base.forget.n_tokens == 180
    assert [s.new_attn for s in rnd.history] == [s.new_attn for s in ref.history]
    with pytest.raises(ul.UnlearnLensError, match="must be a selective run"):
        ul.random_baseline(gpt2, CODE, PROSE, rnd)


def test_baseline_from_a_run_read_back_from_disk(demo, demo_run, tmp_path):
    model, code, prose = demo
    demo_run.save(tmp_path / "run")
    loaded = ul.PruneRun.load(tmp_path / "run")
    again = ul.random_baseline(model, code, prose, loaded, progress=False)
    assert [s.forget for s in again.history] == [s.forget for s in demo_run.baseline.history]
    assert again.masks == demo_run.baseline.masks


def test_baseline_for_another_model_is_refused(demo_run, gpt2):
    with pytest.raises(ul.UnlearnLensError, match="reference run is for a model with"):
        ul.random_baseline(gpt2, CODE, PROSE, demo_run)


def test_stop_at_forget_target(demo):
    model, code, prose = demo
    cfg = dict(DEMO_CFG, n_steps=6, mlp_frac=0.06)
    full = ul.selective_prune(model, code, prose, ul.PruneConfig(**cfg), progress=False)
    rel = [s.forget.top1 / full.base.forget.top1 for s in full.history]
    level = (rel[2] + rel[3]) / 2  # between steps 2 and 3: the run must stop at step 3
    assert rel[2] > level > rel[3]
    stopped = ul.selective_prune(model, code, prose, ul.PruneConfig(**cfg, stop_at_forget=level), progress=False)
    assert len(stopped.history) == 4
    assert [s.forget for s in stopped.history] == [s.forget for s in full.history[:4]]


def test_whole_heads_and_per_layer_selection(demo):
    model, code, prose = demo
    cfg = dict(DEMO_CFG, n_steps=2, collect_tokens=1_000, eval_tokens=500)
    heads = ul.selective_prune(
        model, code, prose, ul.PruneConfig(**{**cfg, "heads": True, "attn_frac": 0.1}), progress=False
    )
    dims = heads.dims
    for step in heads.history[1:]:
        assert step.masks.whole_heads
        assert sum(step.new_attn) == round(0.1 * dims.n_layers * dims.n_heads) * dims.d_head
    assert heads.masks.head_counts().sum() == 2 * round(0.1 * dims.n_layers * dims.n_heads) * dims.d_head
    per_layer = ul.selective_prune(model, code, prose, ul.PruneConfig(**cfg, per_layer=True), progress=False)
    for step in per_layer.history[1:]:
        assert step.new_mlp == [round(0.08 * dims.d_mlp)] * dims.n_layers
        assert step.new_attn == [round(0.02 * dims.n_heads * dims.d_head)] * dims.n_layers


def test_collect_and_evaluation_texts_are_disjoint_and_recorded(demo):
    model, code, _ = demo
    cfg = ul.PruneConfig(collect_tokens=1_000, eval_tokens=700, seq_len=64)
    data = _Data.split(model, code, code, cfg)
    assert data.forget_collect.n_tokens == 1_000 and data.forget_eval.n_tokens == 700
    # statistics: the first 1,000 tokens of the texts; evaluation: texts that follow the last one statistics touched
    full = ul.tokenize_texts(model.tokenizer, code, seq_len=64)
    stats_texts = data.forget_collect.n_texts
    assert torch.equal(data.forget_collect.tokens[data.forget_collect.valid], full.tokens[full.valid][:1_000])
    rest = ul.tokenize_texts(model.tokenizer, code[stats_texts:], seq_len=64, max_tokens=700)
    assert torch.equal(data.forget_eval.tokens[data.forget_eval.valid], rest.tokens[rest.valid])
    described = data.describe()["forget"]
    assert described["statistics"] == [{"source": "the given texts", "texts": [0, stats_texts], "tokens": 1_000}]
    assert described["evaluation"][0]["texts"][0] == stats_texts and described["shared_texts"] == 0
    # a token set given whole is split by tokens: the text cut in two is counted as shared
    tokens = ul.tokenize_texts(model.tokenizer, code, seq_len=64, max_tokens=1_700)
    data = _Data.split(model, tokens, tokens, cfg)
    assert data.describe()["retain"]["shared_texts"] == 1
    run = ul.selective_prune(
        model, code, code, ul.PruneConfig(**{**DEMO_CFG, "n_steps": 1}), progress=False, info={"split": "heldout"}
    )
    assert run.info["split"] == "heldout" and run.info["texts"]["forget"]["shared_texts"] == 0


def test_too_short_a_dataset_is_refused(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="evaluation needs tokens apart from them"):
        ul.selective_prune(
            gpt2, CODE[:2], PROSE, ul.PruneConfig(collect_tokens=10_000, eval_tokens=100), progress=False
        )


def test_same_seed_same_masks_and_rand_depends_on_seed(gpt2):
    cfg = dict(mlp_frac=0.1, n_steps=2, collect_tokens=200, eval_tokens=100, seq_len=32, scoring="rand")
    a = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=1), progress=False)
    b = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=1), progress=False)
    c = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**cfg, seed=2), progress=False)
    assert all(x.masks == y.masks for x, y in zip(a.history, b.history)) and a.final.forget == b.final.forget
    assert a.masks != c.masks


def test_scoring_per_unit_kind_in_the_loop(gpt2):
    cfg = ul.PruneConfig(
        mlp_frac=0.1,
        attn_frac=0.05,
        n_steps=1,
        collect_tokens=200,
        eval_tokens=100,
        seq_len=32,
        scoring="freq",
        attn_scoring="mean",
    )
    run = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    assert (run.scores.mlp_scoring, run.scores.attn_scoring) == ("freq", "mean")
    by_hand = ul.score(run.forget_stats, run.retain_stats, mlp_scoring="freq", attn_scoring="mean", seed=1)
    assert torch.equal(run.scores.attn, by_hand.attn) and torch.equal(run.scores.mlp, by_hand.mlp)


# --- the record: JSON, directory, headline --------------------------------------------------------------------


def test_run_directory_round_trip(demo_run, tmp_path):
    out = demo_run.save(tmp_path / "run")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "results.json",
            "masks.safetensors",
            "baseline_masks.safetensors",
            "means.safetensors",
            "forget_stats.safetensors",
            "retain_stats.safetensors",
            "initial_scores.safetensors",
            "scores.safetensors",
            "pruned_step.safetensors",
        ]
    )
    data = json.loads((out / "results.json").read_text())
    assert data["format"] == 3 and data["run"]["strategy"] == "selective" and data["baseline"]["strategy"] == "random"
    assert data["run"]["summary"]["retain_at_forget"]["value"] == demo_run.retain_at_forget(0.5)
    back = ul.PruneRun.load(out)
    assert back.config == demo_run.config and back.masks == demo_run.masks
    assert [s.forget for s in back.history] == [s.forget for s in demo_run.history]
    assert back.baseline.masks == demo_run.baseline.masks and back.baseline.strategy == "random"
    assert (
        torch.equal(back.scores.mlp, demo_run.scores.mlp)
        and back.ablation.means.n_tokens == demo_run.ablation.means.n_tokens
    )
    with pytest.raises(ul.UnlearnLensError, match="already exists"):
        demo_run.save(out)
    (out / "results.json").write_text("{not json")
    with pytest.raises(ul.UnlearnLensError, match="not readable JSON"):
        ul.PruneRun.load(out)
    with pytest.raises(ul.UnlearnLensError, match="not a run directory"):
        ul.PruneRun.load(tmp_path)


def test_interrupted_save_leaves_nothing(demo_run, tmp_path, monkeypatch):
    def interrupt(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(ul.Scores, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        demo_run.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def _history(points):
    ev = lambda v: ul.EvalResult(top1=v, topk=v, loss=1.0, perplexity=math.e, n_tokens=10)  # noqa: E731
    return [StepRecord(i, [0], [0], [0], [0], ev(f), ev(r)) for i, (f, r) in enumerate(points)]


def test_retain_at_forget_interpolates_and_ignores_the_stop():
    # forget 1 -> 0.6 -> 0.4 (crosses 0.5 half-way), retain 1 -> 0.9 -> 0.7: 0.8 at forget 0.5
    h = _history([(0.5, 0.5), (0.3, 0.45), (0.2, 0.35)])
    assert retain_at_forget(h, 0.5) == pytest.approx(0.8)
    # steps after the crossing change nothing, wherever the run stopped
    assert retain_at_forget(h + _history([(0, 0), (0.05, 0.1)])[1:], 0.5) == pytest.approx(0.8)
    assert retain_at_forget(h, 0.3) is None  # forget never fell that far
    assert retain_at_forget(h, 0.6) == pytest.approx(0.9)  # exactly at a step
    with pytest.raises(ul.UnlearnLensError, match="level must be in"):
        retain_at_forget(h, 1.5)


def test_separability_area_geometry():
    # retain untouched while forget falls to 0: the whole unit square
    assert separability_area(_history([(0.5, 0.5), (0.0, 0.5)])) == pytest.approx(1.0)
    # both fall together (the diagonal): half the square
    assert separability_area(_history([(0.4, 0.4), (0.2, 0.2)])) == pytest.approx(0.5)
    # a perfect run stopped at forget 0.5 scores 0.75: the area depends on the stop
    assert separability_area(_history([(0.3, 0.3), (0.15, 0.3)])) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"mlp_frac": 1.5}, "mlp_frac must be a fraction"),
        ({"attn_frac": -0.1}, "attn_frac must be a fraction"),
        ({"mlp_frac": 0.0, "attn_frac": 0.0}, "nothing would be pruned"),
        ({"n_steps": 0}, "n_steps must be at least 1"),
        ({"n_steps": 2.5}, "n_steps must be an integer"),
        ({"collect_tokens": 1e4}, "collect_tokens must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"seq_len": 64.0}, "seq_len must be an integer"),
        ({"scoring": "magic"}, "unknown scoring"),
        ({"attn_scoring": "magic"}, "unknown attn_scoring"),
        ({"ablation": "noise"}, "unknown ablation"),
        ({"mlp_ablation": "noise"}, "unknown mlp_ablation"),
        ({"stop_at_forget": 2.0}, "stop_at_forget"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ul.UnlearnLensError, match=match):
        ul.PruneConfig(**bad)


def test_config_dict_round_trip():
    cfg = ul.PruneConfig(mlp_frac=0.05, heads=True, seq_len=64, attn_ablation="mean")
    assert ul.PruneConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.ablations == {"mlp": "zero", "attn": "mean"} and cfg.needs_means
    with pytest.raises(ul.UnlearnLensError, match="unknown PruneConfig fields"):
        ul.PruneConfig.from_dict({"frac": 0.1})


def test_checkpoint_resume_matches_an_uninterrupted_run(gpt2, tmp_path, monkeypatch, interrupt_at_step):
    cfg = ul.PruneConfig(
        mlp_frac=0.1, attn_frac=0.05, n_steps=4, ablation="mean", collect_tokens=250, eval_tokens=150, seq_len=24
    )
    full = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    interrupt_at_step(3)
    with pytest.raises(KeyboardInterrupt):
        ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False, checkpoint=tmp_path / "ckpt", info={"k": "v"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["step"] == 2
    with pytest.raises(ul.UnlearnLensError, match="another config"):
        ul.selective_prune(gpt2, config=ul.PruneConfig(mlp_frac=0.2), checkpoint=tmp_path / "ckpt", progress=False)
    resumed = ul.selective_prune(gpt2, checkpoint=tmp_path / "ckpt", progress=False)  # no texts needed
    assert [s.forget for s in resumed.history] == [s.forget for s in full.history]
    assert [s.retain for s in resumed.history] == [s.retain for s in full.history]
    assert resumed.masks == full.masks and resumed.info == {**full.info, "k": "v"}
    assert torch.equal(resumed.scores.mlp, full.scores.mlp) and torch.equal(
        resumed.ablation.means.mlp.mean, full.ablation.means.mlp.mean
    )
    # a finished checkpoint is returned as it is
    again = ul.selective_prune(gpt2, checkpoint=tmp_path / "ckpt", progress=False)
    assert again.masks == full.masks and len(again.history) == len(full.history)
