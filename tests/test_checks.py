"""Relearning and membership checks of a finished run, read back from its sources and kept in checks.json."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.checks.suite import RunChecks, run_checks, run_token_sets


@pytest.fixture(scope="module")
def run_dir(gpt2_dir, tmp_path_factory):
    from unlearn_lens.cli import main

    tmp = tmp_path_factory.mktemp("checks")
    (tmp / "code.jsonl").write_text("".join(json.dumps({"text": f"# {i}\n{t}"}) + "\n" for i, t in enumerate(CODE * 4)))
    out = tmp / "run"
    assert (
        main(
            [
                "prune",
                "--model",
                str(gpt2_dir),
                "--forget",
                str(tmp / "code.jsonl"),
                "--retain",
                "demo:prose",
                "--mlp-frac",
                "0.1",
                "--attn-frac",
                "0.05",
                "--n-steps",
                "2",
                "--collect-tokens",
                "300",
                "--eval-tokens",
                "200",
                "--seq-len",
                "32",
                "--ablation",
                "peak",
                "--peak-bins",
                "16",
                "--out",
                str(out),
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    return out


def test_token_sets_are_the_runs_own(gpt2, run_dir):
    run = ul.PruneRun.load(run_dir)
    data = run_token_sets(run, gpt2, [500])
    forget_collect, forget_eval, extra = data["forget"]
    assert forget_collect.n_tokens == 300 and forget_eval.n_tokens == 200 and extra.n_tokens == 500
    # the unpruned model scores the regenerated evaluation tokens exactly as the run did
    result = ul.evaluate(gpt2, forget_eval, max_tokens=None, topk=run.config.topk, progress=False)
    assert result.top1 == run.base.forget.top1 and result.loss == pytest.approx(run.base.forget.loss, abs=1e-6)
    used = {i for s in forget_collect.spans + forget_eval.spans for i in range(s.first, s.first + len(s.ends))}
    assert min(s.first for s in extra.spans) >= max(used) + 1  # relearning text is text the run never used


def test_checks_run_save_and_load(gpt2, run_dir):
    run = ul.PruneRun.load(run_dir)
    checks = run_checks(
        gpt2,
        run,
        members={"forget": (CODE[:8], [t.upper() for t in CODE[:8]]), "retain": (PROSE[:8], "demo:prose")},
        n_texts=8,
        n_steps=4,
        batch_size=2,
        eval_every=2,
        eval_tokens=200,
    )
    assert set(checks.relearn) == {"selective", "random", "unpruned"}
    assert checks.relearn["selective"].eval_steps == [0, 2, 4]
    assert checks.relearn["selective"].forget[0].top1 == run.final.forget.top1  # step 0 is the pruned model
    assert checks.relearn["unpruned"].forget[0].top1 == run.base.forget.top1
    assert set(checks.membership) == {"forget", "retain"}
    assert checks.membership["retain"]["n_members"] == 8 and checks.membership["retain"]["nonmembers"] == "demo:prose"
    assert set(checks.membership["forget"]["pruned"]) == {"loss", "zlib", "min_k"}
    checks.save(run_dir)
    back = RunChecks.load(run_dir)
    assert back.to_dict() == json.loads((run_dir / "checks.json").read_text()) == checks.to_dict()
    (run_dir / "checks.json").write_text('{"relearn": {"selective": {"bad": 1}}}')
    with pytest.raises(ul.UnlearnLensError, match="checks.json"):
        RunChecks.load(run_dir)
    (run_dir / "checks.json").unlink()
    assert RunChecks.load(run_dir) is None


@pytest.fixture(scope="module")
def other_run_dir(gpt2_dir, run_dir):
    from unlearn_lens.cli import main

    (run_dir.parent / "more_code.jsonl").write_text(
        "".join(json.dumps({"text": f"x_{i} = {i}\n{t}"}) + "\n" for i, t in enumerate(reversed(CODE * 4)))
    )
    out = run_dir.parent / "other"
    assert (
        main(
            [
                "prune",
                "--model",
                str(gpt2_dir),
                "--forget",
                str(run_dir.parent / "more_code.jsonl"),
                "--retain",
                "demo:prose",
                "--mlp-frac",
                "0.1",
                "--attn-frac",
                "0.05",
                "--n-steps",
                "2",
                "--collect-tokens",
                "300",
                "--eval-tokens",
                "200",
                "--seq-len",
                "32",
                "--ablation",
                "zero",
                "--out",
                str(out),
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    return out


def test_overlap_with_other_runs_and_both_controls(gpt2, run_dir, other_run_dir, tmp_path):
    from unlearn_lens.checks.overlap import OverlapMatrix, jaccard
    from unlearn_lens.report.html import write_report

    run, other = ul.PruneRun.load(run_dir), ul.PruneRun.load(other_run_dir)
    checks = run_checks(gpt2, run, relearn=False, others={"more code": other}, init_control=True)
    assert set(checks.overlap) == {"mlp", "attn"}
    assert set(checks.overlap["mlp"]) == {"trained", "random masks", "random init"}
    trained = OverlapMatrix.from_dict(checks.overlap["mlp"]["trained"])
    assert trained.names == ["this run", "more code"]
    assert trained.overall[0, 1].item() == pytest.approx(jaccard(run, other).overall)
    init = OverlapMatrix.from_dict(checks.overlap["attn"]["random init"])
    assert init.counts["this run"] == run.masks.attn_counts()  # the control prunes as many units per layer
    back = OverlapMatrix.from_dict(json.loads(json.dumps(trained.to_dict())))
    assert torch.equal(back.per_layer.nan_to_num(-1), trained.per_layer.nan_to_num(-1))
    page = write_report(run, tmp_path, checks=checks, explorer=False, n_cards=0).read_text()
    assert "Capability overlap" in page and "random init" in page
    with pytest.raises(ul.UnlearnLensError, match="this run"):
        run_checks(gpt2, run, relearn=False, others={"this run": other})


def test_report_says_how_to_add_checks(run_dir, tmp_path):
    from unlearn_lens.report.html import write_report

    page = write_report(ul.PruneRun.load(run_dir), tmp_path, explorer=False, n_cards=0).read_text()
    assert "unlearn-lens check RUN_DIR" in page


def test_a_run_without_sources_is_refused(gpt2):
    run = ul.selective_prune(
        gpt2,
        CODE,
        PROSE,
        ul.PruneConfig(mlp_frac=0.1, n_steps=1, collect_tokens=200, eval_tokens=100, seq_len=24),
        progress=False,
    )
    with pytest.raises(ul.UnlearnLensError, match="does not name its forget data source"):
        run_checks(gpt2, run)


def test_cli_check(run_dir, other_run_dir, capsys):
    from unlearn_lens.cli import main

    args = [
        "check",
        str(run_dir),
        "--relearn-steps",
        "2",
        "--relearn-batch-size",
        "2",
        "--forget-members",
        str(run_dir.parent / "code.jsonl"),
        "--forget-nonmembers",
        "demo:code",
        "--n-texts",
        "5",
        "--overlap",
        f"more code={other_run_dir}",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "relearn selective: forget top1" in printed and "membership forget: AUC unpruned" in printed
    checks = RunChecks.load(run_dir)
    assert checks.membership["forget"]["n_members"] == 5 and "retain" not in checks.membership
    assert checks.overlap["mlp"]["trained"]["names"] == ["this run", "more code"]
    page = (run_dir / "report.html").read_text()
    assert "Relearning: forget top-1 before and after fine-tuning" in page and "Membership AUC" in page
    assert 'id="fig-checks-0"' in page  # the relearning curves
    assert main(["check", str(run_dir), "--retain-members", "demo:prose", "--quiet"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--overlap", "no-equals-sign", "--quiet"]) == 2
    assert "NAME=RUN_DIR" in capsys.readouterr().err


def test_membership_texts_are_drawn_from_a_pool_not_the_first_ones():
    from unlearn_lens.checks.suite import _texts

    texts = [f"text {i}" for i in range(100)]
    picked = _texts(texts, 5, "member", seed=0)
    assert picked == _texts(texts, 5, "member", seed=0) != _texts(texts, 5, "member", seed=1)
    assert len(set(picked)) == 5 and picked != texts[:5]
    assert all(int(t.split()[1]) < 50 for t in picked)  # from the first 10 * n only
    assert _texts(texts[:3], 5, "member", seed=0) == texts[:3]
    with pytest.raises(ul.UnlearnLensError, match="no member texts"):
        _texts([], 5, "member", seed=0)
