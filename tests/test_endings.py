"""Every ending tells the truth: after an interruption, a full disk or a lost rank, the one line says what is left."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul
import unlearn_lens._io as io_module
from unlearn_lens.checks.suite import RunChecks
from unlearn_lens.checks.sweep import Sweep
from unlearn_lens.cli import main


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A forget file and a retain folder, with texts enough for a long run."""
    path = tmp_path_factory.mktemp("texts")
    (path / "code.jsonl").write_text("".join(json.dumps({"text": f"{t} {i}"}) + "\n" for i in range(4) for t in CODE))
    (path / "prose").mkdir()
    for i, t in enumerate(PROSE * 4):
        (path / "prose" / f"{i:03d}.txt").write_text(f"{t} {i}")
    return path


def _prune(gpt2_dir, texts, out, *extra):
    return [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(texts / "code.jsonl"),
        "--retain",
        str(texts / "prose"),
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
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _sweep(gpt2_dir, texts, out):
    args = _prune(gpt2_dir, texts, out, "--ablations", "zero", "--scorings", "abs")
    args[0] = "sweep"
    return args


@pytest.fixture(scope="module")
def finished_run(gpt2_dir, texts, tmp_path_factory):
    """A finished run directory (no report); tests copy it before writing into it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_prune(gpt2_dir, texts, out, "--baseline", "none", "--no-report")) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _check(run_dir, *extra):
    return ["check", str(run_dir), "--no-relearn", "--device", "cpu", "--quiet", *extra]


def _one_line(err: str) -> str:
    """The command's own message: exactly one line of stderr, and no traceback."""
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("unlearn-lens:")]
    assert len(ours) == 1, err[-3000:]
    return ours[0]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _disk_full(monkeypatch, fails):
    """Writes whose target ``fails(path)`` accepts run out of space half-way, as on a full disk."""
    real = io_module.atomic_write

    def atomic_write(path, write):
        if not fails(Path(path)):
            return real(path, write)

        def half_way(tmp):
            Path(tmp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, half_way)

    monkeypatch.setattr(io_module, "atomic_write", atomic_write)


def _nth(n: int, name: str, inside: str = ""):
    """A predicate true for the ``n``-th write of a file called ``name`` whose path contains ``inside``."""
    seen = []

    def fails(path: Path) -> bool:
        if path.name == name and inside in str(path):
            seen.append(path)
            return len(seen) == n
        return False

    return fails


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# 6. sweep interrupted while writing its report


def test_sweep_interrupted_while_writing_its_report_says_the_sweep_is_complete(
    gpt2_dir, texts, tmp_path, capsys, monkeypatch
):
    import unlearn_lens.report.sweep as sweep_report

    monkeypatch.setattr(sweep_report, "write_sweep_report", _interrupt)
    out = tmp_path / "sweep"
    assert main(_sweep(gpt2_dir, texts, out)) == 130
    line = _one_line(capsys.readouterr().err)
    assert "nothing was written" not in line
    assert f"the sweep in {out} is complete" in line and "report.html was not written" in line
    assert f"Sweep.load('{out}')" in line and f"write_sweep_report('{out}')" in line
    assert (out / "sweep.json").is_file() and not (out / "report.html").exists()
    monkeypatch.undo()
    assert [c.name for c in Sweep.load(out).cells] == ["zero-abs"]
    assert sweep_report.write_sweep_report(out).is_file()  # the line's way to rebuild the page works


# 7. check interrupted while rebuilding the report


def test_check_interrupted_while_rebuilding_the_report_says_checks_json_was_written(run_copy, capsys, monkeypatch):
    import unlearn_lens.report.html as report

    monkeypatch.setattr(report, "write_report", _interrupt)
    assert main(_check(run_copy)) == 130
    line = _one_line(capsys.readouterr().err)
    assert "nothing was written" not in line
    assert f"checks.json was written to {run_copy}" in line and "report.html was not rebuilt" in line
    assert f"`unlearn-lens report {run_copy}`" in line
    assert (run_copy / "checks.json").is_file() and not (run_copy / "report.html").exists()


def test_check_interrupted_during_the_checks_writes_nothing(run_copy, capsys, monkeypatch):
    import unlearn_lens.checks.suite as suite

    before = _tree(run_copy)
    monkeypatch.setattr(suite, "run_checks", _interrupt)
    assert main(_check(run_copy)) == 130
    assert _one_line(capsys.readouterr().err) == "unlearn-lens: interrupted; nothing was written"
    assert _tree(run_copy) == before


# 8. a full disk


@pytest.mark.parametrize(
    "moment",
    ["first checkpoint", "later checkpoint", "run directory", "report"],
)
def test_disk_full_during_prune_says_what_is_left(gpt2_dir, texts, tmp_path, capsys, monkeypatch, moment):
    out = tmp_path / "run"
    ckpt = tmp_path / "run.partial"
    fails = {
        "first checkpoint": _nth(1, "masks.safetensors", ".partial"),
        "later checkpoint": _nth(3, "masks.safetensors", ".partial"),  # the checkpoint of step 2
        "run directory": _nth(1, "results.json", f"{tmp_path / '.run.'}"),  # in the run directory being built
        "report": _nth(1, "report.html"),
    }[moment]
    _disk_full(monkeypatch, fails)
    assert main(_prune(gpt2_dir, texts, out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("unlearn-lens: error: No space left on device")
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file or directory is left
    if moment == "first checkpoint":
        assert line.endswith("; nothing was written") and _tree(tmp_path) == []
        return
    if moment == "report":
        assert f"the results in {out} are complete, report.html was not written" in line
        assert f"`unlearn-lens report {out}`" in line
        assert not ckpt.exists() and not (out / "report.html").exists()
        assert ul.PruneRun.load(out).final.step == 2
        return
    step = 1 if moment == "later checkpoint" else 2
    assert f"the run so far (up to step {step}) is in {ckpt}" in line
    assert f"`unlearn-lens prune --resume {ckpt}`" in line and not out.exists()
    assert json.loads((ckpt / "checkpoint.json").read_text())["step"] == step
    monkeypatch.undo()
    assert main(["prune", "--resume", str(ckpt), "--quiet", "--no-report"]) == 0  # the line's command works
    assert ul.PruneRun.load(out).final.step == 2 and not ckpt.exists()


def test_disk_full_during_report_leaves_the_run_as_it_was(run_copy, capsys, monkeypatch):
    before = _tree(run_copy)
    _disk_full(monkeypatch, _nth(1, "report.html"))
    assert main(["report", str(run_copy), "--no-cards"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == "unlearn-lens: error: No space left on device; nothing was written"
    assert _tree(run_copy) == before


@pytest.mark.parametrize("moment", ["sweep directory", "report"])
def test_disk_full_during_sweep_says_what_is_left(gpt2_dir, texts, tmp_path, capsys, monkeypatch, moment):
    out = tmp_path / "sweep"
    _disk_full(monkeypatch, _nth(1, "sweep.json" if moment == "sweep directory" else "report.html"))
    assert main(_sweep(gpt2_dir, texts, out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("unlearn-lens: error: No space left on device")
    if moment == "sweep directory":
        assert line.endswith("; nothing was written") and _tree(tmp_path) == []
        return
    assert f"the sweep in {out} is complete" in line and not (out / "report.html").exists()
    assert not [p for p in tmp_path.rglob(".*")]
    monkeypatch.undo()
    assert [c.name for c in Sweep.load(out).cells] == ["zero-abs"]


@pytest.mark.parametrize("moment", ["checks.json", "report"])
def test_disk_full_during_check_says_what_is_left(run_copy, capsys, monkeypatch, moment):
    before = _tree(run_copy)
    _disk_full(monkeypatch, _nth(1, "checks.json" if moment == "checks.json" else "report.html"))
    assert main(_check(run_copy)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("unlearn-lens: error: No space left on device")
    if moment == "checks.json":
        assert line.endswith("; nothing was written") and _tree(run_copy) == before
        return
    assert f"checks.json was written to {run_copy}, report.html was not rebuilt" in line
    assert _tree(run_copy) == sorted([*before, "checks.json"])
    assert RunChecks.load(run_copy) is not None


# 9. check on a directory it cannot write


def test_check_refuses_a_read_only_run_directory_before_the_work(run_copy, capsys, monkeypatch):
    import unlearn_lens.checks.suite as suite

    real_access = os.access

    def access(path, mode, *args, **kwargs):  # tests run as root: chmod would not stop the writes
        if Path(path) == run_copy and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "access", access)

    def run_checks(*args, **kwargs):
        raise AssertionError("the checks ran although the run directory cannot be written")

    monkeypatch.setattr(suite, "run_checks", run_checks)
    before = _tree(run_copy)
    assert main(_check(run_copy)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("unlearn-lens: error: cannot write") and "is not writable" in line
    assert _tree(run_copy) == before


# 10. a second Ctrl-C while the first is handled


def test_two_sigints_5ms_apart_give_the_one_line_message(gpt2_dir, texts, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run.partial"
    args = _prune(gpt2_dir, texts, out, "--n-steps", "60", "--mlp-frac", "0.01", "--no-report")
    with open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unlearn_lens", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        _wait_for_step(ckpt, [proc], err=tmp_path / "err.txt")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    text = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, text[-3000:]
    line = _one_line(text)
    assert line.startswith("unlearn-lens: interrupted; the run so far (up to step ") and f"{ckpt}" in line
    assert (ckpt / "checkpoint.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err.txt", "run.partial"]


# 11. torchrun: a rank that ends, a rank that is stuck


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    from datetime import timedelta

    from unlearn_lens.distributed import init_from_env

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: seen.update(kw))
    assert init_from_env("cpu", timeout=7.5) is True
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=7.5)}
    with pytest.raises(ul.UnlearnLensError, match="must be over 0 s"):
        init_from_env("cpu", timeout=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(args, cwd: Path) -> list[subprocess.Popen]:
    """Two processes of one gloo group, started as torchrun starts them (its environment), logs in ``cwd``."""
    base = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
    }
    procs = []
    for rank in range(2):
        with open(cwd / f"out{rank}.txt", "wb") as out, open(cwd / f"err{rank}.txt", "wb") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "unlearn_lens", *args],
                    stdout=out,
                    stderr=err,
                    env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    cwd=cwd,
                )
            )
    return procs


def _wait_for_step(ckpt: Path, procs, step: int = 1, limit: float = 120, err: Path | None = None) -> None:
    """Wait until the checkpoint has recorded ``step`` (while every process still runs)."""
    deadline = time.time() + limit
    while time.time() < deadline and all(p.poll() is None for p in procs):
        state = (ckpt / "checkpoint.json").is_file() and json.loads((ckpt / "checkpoint.json").read_text())
        if state and state["step"] >= step:
            return
        time.sleep(0.05)
    log = (err or ckpt.parent / "err0.txt").read_text()
    raise AssertionError(f"no checkpoint of step {step}: {log[-3000:]}")


def _distributed_args(gpt2_dir, texts, out, *extra):
    return _prune(
        gpt2_dir,
        texts,
        out,
        "--n-steps",
        "100",
        "--mlp-frac",
        "0.01",
        "--batch-size",
        "4",
        "--baseline",
        "none",
        "--no-report",
        *extra,
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_a_rank_that_ends_points_to_rank_0s_checkpoint(gpt2_dir, texts, tmp_path):
    """SIGTERM to rank 1 (as torchrun sends when another rank fails): neither rank says "nothing was written"."""
    out, ckpt = tmp_path / "run", tmp_path / "run.partial"
    procs = _two_ranks(_distributed_args(gpt2_dir, texts, out, "--dist-timeout", "20"), tmp_path)
    try:
        _wait_for_step(ckpt, procs)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=60) == 143
        assert procs[0].wait(timeout=60) == 2  # it lost rank 1 at its next collective
    finally:
        for p in procs:
            p.kill()
    one = _one_line((tmp_path / "err1.txt").read_text())
    assert "nothing was written" not in one
    assert one.startswith("unlearn-lens: terminated; rank 1 writes nothing: rank 0 alone writes")
    assert f"`unlearn-lens prune --resume {ckpt}`" in one
    zero = _one_line((tmp_path / "err0.txt").read_text())
    assert zero.startswith("unlearn-lens: error: rank 0 of 2:") and "rank 1" in zero
    step = json.loads((ckpt / "checkpoint.json").read_text())["step"]
    assert f"the run so far (up to step {step}) is in {ckpt}" in zero and not out.exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_a_stuck_rank_is_given_up_after_dist_timeout(gpt2_dir, texts, tmp_path):
    """Rank 1 stopped (SIGSTOP): rank 0 stops waiting after --dist-timeout, in one line, not after 30 minutes."""
    out, ckpt = tmp_path / "run", tmp_path / "run.partial"
    procs = _two_ranks(_distributed_args(gpt2_dir, texts, out, "--dist-timeout", "5"), tmp_path)
    try:
        _wait_for_step(ckpt, procs)
        procs[1].send_signal(signal.SIGSTOP)
        t_stop = time.time()
        assert procs[0].wait(timeout=60) == 2
        waited = time.time() - t_stop
    finally:
        for p in procs:
            p.kill()
    assert 4 < waited < 30  # the timeout, and a little time to end
    line = _one_line((tmp_path / "err0.txt").read_text())
    assert line.startswith("unlearn-lens: error: rank 0 of 2 stopped waiting for rank 1") and "--dist-timeout" in line
    step = json.loads((ckpt / "checkpoint.json").read_text())["step"]
    assert f"the run so far (up to step {step}) is in {ckpt}" in line and not out.exists()
