"""What a run leaves on disk: the same bytes for the same inputs, the same permissions for every file."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul

WRITE = """
import sys, torch, unlearn_lens as ul
m = ul.Masks(torch.arange(12).reshape(2, 6) % 3 == 0, torch.zeros(2, 2, 3, dtype=torch.bool))
m.save(sys.argv[1], meta={"strategy": "selective", "model": "m", "seed": 0})
s = ul.Scores(torch.linspace(0, 1, 12, dtype=torch.float64).reshape(2, 6), torch.ones(2, 2, 3, dtype=torch.float64))
s.save(sys.argv[1] + ".scores")
"""


def test_safetensors_outputs_are_byte_identical_across_processes(tmp_path):
    """The safetensors writer orders metadata by a per-process hash; our files do not depend on it."""
    paths = [tmp_path / f"m{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True, timeout=120)
    assert len({p.read_bytes() for p in paths}) == 1
    assert len({(tmp_path / f"{p.name}.scores").read_bytes() for p in paths}) == 1
    assert ul.Masks.load(paths[0]).n_mlp == 4


@pytest.fixture(scope="module")
def small_run(gpt2):
    cfg = ul.PruneConfig(mlp_frac=0.1, n_steps=1, ablation="mean", collect_tokens=200, eval_tokens=100, seq_len=32)
    run = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    run.baseline = ul.random_baseline(gpt2, CODE, PROSE, run, progress=False)
    return run


def test_every_output_follows_the_umask(small_run, tmp_path):
    old = os.umask(0o027)
    try:
        out = small_run.save(tmp_path / "run")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(modes) == 9 and set(modes.values()) == {0o640}, modes


def test_saved_tensors_are_the_same_bytes_for_the_same_run(small_run, tmp_path):
    a, b = small_run.save(tmp_path / "a"), small_run.save(tmp_path / "b")
    for name in sorted(p.name for p in a.iterdir() if p.suffix == ".safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_runs_of_one_command_write_the_same_bytes(gpt2_dir, tmp_path):
    """Same inputs and seed, two runs: every file is the same, results.json up to its wall times."""
    from unlearn_lens.cli import main

    (tmp_path / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE * 3))
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
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
            "--ablation",
            "mean",
            "--out",
            str(out),
            "--quiet",
            "--no-report",
        ]
        assert main(args) == 0
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir()) and len(names) == 9
    for name in names:
        a, b = ((out / name).read_bytes() for out in outs)
        if name == "results.json":
            a, b = (re.sub(rb'"seconds": [0-9.e-]+', b'"seconds": 0', x) for x in (a, b))
        assert a == b, name


def test_a_run_without_steps_is_a_clear_error(small_run, tmp_path, capsys):
    from unlearn_lens.cli import main

    out = small_run.save(tmp_path / "run")
    data = json.loads((out / "results.json").read_text())
    data["run"]["history"] = []
    (out / "results.json").write_text(json.dumps(data))
    with pytest.raises(ul.UnlearnLensError, match="has no steps"):
        ul.PruneRun.load(out)
    assert main(["report", str(out), "--no-cards"]) == 2
    err = capsys.readouterr().err
    assert "has no steps" in err and "Traceback" not in err
    assert not (out / "report.html").exists()
