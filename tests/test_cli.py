"""The command line on a local model directory and local text files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "code.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in CODE))
    (path / "prose").mkdir()
    for i, t in enumerate(PROSE):
        (path / "prose" / f"{i:02d}.txt").write_text(t)
    return path


def _args(gpt2_dir, data_dir, out, *extra):
    return [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(data_dir / "code.jsonl"),
        "--text-field",
        "content",
        "--retain",
        str(data_dir / "prose"),
        "--mlp-frac",
        "0.1",
        "--n-steps",
        "2",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "300",
        "--seq-len",
        "32",
        "--out",
        str(out),
        "--quiet",
        "--no-report",
        *extra,
    ]


def test_prune_writes_results(gpt2_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "retain top1 at forget top1 = 50%" in printed and "selective" in printed and "random" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["version"] == ul.__version__ and results["run"]["config"]["mlp_frac"] == 0.1
    sel = results["run"]
    assert sel["info"]["forget"] == str(data_dir / "code.jsonl") and sel["info"]["forget_field"] == "content"
    assert len(sel["history"]) == 3 and results["baseline"]["history"][1]["new_mlp"] == sel["history"][1]["new_mlp"]
    run = ul.PruneRun.load(out)
    assert run.masks.n_mlp == sel["history"][-1]["n_mlp"] == 2 * round(0.1 * 128)
    assert run.forget_stats.n_tokens == 300 and run.baseline.strategy == "random"
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*"))


def test_several_sources_per_side(gpt2_dir, data_dir, tmp_path, capsys):
    extra_code = tmp_path / "more-code"  # a folder of .txt files, each one text
    extra_code.mkdir()
    for i, text in enumerate(CODE[::-1]):
        (extra_code / f"{i:02d}.txt").write_text(text)
    args = _args(gpt2_dir, data_dir, tmp_path / "run", "--baseline", "none", "--forget-shares", "2", "1")
    i = args.index("--forget")
    args[i + 1 : i + 2] = [str(data_dir / "code.jsonl"), str(extra_code)]  # a jsonl ("content") and a folder
    assert main(args) == 0
    info = json.loads((tmp_path / "run" / "results.json").read_text())["run"]["info"]
    assert info["forget"] == [str(data_dir / "code.jsonl"), str(extra_code)] and info["forget_shares"] == [2.0, 1.0]
    assert info["forget_tokens"] == 600 and len(info["forget_texts_read"]) == 2
    bad = [a if a != str(tmp_path / "run") else str(tmp_path / "bad") for a in args[:-1]] + ["0"]
    assert main(bad) == 2 and not (tmp_path / "bad").exists()  # a share of 0
    (tmp_path / "one-text.txt").write_text("\n".join(CODE))  # one text cannot give both statistics and evaluation
    bad[bad.index(str(extra_code))] = str(tmp_path / "one-text.txt")
    bad[-1] = "1"
    assert main(bad) == 2 and "separate texts" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("old", ["--ff-frac", "--steps", "--stop-at"])
def test_old_flag_spellings_are_refused(old, gpt2_dir, data_dir, tmp_path, capsys):
    """The flags of 0.1 (``--ff-frac``, ``--steps``, ``--stop-at``) are gone: one name per setting."""
    args = _args(gpt2_dir, data_dir, tmp_path / "run", "--baseline", "none")
    with pytest.raises(SystemExit) as exc:
        main(args + [old, "0.5"])
    assert exc.value.code == 2 and old in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_per_kind_flags(gpt2_dir, data_dir, tmp_path):
    args = _args(
        gpt2_dir,
        data_dir,
        tmp_path / "run",
        "--baseline",
        "none",
        "--attn-frac",
        "0.05",
        "--ablation",
        "mean",
        "--attn-ablation",
        "zero",
        "--mlp-scoring",
        "freq",
    )
    assert main(args) == 0
    run = ul.PruneRun.load(tmp_path / "run")
    assert run.config.ablations == {"mlp": "mean", "attn": "zero"}
    assert (run.scores.mlp_scoring, run.scores.attn_scoring) == ("freq", "abs")


def test_existing_output_directory_is_refused_before_any_work(gpt2_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_args(gpt2_dir, data_dir, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # asked to, it replaces the directory whole: no stale file survives
    assert main(_args(gpt2_dir, data_dir, out, "--overwrite")) == 0
    assert "keep.txt" not in {p.name for p in out.iterdir()} and (out / "results.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


def test_interruption_messages(gpt2_dir, data_dir, tmp_path, capsys, monkeypatch):
    import unlearn_lens.report.html as report

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ul.PruneRun, "save", interrupt)
    assert main(_args(gpt2_dir, data_dir, tmp_path / "a")) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(report, "write_report", interrupt)
    args = [a for a in _args(gpt2_dir, data_dir, tmp_path / "b") if a != "--no-report"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "results in" in err and "are complete, report.html was not written" in err
    assert (tmp_path / "b" / "results.json").is_file() and not (tmp_path / "b" / "report.html").exists()


def test_separate_text_fields(gpt2_dir, data_dir, tmp_path, capsys):
    (tmp_path / "prose.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in PROSE))
    out = tmp_path / "run"
    args = _args(gpt2_dir, data_dir, out, "--baseline", "none")
    args[args.index("--retain") + 1] = str(tmp_path / "prose.jsonl")
    args[args.index("--text-field")] = "--forget-field"
    assert main(args) == 2 and not out.exists()  # the retain file has no "text" column
    assert "no text field 'text'" in capsys.readouterr().err
    assert main(args + ["--retain-field", "body"]) == 0
    info = json.loads((out / "results.json").read_text())["run"]["info"]
    assert (info["forget_field"], info["retain_field"]) == ("content", "body")
    assert json.loads((out / "results.json").read_text())["run"]["history"][0]["retain"]["n_tokens"] == 300
    # the report reads each dataset back with its own column for the neuron cards
    page = ul.write_report(out, load_model_from_results=True, n_cards=1, card_tokens=200, device="cpu").read_text(
        encoding="utf-8"
    )
    assert page.count('<div class="ul-card"') == 1 and "Top 5 contexts on retain" in page


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mlp-frac", "1.5"], "mlp_frac must be a fraction in [0, 1]"),
        (["--text-field", "body"], "no text field 'body'"),
        (["--scoring", "freq", "--n-steps", "0"], "n_steps must be at least 1"),
        (["--collect-tokens", "100000"], "evaluation needs tokens apart from them"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_output(gpt2_dir, data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_model_and_data(gpt2_dir, data_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = _args(gpt2_dir, data_dir, tmp_path / "o")
    args[args.index("--retain") + 1] = str(tmp_path / "missing.txt")
    assert main(args) == 2
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    args[args.index("--retain") + 1] = str(tmp_path / "empty.txt")
    assert main(args) == 2
    assert "no non-empty texts" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "unlearn_lens", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and ul.__version__ in out.stdout


def test_sigterm_mid_run_leaves_nothing(tmp_path):
    """SIGTERM is cleaned up like Ctrl-C: no output directory, no temporary files, a true message."""
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlearn_lens", "prune", "--out", str(out), "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    seen, deadline = b"", time.time() + 120
    while b"collect" not in seen and time.time() < deadline:  # wait until the run is computing
        chunk = proc.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
    assert b"collect" in seen, seen[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    # step 0 (the unpruned model) was recorded before statistics began: that checkpoint stays, and is named
    assert f"unlearn-lens: terminated; the run so far (up to step 0) is in {out}.partial".encode() in err
    assert f"unlearn-lens prune --resume {out}.partial".encode() in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial"]
    assert sorted(p.name for p in (tmp_path / "run.partial").iterdir()) == [
        "checkpoint.json",
        "run",
        "tokens.safetensors",
    ]


def test_resume_after_an_interruption_gives_the_same_run(
    gpt2_dir, data_dir, tmp_path, capsys, monkeypatch, interrupt_at_step
):
    args = _args(gpt2_dir, data_dir, tmp_path / "full", "--n-steps", "3", "--ablation", "mean")
    assert main(args) == 0
    interrupt_at_step(3)
    out = tmp_path / "cut"
    assert main([a if a != str(tmp_path / "full") else str(out) for a in args]) == 130
    err = capsys.readouterr().err
    assert f"up to step 2) is in {out}.partial" in err and f"--resume {out}.partial" in err
    monkeypatch.undo()
    assert main(["prune", "--model", str(gpt2_dir), "--out", str(out), "--quiet"]) == 2  # the checkpoint is in the way
    assert "--resume" in capsys.readouterr().err
    assert main(["prune", "--resume", f"{out}.partial", "--quiet", "--no-report"]) == 0
    assert not (tmp_path / "cut.partial").exists()
    full, cut = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "cut"))
    for key in ("run", "baseline"):
        assert [(s["forget"], s["retain"], s["mlp_counts"]) for s in cut[key]["history"]] == [
            (s["forget"], s["retain"], s["mlp_counts"]) for s in full[key]["history"]
        ]
    assert (tmp_path / "cut" / "masks.safetensors").read_bytes() == (
        tmp_path / "full" / "masks.safetensors"
    ).read_bytes()
    assert main(["prune", "--resume", str(tmp_path / "full")]) == 2  # a finished run is not a checkpoint


def test_skip_common_reports_both_views(tmp_path, capsys):
    assert (
        main(
            [
                "prune",
                "--n-steps",
                "1",
                "--collect-tokens",
                "1000",
                "--eval-tokens",
                "1000",
                "--skip-common",
                "5",
                "--baseline",
                "none",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "forget top1 (w/o 5 most common)" in out and "retain top10 (all tokens)" in out
    run = ul.PruneRun.load(tmp_path / "run")
    for step in run.history:
        assert step.forget.all_tokens.n_tokens > step.forget.n_tokens > 0


def test_an_error_is_one_line_even_when_its_cause_is_not(monkeypatch, tmp_path, capsys):
    import unlearn_lens.models

    def fail(*args, **kwargs):
        raise ul.UnlearnLensError("could not load model 'x': first line of the cause\nsecond line of the cause")

    monkeypatch.setattr(unlearn_lens.models, "load_model", fail)
    assert main(["prune", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "unlearn-lens: error: could not load model 'x': first line of the cause second line of the cause\n"
