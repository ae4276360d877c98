"""A built wheel is complete: installed into a fresh environment, away from the checkout, the demo runs."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unlearn_lens"
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "unlearn_lens", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = dist.glob("unlearn_lens-*.whl")
    return wheel


def _expected_members() -> set[str]:
    names = {f"unlearn_lens/demo/model/{name}" for name in _MODEL_FILES}
    names |= {
        "unlearn_lens/demo/data/code-test.jsonl.gz",
        "unlearn_lens/demo/data/prose-test.jsonl.gz",
        "unlearn_lens/report/templates/report.html.j2",
        "unlearn_lens/py.typed",
    }
    # And every file of the demo in the tree: the model directory, the pinned splits, their licences.
    for pattern in ("demo/model/*", "demo/data/*.jsonl.gz", "demo/data/LICENSES/*.txt"):
        names |= {path.relative_to(ROOT).as_posix() for path in PACKAGE.glob(pattern)}
    return names


def _fresh_venv(path: Path, clean_env: dict[str, str]) -> Path:
    """A virtual environment that sees the running environment's packages but not the editable checkout.

    A directory named in a ``.pth`` file is appended to ``sys.path``, while the ``.pth`` files inside it
    (among them the editable install's finder) are not processed, so ``unlearn_lens`` itself is not importable.
    """
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=clean_env)
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_running_env.pth").write_text("".join(f"{p}\n" for p in paths))
    probe = subprocess.run([python, "-c", "import unlearn_lens"], capture_output=True, env=clean_env, cwd=path)
    assert probe.returncode != 0, "the checkout is importable from the fresh environment"
    if subprocess.run([python, "-c", "import pip"], capture_output=True, env=clean_env).returncode != 0:
        _run([python, "-m", "ensurepip", "--default-pip"], env=clean_env)
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        missing = _expected_members() - set(archive.namelist())
    assert not missing, f"not in the wheel: {sorted(missing)}"

    env_dir = tmp_path / "venv"
    assert ROOT not in env_dir.resolve().parents
    bin_dir = env_dir / "bin"
    clean_env = {
        "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    python = _fresh_venv(env_dir, clean_env)
    # --ignore-installed: the running environment's unlearn-lens, visible through the .pth file's directory,
    # is neither taken as already installed nor uninstalled.
    pip_install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-cache-dir"]
    _run([*pip_install, "--ignore-installed", wheel], env=clean_env, cwd=tmp_path)

    work = tmp_path / "work"
    work.mkdir()
    out = _run([python, "-c", "import unlearn_lens; print(unlearn_lens.__file__)"], env=clean_env, cwd=work)
    where = Path(out.stdout.strip()).resolve()
    assert env_dir.resolve() in where.parents, where
    assert ROOT not in where.parents, where

    cli = shutil.which("unlearn-lens", path=clean_env["PATH"])
    assert cli is not None and Path(cli).parent == bin_dir, cli
    _run(
        [
            cli,
            "prune",
            "--n-steps",
            "1",
            "--baseline",
            "none",
            "--no-report",
            "--collect-tokens",
            "2000",
            "--eval-tokens",
            "2000",
            "--out",
            "RUN",
        ],
        env=clean_env,
        cwd=work,
    )
    results = work / "RUN" / "results.json"
    assert results.is_file()
    run = json.loads(results.read_text())["run"]
    history = run["history"] if "history" in run else run["steps"]
    assert len(history) == 2  # the unpruned model and one pruning step
