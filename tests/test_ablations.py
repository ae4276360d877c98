"""Peak and resample ablation: the streamed mode, the activation sample, the hooks, the weight edit, the loop."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.ablations import (
    ActivationHistogram,
    ActivationSample,
    HistogramBlock,
    _draw,
    collect_ablation_values,
)
from unlearn_lens.data import as_token_sets
from unlearn_lens.models import attached, hook_name
from unlearn_lens.stats import RunningStats


def _naive_mode(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Per column, one unit at a time: 0 if exact zeros are at least as many as the fullest of ``bins`` equal
    bins over [lo, hi] (zeros left out of the bins), else the mean of the values in that bin."""
    out = []
    for j in range(values.shape[1]):
        col = values[:, j].double()
        edges = torch.linspace(float(lo[j]), float(hi[j]), bins + 1, dtype=torch.float64)
        inside = col[(col >= edges[0]) & (col <= edges[-1]) & (col != 0)]
        which = torch.bucketize(inside, edges[1:-1], right=True)
        counts = torch.bincount(which, minlength=bins)
        best = int(torch.argmax(counts))
        zeros = int((col == 0).sum())
        if zeros and zeros >= counts[best]:
            out.append(0.0)
        else:
            out.append(inside[which == best].mean() if counts[best] else lo[j])
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out])


def test_mode_of_integer_data_is_torch_mode():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (401, 7), generator=gen).double()
    x[:, 3] = 2.0  # a point mass
    block = HistogramBlock(torch.full((7,), -0.5), torch.full((7,), 4.5), bins=5)  # one integer per bin
    block.update(x[:150])
    block.update(x[150:])
    expected = torch.mode(x, dim=0).values
    assert torch.equal(block.mode, expected)
    assert torch.equal(block.counts.sum(-1) + block.zeros, torch.full((7,), 401.0))


def test_mode_matches_a_naive_histogram_and_relu_zeros_are_exact():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 6, generator=gen) * torch.tensor([1.0, 0.1, 5.0, 1.0, 2.0, 1.0]) + 0.3
    x[:, 4] = x[:, 4].relu()  # mostly zeros: the mode is exactly 0, the mean is not
    stats = RunningStats((6,))
    stats.update(x)
    block = HistogramBlock.around(stats, bins=32)
    for part in x.split(700):
        block.update(part)
    lo, hi = stats.mean - 4 * stats.std, stats.mean + 4 * stats.std
    assert torch.allclose(block.mode, _naive_mode(x, lo, hi, 32), rtol=0, atol=1e-9)
    assert block.mode[4] == 0.0 and stats.mean[4] > 0.3
    assert torch.equal(block.counts.sum(-1) + block.zeros + block.outside, torch.full((6,), 3000.0))


def test_histograms_merge_exactly_and_refuse_other_ranges():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 2, 3, generator=gen)
    lo, hi = torch.full((2, 3), -2.0), torch.full((2, 3), 2.0)
    whole, a, b = (HistogramBlock(lo, hi, 16) for _ in range(3))
    whole.update(x)
    a.update(x[:123])
    b.update(x[123:])
    merged = a.merge(b)
    assert torch.equal(merged.counts, whole.counts) and torch.equal(merged.outside, whole.outside)
    assert torch.allclose(merged.sums, whole.sums, rtol=0, atol=1e-12)
    assert whole.outside.sum() > 0  # |x| > 2 happens in 500 normal draws
    with pytest.raises(ul.UnlearnLensError, match="same units, bins and ranges"):
        a.merge(HistogramBlock(lo, hi + 1, 16))
    with pytest.raises(ul.UnlearnLensError, match="at least one bin"):
        HistogramBlock(lo, hi, 0)


def _counted_activations(model, tokens: ul.TokenSet) -> dict[str, torch.Tensor]:
    """Every unit's activation at every counted token, in order: ``{"mlp": [n layer d_mlp], "attn": [n layer h d]}``."""
    dims = ul.ModelDims.of(model)
    got: dict[str, list] = {"mlp": [[] for _ in range(dims.n_layers)], "attn": [[] for _ in range(dims.n_layers)]}
    for batch in tokens.batches(8, "cpu"):
        hooks = []
        for layer in range(dims.n_layers):
            for kind in ("mlp", "attn"):

                def grab(x, hook, kind=kind, layer=layer, valid=batch.valid):
                    got[kind][layer].append(x.detach()[valid].clone())

                hooks.append((hook_name(kind, layer), grab))
        with attached(model, hooks), torch.no_grad():
            model(batch.tokens)
    return {kind: torch.stack([torch.cat(per) for per in layers], 1) for kind, layers in got.items()}


def test_collected_modes_and_sample_match_the_activations(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:20], seq_len=24)
    stats = ul.collect_stats(gpt2, tokens, max_tokens=None, progress=False)
    hist, sample = collect_ablation_values(
        gpt2, tokens, stats, bins=16, sample_tokens=40, seed=3, max_tokens=None, batch_size=3, progress=False
    )
    acts = _counted_activations(gpt2, tokens)
    n = tokens.n_tokens
    for kind, block in (("mlp", hist.mlp), ("attn", hist.attn)):
        flat = acts[kind].reshape(n, -1)
        mean, std = getattr(stats, kind).mean.reshape(-1), getattr(stats, kind).std.reshape(-1)
        expected = _naive_mode(flat, mean - 4 * std, mean + 4 * std, 16)
        assert torch.allclose(block.mode.reshape(-1), expected, rtol=0, atol=1e-5)
        assert torch.equal(
            block.counts.sum(-1) + block.zeros + block.outside,
            torch.full(block.unit_shape, float(n), dtype=torch.float64),
        )
        picked = _draw(n, 40, 3)
        assert torch.allclose(getattr(sample, kind), acts[kind][picked].float(), rtol=0, atol=1e-6)
    assert sample.n == 40 and hist.meta["bins"] == 16


def test_files_round_trip_and_corrupt_files_are_named(gpt2, tmp_path):
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:10], seq_len=24)
    stats = ul.collect_stats(gpt2, tokens, max_tokens=None, progress=False)
    hist, sample = collect_ablation_values(gpt2, tokens, stats, bins=8, sample_tokens=10, progress=False)
    hist.save(tmp_path / "peaks.safetensors")
    sample.save(tmp_path / "resample.safetensors")
    back = ActivationHistogram.load(tmp_path / "peaks.safetensors")
    assert torch.equal(back.values("mlp"), hist.values("mlp")) and torch.equal(back.values("attn"), hist.values("attn"))
    again = ActivationSample.load(tmp_path / "resample.safetensors")
    assert torch.equal(again.mlp, sample.mlp) and again.meta == sample.meta
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ul.UnlearnLensError, match="bad.safetensors"):
        ActivationHistogram.load(tmp_path / "bad.safetensors")
    with pytest.raises(ul.UnlearnLensError, match="ActivationSample"):
        ActivationSample.load(tmp_path / "peaks.safetensors")
    with pytest.raises(ul.UnlearnLensError, match="only 10 are available|available"):
        collect_ablation_values(gpt2, tokens, stats, bins=None, sample_tokens=10**6, progress=False)
    with pytest.raises(ul.UnlearnLensError, match="needs bins"):
        collect_ablation_values(gpt2, tokens, stats, bins=None, sample_tokens=0, progress=False)


def _one_unit_masks(model, layer=0, unit=2) -> ul.Masks:
    masks = ul.Masks.empty(ul.ModelDims.of(model))
    masks.mlp[layer, unit] = True
    return masks


def _mlp_out(model, tokens, layer=0):
    seen = {}

    def grab(x, hook):
        seen["x"] = x.detach().clone()

    with attached(model, [(hook_name("mlp", layer), grab)]), torch.no_grad():
        model(tokens)
    return seen["x"]


def test_resample_hand_computed(gpt2):
    """A pool of one token gives that token's value everywhere; a pool of two gives one of the two, about equally."""
    dims = ul.ModelDims.of(gpt2)
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:4], seq_len=24).tokens
    plain = _mlp_out(gpt2, tokens)
    masks = _one_unit_masks(gpt2)
    pool = ActivationSample(torch.zeros(1, *dims.mlp_shape), torch.zeros(1, *dims.attn_shape))
    pool.mlp[0, 0, 2] = 7.25
    with ul.pruned(gpt2, masks, ablation="resample", sample=pool):
        out = _mlp_out(gpt2, tokens)  # the hook runs before ours: we see the replaced value
    assert torch.all(out[..., 2] == 7.25)
    keep = torch.ones(dims.d_mlp, dtype=torch.bool)
    keep[2] = False
    assert torch.equal(out[..., keep], plain[..., keep])
    two = ActivationSample(torch.zeros(2, *dims.mlp_shape), torch.zeros(2, *dims.attn_shape))
    two.mlp[0, 0, 2], two.mlp[1, 0, 2] = -1.0, 3.0
    with ul.pruned(gpt2, masks, ablation="resample", sample=two, seed=5):
        first = _mlp_out(gpt2, tokens)[..., 2]
    with ul.pruned(gpt2, masks, ablation="resample", sample=two, seed=5):
        second = _mlp_out(gpt2, tokens)[..., 2]
    assert set(first.unique().tolist()) == {-1.0, 3.0}
    assert 0.3 < (first == 3.0).float().mean() < 0.7
    assert torch.equal(first, second)  # the same seed draws the same values


def test_peak_folds_into_weights_and_resample_is_refused(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:12], seq_len=24)
    stats = ul.collect_stats(gpt2, tokens, max_tokens=None, progress=False)
    hist, sample = collect_ablation_values(gpt2, tokens, stats, bins=16, sample_tokens=20, progress=False)
    gen = torch.Generator().manual_seed(4)
    dims = ul.ModelDims.of(gpt2)
    masks = ul.Masks(torch.rand(dims.mlp_shape, generator=gen) < 0.3, torch.rand(dims.attn_shape, generator=gen) < 0.3)
    probe = ul.tokenize_texts(gpt2.tokenizer, CODE[:3], seq_len=24).tokens
    with ul.pruned(gpt2, masks, ablation="peak", peaks=hist), torch.no_grad():
        expected = gpt2(probe)
    edited = ul.prune_weights_(copy.deepcopy(gpt2), masks, ablation="peak", peaks=hist)
    with torch.no_grad():
        assert (edited(probe) - expected).abs().max() <= 1e-4
    with ul.pruned(gpt2, masks, ablation="mean", means=stats), torch.no_grad():
        assert (gpt2(probe) - expected).abs().max() > 1e-4  # peak is not mean
    with pytest.raises(ul.UnlearnLensError, match="only as hooks"):
        ul.prune_weights_(copy.deepcopy(gpt2), masks, ablation="resample", sample=sample)
    with pytest.raises(ul.UnlearnLensError, match="needs peaks="):
        ul.pruned(gpt2, masks, ablation="peak", means=stats)
    with pytest.raises(ul.UnlearnLensError, match="needs sample="):
        ul.pruned(gpt2, masks, mlp_ablation="resample", attn_ablation="zero")


@pytest.mark.parametrize("ablation", ["peak", "resample"])
def test_loop_keeps_and_saves_the_ablation_values(gpt2, ablation, tmp_path):
    config = ul.PruneConfig(
        mlp_frac=0.1,
        attn_frac=0.05,
        n_steps=2,
        ablation=ablation,
        collect_tokens=300,
        eval_tokens=200,
        seq_len=24,
        peak_bins=16,
        resample_tokens=50,
    )
    run = ul.selective_prune(gpt2, CODE, PROSE, config, progress=False)
    run.baseline = ul.random_baseline(gpt2, CODE, PROSE, run, progress=False)
    held = "peaks" if ablation == "peak" else "sample"
    assert getattr(run.ablation, held) is not None and run.ablation.means is None
    # the baseline ablates with the same values
    assert getattr(run.baseline.ablation, held) is getattr(run.ablation, held)
    again = ul.selective_prune(gpt2, CODE, PROSE, config, progress=False)
    assert [s.forget.top1 for s in again.history] == [s.forget.top1 for s in run.history]
    assert torch.equal(again.masks.mlp, run.masks.mlp)
    run.save(tmp_path / "run")
    back = ul.PruneRun.load(tmp_path / "run")
    name = "peaks.safetensors" if ablation == "peak" else "resample.safetensors"
    assert (tmp_path / "run" / name).is_file() and getattr(back.baseline.ablation, held) is not None
    if ablation == "peak":
        assert torch.equal(back.ablation.peaks.values("mlp"), run.ablation.peaks.values("mlp"))
    else:
        assert torch.equal(back.ablation.sample.attn, run.ablation.sample.attn) and back.ablation.sample.n == 50
    # a baseline made from the run read back ablates exactly as the one made in memory
    replay = ul.random_baseline(gpt2, CODE, PROSE, back, progress=False)
    assert [s.retain.top1 for s in replay.history] == [s.retain.top1 for s in run.baseline.history]


@pytest.mark.parametrize("ablation", ["mean", "peak", "resample"])
def test_a_run_read_back_applies_again_with_its_one_ablation(gpt2, ablation, tmp_path):
    """``ul.pruned(model, run.masks, run.ablation)`` on a run read from disk gives its last step's top-1 exactly."""
    config = ul.PruneConfig(
        mlp_frac=0.1,
        attn_frac=0.05,
        n_steps=2,
        ablation=ablation,
        collect_tokens=300,
        eval_tokens=200,
        seq_len=24,
        peak_bins=16,
        resample_tokens=50,
    )
    ul.selective_prune(gpt2, CODE, PROSE, config, progress=False).save(tmp_path / "run")
    run = ul.PruneRun.load(tmp_path / "run")
    assert isinstance(run.ablation, ul.Ablation) and run.ablation.methods == {"mlp": ablation, "attn": ablation}
    held = {
        name: as_token_sets(gpt2, texts, [config.collect_tokens, config.eval_tokens], seq_len=config.seq_len)[1]
        for name, texts in (("forget", CODE), ("retain", PROSE))
    }
    with ul.pruned(gpt2, run.masks, run.ablation, seed=run.config.seed):
        again = {
            name: ul.evaluate(gpt2, tokens, max_tokens=None, batch_size=config.batch_size, progress=False)
            for name, tokens in held.items()
        }
    assert (again["forget"].top1, again["retain"].top1) == (run.final.forget.top1, run.final.retain.top1)
    assert run.masks.n_mlp > 0 and run.masks.n_attn > 0
    # the short form builds the same ablation
    if ablation == "mean":
        short = ul.pruned(gpt2, run.masks, ablation="mean", means=run.ablation.means, seed=run.config.seed)
        with short:
            forget = ul.evaluate(gpt2, held["forget"], max_tokens=None, batch_size=config.batch_size, progress=False)
        assert forget.top1 == run.final.forget.top1 and short.ablation.means is run.ablation.means


def test_an_ablation_is_one_checked_value(gpt2):
    dims = ul.ModelDims.of(gpt2)
    stats = ul.collect_stats(gpt2, PROSE, max_tokens=200, progress=False)
    masks = ul.Masks.empty(dims)
    masks.mlp[0, :3] = True
    both = ul.Ablation.of("mean", attn_ablation="zero", means=stats)
    assert both.methods == {"mlp": "mean", "attn": "zero"} and both.needs() == ["means"]
    assert ul.Ablation.of(both) is both
    with pytest.raises(ul.UnlearnLensError, match="do not also pass"):
        ul.pruned(gpt2, masks, both, means=stats)
    with pytest.raises(ul.UnlearnLensError, match="unknown attn_ablation 'noise'"):
        ul.Ablation(mlp="zero", attn="noise")
    with pytest.raises(ul.UnlearnLensError, match="needs means="):
        ul.pruned(gpt2, masks, ul.Ablation("mean", "zero"))
    with pytest.raises(ul.UnlearnLensError, match="means must be"):
        ul.Ablation("mean", "mean", means=masks)
    # only the pruned kinds need their values: attention neurons read their means, none is pruned
    with ul.pruned(gpt2, masks, ul.Ablation("zero", "mean")) as handle:
        assert handle.ablation.methods["attn"] == "mean"
