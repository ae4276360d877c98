"""Membership inference scores and their AUC, against independent references."""

from __future__ import annotations

import math
import random
import sys
import zlib

import pytest
import torch
from conftest import CODE, PROSE, our_hooks

import unlearn_lens as ul
from unlearn_lens.checks.membership import MEMBER_SIDE, SCORES, auc, membership_check, text_scores

TEXTS = [CODE[0], CODE[2], CODE[3], CODE[7], PROSE[0], PROSE[3], PROSE[5]]


def _brute_auc(members, nonmembers):
    total = 0.0
    for m in members:
        for n in nonmembers:
            total += 1.0 if m > n else 0.5 if m == n else 0.0
    return total / (len(members) * len(nonmembers))


def _naive(model, text, seq_len, k):
    """Per-token log-probabilities of one text, one forward pass, then LOSS and Min-K by plain Python."""
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"][: seq_len - 1]
    row = torch.tensor([[tok.bos_token_id, *ids]])
    with torch.no_grad():
        logits = model(row)[0, :-1].double()
    logp = [float(x) for x in logits.log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)]]
    ce = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids)))
    n_low = max(1, math.floor(k * len(ids) + 0.5))
    return ids, ce, sum(sorted(logp)[:n_low]) / n_low


def _masks(model, seed=0, frac=0.5):
    gen = torch.Generator().manual_seed(seed)
    dims = ul.ModelDims.of(model)
    return ul.Masks(torch.rand(dims.mlp_shape, generator=gen) < frac, torch.rand(dims.attn_shape, generator=gen) < frac)


# --- AUC ---------------------------------------------------------------------------------------------------------


def test_auc_equals_pairwise_count_with_ties():
    members = [0.3, 0.5, 0.5, 0.9, 0.1, 0.7]
    nonmembers = [0.5, 0.2, 0.2, 0.7, 0.1]
    want = _brute_auc(members, nonmembers)
    assert want == pytest.approx(20 / 30)  # counted by hand: 18 wins and 4 ties over 30 pairs
    assert auc(torch.tensor(members), torch.tensor(nonmembers)) == pytest.approx(want, abs=1e-12)
    # lower is member-like: the same pairs seen from the other end
    low = auc(torch.tensor(members), torch.tensor(nonmembers), higher_is_member=False)
    assert low == pytest.approx(_brute_auc([-m for m in members], [-n for n in nonmembers]), abs=1e-12)
    assert low == pytest.approx(1 - want, abs=1e-12)


def test_auc_orientation_and_extremes():
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0  # members higher
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), higher_is_member=False) == 1.0
    assert auc(torch.full((4,), 2.0), torch.full((7,), 2.0)) == 0.5


def test_auc_matches_brute_force_on_random_tied_scores():
    gen = torch.Generator().manual_seed(5)
    members = torch.randint(0, 6, (37,), generator=gen).double()  # few values: many ties
    nonmembers = torch.randint(0, 6, (23,), generator=gen).double() - 0.5 * (torch.rand(23, generator=gen) < 0.3)
    assert auc(members, nonmembers) == pytest.approx(_brute_auc(members.tolist(), nonmembers.tolist()), abs=1e-12)


# --- the three scores on a tiny GPT-2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_min_k_and_loss_match_naive_per_token_computation(gpt2, k):
    seq_len = 40  # cuts the longer texts short
    scores = text_scores(gpt2, TEXTS, seq_len=seq_len, batch_size=3, k=k)
    for i, text in enumerate(TEXTS):
        ids, ce, min_k = _naive(gpt2, text, seq_len, k)
        assert int(scores.n_tokens[i]) == len(ids)
        assert float(scores.loss[i]) == pytest.approx(ce, rel=1e-5)
        assert float(scores.min_k[i]) == pytest.approx(min_k, rel=1e-5)
    assert (scores.n_tokens == seq_len - 1).any() and (scores.n_tokens < seq_len - 1).any()
    if k == 1.0:
        assert torch.allclose(scores.min_k, -scores.loss)


def test_loss_matches_evaluate(gpt2):
    tok = gpt2.tokenizer
    scores = text_scores(gpt2, TEXTS, seq_len=24)
    for i, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"][:23]
        row = torch.tensor([[tok.bos_token_id, *ids]])
        valid = torch.ones_like(row, dtype=torch.bool)
        valid[0, 0] = False
        result = ul.evaluate(gpt2, ul.TokenSet(row, valid), max_tokens=None, progress=False)
        assert result.n_tokens == int(scores.n_tokens[i])
        assert float(scores.loss[i]) == pytest.approx(result.loss, rel=1e-5)


def test_zlib_ratio_by_hand(gpt2):
    tok = gpt2.tokenizer
    seq_len = 40
    scores = text_scores(gpt2, TEXTS, seq_len=seq_len)
    for i, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= seq_len - 1:
            scored = text
        else:  # the scored text is the first seq_len - 1 tokens; byte-level BPE decodes to a prefix of the text
            scored = tok.decode(ids[: seq_len - 1])
            assert text.startswith(scored) and len(scored) < len(text)
        z = len(zlib.compress(scored.encode("utf-8")))
        assert int(scores.zlib_bytes[i]) == z
        model_bits = float(scores.loss[i]) * len(ids[: seq_len - 1]) / math.log(2)
        assert float(scores.zlib[i]) == pytest.approx(model_bits / (8 * z), rel=1e-12)
    assert (scores.n_tokens == seq_len - 1).any() and (scores.n_tokens < seq_len - 1).any()  # both cases seen


def test_scores_do_not_depend_on_batching(gpt2):
    a = text_scores(gpt2, TEXTS, batch_size=1)
    b = text_scores(gpt2, TEXTS, batch_size=7)
    for name in SCORES:
        assert torch.allclose(a.score(name), b.score(name), rtol=1e-5, atol=1e-6), name


# --- membership_check ----------------------------------------------------------------------------------------------


def test_identical_sides_give_one_half(gpt2):
    result = membership_check(gpt2, CODE[:5], CODE[:5])
    assert result.unpruned == {name: 0.5 for name in SCORES}
    assert result.pruned is None and result.members_pruned is None


def test_check_orients_each_score(gpt2):
    result = membership_check(gpt2, CODE[:6], PROSE[:5])
    m, n = result.members, result.nonmembers
    assert MEMBER_SIDE == {"loss": "low", "zlib": "low", "min_k": "high"}
    assert result.unpruned["loss"] == pytest.approx(_brute_auc((-m.loss).tolist(), (-n.loss).tolist()))
    assert result.unpruned["zlib"] == pytest.approx(_brute_auc((-m.zlib).tolist(), (-n.zlib).tolist()))
    assert result.unpruned["min_k"] == pytest.approx(_brute_auc(m.min_k.tolist(), n.min_k.tolist()))


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_masks_change_scores_and_leave_model_unpruned(gpt2, ablation):
    members, nonmembers = CODE[:6], PROSE[:6]
    masks = _masks(gpt2)
    means = ul.collect_stats(gpt2, PROSE, max_tokens=300, progress=False) if ablation == "mean" else None
    before = text_scores(gpt2, members)
    result = membership_check(gpt2, members, nonmembers, masks=masks, ablation=ul.Ablation.of(ablation, means=means))
    assert our_hooks(gpt2) == 0
    assert result.pruned is not None and set(result.pruned) == set(SCORES)
    assert result.settings["n_mlp_pruned"] == masks.n_mlp > 0
    with ul.pruned(gpt2, masks, ablation=ablation, means=means):
        inside = text_scores(gpt2, members)
    for name in SCORES:
        assert torch.allclose(result.members_pruned.score(name), inside.score(name), rtol=1e-6), name
        assert torch.allclose(result.members.score(name), before.score(name), rtol=1e-6), name
        change = (result.members_pruned.score(name) - before.score(name)).abs().max()
        assert change > 1e-4 * before.score(name).abs().max(), name  # far beyond float error (~1e-7)
    after = text_scores(gpt2, members)  # the model computes as before
    assert torch.allclose(after.loss, before.loss, rtol=1e-6)


def test_bad_masks_fail_before_scoring_and_leave_no_hooks(gpt2, llama):
    with pytest.raises(ul.UnlearnLensError, match="do not fit"):
        membership_check(gpt2, CODE[:3], PROSE[:3], masks=_masks(llama))
    with pytest.raises(ul.UnlearnLensError, match="needs means"):
        membership_check(gpt2, CODE[:3], PROSE[:3], masks=_masks(gpt2), ablation="mean")
    assert our_hooks(gpt2) == 0


def test_bad_input(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="no texts"):
        text_scores(gpt2, [])
    with pytest.raises(ul.UnlearnLensError, match="not one string"):
        text_scores(gpt2, "def f(): pass")
    with pytest.raises(ul.UnlearnLensError, match=r"texts \[1\] give no tokens"):
        text_scores(gpt2, ["a b", ""])
    for k in (0, -0.1, 1.5, math.nan):
        with pytest.raises(ul.UnlearnLensError, match=r"k .* must be in \(0, 1\]"):
            text_scores(gpt2, CODE[:2], k=k)
    with pytest.raises(ul.UnlearnLensError, match="longer than the context"):
        text_scores(gpt2, CODE[:2], seq_len=65)
    with pytest.raises(ul.UnlearnLensError, match="at least 2"):
        text_scores(gpt2, CODE[:2], seq_len=1)
    with pytest.raises(ul.UnlearnLensError, match="batch_size"):
        text_scores(gpt2, CODE[:2], batch_size=0)
    with pytest.raises(ul.UnlearnLensError, match="no members"):
        membership_check(gpt2, [], PROSE[:3])
    with pytest.raises(ul.UnlearnLensError, match="no nonmembers"):
        membership_check(gpt2, CODE[:3], [])
    with pytest.raises(ul.UnlearnLensError, match="k "):
        membership_check(gpt2, CODE[:3], PROSE[:3], k=0)
    with pytest.raises(ul.UnlearnLensError, match="at least one member and one non-member"):
        auc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ul.UnlearnLensError, match="at least one member and one non-member"):
        auc(torch.tensor([1.0]), torch.tensor([]))
    with pytest.raises(ul.UnlearnLensError, match="NaN"):
        auc(torch.tensor([1.0, math.nan]), torch.tensor([0.0]))
    assert our_hooks(gpt2) == 0


# --- the demo model, whose training texts are known ----------------------------------------------------------------


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11),
    reason="the demo model was trained on CPython 3.11's standard library; elsewhere the split differs",
)
def test_demo_model_code_members_score_as_members():
    model = ul.load_model("demo", device="cpu")
    nonmembers = ul.load_texts("demo:code:heldout")  # all held-out files (validation and test)
    members = random.Random(0).sample(ul.load_texts("demo:code:train"), len(nonmembers))
    result = membership_check(model, members, nonmembers, batch_size=16)
    print(f"demo code, {len(members)} members vs {len(nonmembers)} non-members, unpruned AUC: {result.unpruned}")
    print(
        f"mean loss: members {float(result.members.loss.mean()):.3f}, "
        f"non-members {float(result.nonmembers.loss.mean()):.3f}"
    )
    for name in SCORES:
        assert result.unpruned[name] > 0.5, name
