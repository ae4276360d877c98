"""Streaming statistics against a naive reference, merging, exclusions, precision, I/O."""

from __future__ import annotations

import pytest
import torch
from conftest import CODE, MODEL_FIXTURES, PROSE

import unlearn_lens as ul
from unlearn_lens import kernels
from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name
from unlearn_lens.stats import RunningStats


def naive_stats(model, tokens: ul.TokenSet, masks=None, ablation="zero", means=None):
    """Cache every activation, then compute each statistic with plain torch in float64."""
    dims = ul.ModelDims.of(model)
    cache = {("mlp", l): [] for l in range(dims.n_layers)} | {("attn", l): [] for l in range(dims.n_layers)}

    def grab(kind, layer):
        def fn(x, hook):
            cache[(kind, layer)].append(x.detach().clone())

        return fn

    hooks = [(mlp_hook_name(l), grab("mlp", l)) for l in range(dims.n_layers)]
    hooks += [(attn_hook_name(l), grab("attn", l)) for l in range(dims.n_layers)]
    ctx = ul.pruned(model, masks, ablation=ablation, means=means) if masks is not None else attached(model, [])
    with ctx, attached(model, hooks), torch.no_grad():
        model(tokens.tokens)
    out = {}
    for kind in ("mlp", "attn"):
        xs = torch.stack([torch.cat(cache[(kind, l)])[tokens.valid].double() for l in range(dims.n_layers)])
        # xs: [layer, tokens, *units]
        out[kind] = {
            "count": torch.full(xs.shape[:1] + xs.shape[2:], float(xs.shape[1]), dtype=torch.float64),
            "mean": xs.mean(1),
            "std": xs.std(1, correction=0),
            "abs_mean": xs.abs().mean(1),
            "rms": xs.pow(2).mean(1).sqrt(),
            "sqrt_abs_mean": xs.abs().sqrt().mean(1),
            "freq": (xs > 0).double().mean(1),
            "max": xs.amax(1),
        }
    return out


FIELDS = ["count", "mean", "std", "abs_mean", "rms", "sqrt_abs_mean", "freq", "max"]


def assert_matches(stats: ul.ActivationStats, ref, rtol=1e-6, atol=1e-7):
    for kind in ("mlp", "attn"):
        got = getattr(stats, kind)
        for name in FIELDS:
            value = getattr(got, name)
            assert value.shape == ref[kind][name].shape, (kind, name)
            torch.testing.assert_close(value, ref[kind][name], rtol=rtol, atol=atol, msg=f"{kind}.{name}")


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_statistics_equal_naive_reference(request, fixture):
    model = request.getfixturevalue(fixture)
    tokens = ul.tokenize_texts(model.tokenizer, CODE[:10], seq_len=24)
    assert tokens.valid[-1].sum() < 23, "the fixture should include a padded row"
    stats = ul.collect_stats(model, tokens, batch_size=3, progress=False)
    assert stats.n_tokens == tokens.n_tokens
    assert_matches(stats, naive_stats(model, tokens))


def test_bos_and_padding_never_count(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:3], seq_len=32)
    stats = ul.collect_stats(gpt2, tokens, progress=False)
    assert stats.n_tokens == int(tokens.valid.sum())
    assert stats.n_tokens == tokens.tokens.numel() - tokens.tokens.shape[0] - int((~tokens.valid[:, 1:]).sum())
    # changing the tokens at padded positions changes nothing
    altered = ul.TokenSet(tokens.tokens.clone(), tokens.valid.clone())
    altered.tokens[~altered.valid & (torch.arange(32) > 0)] = 7
    again = ul.collect_stats(gpt2, altered, progress=False)
    torch.testing.assert_close(again.mlp.mean, stats.mlp.mean, rtol=0, atol=0)


def test_merge_of_two_halves_equals_one_run(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE + PROSE, seq_len=32, max_tokens=1500)
    half = len(tokens) // 2
    a = ul.TokenSet(tokens.tokens[:half], tokens.valid[:half])
    b = ul.TokenSet(tokens.tokens[half:], tokens.valid[half:])
    whole = ul.collect_stats(gpt2, tokens, batch_size=4, progress=False)
    merged = ul.collect_stats(gpt2, a, progress=False).merge(ul.collect_stats(gpt2, b, progress=False))
    for kind in ("mlp", "attn"):
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(getattr(merged, kind), name), getattr(getattr(whole, kind), name), rtol=1e-6, atol=1e-9
            )


def test_large_mean_small_std_is_exact():
    torch.manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(20_000, 3, dtype=torch.float64)).float()  # float32 activations
    stats = RunningStats((3,))
    for chunk in x.split(1000):
        stats.update(chunk)
    ref = x.double()
    torch.testing.assert_close(stats.std, ref.std(0, correction=0), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats.mean, ref.mean(0), rtol=1e-12, atol=0)
    assert 0.0098 < float(stats.std[0]) < 0.0102


def test_statistics_on_pruned_model(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:6], seq_len=24)
    dims = ul.ModelDims.of(gpt2)
    masks = ul.Masks.empty(dims)
    masks.mlp[0, :5] = True
    masks.attn[1, 2, :] = True
    with ul.pruned(gpt2, masks):
        zero = ul.collect_stats(gpt2, tokens, progress=False)
    assert (zero.mlp.abs_mean[0, :5] == 0).all() and (zero.attn.abs_mean[1, 2] == 0).all()
    assert (zero.mlp.abs_mean[0, 5:] > 0).any()
    assert_matches(zero, naive_stats(gpt2, tokens, masks))
    means = ul.collect_stats(gpt2, ul.tokenize_texts(gpt2.tokenizer, PROSE[:6], seq_len=24), progress=False)
    with ul.pruned(gpt2, masks, ablation="mean", means=means):
        mean = ul.collect_stats(gpt2, tokens, progress=False)
    torch.testing.assert_close(mean.mlp.mean[0, :5], means.mlp.mean[0, :5].float().double())
    assert (mean.mlp.std[0, :5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_accumulate_in_float32_or_better(gpt2_dir, dtype):
    """Statistics of a bf16/fp16 model equal a float64 reference over the same (half-precision) activations."""
    model = ul.load_model(gpt2_dir, device="cpu", dtype=dtype)
    # many tokens of one unit: summing them in half precision would lose digits (bf16 keeps 8 bits)
    tokens = ul.tokenize_texts(model.tokenizer, CODE * 4, seq_len=48)
    stats = ul.collect_stats(model, tokens, batch_size=64, progress=False)
    ref = naive_stats(model, tokens)
    assert ref["mlp"]["count"][0, 0] > 1000
    assert_matches(stats, ref, rtol=1e-5, atol=1e-6)
    assert stats.mlp.mean.dtype == torch.float64


def test_save_load_round_trip(gpt2, tmp_path):
    stats = ul.collect_stats(gpt2, CODE, max_tokens=300, progress=False)
    stats.save(tmp_path / "s.safetensors")
    back = ul.ActivationStats.load(tmp_path / "s.safetensors")
    for kind in ("mlp", "attn"):
        for name in FIELDS:
            assert torch.equal(getattr(getattr(back, kind), name), getattr(getattr(stats, kind), name))
    assert back.meta["n_tokens"] == 300


def test_corrupt_and_foreign_files(gpt2, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ul.UnlearnLensError, match="not a readable safetensors"):
        ul.ActivationStats.load(bad)
    masks = ul.Masks.empty(ul.ModelDims.of(gpt2))
    masks.save(tmp_path / "m.safetensors")
    with pytest.raises(ul.UnlearnLensError, match="not an unlearn_lens.ActivationStats file"):
        ul.ActivationStats.load(tmp_path / "m.safetensors")
    with pytest.raises(ul.UnlearnLensError, match="does not exist"):
        ul.ActivationStats.load(tmp_path / "missing.safetensors")


def test_bad_arguments(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="batch_size"):
        ul.collect_stats(gpt2, CODE, batch_size=0)
    with pytest.raises(ul.UnlearnLensError, match="empty dataset"):
        ul.collect_stats(gpt2, [])
    with pytest.raises(ul.UnlearnLensError, match="not one string"):
        ul.collect_stats(gpt2, "just one string")


@pytest.mark.parametrize("fixture", ["gpt2", "native_gated"])
def test_collection_stops_after_the_last_statistics_hook(request, fixture):
    """Nothing after the last MLP/attention hook runs during collection; a plain forward still does."""
    model = request.getfixturevalue(fixture)
    tokens = ul.tokenize_texts(model.tokenizer, CODE[:6], seq_len=24)
    later = []
    with attached(model, [("unembed.hook_in", lambda x, hook: later.append(x.shape))]):
        stats = ul.collect_stats(model, tokens, batch_size=2, progress=False)
        assert later == []
        logits = model(tokens.tokens[:2])
        assert len(later) == 1
    assert_matches(stats, naive_stats(model, tokens))
    assert torch.equal(model(tokens.tokens[:2]), logits)


def test_one_model_is_measured_by_one_thread_at_a_time(gpt2):
    """A second thread is refused while the first collects; the first one's statistics stay exact."""
    import threading

    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=32, max_tokens=400)
    ul.ModelDims.of(gpt2)  # read the unit shapes now: that takes a forward pass of its own
    first_inside, second_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def hold(x, hook):
        if threading.current_thread().name == "first" and not first_inside.is_set():
            first_inside.set()
            second_done.wait(timeout=60)

    def first():
        results["first"] = ul.collect_stats(gpt2, tokens, batch_size=4, progress=False)

    def second():
        first_inside.wait(timeout=60)
        try:
            ul.collect_stats(gpt2, tokens, progress=False)
        except ul.UnlearnLensError as exc:
            results["second"] = exc
        finally:
            second_done.set()

    with attached(gpt2, [("blocks.0.hook_resid_pre", hold)]):
        threads = [threading.Thread(target=first, name="first"), threading.Thread(target=second, name="second")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert "in use by another thread" in str(results["second"])
    assert results["first"].n_tokens == tokens.n_tokens == 400
    assert_matches(results["first"], naive_stats(gpt2, tokens))
    # the model is free again, and a thread may nest its own claims (statistics inside pruning)
    with ul.pruned(gpt2, ul.Masks.empty(ul.ModelDims.of(gpt2))):
        assert ul.collect_stats(gpt2, tokens, progress=False).n_tokens == 400


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_collection_equals_naive_reference(gpt2_dir, dtype, monkeypatch):
    """The compiled in-place reduction (the CUDA default) gives the reference statistics, padding and BOS skipped."""
    model = ul.load_model(gpt2_dir, device="cpu", dtype=dtype)
    tokens = ul.tokenize_texts(model.tokenizer, CODE * 2, seq_len=24)
    assert not tokens.valid[-1].all(), "the fixture should include a padded row"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "index_select", lambda *a, **k: pytest.fail("the fused path copies no rows"))
        fused = ul.collect_stats(model, tokens, batch_size=5, progress=False, fused=True)
    assert not kernels._compiled.get("failed"), "torch.compile should work on this machine"
    eager = ul.collect_stats(model, tokens, batch_size=5, progress=False, fused=False)
    assert fused.n_tokens == eager.n_tokens == tokens.n_tokens
    assert_matches(fused, naive_stats(model, tokens), rtol=1e-5, atol=1e-6)
    for kind in ("mlp", "attn"):
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(getattr(fused, kind), name),
                getattr(getattr(eager, kind), name),
                rtol=1e-5,
                atol=1e-6,
                msg=f"{kind}.{name}",
            )
