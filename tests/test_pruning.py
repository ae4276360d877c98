"""Reversible ablation is exact and leaves nothing behind; weight edits match it."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CODE, LEGACY_FIXTURES, PROSE, our_hooks

import unlearn_lens as ul
from unlearn_lens import models
from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name
from unlearn_lens.pruning import output_projections


def _masks(model, seed=0, mlp_frac=0.2, attn_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    dims = ul.ModelDims.of(model)
    mlp = torch.rand(dims.mlp_shape, generator=gen) < mlp_frac
    attn = torch.rand(dims.attn_shape, generator=gen) < attn_frac
    return ul.Masks(mlp, attn)


def _capture(model, tokens):
    dims = ul.ModelDims.of(model)
    acts = {}

    def grab(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    names = [mlp_hook_name(l) for l in range(dims.n_layers)] + [attn_hook_name(l) for l in range(dims.n_layers)]
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
        for name, mask, stats in (
            (mlp_hook_name(layer), masks.mlp[layer], means.mlp),
            (attn_hook_name(layer), masks.attn[layer], means.attn),
        ):
            x = acts[name]
            target = (
                torch.zeros_like(x[..., mask])
                if ablation == "zero"
                else stats.mean[layer][mask].float().expand_as(x[..., mask])
            )
            assert torch.equal(x[..., mask], target), name
    # unpruned units of the first pruned layer are untouched (later layers see changed inputs)
    _, clean = _capture(any_model, tokens)
    name0 = mlp_hook_name(0)
    keep = ~masks.mlp[0]
    with ul.pruned(any_model, ul.Masks(masks.mlp & torch.tensor([True, False])[:, None], torch.zeros_like(masks.attn))):
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
        with ul.pruned(gpt2, masks):
            ul.collect_stats(gpt2, bad, progress=False)
    assert our_hooks(gpt2) == 0


def test_failed_pruned_call_rolls_back(gpt2, monkeypatch):
    """If adding the hooks fails part-way, the hooks already added are removed."""
    masks = _masks(gpt2)
    n_hooks = sum(bool(m.any()) for m in (*masks.mlp, *masks.attn))
    assert n_hooks >= 3
    real = models.add_hook
    calls = []

    def flaky(model, name, fn):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("hook point refused")
        return real(model, name, fn)

    monkeypatch.setattr("unlearn_lens.pruning.add_hook", flaky)
    with pytest.raises(RuntimeError, match="hook point refused"):
        ul.pruned(gpt2, masks)
    assert len(calls) == 3 and our_hooks(gpt2) == 0


def test_handle_removes_and_makes_permanent(gpt2, means_for):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:2], seq_len=16).tokens
    masks = _masks(gpt2, seed=7)
    means = means_for(gpt2)
    with torch.no_grad():
        clean = gpt2(tokens)
    handle = ul.pruned(gpt2, masks, ablation="mean", means=means)
    assert handle.active and our_hooks(gpt2) > 0
    with torch.no_grad():
        hooked = gpt2(tokens)
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active and our_hooks(gpt2) == 0
    with torch.no_grad():
        assert torch.equal(gpt2(tokens), clean)
    edited = copy.deepcopy(gpt2)
    handle = ul.pruned(edited, masks, ablation="mean", means=means)
    assert handle.make_permanent() is edited
    assert our_hooks(edited) == 0
    with torch.no_grad():
        assert (edited(tokens) - hooked).abs().max() <= 1e-4


def test_ablation_per_unit_kind(gpt2, means_for):
    """MLP neurons read their mean while attention neurons read 0 (and the reverse)."""
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:2], seq_len=16).tokens
    masks = _masks(gpt2, seed=2)
    means = means_for(gpt2)
    for mlp_ablation, attn_ablation in (("mean", "zero"), ("zero", "mean")):
        with ul.pruned(gpt2, masks, mlp_ablation=mlp_ablation, attn_ablation=attn_ablation, means=means):
            _, acts = _capture(gpt2, tokens)
        for layer in range(masks.dims.n_layers):
            for kind, name, ablation in (
                ("mlp", mlp_hook_name(layer), mlp_ablation),
                ("attn", attn_hook_name(layer), attn_ablation),
            ):
                mask = getattr(masks, kind)[layer]
                x = acts[name][..., mask]
                want = (
                    torch.zeros_like(x)
                    if ablation == "zero"
                    else getattr(means, kind).mean[layer][mask].float().expand_as(x)
                )
                assert torch.equal(x, want), (mlp_ablation, attn_ablation, name)
    # the shared setting is the default of both kinds; a per-kind one overrides it
    with ul.pruned(gpt2, masks, ablation="mean", attn_ablation="zero", means=means), torch.no_grad():
        mixed = gpt2(tokens)
    with ul.pruned(gpt2, masks, mlp_ablation="mean", attn_ablation="zero", means=means), torch.no_grad():
        assert torch.equal(gpt2(tokens), mixed)
    with pytest.raises(ul.UnlearnLensError, match="unknown attn_ablation 'noise'"):
        ul.pruned(gpt2, masks, attn_ablation="noise")
    edited = copy.deepcopy(gpt2)
    ul.prune_weights_(edited, masks, mlp_ablation="mean", attn_ablation="zero", means=means)
    with torch.no_grad():
        assert (edited(tokens) - mixed).abs().max() <= 1e-4
    assert our_hooks(gpt2) == 0


def test_user_hooks_survive(gpt2):
    seen = []
    point = gpt2.hook_dict[mlp_hook_name(0)]
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
    handle = ul.pruned(gpt2, masks)
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
    ("gpt2", "zero"),
    ("gpt2", "mean"),
    ("neox", "zero"),
    ("neox", "mean"),
    ("llama", "zero"),
    ("native_gpt2", "zero"),
    ("native_gpt2", "mean"),
    ("native_gated", "zero"),
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


@pytest.mark.parametrize(
    "fixture, ablation", [("gpt2", "mean"), ("neox", "mean"), ("llama", "zero"), ("llama", "mean")]
)
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


def test_mean_ablation_adds_biases_where_the_config_has_a_switch(llama, means_for, tmp_path):
    """Llama has no output biases: mean ablation turns on mlp_bias/attention_bias and folds the means in."""
    from transformers import AutoModelForCausalLM

    assert llama.original_model.config.mlp_bias is False and llama.original_model.config.attention_bias is False
    edited = copy.deepcopy(llama)
    masks = _masks(llama, seed=4)
    ul.prune_weights_(edited, masks, ablation="mean", means=means_for(llama))
    config = edited.original_model.config
    assert config.mlp_bias is True and config.attention_bias is True
    assert llama.original_model.config.mlp_bias is False  # the original model is untouched
    ul.save_pruned(edited, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    down = reloaded.model.layers[0].mlp.down_proj
    assert down.bias is not None and down.bias.abs().max() > 0
    assert reloaded.model.layers[0].mlp.up_proj.bias.abs().max() == 0  # zero biases where nothing was folded


def test_mean_ablation_without_bias_switch_is_refused(native_gated, means_for):
    """A model with no output bias and no config switch for one keeps the clear error."""
    masks = _masks(native_gated, seed=1)
    projections = [p for layer in range(2) for p in output_projections(native_gated, layer).values()]
    if all(bias is not None for _, bias in projections):
        pytest.skip("this TransformerLens builds native models with output biases")
    edited = copy.deepcopy(native_gated)
    with pytest.raises(ul.UnlearnLensError, match="no 'mlp_bias' switch|no 'attention_bias' switch"):
        ul.prune_weights_(edited, masks, ablation="mean", means=means_for(native_gated))
