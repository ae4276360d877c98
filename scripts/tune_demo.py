"""Choose the demo's settings on the validation split (the test split is never used here).

Runs the selective loop and its random baseline on the demo model with forget =
``demo:code:validation`` and retain = ``demo:prose:validation`` for a small grid of
settings (MLP and attention fractions per step, ablation), every run stopping once
code top-1 has halved, and prints one line per setting: prose top-1 kept where code
top-1 reaches 50 % (the headline, higher is better), the same for the random baseline,
and the run time. The setting with the best headline becomes the demo default; the
README reports it on the test split.

``--model DIR`` runs the same grid on another model (a candidate demo model made by
``scripts/train_demo_model.py --out DIR``).

Usage::

    python scripts/tune_demo.py [--threads 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

GRID = [  # (mlp_frac, attn_frac, ablation)
    (0.045, 0.02, "mean"),
    (0.03, 0.01, "mean"),
    (0.045, 0.0, "mean"),
    (0.06, 0.03, "mean"),
    (0.045, 0.02, "zero"),
    (0.02, 0.01, "mean"),
    (0.09, 0.045, "mean"),
    (0.06, 0.06, "mean"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="demo", help="'demo' (the bundled model) or a model directory")
    parser.add_argument(
        "--only",
        type=int,
        nargs="+",
        metavar="N",
        choices=range(1, len(GRID) + 1),
        help="run only these settings of the grid (1 = the first line)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import unlearn_lens as ul

    model = ul.load_model(args.model, device="cpu")
    code, prose = ul.load_texts("demo:code:validation"), ul.load_texts("demo:prose:validation")
    grid = [GRID[n - 1] for n in args.only] if args.only else GRID
    for mlp_frac, attn_frac, ablation in grid:
        t0 = time.perf_counter()
        config = ul.PruneConfig(
            mlp_frac=mlp_frac,
            attn_frac=attn_frac,
            ablation=ablation,
            n_steps=min(25, round(0.5 / mlp_frac)),
            collect_tokens=20_000,
            eval_tokens=20_000,
            batch_size=16,
            stop_at_forget=0.5,
        )
        run = ul.selective_prune(model, code, prose, config, progress=False)
        run.baseline = ul.random_baseline(model, code, prose, run, progress=False)
        rel_code = run.final.forget.top1 / run.base.forget.top1
        print(
            json.dumps(
                {
                    "mlp_frac": mlp_frac,
                    "attn_frac": attn_frac,
                    "ablation": ablation,
                    "n_steps": config.n_steps,
                    "steps_run": len(run.history) - 1,
                    "code_top1_final": round(rel_code, 3),
                    "prose_at_code_half": run.retain_at_forget(0.5),
                    "random_prose_at_code_half": run.baseline.retain_at_forget(0.5),
                    "seconds": round(time.perf_counter() - t0),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
