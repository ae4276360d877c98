"""A built wheel carries the demo model, so `load_model("demo")` works without the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_demo_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "unlearn_lens", src / "unlearn_lens", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "assets" / "demo-model", src / "assets" / "demo-model")
    assert (src / "unlearn_lens" / "_demo_model").is_symlink()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("unlearn_lens-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert f"unlearn_lens/_demo_model/{name}" in names
        archive.extractall(tmp_path / "site")
    # Imported from the unpacked wheel (no assets/ beside it), the demo model is found in the package.
    code = (
        "import unlearn_lens as ul; from unlearn_lens.demo import demo_model_dir; "
        "print(demo_model_dir()); print(ul.ModelDims.of(ul.load_model('demo', device='cpu')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == str(tmp_path / "site" / "unlearn_lens" / "_demo_model")
    assert lines[1] == "ModelDims(n_layers=4, d_mlp=1024, n_heads=8, d_head=32)"
