"""What the paper's experiment costs: collection and evaluation speed at the paper's model sizes.

Builds a random-weight model of a real shape (no download: the architecture's own
initialisation from a config), feeds it random token ids in the paper's 1,000-token
rows, and times ``collect_stats`` (every MLP and attention neuron) and ``evaluate``
(top-1, top-10, loss, without the 50 most common tokens and with them) on the same
tokens, after one warm-up batch. From the two speeds it projects the cost of one step
of the paper's loop (statistics on 1e5 forget + 1e5 retain tokens, then evaluation on
1e5 + 1e5 other tokens) and of the whole experiment (step 0, then ``--n-steps``
steps; the random baseline evaluates every step but collects nothing under zero
ablation). The projections are estimates: the speed of random weights is that of
trained ones (same shapes, same kernels), but the measurement covers a few thousand
tokens, not 4e5 per step.

Usage::

    python benchmarks/recipe_cost.py [--shape pythia-1.4b|opt-1.3b|tiny] [--tokens 4000]
                                     [--batch-size 2] [--threads 2] [--device cpu] [--dtype float32]

Prints one JSON line per shape.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch
from shapes import SHAPES, build, random_rows


def project(collect_tps: float, eval_tps: float, n_steps: int, budget: int = 100_000) -> dict[str, float]:
    """Seconds for one step, the selective run and the random baseline of the paper's loop."""
    collect = 2 * budget / collect_tps  # forget + retain statistics
    evaluate = 2 * budget / eval_tps  # forget + retain evaluation
    return {
        "step_s": collect + evaluate,
        "selective_run_s": evaluate + n_steps * (collect + evaluate),
        "random_baseline_s": (n_steps + 1) * evaluate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), nargs="+", default=["pythia-1.4b"])
    parser.add_argument("--tokens", type=int, default=4_000, help="tokens timed for each of collection and evaluation")
    parser.add_argument("--seq-len", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--n-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import unlearn_lens as ul

    for shape in args.shape:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            model, vocab = build(shape, args.device, getattr(torch, args.dtype), folder)
            build_s = time.perf_counter() - t0
            dims = ul.ModelDims.of(model)
            tokens = random_rows(args.tokens, args.seq_len, vocab)
            warm = random_rows(args.seq_len - 1, args.seq_len, vocab)
            kw = {"batch_size": args.batch_size, "max_tokens": None, "progress": False}
            ul.collect_stats(model, warm, **kw)
            ul.evaluate(model, warm, skip_common=50, **kw)
            t = time.perf_counter()
            ul.collect_stats(model, tokens, **kw)
            collect_s = time.perf_counter() - t
            t = time.perf_counter()
            ul.evaluate(model, tokens, skip_common=50, **kw)
            eval_s = time.perf_counter() - t
        collect_tps, eval_tps = tokens.n_tokens / collect_s, tokens.n_tokens / eval_s
        print(
            json.dumps(
                {
                    "shape": shape,
                    "n_layers": dims.n_layers,
                    "d_mlp": dims.d_mlp,
                    "n_heads": dims.n_heads,
                    "device": args.device,
                    "dtype": args.dtype,
                    "threads": args.threads,
                    "tokens": tokens.n_tokens,
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "build_s": round(build_s, 1),
                    "collect_tok_s": round(collect_tps, 1),
                    "eval_tok_s": round(eval_tps, 1),
                    **{k: round(v) for k, v in project(collect_tps, eval_tps, args.n_steps).items()},
                    "n_steps": args.n_steps,
                    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
