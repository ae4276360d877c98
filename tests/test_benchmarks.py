"""The benchmark scripts still run: each on its smallest setting, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_recipe_cost_measures_and_projects():
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "recipe_cost.py"), "--shape", "tiny", "--tokens", "999", "--n-steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["shape"] == "tiny" and line["n_layers"] == 2 and line["tokens"] == 999
    assert line["collect_tok_s"] > 0 and line["eval_tok_s"] > 0
    # one step: 2e5 tokens of statistics and 2e5 of evaluation; a run: step 0's evaluation and 3 steps
    step = 2e5 / line["collect_tok_s"] + 2e5 / line["eval_tok_s"]
    assert abs(line["step_s"] - step) <= 1
    assert abs(line["selective_run_s"] - (2e5 / line["eval_tok_s"] + 3 * step)) <= 2
    assert abs(line["random_baseline_s"] - 4 * 2e5 / line["eval_tok_s"]) <= 2


def test_gpu_speed_times_every_pass():
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "gpu_speed.py"),
            "--shape",
            "tiny",
            "--tokens",
            "1000",
            "--seq-len",
            "64",
            "--repeats",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    per_token = line["us_per_token"]
    assert set(per_token) == {"forward", "to_last_hook", "collect", "collect_eager", "collect_fused", "evaluate"}
    assert all(v > 0 for v in per_token.values())
    assert abs(line["collect_over_forward"] - per_token["collect"] / per_token["forward"]) < 1e-2
    assert abs(line["collect_fused_over_forward"] - per_token["collect_fused"] / per_token["forward"]) < 1e-2
    assert abs(line["collect_eager_over_forward"] - per_token["collect_eager"] / per_token["forward"]) < 1e-2
    assert line["peak_gib"]["collect"] is None  # peak memory is measured on CUDA only
