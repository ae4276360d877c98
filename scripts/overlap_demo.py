"""Capability overlap on the demo model, with both controls (the overlap table of docs/beyond.md).

Selective runs (the demo's default settings) for three forget sets against
``demo:prose``: the standard-library code of the test and validation splits and the
third-party code of ``demo:code:outside``. Prints the Jaccard overlap of the pruned MLP
and attention neurons for the trained model, for random masks with the same per-layer
counts, and for the same runs on a randomly initialised copy of the model; then how
much each random-init run shares with the trained run of the same forget set.

Usage::

    python scripts/overlap_demo.py [--json overlap.json]

About 4 minutes on one CPU thread (the bundled model halves code in 3 or 4 steps).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import unlearn_lens as ul
from unlearn_lens.checks.overlap import jaccard, overlap_matrix, random_control, random_init_control
from unlearn_lens.cli import DEMO_SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the matrices to this file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = ul.load_model("demo", device="cpu")
    retain = ul.load_texts("demo:prose")
    forget = {
        "stdlib (test)": ul.load_texts("demo:code"),
        "stdlib (validation)": ul.load_texts("demo:code:validation"),
        "third-party": ul.load_texts("demo:code:outside"),
    }
    config = ul.PruneConfig(**DEMO_SETTINGS)
    runs = {name: ul.selective_prune(model, texts, retain, config, progress=False) for name, texts in forget.items()}
    for name, run in runs.items():
        print(f"{name}: {len(run.history) - 1} steps, {run.masks.n_mlp} MLP + {run.masks.n_attn} attention neurons")
    controls = {
        "trained": runs,
        "random masks": random_control(runs, seed=0),
        "random init": random_init_control(model, forget, retain, like=runs, seed=0),
    }
    out = {}
    for kind in ("mlp", "attn"):
        for label, masks in controls.items():
            matrix = overlap_matrix(masks, kind=kind)
            out[f"{kind} {label}"] = matrix.to_dict()
            print(f"\n{kind}, {label}:")
            for i, name in enumerate(matrix.names):
                print(f"  {name:22s}" + " ".join(f"{v:.3f}" for v in matrix.overall[i].tolist()))
    init = controls["random init"]
    for name in runs:
        print(
            f"trained vs random init, {name}: MLP {jaccard(runs[name], init[name]).overall:.3f}, "
            f"attention {jaccard(runs[name], init[name], 'attn').overall:.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
