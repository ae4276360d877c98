"""A run directory of results format 2 (unlearn_lens 0.2) loads, reports and checks as before.

``tests/fixtures/format2-run`` was written by the 0.2 code: the demo model, two steps of
2,000 tokens per budget, mean ablation, one random baseline seed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import unlearn_lens as ul
from unlearn_lens.cli import main
from unlearn_lens.data import as_token_sets

FIXTURE = Path(__file__).parent / "fixtures" / "format2-run"


@pytest.fixture
def old_run(tmp_path):
    path = tmp_path / "old-run"
    shutil.copytree(FIXTURE, path)
    return path


def test_format2_loads_with_every_number_and_says_so(old_run, caplog):
    data = json.loads((old_run / "results.json").read_text())
    assert data["format"] == 2 and "steps" in data["run"]
    with caplog.at_level(logging.INFO, logger="unlearn_lens.results"):
        run = ul.PruneRun.load(old_run)
    assert "results format 2" in caplog.text
    for loaded, stored in ((run, data["run"]), (run.baseline, data["baseline"])):
        assert len(loaded.history) == len(stored["steps"]) == 3
        for step, record in zip(loaded.history, stored["steps"]):
            assert step.forget.to_dict() == record["forget"] and step.retain.to_dict() == record["retain"]
            assert (step.mlp_counts, step.attn_counts) == (record["mlp_counts"], record["attn_counts"])
        assert loaded.summary()["mlp_frac"] == stored["summary"]["frac_mlp"]
        assert loaded.summary()["n_steps"] == stored["summary"]["steps"]
    assert run.masks.n_mlp == data["run"]["steps"][-1]["n_mlp"]
    assert run.ablation.methods == {"mlp": "mean", "attn": "mean"}
    assert run.ablation.means is not None and run.baseline.ablation is run.ablation
    assert run.scores is not None and run.scores.mlp_scoring == "abs"  # scores files of format 2 say "mlp_method"


def test_format2_applies_again_and_saves_as_format3(old_run, tmp_path):
    run = ul.PruneRun.load(old_run)
    model = ul.load_model("demo", device="cpu")
    forget = ul.load_texts("demo:code")
    budgets = [run.config.collect_tokens, run.config.eval_tokens]
    _, held = as_token_sets(model, forget, budgets, seq_len=run.config.seq_len)
    with ul.pruned(model, run.masks, run.ablation, seed=run.config.seed):
        again = ul.evaluate(model, held, max_tokens=None, batch_size=run.config.batch_size, progress=False)
    assert again.top1 == pytest.approx(run.final.forget.top1, abs=1e-12)
    run.save(tmp_path / "new")
    data = json.loads((tmp_path / "new" / "results.json").read_text())
    assert data["format"] == 3 and "history" in data["run"] and "steps" not in data["run"]
    back = ul.PruneRun.load(tmp_path / "new")
    assert torch.equal(back.masks.mlp, run.masks.mlp) and back.history == run.history


@pytest.mark.slow
def test_format2_reports_and_checks(old_run, capsys):
    assert main(["report", str(old_run)]) == 2  # its sources are read again only when trusted
    assert "--trust-sources" in capsys.readouterr().err
    assert main(["report", str(old_run), "--trust-sources", "--no-dashboards"]) == 0
    assert "selective" in (old_run / "report.html").read_text()
    code = main(
        ["check", str(old_run), "--relearn-steps", "2", "--relearn-batch-size", "2", "--n-texts", "4", "--no-report"]
        + ["--trust-sources", "--quiet"]
    )
    assert code == 0
    checks = json.loads((old_run / "checks.json").read_text())
    assert set(checks["relearn"]) == {"selective", "random", "unpruned"}
    assert checks["relearn"]["selective"]["forget"][0]["top1"] == pytest.approx(
        json.loads((old_run / "results.json").read_text())["run"]["steps"][-1]["forget"]["top1"], abs=1e-12
    )
