"""Data-parallel runs: two gloo processes under torchrun give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.cli import main
from unlearn_lens.distributed import shard, world


def test_without_a_process_group_nothing_is_sharded(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=16)
    assert world() == (0, 1) and shard(tokens) is tokens
    parts = [shard(tokens, r, 3) for r in range(3)]
    assert sum(p.n_tokens for p in parts) == tokens.n_tokens
    assert torch.equal(parts[1].tokens, tokens.tokens[1::3])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_torchrun_two_processes_match_one(gpt2_dir, tmp_path):
    for name, texts in (("code", CODE), ("prose", PROSE)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"{t} {i}"}) + "\n" for i in range(4) for t in texts)
        )
    args = [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(tmp_path / "code.jsonl"),
        "--retain",
        str(tmp_path / "prose.jsonl"),
        "--mlp-frac",
        "0.1",
        "--attn-frac",
        "0.05",
        "--n-steps",
        "2",
        "--ablation",
        "mean",
        "--collect-tokens",
        "600",
        "--eval-tokens",
        "400",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--quiet",
        "--no-report",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "unlearn_lens",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("results:") == 1  # rank 0 alone reports and writes
    one, two = ul.PruneRun.load(tmp_path / "one"), ul.PruneRun.load(tmp_path / "two")
    assert two.masks == one.masks and two.baseline.masks == one.baseline.masks
    for a, b in zip(one.history + one.baseline.history, two.history + two.baseline.history):
        for ds in ("forget", "retain"):
            x, y = getattr(a, ds), getattr(b, ds)
            assert x.n_tokens == y.n_tokens
            assert (x.top1, x.topk) == pytest.approx((y.top1, y.topk), abs=1e-6)
            assert x.loss == pytest.approx(y.loss, rel=1e-6)
    assert torch.allclose(one.ablation.means.mlp.mean, two.ablation.means.mlp.mean, rtol=1e-6, atol=1e-9)
    assert torch.allclose(one.scores.mlp, two.scores.mlp, rtol=1e-6, atol=1e-9)
    dist = two.info["distributed"]
    assert dist["world_size"] == 2 and "distributed" not in one.info
    assert {k: sum(v) for k, v in dist["tokens_per_rank"].items()} == {
        "forget_collect": 600,
        "forget_eval": 400,
        "retain_collect": 600,
        "retain_eval": 400,
    }
    assert all(min(v) > 0 for v in dist["tokens_per_rank"].values())
