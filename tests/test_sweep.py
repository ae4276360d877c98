"""Sweeps over ablations x scoring methods: same tokens in every cell, the table, the directory, the page, the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.checks.sweep import Sweep, sweep
from unlearn_lens.report.sweep import sweep_figure, write_sweep_report

CONFIG = ul.PruneConfig(
    mlp_frac=0.1,
    attn_frac=0.05,
    n_steps=3,
    collect_tokens=300,
    eval_tokens=200,
    seq_len=24,
    peak_bins=16,
    resample_tokens=50,
)


@pytest.fixture(scope="module")
def small_sweep(gpt2):
    return sweep(
        gpt2,
        CODE,
        PROSE,
        CONFIG,
        ablations=["zero", "peak"],
        scorings=["abs", "wanda"],
        baseline=True,
        progress=False,
        info={"forget": "code", "retain": "prose"},
    )


def test_every_cell_runs_on_the_same_tokens_with_its_own_settings(gpt2, small_sweep):
    assert [c.name for c in small_sweep.cells] == ["zero-abs", "zero-wanda", "peak-abs", "peak-wanda"]
    bases = {(c.run.base.forget.top1, c.run.base.retain.top1, c.run.base.forget.n_tokens) for c in small_sweep.cells}
    assert len(bases) == 1  # the unpruned model was evaluated on the same tokens in every cell
    texts = {json.dumps(c.run.info["texts"], sort_keys=True) for c in small_sweep.cells}
    assert len(texts) == 1
    for c in small_sweep.cells:
        assert c.run.config.ablations == {"mlp": c.ablation, "attn": c.ablation}
        assert c.run.config.scorings == {"mlp": c.scoring, "attn": c.scoring}
        assert c.run.baseline is not None and c.run.baseline.config == c.run.config
    # a cell is the run selective_prune makes alone with the cell's settings
    import dataclasses

    alone = ul.selective_prune(
        gpt2, CODE, PROSE, dataclasses.replace(CONFIG, ablation="peak", scoring="wanda"), progress=False
    )
    cell = small_sweep.cell("peak", "wanda").run
    assert [s.retain.top1 for s in alone.history] == [s.retain.top1 for s in cell.history]
    with pytest.raises(ul.UnlearnLensError, match="no cell"):
        small_sweep.cell("mean", "abs")


def test_table_rows_are_the_runs_numbers(small_sweep):
    rows = small_sweep.table()
    assert len(rows) == 4
    for row, c in zip(rows, small_sweep.cells):
        assert row["retain_at_forget"] == c.run.retain_at_forget(0.5)
        assert row["separability_area"] == c.run.separability_area()
        assert row["forget_rel"] == c.run.relative_path()[0][-1]
        assert row["random_retain_at_forget"] == c.run.baseline.retain_at_forget(0.5)
        assert row["mlp_frac"] == c.run.final.n_mlp / c.run.dims.n_mlp > 0


def test_directory_round_trip_and_page(small_sweep, tmp_path):
    out = small_sweep.save(tmp_path / "sweep")
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(c.name for c in small_sweep.cells)
    back = Sweep.load(out)
    assert back.table() == json.loads((out / "sweep.json").read_text())["table"] == small_sweep.table()
    assert (out / "cells" / "peak-abs" / "peaks.safetensors").is_file()
    page = write_sweep_report(out).read_text()
    assert page.count("<tr") == 5 and "peak" in page and "wanda" in page and "Plotly" in page
    fig = sweep_figure(back)
    assert len(fig.data) == 5 and fig.data[-1].type == "heatmap"
    with pytest.raises(ul.UnlearnLensError, match="not a sweep directory"):
        Sweep.load(tmp_path)
    (out / "sweep.json").write_text("{broken")
    with pytest.raises(ul.UnlearnLensError, match="sweep.json"):
        Sweep.load(out)


def test_bad_grids_are_refused(gpt2):
    with pytest.raises(ul.UnlearnLensError, match="unknown ablation 'median'"):
        sweep(gpt2, CODE, PROSE, CONFIG, ablations=["zero", "median"], progress=False)
    with pytest.raises(ul.UnlearnLensError, match="at least one scoring"):
        sweep(gpt2, CODE, PROSE, CONFIG, scorings=[], progress=False)


def test_cli_sweep(gpt2_dir, tmp_path, capsys):
    from unlearn_lens.cli import main

    (tmp_path / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE * 3))
    out = tmp_path / "out"
    args = [
        "sweep",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(tmp_path / "code.jsonl"),
        "--retain",
        "demo:prose",
        "--ablations",
        "mean",
        "resample",
        "--scorings",
        "freq",
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
        "--resample-tokens",
        "40",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "resample" in printed and "report.html" in printed
    saved = Sweep.load(out)
    assert [c.name for c in saved.cells] == ["mean-freq", "resample-freq"]
    assert saved.cells[1].run.ablation.sample.n == 40 and saved.info["forget"].endswith("code.jsonl")
    assert main(args) == 2  # the directory exists now
    assert "exists" in capsys.readouterr().err
