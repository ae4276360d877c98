"""Reversible ablation is exact and leaves nothing behind; weight edits match it."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CODE, LEGACY_FIXTURES, PROSE, our_hooks

import unlearn_lens as ul
from unlearn_lens.models import attached


def _masks(model, seed=0, mlp_frac=0.2, attn_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    dims = ul.model_dims(model)
    mlp = torch.rand(dims.mlp_shape, generator=gen) < mlp_frac
    attn = torch.rand(dims.attn_shape, generator=gen) < attn_frac
    return ul.Masks(mlp, attn)


def _capture(model, tokens):
    dims = ul.model_dims(model)
    acts = {}

    def grab(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    names = [ul.mlp_hook_name(l) for l in range(dims.n_layers)] + [ul.attn_hook_name(l) for l in range(dims.n_layers)]
    with attached(model, [(n, grab(n)) for n in names]), torch.no_grad():
        logits = model(tokens)
    return logits, acts


@pytest.fixture(scope="module")
def means_for(request):
    cache = {}

    def get(model):
        if id(model) not in cache:
            cache[id(model)] = ul.collect_stats(model, PROSE, max_tokens=300, progress=False)
        return cache[id(model)]

    return get


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ablation_is_exact(any_model, ablation, means_for):
    tokens = ul.tokenize_texts(any_model.tokenizer, CODE[:3], seq_len=20).tokens
    masks = _masks(any_model)
    means = means_for(any_model)
    before_logits, _ = _capture(any_model, tokens)
    with ul.pruned(any_model, masks, ablation=ablation, means=means):
        pruned_logits, acts = _capture(any_model, tokens)
    for layer in range(masks.dims.n_layers):
        for name, mask, stats in ((ul.mlp_hook_name(layer), masks.mlp[layer], means.mlp),
                                  (ul.attn_hook_name(layer), masks.attn[layer], means.attn)):
            x = acts[name]
            target = torch.zeros_like(x[..., mask]) if ablation == "zero" else \
                stats.mean[layer][mask].float().expand_as(x[..., mask])
            assert torch.equal(x[..., mask], target), name
    # unpruned units of the first pruned layer are untouched (later layers see changed inputs)
    _, clean = _capture(any_model, tokens)
    name0 = ul.mlp_hook_name(0)
    keep = ~masks.mlp[0]
    with ul.pruned(any_model, ul.Masks(masks.mlp & torch.tensor([True, False])[:, None],
                                       torch.zeros_like(masks.attn))):
        _, only0 = _capture(any_model, tokens)
    assert torch.equal(only0[name0][..., keep], clean[name0][..., keep])
    assert not torch.equal(pruned_logits, before_logits)
    after_logits, _ = _capture(any_model, tokens)
    assert torch.equal(after_logits, before_logits)
    assert our_hooks(any_model) == 0


def test_no_hooks_left_after_exception(gpt2):
    masks = _masks(gpt2)
    with pytest.raises(RuntimeError, match="boom"):
        with ul.pruned(gpt2, masks):
            assert our_hooks(gpt2) > 0
            raise RuntimeError("boom")
    assert our_hooks(gpt2) == 0
    # an error inside the forward pass, with pruning and statistics hooks attached
    bad = ul.tokenize_texts(gpt2.tokenizer, CODE[:2], seq_len=16)
    bad.tokens[0, 3] = 10**6
    with pytest.raises((IndexError, RuntimeError)):
        ul.collect_stats(gpt2, bad, masks=masks, progress=False)
    assert our_hooks(gpt2) == 0


def test_user_hooks_survive(gpt2):
    seen = []
    point = gpt2.hook_dict[ul.mlp_hook_name(0)]
    point.add_hook(lambda x, hook: seen.append(1))  # returns a handle in TransformerLens 4, None in 3
    try:
        with ul.pruned(gpt2, _masks(gpt2)):
            pass
        ul.collect_stats(gpt2, CODE, max_tokens=30, progress=False)
        gpt2(torch.zeros(1, 3, dtype=torch.long))
        assert seen and our_hooks(gpt2) == 1
    finally:
        point.remove_hooks("fwd")


def test_persistent_form(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:2], seq_len=16).tokens
    masks = _masks(gpt2)
    with ul.pruned(gpt2, masks), torch.no_grad():
        expected = gpt2(tokens)
    handle = ul.add_pruning(gpt2, masks)
    with torch.no_grad():
        assert torch.equal(gpt2(tokens), expected)
    handle.remove()
    assert our_hooks(gpt2) == 0


def test_mean_ablation_needs_means(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="needs means"):
        with ul.pruned(gpt2, _masks(gpt2), ablation="mean"):
            pass
    with pytest.raises(ul.UnlearnLensError, match="unknown ablation"):
        with ul.pruned(gpt2, _masks(gpt2), ablation="noise"):
            pass


def test_masks_for_another_model(gpt2, native_gated):
    with pytest.raises(ul.UnlearnLensError, match="do not fit"):
        with ul.pruned(gpt2, _masks(native_gated)):
            pass


WEIGHT_CASES = [
    ("gpt2", "zero"), ("gpt2", "mean"), ("neox", "zero"), ("neox", "mean"),
    ("llama", "zero"), ("native_gpt2", "zero"), ("native_gpt2", "mean"), ("native_gated", "zero"),
    *((name, ablation) for name in LEGACY_FIXTURES for ablation in ("zero", "mean")),
]


def _hooked_logits_and_edited_copy(model, masks, ablation, means, tokens):
    """Logits of ``model`` under hook pruning, and a deep copy of it pruned by weight edits."""
    with ul.pruned(model, masks, ablation=ablation, means=means), torch.no_grad():
        expected = model(tokens)
    edited = copy.deepcopy(model)
    ul.prune_weights_(edited, masks, ablation=ablation, means=means)
    return expected, edited


@pytest.mark.parametrize("fixture, ablation", WEIGHT_CASES)
@pytest.mark.parametrize("kinds", ["mlp", "attn", "both"])
def test_weight_edit_matches_hooks(request, fixture, ablation, kinds, means_for):
    model = request.getfixturevalue(fixture)
    masks = _masks(model, seed=3, mlp_frac=0.3 if kinds != "attn" else 0.0, attn_frac=0.3 if kinds != "mlp" else 0.0)
    means = means_for(model)
    tokens = ul.tokenize_texts(model.tokenizer, CODE[:3], seq_len=24).tokens
    expected, edited = _hooked_logits_and_edited_copy(model, masks, ablation, means, tokens)
    with torch.no_grad():
        got = edited(tokens)
    assert (got - expected).abs().max() <= 1e-4
    with torch.no_grad():
        assert (got - model(tokens)).abs().max() > 1e-3  # the original is untouched and differs


@pytest.mark.parametrize("fixture, ablation", [("gpt2", "mean"), ("neox", "mean"), ("llama", "zero")])
def test_weight_edit_survives_save_pretrained(request, fixture, ablation, means_for, tmp_path):
    from transformers import AutoModelForCausalLM

    model = request.getfixturevalue(fixture)
    masks = _masks(model, seed=5)
    means = means_for(model)
    tokens = ul.tokenize_texts(model.tokenizer, PROSE[:3], seq_len=24).tokens
    expected, edited = _hooked_logits_and_edited_copy(model, masks, ablation, means, tokens)
    ul.save_pruned(edited, tmp_path / "pruned")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation="eager").eval()
    with torch.no_grad():
        got = hf(tokens).logits
    assert (got - expected).abs().max() <= 1e-4
    reloaded = ul.load_model(tmp_path / "pruned", device="cpu")
    with torch.no_grad():
        assert (reloaded(tokens) - expected).abs().max() <= 1e-4


def test_mean_ablation_without_bias_is_refused(llama, means_for):
    edited = copy.deepcopy(llama)
    with pytest.raises(ul.UnlearnLensError, match="no mlp output bias"):
        ul.prune_weights_(edited, _masks(llama), ablation="mean", means=means_for(llama))
