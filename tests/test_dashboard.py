"""Unit dashboards: the logit effect by hand, examples re-run, quantile bands, histograms, the ablation effect by
hand, the JSONL export, the notebook object, the report's dashboards in a browser, and the live server."""

from __future__ import annotations

import html
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlparse

import _viz_support
import pytest
import torch
from conftest import CODE, PROSE, chromium

import unlearn_lens as ul
from unlearn_lens.ablations import ActivationSample, HistogramBlock
from unlearn_lens.cli import main
from unlearn_lens.data import as_token_set
from unlearn_lens.logit_effect import final_norm, logit_effects
from unlearn_lens.models import attached, model_dims, underlying_model
from unlearn_lens.report.ablation_effect import ablation_effects
from unlearn_lens.report.dashboard_view import explorer_dashboards, explorer_row
from unlearn_lens.report.dashboards import (
    EXAMPLE_FIELDS,
    FIELDS,
    DashboardConfig,
    choose_units,
    unit_dashboards,
)
from unlearn_lens.report.display import Unit
from unlearn_lens.report.html import write_report
from unlearn_lens.report.neuronpedia import MAPPING
from unlearn_lens.report.unit_scan import _Lattice, histogram_edges, scan_units

CONFIG = DashboardConfig(n_top=3, n_bottom=3, n_bands=4, per_band=3, max_tokens=400, sample=120)


@pytest.fixture(scope="module")
def run(gpt2):
    """A two-step run on the tiny GPT-2: MLP neurons mean-ablated, attention neurons zero-ablated."""
    config = ul.PruneConfig(
        mlp_frac=0.05,
        attn_frac=0.02,
        n_steps=2,
        collect_tokens=300,
        eval_tokens=200,
        mlp_ablation="mean",
        attn_ablation="zero",
    )
    return ul.selective_prune(gpt2, CODE, PROSE, config, progress=False)


@pytest.fixture(scope="module")
def units(run):
    return choose_units(run, "pruned,top:4,L1.attn.H2.D3,L0.mlp.7")


@pytest.fixture(scope="module")
def records(run, gpt2, units):
    return unit_dashboards(run, gpt2, CODE, PROSE, units, CONFIG)


def _rows(model, texts, run):
    return as_token_set(model, texts, seq_len=run.config.seq_len, max_tokens=CONFIG.max_tokens)


def _activation(model, tokens: torch.Tensor, unit: Unit) -> torch.Tensor:
    """The unit's activation at every position of one row of tokens, read with a hook."""
    found = []

    def read(x, hook):
        found.append(x[0, :, unit.index] if unit.kind == "mlp" else x[0, :, unit.head, unit.d])

    with torch.no_grad(), attached(model, [(unit.hook, read)]):
        model(tokens[None])
    return found[0].float()


# --- the direct logit effect ----------------------------------------------------------------------------------


def _by_hand(out_row: torch.Tensor, norm_weight: torch.Tensor | None, lm_head: torch.Tensor, centre: bool):
    row = out_row.double()
    if centre:
        row = row - row.mean()
    if norm_weight is not None:
        row = row * norm_weight.double()
    return lm_head.double() @ row  # lm_head: [d_vocab d_model]


def test_logit_effect_by_hand_layernorm(gpt2):
    """GPT-2 (LayerNorm): c_proj rows of the Hugging Face model, centred, times ln_f's weight, through lm_head."""
    hf = underlying_model(gpt2)
    layer, units = 1, [0, 5, 63]
    got = logit_effects(gpt2, "mlp", layer, units)
    for j, i in enumerate(units):
        row = hf.transformer.h[layer].mlp.c_proj.weight[i]  # Conv1D: [d_in, d_out]
        want = _by_hand(row, hf.transformer.ln_f.weight, hf.lm_head.weight, centre=True)
        torch.testing.assert_close(got[j], want, rtol=1e-10, atol=1e-12)
    head, d, d_head = 2, 3, model_dims(gpt2).d_head
    got = logit_effects(gpt2, "attn", 0, [head * d_head + d])[0]
    row = hf.transformer.h[0].attn.c_proj.weight[head * d_head + d]
    torch.testing.assert_close(got, _by_hand(row, hf.transformer.ln_f.weight, hf.lm_head.weight, True))
    assert final_norm(gpt2).centred and "left out" in final_norm(gpt2).describe()


def test_logit_effect_by_hand_rmsnorm(llama, native_gated):
    """Llama and a TL-native gated model (RMSNorm): not centred, times the norm's weight."""
    hf = underlying_model(llama)
    got = logit_effects(llama, "mlp", 0, [4])[0]
    row = hf.model.layers[0].mlp.down_proj.weight[:, 4]  # Linear: [d_out, d_in]
    torch.testing.assert_close(got, _by_hand(row, hf.model.norm.weight, hf.lm_head.weight, centre=False))
    d_head = model_dims(llama).d_head
    got = logit_effects(llama, "attn", 1, [3 * d_head + 1])[0]
    row = hf.model.layers[1].self_attn.o_proj.weight[:, 3 * d_head + 1]
    torch.testing.assert_close(got, _by_hand(row, hf.model.norm.weight, hf.lm_head.weight, centre=False))
    assert not final_norm(llama).centred
    block = native_gated.blocks[1]
    got = logit_effects(native_gated, "mlp", 1, [2])[0]
    row = block.mlp.out.original_component.weight[:, 2]
    norm = native_gated.ln_final.original_component.weight
    want = _by_hand(row, norm, native_gated.unembed.original_component.weight, centre=False)
    torch.testing.assert_close(got, want)


def test_logit_effect_refuses_units_out_of_range(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="out of range"):
        logit_effects(gpt2, "mlp", 0, [64])
    with pytest.raises(ul.UnlearnLensError, match="unit kind"):
        logit_effects(gpt2, "heads", 0, [0])


def _legacy_logit_effect(model, kind: str, layer: int, unit: Unit) -> torch.Tensor:
    """By hand on a legacy HookedTransformer: W_out / W_O row, centred under LayerNorm, times ln_final.w, @ W_U."""
    block = model.blocks[layer]
    row = block.mlp.W_out[unit.index] if kind == "mlp" else block.attn.W_O[unit.head, unit.d]
    weight = getattr(model.ln_final, "w", None)
    centre = model.cfg.normalization_type in ("LN", "LNPre")
    return _by_hand(row, weight, model.W_U.T, centre)


def test_dashboards_on_every_kind_of_model(any_model):
    """The whole record on every model kind the package supports (the legacy HookedTransformer included, where
    TransformerLens still ships it): the logit effect (by hand from W_out, W_O and W_U on a legacy model), the top
    example re-run, and a unit's ablation effect against a hand-written hook."""
    config = ul.PruneConfig(mlp_frac=0.05, attn_frac=0.02, n_steps=1, collect_tokens=200, eval_tokens=100)
    run = ul.selective_prune(any_model, CODE, PROSE, config, progress=False)
    units = choose_units(run, "L0.mlp.3,L1.attn.H1.D2")
    records = unit_dashboards(run, any_model, CODE, PROSE, units, CONFIG)
    assert [r["unit"] for r in records] == ["L0.mlp.3", "L1.attn.H1.D2"]
    rows = {"forget": _rows(any_model, CODE, run), "retain": _rows(any_model, PROSE, run)}
    legacy = not hasattr(any_model, "original_model") and hasattr(any_model.blocks[0].mlp, "W_out")
    for r in records:
        unit = Unit.parse(r["unit"], run.dims)
        effect = logit_effects(any_model, r["kind"], r["layer"], [r["index"]])[0]
        if legacy:
            torch.testing.assert_close(effect, _legacy_logit_effect(any_model, r["kind"], r["layer"], unit))
        assert r["logits"]["promoted"][0][1] == pytest.approx(float(effect.max()), rel=1e-5)
        example = r["top"][0]
        tokens = rows[example["dataset"]].tokens[example["row"]]
        acts = _activation(any_model, tokens[: example["pos"] + 1], unit)
        assert acts[-1].item() == pytest.approx(example["acts"][example["max_pos"]], rel=1e-4, abs=1e-6)

        dims = run.dims
        mlp, attn = torch.zeros(1, *dims.mlp_shape), torch.zeros(1, *dims.attn_shape)
        (mlp if unit.kind == "mlp" else attn).fill_(0.5)
        ablation = ul.Ablation("resample", "resample", sample=ActivationSample(mlp, attn))
        (delta,) = ablation_effects(any_model, ablation, {"r": tokens}, [(unit, "r", 16)])

        def fixed(x, hook, unit=unit):
            x = x.clone()
            if unit.kind == "mlp":
                x[..., unit.index] = 0.5
            else:
                x[..., unit.head, unit.d] = 0.5
            return x

        base = _logprobs(any_model, tokens[:16])
        with attached(any_model, [(unit.hook, fixed)]):
            want = _logprobs(any_model, tokens[:16]) - base
        torch.testing.assert_close(delta.double(), want, rtol=1e-4, atol=1e-5)


# --- the streamed scan ----------------------------------------------------------------------------------------


def test_lattice_histogram_is_exact_under_widening():
    """Batches of growing spread widen the bins; every value is still counted in the bin that holds it."""
    g = torch.Generator().manual_seed(0)
    lattice = _Lattice(3, 16, torch.device("cpu"))
    blocks = [lattice.block("a"), lattice.block("b")]
    seen: list[list[torch.Tensor]] = [[], []]
    for step, scale in enumerate([1e-3, 1e-3, 0.5, 3.0, 40.0, 0.1]):
        for which, block in enumerate(blocks):
            x = torch.randn(50, 3, generator=g) * scale + torch.tensor([0.0, 5.0, -7.0]) * (step > 2)
            x[::7, 0] = 0.0  # exact zeros, counted apart and put back in their bin
            lattice.fit(x, slice(0, 3))
            block.update(x, slice(0, 3))
            seen[which].append(x)
    for u in range(3):
        edges, counts = histogram_edges(blocks, u)
        assert len(edges) - 1 <= 16 and all(a < b for a, b in zip(edges, edges[1:]))
        for which in range(2):
            values = torch.cat(seen[which])[:, u].double()
            want = torch.histogram(values, torch.tensor(edges, dtype=torch.float64)).hist
            assert counts[which] == want.long().tolist() and sum(counts[which]) == values.numel()


def test_scan_matches_the_full_activations(gpt2, run):
    """Top, bottom, statistics, zeros and the sample of the streamed scan, against every activation captured."""
    units = [Unit.of("mlp", 1, 3, run.dims), Unit.of("attn", 0, 17, run.dims), Unit.of("mlp", 0, 9, run.dims)]
    scans = scan_units(gpt2, {"forget": CODE, "retain": PROSE}, units, k=4, max_tokens=300, batch_size=3, sample=50)
    for scan in scans.values():
        rows, valid = scan.tokens.tokens, scan.tokens.valid
        for u, unit in enumerate(units):
            acts = torch.stack([_activation(gpt2, row, unit) for row in rows])
            x = acts[valid]
            torch.testing.assert_close(scan.top_values[u], torch.topk(x, 4).values)
            torch.testing.assert_close(scan.bottom_values[u], -torch.topk(-x, 4).values)
            torch.testing.assert_close(acts.reshape(-1)[scan.top_positions[u]], scan.top_values[u])
            assert int(scan.zeros[u]) == int((x == 0).sum()) and int(scan.stats.count[u]) == x.numel()
            torch.testing.assert_close(scan.stats.mean[u], x.double().mean(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(scan.sample_windows[:, u, 8], acts.reshape(-1)[scan.sample_positions])


def test_bottom_is_negative_where_the_unit_goes_negative(neox):
    """GPT-NeoX's GELU neurons go negative: their bottom activations are negative, and their lowest."""
    dims = model_dims(neox)
    units = [Unit.of("mlp", 0, i, dims) for i in range(8)]
    scans = scan_units(neox, {"forget": CODE}, units, k=3, max_tokens=200)
    scan = scans["forget"]
    assert bool((scan.bottom_values[:, 0] < 0).all()), "GELU neurons reach negative values"
    assert bool((scan.bottom_values[:, 0] <= scan.stats.mean).all())


# --- the records ----------------------------------------------------------------------------------------------


def test_records_follow_the_schema(records, units):
    assert [r["unit"] for r in records] == [u.name for u in units]
    assert "L1.attn.H2.D3" in {r["unit"] for r in records} and "L0.mlp.7" in {r["unit"] for r in records}
    for r in records:
        assert list(r) == list(FIELDS)
        assert r["version"] == 1 and r["format"] == "unlearn_lens.dashboard"
        for example in r["top"] + r["bottom"] + [e for band in r["quantiles"] for e in band["examples"]]:
            assert set(example) <= set(EXAMPLE_FIELDS) and set(EXAMPLE_FIELDS) - set(example) <= {"delta_logprob"}
        assert all("delta_logprob" in e for e in r["top"])
    json.dumps(records, allow_nan=False)


def test_units_are_chosen_by_spec(run):
    pruned = choose_units(run, "pruned")
    assert len(pruned) == run.masks.n_mlp + run.masks.n_attn
    top = choose_units(run, "top:3")
    scores = torch.cat([run.initial_scores.mlp.reshape(-1), run.initial_scores.attn.reshape(-1)])
    assert len(top) == 3 and sorted(scores.tolist(), reverse=True)[0] == pytest.approx(
        float(run.initial_scores.of(top[0].kind)[top[0].layer].reshape(-1)[top[0].index])
    )
    assert len(choose_units(run, "all")) == run.dims.n_mlp + run.dims.n_attn
    assert choose_units(run, "L1.N5, L1.mlp.5,L0.H1.D2") == [Unit("mlp", 1, 5), Unit("attn", 0, 10, 1, 2)]
    for bad in ("L9.mlp.0", "L0.attn.H9.D0", "everything", "top:x"):
        with pytest.raises(ul.UnlearnLensError):
            choose_units(run, bad)


def test_place_in_the_run(records, run):
    for r in records:
        mask = run.masks.mlp if r["kind"] == "mlp" else run.masks.attn.reshape(run.dims.n_layers, -1)
        assert r["pruned"] == bool(mask[r["layer"], r["index"]])
        step = run.pruned_step[0 if r["kind"] == "mlp" else 1].reshape(run.dims.n_layers, -1)[r["layer"], r["index"]]
        assert r["pruned_step"] == (int(step) if r["pruned"] else None)
        scores = run.initial_scores.of(r["kind"]).reshape(run.dims.n_layers, -1)
        assert r["score"] == pytest.approx(float(scores[r["layer"], r["index"]]), rel=1e-5)
        assert r["rank_in_layer"] == 1 + int((scores[r["layer"]] > scores[r["layer"], r["index"]]).sum())


def test_example_activations_rerun(records, gpt2, run):
    """Each stored example, re-run with its full context (its row up to its token), gives the stored activation."""
    rows = {"forget": _rows(gpt2, CODE, run), "retain": _rows(gpt2, PROSE, run)}
    tokenizer = gpt2.tokenizer
    texts = {"forget": CODE, "retain": PROSE}
    for r in records:
        unit = Unit.parse(r["unit"], run.dims)
        for example in r["top"] + r["bottom"] + [e for band in r["quantiles"] for e in band["examples"]]:
            tokens = rows[example["dataset"]].tokens[example["row"]]
            assert example["pos"] > 0, "BOS is never an example"
            assert tokens[example["start"] : example["start"] + len(example["tokens"])].tolist() == example["token_ids"]
            assert example["start"] + example["max_pos"] == example["pos"]
            acts = _activation(gpt2, tokens[: example["pos"] + 1], unit)
            assert acts[-1].item() == pytest.approx(example["acts"][example["max_pos"]], rel=1e-4, abs=1e-6)
            text = example["text"]
            text_ids = tokenizer(texts[example["dataset"]][text["index"]], add_special_tokens=False)["input_ids"]
            ids = text_ids + [tokenizer.eos_token_id]
            assert ids[text["token"]] == example["token_ids"][example["max_pos"]]


def test_top_and_bottom_are_the_extremes(records):
    for r in records:
        for name in ("forget", "retain"):
            stats = r["stats"][name]
            top = [e["acts"][e["max_pos"]] for e in r["top"] if e["dataset"] == name]
            bottom = [e["acts"][e["max_pos"]] for e in r["bottom"] if e["dataset"] == name]
            assert top == sorted(top, reverse=True) and top[0] == pytest.approx(stats["max"], rel=1e-5)
            assert bottom == sorted(bottom) and bottom[0] == pytest.approx(stats["min"], rel=1e-5, abs=1e-9)
            if stats["min"] < 0:
                assert bottom[0] < 0
    attention = [r for r in records if r["kind"] == "attn"]
    assert attention and any(r["stats"]["forget"]["min"] < 0 for r in attention), "attention neurons go negative"


def test_quantile_bands_are_monotone(records):
    for r in records:
        bands = r["quantiles"]
        assert bands
        for band in bands:
            lo, hi = band["range"]
            assert lo <= hi and band["examples"]
            for e in band["examples"]:
                assert lo <= e["acts"][e["max_pos"]] <= hi
        for a, b in zip(bands, bands[1:]):
            assert a["range"][1] <= b["range"][0]


def test_histograms_share_edges_and_count_every_token(records, gpt2, run):
    rows = {"forget": _rows(gpt2, CODE, run), "retain": _rows(gpt2, PROSE, run)}
    for r in records[:4]:
        hist = r["histogram"]
        edges = torch.tensor(hist["edges"], dtype=torch.float64)
        assert bool((edges[1:] > edges[:-1]).all())
        unit = Unit.parse(r["unit"], run.dims)
        for name, tokens in rows.items():
            assert sum(hist[name]) == r["stats"][name]["tokens"] == tokens.n_tokens
            acts = torch.stack([_activation(gpt2, row, unit) for row in tokens.tokens])[tokens.valid].double()
            assert hist[name] == torch.histogram(acts, edges).hist.long().tolist()
            assert r["stats"][name]["zeros"] == pytest.approx(float((acts == 0).double().mean()), rel=1e-5)
            assert r["stats"][name]["fires"] == pytest.approx(float((acts > 0).double().mean()), rel=1e-5)


def test_logits_in_the_record(records, gpt2):
    r = records[0]
    effect = logit_effects(gpt2, r["kind"], r["layer"], [r["index"]])[0]
    promoted = [v for _, v in r["logits"]["promoted"]]
    assert len(promoted) == 10 and promoted[0] == pytest.approx(float(effect.max()), rel=1e-5)
    assert r["logits"]["suppressed"][0][1] == pytest.approx(float(effect.min()), rel=1e-5)
    assert r["logits"]["promoted"][0][0] == gpt2.tokenizer.decode([int(effect.argmax())])
    assert sum(r["logits"]["histogram"]["counts"]) == effect.numel()


def _logprobs(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(tokens[None])[0].double()
    return logits[:-1].log_softmax(-1).gather(-1, tokens[1:, None]).squeeze(-1)


def test_ablation_effect_by_hand(records, gpt2, run):
    """delta_logprob against the model run with a hook that sets the one unit to its ablated value by hand."""
    rows = {"forget": _rows(gpt2, CODE, run), "retain": _rows(gpt2, PROSE, run)}
    checked = set()
    for r in records:
        unit = Unit.parse(r["unit"], run.dims)
        value = 0.0 if r["kind"] == "attn" else float(run.ablation.means.mlp.mean[unit.layer, unit.index])
        assert r["ablation_effect"]["ablation"] == ("zero" if r["kind"] == "attn" else "mean")

        def ablate(x, hook, unit=unit, value=value):
            x = x.clone()
            if unit.kind == "mlp":
                x[..., unit.index] = value
            else:
                x[..., unit.head, unit.d] = value
            return x

        for example in r["top"][:2]:
            tokens = rows[example["dataset"]].tokens[example["row"]]
            stop = min(example["start"] + len(example["tokens"]) + 1, tokens.numel())
            base = _logprobs(gpt2, tokens[:stop])
            with attached(gpt2, [(unit.hook, ablate)]):
                ablated = _logprobs(gpt2, tokens[:stop])
            for i, got in enumerate(example["delta_logprob"]):
                p = example["start"] + i
                if got is None:
                    assert p + 1 >= stop
                else:
                    assert got == pytest.approx(float(ablated[p] - base[p]), rel=2e-3, abs=1e-6)
            checked.add(r["kind"])
        for name in ("forget", "retain"):
            values = [v for e in r["top"] if e["dataset"] == name for v in e["delta_logprob"] if v is not None]
            assert r["ablation_effect"]["positions"][name] == len(values)
            if values:
                assert r["ablation_effect"][name] == pytest.approx(sum(values) / len(values), rel=1e-3, abs=1e-6)
    assert checked == {"mlp", "attn"}


def test_resample_ablation_effect_draws_retain_values(gpt2):
    """Under resample ablation the unit reads values from the retain pool (here: one value, so it is exact)."""

    dims = model_dims(gpt2)
    sample = ActivationSample(torch.full((1, *dims.mlp_shape), 0.75), torch.zeros(1, *dims.attn_shape))
    ablation = ul.Ablation("resample", "zero", sample=sample)
    tokens = as_token_set(gpt2, CODE, max_tokens=100).tokens[0]
    unit = Unit("mlp", 1, 4)
    (delta,) = ablation_effects(gpt2, ablation, {"r": tokens}, [(unit, "r", 20)])

    def fixed(x, hook):
        x = x.clone()
        x[..., 4] = 0.75
        return x

    base = _logprobs(gpt2, tokens[:20])
    with attached(gpt2, [(unit.hook, fixed)]):
        want = _logprobs(gpt2, tokens[:20]) - base
    torch.testing.assert_close(delta.double(), want, rtol=1e-4, atol=1e-5)


def test_histogram_block_is_the_base():
    """The dashboards' histograms are the histograms of peak ablation, on a lattice."""
    lattice = _Lattice(2, 8, torch.device("cpu"))
    assert isinstance(lattice.block("forget"), HistogramBlock)
    assert math.log2(float(lattice.block("forget").width[0])).is_integer()


# --- the export -----------------------------------------------------------------------------------------------

NEURONPEDIA_FEATURE = {  # the keys of SAEDashboard's NeuronpediaDashboardFeature.to_dict()
    "feature_index",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "n_prompts_total",
    "n_tokens_in_prompt",
    "dataset",
    "decoder_weights_dist",
    "activations",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory written by `unlearn-lens prune`, its texts in folders it names (so they can be read again)."""
    root = tmp_path_factory.mktemp("dashboard-run")
    model_dir = _viz_support.build_model_dir(root / "model")
    for name, texts in (("code", _viz_support.CODE), ("prose", _viz_support.PROSE)):
        (root / name).mkdir()
        for i in range(0, len(texts), 8):
            (root / name / f"{i:03d}.txt").write_text("\n".join(texts[i : i + 8]), encoding="utf-8")
    flags = ["--model", str(model_dir), "--forget", str(root / "code"), "--retain", str(root / "prose")]
    flags += ["--mlp-frac", "0.05", "--attn-frac", "0.02", "--n-steps", "1", "--collect-tokens", "300"]
    flags += ["--eval-tokens", "200", "--baseline", "none", "--no-report", "--quiet", "--device", "cpu"]
    assert main(["prune", *flags, "--out", str(root / "run")]) == 0
    return root / "run"


def test_cli_dashboards(run_dir, tmp_path, capsys):
    out = tmp_path / "dash.jsonl"
    args = ["dashboards", str(run_dir), "--out", str(out), "--tokens", "300", "--device", "cpu"]
    assert main([*args, "--units", "pruned,L0.attn.H1.D2"]) == 0
    assert f"dashboards: {out}" in capsys.readouterr().out
    run = ul.PruneRun.load(run_dir)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == run.masks.n_mlp + run.masks.n_attn + 1
    assert records[-1]["unit"] == "L0.attn.H1.D2" and not records[-1]["pruned"]
    assert all(r["pruned"] and r["pruned_step"] == 1 for r in records[:-1])
    assert all(list(r) == list(FIELDS) for r in records)
    assert all(e["text"]["source"].endswith("code") for r in records for e in r["top"] if e["dataset"] == "forget")
    # the Neuronpedia layout: one SAEDashboard batch per layer and kind
    assert main([*args, "--units", "top:3", "--format", "neuronpedia", "--out", str(tmp_path / "np.jsonl")]) == 0
    batches = [json.loads(line) for line in (tmp_path / "np.jsonl").read_text(encoding="utf-8").splitlines()]
    features = [f for b in batches for f in b["features"]]
    assert len(features) == 3 and all(set(f) == NEURONPEDIA_FEATURE for f in features)
    assert {b["sae_set"] for b in batches} <= {"mlp-neurons", "attn-neurons"}
    for f in features:
        assert f["activations"][0]["bin_min"] == -1 and len(f["pos_str"]) == len(f["pos_values"]) == 10
        assert sum(f["freq_hist_data_bar_heights"]) == 600 and f["n_tokens_in_prompt"] > 0
    # a bad spec is one line and status 2, before the model is loaded
    capsys.readouterr()
    assert main([*args, "--units", "L7.mlp.0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "L7.mlp.0" in err
    # a negative budget of light dashboards is refused when the command line is read, before any work
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--dashboard-light-mb", "-1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--dashboard-light-mb" in err and "0 or more" in err


# --- in a notebook --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notebook_dashboard(run, gpt2):
    pruned = next(u for u in choose_units(run, "pruned") if u.kind == "mlp")
    return ul.report.dashboard(gpt2, run, pruned.name, CODE, PROSE, config=CONFIG)


def test_notebook_dashboard(notebook_dashboard, records, run, gpt2, tmp_path):
    d = notebook_dashboard
    same = next(r for r in records if r["unit"] == d.unit.name)
    assert d.record["histogram"] == same["histogram"] and d.record["top"] == same["top"]
    fragment = d._repr_html_()
    assert fragment.count('class="uld-root"') == 1 and "window.ulDashboard" in fragment
    payload = fragment.split('class="uld-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in payload and json.loads(payload)["units"]["0"]["index"] == d.unit.index
    page = d.save(tmp_path / "dashboard.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and not re.search(r"<script[^>]*\ssrc\s*=|<link[^>]*\shref", page)
    # on new text: the unit's activation at each token, unpruned (a hook by hand) and pruned (its mean there)
    text = "def add(a, b):\n    return a + b\n"
    shown = d.on_text(text)
    tokens = torch.tensor([gpt2.tokenizer.bos_token_id, *gpt2.tokenizer(text, add_special_tokens=False)["input_ids"]])
    want = _activation(gpt2, tokens, d.unit)[1:]
    assert len(shown.tokens) == len(shown.acts) == len(shown.acts_pruned) == tokens.numel() - 1
    torch.testing.assert_close(torch.tensor(shown.acts), want)
    mean = float(run.ablation.means.mlp.mean[d.unit.layer, d.unit.index])
    assert shown.acts_pruned == pytest.approx([mean] * len(shown.tokens), rel=1e-6)
    html = shown._repr_html_()
    assert "".join(shown.tokens) == text and html.count("<tr>") == 2 and "<td>unpruned</td>" in html
    assert html.count('title="activation ') == 2 * len(shown.tokens)
    assert "Dashboard(L" in repr(d)


def test_notebook_dashboard_refuses_unknown_units(run, gpt2):
    with pytest.raises(ul.UnlearnLensError, match="L1.mlp.99"):
        ul.report.dashboard(gpt2, run, "L1.mlp.99", CODE, PROSE)


# --- in the report's explorer, in a real browser --------------------------------------------------------------


def _dump(url: str, profile) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    command += ["--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    command += ["--enable-logging=stderr", "--v=0", "--window-size=1280,1600", "--dump-dom", url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "\n".join(console)
    return proc.stdout


@pytest.fixture(scope="module")
def report(run, gpt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard-report")
    return write_report(
        run,
        out,
        model=gpt2,
        forget_texts=CODE,
        retain_texts=PROSE,
        n_cards=0,
        explorer_tokens=300,
        dashboard_top=2,
        dashboard_units=["L0.mlp.1"],
    )


@pytest.mark.browser
def test_report_dashboard_in_headless_chromium(report, run, tmp_path):
    """Open a pruned unit from the explorer: both histograms, the logit tables, coloured contexts, a value on hover."""
    page = report.read_text(encoding="utf-8")
    dash = json.loads(re.search(r'class="ulx-dash">(.*?)</script>', page, re.S).group(1))
    wanted = {str(explorer_row(u, run.dims)) for u in choose_units(run, "pruned,top:2,L0.mlp.1")}
    assert {key for key, u in dash["units"].items() if not u["light"]} == wanted
    assert len(dash["units"]) == run.dims.n_mlp + run.dims.n_attn, "every other unit has a light dashboard"
    unit = next(u for u in choose_units(run, "pruned") if u.kind == "mlp")
    dom = _dump(report.resolve().as_uri() + f"#ulx-test?q={unit.label}&open=0&hover=1", tmp_path / "profile")
    result = json.loads(html.unescape(re.search(r'<pre id="ulx-test-result">(.*?)</pre>', dom, re.S).group(1)))
    assert result["shown"] == 1 and result["resources"] == [], "the page fetches nothing"
    assert result["hover"]["readout"].startswith("“") and "activation" in result["hover"]["readout"]
    assert "Δ log p(next token)" in result["hover"]["title"]
    card = dom.split('<div class="ulx-detail">', 1)[1]
    assert f"<h3>MLP neuron {unit.label}</h3>" in card and "pruned at step" in card
    assert card.count('class="uld-s0"') > 0 and card.count('class="uld-s1"') > 0, "forget and retain histograms"
    tables = re.findall(r'<table class="uld-logits"><caption>(\w+)</caption>(.*?)</table>', card, re.S)
    assert [name for name, _ in tables] == ["promoted", "suppressed"]
    assert all(body.count("<tr>") == 10 for _, body in tables)
    coloured = re.findall(r'<span[^>]*style="background: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)', card)
    assert len(coloured) > 20 and any(float(a) > 0 for *_, a in coloured)
    assert "Bottom contexts on forget" in card and "band 1:" in card
    # a unit with a light dashboard opens its card (its top contexts) and the panels that need no examples
    kept = next(u for u in choose_units(run, "all") if str(explorer_row(u, run.dims)) not in wanted)
    dom = _dump(report.resolve().as_uri() + f"#ulx-test?q={kept.label}&open=0", tmp_path / "profile")
    card = dom.split('<div class="ulx-detail">', 1)[1]
    assert "Top contexts on forget" in card and 'class="uld-panels"' in card
    assert card.count('class="uld-s0"') > 0 and card.count('class="uld-s1"') > 0, "forget and retain histograms"
    assert len(re.findall(r'<table class="uld-logits">', card)) == 2 and 'class="uld-fig uld-effect"' not in card
    assert "Bottom contexts on forget" not in card


def test_light_dashboards_fill_their_budget_by_score(run, gpt2, records):
    """Past the full dashboards, the other units get light ones, highest score first, while they fit the budget;
    each holds the same histograms, statistics and logit effect as the unit's full record, and no examples."""
    full = {str(explorer_row(u, run.dims)) for u in choose_units(run, "pruned,top:2")}
    none = explorer_dashboards(run, gpt2, CODE, PROSE, top=2, max_tokens=CONFIG.max_tokens, light_budget=0)
    assert set(none["units"]) == full
    budget = 12_000
    data = explorer_dashboards(run, gpt2, CODE, PROSE, top=2, max_tokens=CONFIG.max_tokens, light_budget=budget)
    light = [key for key, u in data["units"].items() if u["light"]]
    assert {key for key, u in data["units"].items() if not u["light"]} == full
    sizes = [len(json.dumps(data["units"][k], separators=(",", ":"))) + len(k) + 4 for k in light]
    assert 0 < len(light) < run.dims.n_mlp + run.dims.n_attn - len(full) and sum(sizes) <= budget
    others = [
        u
        for u in choose_units(run, f"top:{run.dims.n_mlp + run.dims.n_attn}")
        if str(explorer_row(u, run.dims)) not in full
    ]
    assert light == [str(explorer_row(u, run.dims)) for u in others[: len(light)]], "highest scores first"
    unit = others[0]
    record = unit_dashboards(run, gpt2, CODE, PROSE, [unit], replace(CONFIG, max_tokens=CONFIG.max_tokens))[0]
    got = data["units"][light[0]]
    assert got["top"] == got["bottom"] == got["bands"] == [] and got["effect"]["forget"] is None
    assert got["hist"]["counts"] == [record["histogram"]["forget"], record["histogram"]["retain"]]
    assert got["stats"]["forget"]["tokens"] == record["stats"]["forget"]["tokens"]
    assert [v for _, v in got["up"]] == pytest.approx([v for _, v in record["logits"]["promoted"]], rel=1e-3)


# --- serve ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(run_dir):
    """`unlearn-lens serve RUN_DIR --port 0` in a process of its own: (process, base URL)."""
    command = [sys.executable, "-m", "unlearn_lens", "serve", str(run_dir), "--port", "0", "--tokens", "300"]
    command += ["--dashboard-top", "4", "--dashboard-units", "L1.attn.H2.D3"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*command, "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=180)
    if not found or not found[0].startswith("serving http://"):
        proc.kill()
        pytest.fail(
            f"the server did not start: {found} {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
        )
    url = found[0].split()[1]
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_as_the_hooks_compute(server, run_dir):
    """Both endpoints against the same computations made here with hooks, unpruned and pruned, to 1e-4."""
    _, url = server
    assert url.startswith("http://127.0.0.1:"), "bound to this machine only"
    model = ul.load_model(run_dir.parent / "model", device="cpu")
    run = ul.PruneRun.load(run_dir)
    text = "def total_3(x, y):\n    return x * 3"
    tokens = torch.tensor([model.tokenizer.bos_token_id, *model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    pruned_unit = choose_units(run, "pruned")[0]
    for unit in (Unit.parse("L1.attn.H2.D3", run.dims), pruned_unit):
        status, got = _get(f"{url}api/activations?unit={unit.name}&text={quote(text)}")
        assert status == 200 and got["unit"] == unit.name and "".join(got["tokens"]) == text
        torch.testing.assert_close(torch.tensor(got["acts"]), _activation(model, tokens, unit)[1:], atol=1e-4, rtol=0)
        with ul.pruned(model, run.masks, run.ablation):
            want = _activation(model, tokens, unit)[1:]
        torch.testing.assert_close(torch.tensor(got["acts_pruned"]), want, atol=1e-4, rtol=0)
    status, got = _get(f"{url}api/predict?text={quote(text)}")
    assert status == 200
    with torch.no_grad():
        unpruned = model(tokens[None])[0, -1].softmax(-1)
        with ul.pruned(model, run.masks, run.ablation):
            after = model(tokens[None])[0, -1].softmax(-1)
    for key, probs in (("unpruned", unpruned), ("pruned", after)):
        top = torch.topk(probs, 5)
        assert [p for _, p in got[key]] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert [t for t, _ in got[key]] == [model.tokenizer.decode([int(i)]) for i in top.indices]


def test_serve_refuses_what_it_should(server):
    _, url = server
    status, got = _get(f"{url}api/activations?unit=L0.mlp.1&text={quote('x' * 2001)}")
    assert status == 400 and "2,001 characters" in got["error"]
    status, got = _get(f"{url}api/activations?unit=L9.mlp.1&text=x")
    assert status == 400 and "L9.mlp.1" in got["error"]
    status, got = _get(f"{url}api/activations?unit=banana&text=x")
    assert status == 400 and "banana" in got["error"]
    assert _get(f"{url}api/predict")[0] == 400
    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    connection.request("GET", "/api/predict?text=x", headers={"Host": f"rebound.example:{where.port}"})
    response = connection.getresponse()
    assert response.status == 403 and b"127.0.0.1" in response.read(), "only requests addressed to this machine"
    for path in ("/../../etc/passwd", "/static/report.css", "/%2e%2e/pyproject.toml", "/report.html"):
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 404 and b"not found" in response.read(), path


def _served(url: str, result_id: str, tmp_path: Path) -> tuple[dict, str]:
    """Open a served page in headless Chromium until its test hook writes pre#result_id: (that JSON, the DOM)."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
    command += ["--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}"]
    command += ["--virtual-time-budget=30000", "--dump-dom", url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(rf'<pre id="{result_id}">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page's test hook did not finish ({result_id})"
    return json.loads(html.unescape(found.group(1))), proc.stdout


@pytest.mark.browser
def test_serve_live_panel_in_headless_chromium(server, run_dir, tmp_path):
    """Chromium types a text into the live panel: coloured tokens in both columns, five next tokens each."""
    _, url = server
    text = "for i in range(3):\n    print(i)"
    result, _ = _served(f"{url}#uld-live-test?unit=L0.mlp.5&text={quote(text)}", "uld-live-result", tmp_path)
    assert result["status"].startswith("L0.mlp.5:")
    assert [c["title"] for c in result["columns"]] == ["unpruned", "pruned"]
    for column in result["columns"]:
        assert "".join(t for t, _, _ in column["tokens"]) == text
        assert all(title.startswith("activation ") for _, title, _ in column["tokens"])
        assert any(colour != "rgba(231, 76, 60, 0)" for _, _, colour in column["tokens"]), "coloured by activation"
        assert len(column["next"]) == 5
    assert result["resources"] and all(r.startswith(url + "api/") for r in result["resources"])


def test_serve_computes_any_units_dashboard_on_demand(server, run_dir):
    """A unit the page holds no dashboard of: /api/dashboard computes it from the run's texts, as the report would."""
    from unlearn_lens.report.dashboard_view import unit_pages
    from unlearn_lens.report.html import card_inputs

    _, url = server
    run = ul.PruneRun.load(run_dir)
    held = {u.name for u in choose_units(run, "pruned,top:4,L1.attn.H2.D3")}
    unit = next(u for u in choose_units(run, "all") if u.name not in held)
    status, got = _get(f"{url}api/dashboard?unit={quote(unit.label)}")
    assert status == 200, got
    key = str(explorer_row(unit, run.dims))
    assert list(got["units"]) == [key]
    inputs = card_inputs(run, None, None, None, True, "cpu", 300, False)
    want = unit_pages(run, inputs.model, inputs.forget, inputs.retain, [unit], max_tokens=300)
    assert got == json.loads(json.dumps(want, allow_nan=False)), "the server's dashboard is the one computed here"
    assert _get(f"{url}api/dashboard?unit={quote(unit.name)}") == (200, got), "asked again: the same answer"
    status, error = _get(f"{url}api/dashboard?unit=L0.mlp.9999")
    assert status == 400 and "does not exist" in error["error"]


@pytest.mark.browser
def test_served_explorer_opens_a_dashboard_computed_on_demand(server, run_dir, tmp_path):
    """In the served page, a unit with no dashboard in it opens its card, then the dashboard the server computed."""
    _, url = server
    run = ul.PruneRun.load(run_dir)
    held = {u.name for u in choose_units(run, "pruned,top:4,L1.attn.H2.D3")}
    unit = next(u for u in reversed(choose_units(run, "all")) if u.name not in held and u.kind == "mlp")
    result, dom = _served(f"{url}#ulx-test?q={unit.label}&open=0&wait=1", "ulx-test-result", tmp_path)
    assert result["shown"] == 1
    assert any(r.startswith(url + "api/dashboard?") for r in result["resources"])
    card = dom.split('<div class="ulx-detail">', 1)[1]
    assert f"<h3>MLP neuron {unit.label}</h3>" in card and 'class="uld-panels"' in card, "the dashboard is drawn"
    assert card.count('class="uld-s0"') > 0 and card.count('class="uld-s1"') > 0, "forget and retain histograms"


def test_serve_limits_the_rate_and_stops_on_ctrl_c(server):
    proc, url = server
    codes = []
    for _ in range(40):
        try:
            with urllib.request.urlopen(url + "nothing-here", timeout=30) as response:
                codes.append(response.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
            if exc.code == 429:
                assert exc.headers["Retry-After"] == "1"
    assert 429 in codes and codes[0] == 404
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "stopped" in proc.stdout.read()


def test_docs_document_the_layout():
    """docs/dashboards.md has the JSON lines layout and the Neuronpedia mapping, every field on its own line."""
    page = (Path(__file__).parents[1] / "docs" / "dashboards.md").read_text(encoding="utf-8")
    for name in [*FIELDS, *EXAMPLE_FIELDS, *MAPPING]:
        assert len(re.findall(rf"^\| `{re.escape(name)}` \|", page, re.M)) >= 1, name
