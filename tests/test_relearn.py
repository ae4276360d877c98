"""The relearning check: fine-tuning a pruned copy on forget text, with the pruned units held ablated."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import CODE, PROSE, our_hooks

import unlearn_lens as ul
from unlearn_lens.checks.relearn import (
    RelearnConfig,
    RelearnCurve,
    finetune_,
    relearn,
    relearn_comparison,
    relearn_figure,
)
from unlearn_lens.models import attached, hook_name
from unlearn_lens.pruning import output_projections

SEQ = 32
# Held-out code: none of these texts is in CODE, so no evaluation row is a training row.
HELD_CODE = [
    "def scale(items, k):\n    return [k * v for v in items]\n",
    "total = 0\nfor line in open(path):\n    total += len(line)\nprint(total)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    "if value is None:\n    value = default\nelse:\n    value = int(value)\n",
    "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0\n",
    "import sys\nargs = sys.argv[1:]\nfor a in args:\n    print(a.upper())\n",
] * 2


def _masks(model) -> ul.Masks:
    """Units pruned in both layers: MLP neurons 3, 10, 40 and attention neurons of heads 1 and 2."""
    masks = ul.Masks.empty(ul.ModelDims.of(model))
    masks.mlp[:, [3, 10, 40]] = True
    masks.attn[0, 1, :4] = True
    masks.attn[1, 2, 2:] = True
    return masks


@pytest.fixture(scope="module")
def means(gpt2) -> ul.ActivationStats:
    return ul.collect_stats(gpt2, PROSE, seq_len=SEQ, max_tokens=2_000, progress=False)


@pytest.fixture(scope="module")
def held(gpt2) -> tuple[ul.TokenSet, ul.TokenSet]:
    return (
        ul.tokenize_texts(gpt2.tokenizer, HELD_CODE, seq_len=SEQ),
        ul.tokenize_texts(gpt2.tokenizer, PROSE[:16], seq_len=SEQ),
    )


def _kw(**overrides):
    return {"seq_len": SEQ, "batch_size": 4, "n_steps": 4, "eval_every": 2, "lr": 3e-3, "progress": False} | overrides


def test_users_model_is_unchanged_and_hookless(gpt2, means, held):
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    curve = relearn(gpt2, _masks(gpt2), CODE, *held, ablation=ul.Ablation.of("mean", means=means), **_kw())
    assert our_hooks(gpt2) == 0
    after = gpt2.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in gpt2.parameters())
    assert curve.eval_steps == [0, 2, 4] and len(curve.forget) == len(curve.retain) == 3 and len(curve.train_loss) == 4
    assert curve.forget_top1 != [curve.forget_top1[0]] * 3  # the copy did learn
    assert (curve.n_mlp, curve.n_attn) == (6, 10) and curve.train_tokens > 0


def test_pruned_units_stay_ablated_while_training(gpt2, means):
    """Gradients stop at the hooks: what computes a pruned unit never changes, and it reads its ablated value."""
    model, masks = copy.deepcopy(gpt2), _masks(gpt2)
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=SEQ)
    blocks = model.blocks

    def weights():
        return [
            (
                b.mlp.get_submodule("in").original_component.weight.detach().clone(),  # [d_model d_mlp]
                b.attn.v.original_component.weight.detach().clone(),  # [head*d_head d_model]
                output_projections(model, layer)["attn"][0].detach().clone(),
            )  # [head*d_head d_model]
            for layer, b in enumerate(blocks)
        ]

    start = weights()
    seen = {}
    with ul.pruned(model, masks, mlp_ablation="mean", attn_ablation="zero", means=means):
        losses = finetune_(model, tokens, n_steps=6, lr=1e-2, batch_size=4)

        def recorder(name):
            return lambda x, hook: seen.__setitem__(name, x.detach().clone())

        names = [hook_name(kind, layer) for layer in range(2) for kind in ("mlp", "attn")]
        record = [(name, recorder(name)) for name in names]
        with attached(model, record), torch.no_grad():
            model(tokens.tokens[:4])
    for layer, ((w_in, w_v, w_o), (w_in1, w_v1, w_o1)) in enumerate(zip(start, weights())):
        mlp, attn = masks.mlp[layer], masks.attn[layer].reshape(-1)
        assert torch.equal(w_in[:, mlp], w_in1[:, mlp]) and not torch.equal(w_in[:, ~mlp], w_in1[:, ~mlp])
        assert torch.equal(w_v[attn], w_v1[attn]) and not torch.equal(w_v[~attn], w_v1[~attn])
        assert torch.equal(w_o[attn], w_o1[attn]) and not torch.equal(w_o[~attn], w_o1[~attn])
        post = seen[hook_name("mlp", layer)][..., masks.mlp[layer]]  # [batch pos pruned]
        assert torch.equal(post, means.mlp.mean[layer][masks.mlp[layer]].float().expand_as(post))
        z = seen[hook_name("attn", layer)][:, :, masks.attn[layer]]  # [batch pos pruned]
        assert z.numel() and not z.any()
    assert losses[-1] < losses[0]


def test_step_zero_is_the_pruned_model_and_a_vanishing_lr_stays_flat(gpt2, means, held):
    masks = _masks(gpt2)
    curve = relearn(
        gpt2, masks, CODE, *held, ablation=ul.Ablation.of("mean", means=means), **_kw(lr=1e-30, eval_every=1, n_steps=2)
    )
    with ul.pruned(gpt2, masks, ablation="mean", means=means):
        expected = [ul.evaluate(gpt2, t, max_tokens=None, batch_size=4, progress=False) for t in held]
    unpruned = ul.evaluate(gpt2, held[0], max_tokens=None, batch_size=4, progress=False)
    assert curve.eval_steps == [0, 1, 2]
    assert curve.forget == [expected[0]] * 3 and curve.retain == [expected[1]] * 3
    assert curve.forget[0] != unpruned  # the copy really was pruned


def test_training_lowers_the_loss(gpt2):
    model = copy.deepcopy(gpt2)
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=SEQ)
    before = ul.evaluate(model, tokens, max_tokens=None, progress=False).loss
    finetune_(model, tokens, n_steps=10, lr=1e-2, batch_size=4)
    after = ul.evaluate(model, tokens, max_tokens=None, progress=False).loss
    assert after < before - 1.0


def test_unpruned_model_relearns_held_out_code(gpt2, held, capsys):
    curve = relearn(
        gpt2,
        ul.Masks.empty(ul.ModelDims.of(gpt2)),
        CODE,
        held[0],
        **_kw(n_steps=8, eval_every=4, lr=1e-2, progress=True),
    )
    assert "relearn" in capsys.readouterr().err  # the progress bar
    assert curve.retain == [] and curve.retain_top1 == []
    assert curve.forget_top1[-1] > 2 * curve.forget_top1[0]
    assert curve.forget[-1].loss < curve.forget[0].loss - 1.0


def test_same_seed_same_curve(gpt2, held):
    masks = _masks(gpt2)
    a, b, c = (relearn(gpt2, masks, CODE, held[0], **_kw(seed=s)) for s in (0, 0, 1))
    strip = lambda curve: {k: v for k, v in curve.to_dict().items() if k != "seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert a.train_loss != c.train_loss
    assert RelearnCurve.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_evaluation_rows_seen_in_training_are_reported(gpt2, caplog):
    masks = ul.Masks.empty(ul.ModelDims.of(gpt2))
    with caplog.at_level(logging.WARNING, logger="unlearn_lens.checks.relearn"):
        relearn(gpt2, masks, CODE, CODE, **_kw(n_steps=1))
    assert "also occur among the training rows" in caplog.text


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"n_steps": 0}, "n_steps must be at least 1"),
        ({"lr": 0.0}, "lr must be a positive"),
        ({"lr": -1e-3}, "lr must be a positive"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"eval_every": 0}, "eval_every must be at least 1"),
        ({"ablation": "median"}, "unknown ablation 'median'"),
    ],
)
def test_bad_settings(gpt2, held, bad, match):
    with pytest.raises(ul.UnlearnLensError, match=match):
        relearn(gpt2, _masks(gpt2), CODE, held[0], **_kw(**bad))
    assert our_hooks(gpt2) == 0


def test_bad_data_and_masks(gpt2, native_gated, held):
    masks = _masks(gpt2)
    with pytest.raises(ul.UnlearnLensError, match="empty dataset"):
        relearn(gpt2, masks, [], held[0], **_kw())
    with pytest.raises(ul.UnlearnLensError, match="empty dataset"):
        relearn(gpt2, masks, CODE, [], **_kw())
    with pytest.raises(ul.UnlearnLensError, match="no tokens to train on"):
        relearn(gpt2, masks, ul.TokenSet(held[0].tokens[:0], held[0].valid[:0]), held[0], **_kw())
    with pytest.raises(ul.UnlearnLensError, match="do not fit"):
        relearn(gpt2, _masks(native_gated), CODE, held[0], **_kw())
    with pytest.raises(ul.UnlearnLensError, match="needs means="):
        relearn(gpt2, masks, CODE, held[0], ablation="mean", **_kw())
    with ul.pruned(gpt2, masks):
        with pytest.raises(ul.UnlearnLensError, match="has hooks attached"):
            relearn(gpt2, masks, CODE, held[0], **_kw())
    assert our_hooks(gpt2) == 0
    with pytest.raises(ul.UnlearnLensError, match="must be a PruneRun"):
        relearn_comparison(gpt2, masks, CODE, held[0])
    with pytest.raises(ul.UnlearnLensError, match="lr must be a positive"):
        RelearnConfig(lr=float("nan"))


def test_comparison_of_a_run_its_baseline_and_the_unpruned_model(gpt2, held):
    cfg = ul.PruneConfig(
        mlp_frac=0.1,
        attn_frac=0.05,
        n_steps=1,
        ablation="mean",
        collect_tokens=600,
        eval_tokens=600,
        seq_len=SEQ,
        batch_size=4,
    )
    run = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    run.baseline = ul.random_baseline(gpt2, CODE, PROSE, run, progress=False)
    _, forget_eval = ul.token_budgets(gpt2.tokenizer, CODE, [cfg.collect_tokens, cfg.eval_tokens], seq_len=SEQ)
    _, retain_eval = ul.token_budgets(gpt2.tokenizer, PROSE, [cfg.collect_tokens, cfg.eval_tokens], seq_len=SEQ)
    curves = relearn_comparison(gpt2, run, HELD_CODE, forget_eval, retain_eval, n_steps=2, eval_every=2, batch_size=4)
    assert list(curves) == ["selective", "random", "unpruned"]
    for curve, step in zip(curves.values(), (run.final, run.baseline.final, run.base)):
        assert curve.forget[0] == step.forget and curve.retain[0] == step.retain  # step 0 is the run's own number
        assert (curve.n_mlp, curve.n_attn) == (step.n_mlp, step.n_attn)
        assert curve.ablation == cfg.ablations
    with pytest.raises(ul.UnlearnLensError, match="come from the run"):
        relearn_comparison(gpt2, run, HELD_CODE, forget_eval, ablation="zero")

    fig = relearn_figure(curves)
    assert [t.name for t in fig.data] == [f"{n} · {d}" for n in curves for d in ("forget", "retain")]
    assert [t.line.dash for t in fig.data] == ["solid", "dash"] * 3
    assert list(fig.data[0].y) == curves["selective"].forget_top1 and list(fig.data[0].x) == [0, 2]
    with pytest.raises(ul.UnlearnLensError, match="no relearning curves"):
        relearn_figure({})
