"""The random baseline over several seeds: the runs, their directory, the band in the figures, report, table and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens import viz
from unlearn_lens.report.bands import band, run_groups, spread_text
from unlearn_lens.report.tables import summary_table_text
from unlearn_lens.scoring import random_masks

CFG = dict(
    mlp_frac=0.1, attn_frac=0.05, n_steps=2, ablation="mean", collect_tokens=200, eval_tokens=100, seq_len=32, seed=3
)


@pytest.fixture(scope="module")
def runs(gpt2):
    """A selective run and its random baselines of seeds 3 (the config's), 4 and 5 (``run.baseline(s)`` unset)."""
    run = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**CFG), progress=False)
    first = ul.random_baseline(gpt2, CODE, PROSE, run, progress=False)
    others = [ul.random_baseline(gpt2, CODE, PROSE, run, seed=s, progress=False) for s in (4, 5)]
    return run, [first, *others]


@pytest.fixture
def banded(runs):
    """The selective run with all three baselines attached."""
    run, baselines = runs
    run.baseline, run.baselines = baselines[0], baselines[1:]
    yield run
    run.baseline, run.baselines = None, []


def test_seeds_give_different_masks_with_the_same_counts(runs):
    run, baselines = runs
    assert [b.seed for b in baselines] == [3, 4, 5]
    assert [b.info["baseline_seed"] for b in baselines] == [3, 4, 5] and run.seed == 3
    masks = [b.masks for b in baselines]
    assert masks[0] != masks[1] and masks[1] != masks[2] and masks[0] != masks[2]
    for b in baselines:
        assert b.config == run.config and b.ablation is run.ablation
        for sel, r in zip(run.history, b.history, strict=True):
            assert (r.new_mlp, r.new_attn, r.mlp_counts, r.attn_counts) == (
                sel.new_mlp,
                sel.new_attn,
                sel.mlp_counts,
                sel.attn_counts,
            )
        assert b.masks.mlp_counts() == run.masks.mlp_counts() and b.masks.attn_counts() == run.masks.attn_counts()


def test_the_default_seed_draws_what_the_baseline_always_drew(gpt2, runs):
    run, (first, *_) = runs
    masks = ul.Masks.empty(run.dims)
    for ref in run.history[1:]:  # the draws of random_baseline before it took a seed: config.seed * 1000 + step
        masks = masks | random_masks(ref.new_mlp, ref.new_attn, exclude=masks, seed=run.config.seed * 1000 + ref.step)
    assert first.masks == masks
    again = ul.random_baseline(gpt2, CODE, PROSE, run, seed=run.config.seed, progress=False)
    assert again.masks == first.masks and [s.forget for s in again.history] == [s.forget for s in first.history]
    for bad in (1.5, True, "4"):
        with pytest.raises(ul.UnlearnLensError, match="seed must be an integer"):
            ul.random_baseline(gpt2, CODE, PROSE, run, seed=bad, progress=False)


def test_several_baselines_round_trip(banded, tmp_path):
    out = banded.save(tmp_path / "run")
    names = {p.name for p in out.iterdir()}
    assert {
        "baseline_masks.safetensors",
        "baseline_masks_seed4.safetensors",
        "baseline_masks_seed5.safetensors",
    } <= names
    data = json.loads((out / "results.json").read_text())
    assert data["baseline"]["info"]["baseline_seed"] == 3
    assert [b["info"]["baseline_seed"] for b in data["baselines"]] == [4, 5]
    loaded = ul.PruneRun.load(out)
    assert [b.seed for b in loaded.random_runs()] == [3, 4, 5]
    for back, orig in zip(loaded.random_runs(), banded.random_runs(), strict=True):
        assert back.masks == orig.masks and back.strategy == "random"
        assert [s.retain for s in back.history] == [s.retain for s in orig.history]
        assert back.ablation is loaded.ablation
    assert list(loaded.runs()) == ["selective", "random"] and loaded.runs()["random"] is loaded.baseline


def test_a_directory_without_more_baselines_loads_with_none(runs, tmp_path):
    run, (first, *_) = runs
    run.baseline = first
    try:
        out = run.save(tmp_path / "run")
    finally:
        run.baseline = None
    data = json.loads((out / "results.json").read_text())
    assert "baselines" not in data
    del data["baseline"]["info"]["baseline_seed"]  # as written before baselines had seeds
    (out / "results.json").write_text(json.dumps(data))
    loaded = ul.PruneRun.load(out)
    assert loaded.baselines == [] and loaded.random_runs() == [loaded.baseline]
    assert loaded.baseline.seed == run.config.seed and loaded.baseline.masks == first.masks


def test_baselines_need_a_first_one_and_distinct_seeds(runs, tmp_path):
    run, baselines = runs
    bad = ul.PruneRun.from_dict(run.to_dict(), masks=run.masks)
    bad.baseline, bad.baselines = baselines[0], [baselines[0]]
    with pytest.raises(ul.UnlearnLensError, match="distinct seeds"):
        bad.save(tmp_path / "a")
    bad.baseline, bad.baselines = None, baselines[1:]
    with pytest.raises(ul.UnlearnLensError, match="first baseline"):
        bad.save(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pruning_effects_draws_the_seeds_as_a_band(banded):
    fig = viz.pruning_effects(banded)
    assert len(fig.data) == 3 * 2 + 3 * 2 * 3  # selective: a line per panel and dataset; random: min, max, mean
    baselines = banded.random_runs()
    for dataset in ("forget", "retain"):
        lows = [tr for tr in fig.data if tr.name == f"random (3 seeds) · {dataset} min"]
        highs = [tr for tr in fig.data if tr.name == f"random (3 seeds) · {dataset} max"]
        means = [tr for tr in fig.data if tr.name == f"random (3 seeds) · {dataset}"]
        assert len(lows) == len(highs) == len(means) == 3
        for lo, hi, mean, metric in zip(lows, highs, means, ("top1", "topk", "loss"), strict=True):
            values = np.array([[getattr(getattr(s, dataset), metric) for s in b.history] for b in baselines])
            np.testing.assert_allclose(lo.y, values.min(0))
            np.testing.assert_allclose(hi.y, values.max(0))
            np.testing.assert_allclose(mean.y, values.mean(0))
            assert hi.fill == "tonexty" and lo.fill is None and hi.meta == {"band": "max", "seeds": [3, 4, 5]}
            assert list(lo.x) == list(hi.x) == list(mean.x)
    one = viz.pruning_effects({"selective": banded, "random": baselines[:1]})
    assert len(one.data) == 12 and not any(tr.fill for tr in one.data)  # one seed: as before
    short = ul.PruneRun.from_dict(baselines[1].to_dict())
    short.history = short.history[:-1]
    with pytest.raises(ul.UnlearnLensError, match="different shares per step"):
        viz.pruning_effects({"random": [baselines[0], short]})
    with pytest.raises(ul.UnlearnLensError, match="non-empty list"):
        viz.pruning_effects({"random": []})


def test_separability_draws_every_seed_under_one_label(banded):
    fig = viz.separability_trajectory(banded)
    assert len(fig.data) == 1 + 3 + 3 * 3  # diagonal; selective: area, path, closure; each seed the same
    for b in banded.random_runs():
        path = next(tr for tr in fig.data if tr.name == f"random seed {b.seed} steps")
        xs, ys = b.relative_path()
        np.testing.assert_allclose(path.x, xs) and np.testing.assert_allclose(path.y, ys)
        assert path.line.width == 1
        fill = next(tr for tr in fig.data if tr.fill == "toself" and tr.meta.get("seed") == b.seed)
        assert fill.meta["separability_area"] == pytest.approx(b.separability_area())
    legend = [tr.name for tr in fig.data if tr.showlegend is not False and tr.name.startswith("random")]
    assert len(legend) == 1 and legend[0].startswith("random (3 seeds): area")
    (note,) = [a.text for a in fig.layout.annotations if a.text.startswith("<b>random (3 seeds)</b>")]
    assert note.count("not reached") == 3 and "mean (min–max) of the seeds" in note


def test_band_helpers():
    assert band([[1.0, 4.0], [3.0, 2.0]]) == ([2.0, 3.0], [1.0, 2.0], [3.0, 4.0])
    assert spread_text([0.5]) == "0.5000" and spread_text([0.1, 0.3], ".1f") == "0.2 (0.1–0.3)"
    with pytest.raises(ul.UnlearnLensError, match="as many steps"):
        band([[1.0], [1.0, 2.0]])
    with pytest.raises(ul.UnlearnLensError):
        run_groups({})


def test_report_and_table_give_the_seeds(banded, tmp_path):
    html = ul.write_report(banded, tmp_path / "report", n_cards=0, explorer=False).read_text()
    assert "random (3 seeds)" in html and "over 3 seeds (3, 4, 5)" in html
    assert "seeds 3, 4, 5" in html and "min–max" in html
    assert all(f"random seed {s} run" in html for s in (3, 4, 5))  # the step tables
    table = summary_table_text(banded)
    header, _, *rows = table.splitlines()
    assert header.split()[-3:] == ["random", "(3", "seeds)"]
    (headline,) = [r for r in rows if r.startswith("retain top1 at forget")]
    assert headline.endswith(", ".join(f"not reached ({b.relative_path()[0][-1]:.0%})" for b in banded.random_runs()))
    values = [b.final.forget.top1 for b in banded.random_runs()]
    (forget,) = [r for r in rows if r.startswith("forget top1 ")]
    assert forget.endswith(f"[{min(values):.4f}–{max(values):.4f}]")


def test_cli_baseline_seeds(gpt2_dir, tmp_path, capsys):
    from unlearn_lens.cli import main

    (tmp_path / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE * 3))
    args = [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(tmp_path / "code.jsonl"),
        "--retain",
        "demo:prose",
        "--mlp-frac",
        "0.1",
        "--n-steps",
        "2",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "200",
        "--seq-len",
        "32",
        "--quiet",
        "--no-report",
    ]
    assert main([*args, "--baseline-seeds", "2", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "random (2 seeds)" in printed
    run = ul.PruneRun.load(tmp_path / "run")
    assert [b.seed for b in run.random_runs()] == [0, 1] and run.baselines[0].masks != run.baseline.masks
    assert (tmp_path / "run" / "baseline_masks_seed1.safetensors").is_file()
    for bad in (["--baseline-seeds", "0"], ["--baseline", "none", "--baseline-seeds", "2"]):
        assert main([*args, *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("unlearn-lens: error: --baseline-seeds") and len(err.splitlines()) == 1
        assert not (tmp_path / "bad").exists()
