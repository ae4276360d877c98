"""Speed of statistics and evaluation against the forward pass, for any model shape, on any device.

For each shape (random weights, see ``shapes.py``) and the same random token rows,
times in one process, alternating them and taking medians:

* a bare forward pass (logits included);
* the forward pass stopped after the last MLP / attention hook (what ``collect_stats``
  needs: it stops there too);
* ``collect_stats`` on every MLP and attention neuron: the default for the device
  (``collect``), and both reductions side by side: rows gathered and reduced eagerly
  (``collect_eager``, the CPU default) and the fused in-place kernel compiled by
  ``torch.compile`` (``collect_fused``, the CUDA default);
* ``evaluate`` (top-1, top-10, loss);

and, on CUDA, the peak memory of each. Prints one JSON line per shape, with the
per-token times and the ratios ``collect / forward`` and ``collect / forward to the
last hook`` (the statistics' own cost).

Usage::

    python benchmarks/gpu_speed.py --shape gpt2-small llama-1b --device cuda --dtype bfloat16 \\
        [--tokens 200000] [--seq-len 512] [--batch-size 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from shapes import SHAPES, build, random_rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, tokens, batch_size: int, repeats: int, device: str) -> dict[str, dict[str, float | None]]:
    """Median seconds and peak memory (CUDA only) of each way of running the model over ``tokens``."""
    import unlearn_lens as ul
    from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name

    n_layers = ul.ModelDims.of(model).n_layers
    last = [mlp_hook_name(n_layers - 1), attn_hook_name(n_layers - 1)]

    class Stop(Exception):
        pass

    fired: list[int] = []

    def stop(activation, hook) -> None:
        fired.append(1)
        if len(fired) == len(last):
            raise Stop

    @torch.no_grad()
    def forward() -> None:
        for batch in tokens.batches(batch_size, device):
            model(batch.tokens)

    @torch.no_grad()
    def to_last_hook() -> None:
        with attached(model, [(name, stop) for name in last]):
            for batch in tokens.batches(batch_size, device):
                fired.clear()
                try:
                    model(batch.tokens)
                except Stop:
                    pass

    def collect() -> None:  # the default: the fused in-place reduction on CUDA, the eager one on CPU
        ul.collect_stats(model, tokens, max_tokens=None, batch_size=batch_size, progress=False)

    def collect_eager() -> None:  # rows gathered, then reduced eagerly (the only path before the fused one)
        ul.collect_stats(model, tokens, max_tokens=None, batch_size=batch_size, progress=False, fused=False)

    def collect_fused() -> None:
        ul.collect_stats(model, tokens, max_tokens=None, batch_size=batch_size, progress=False, fused=True)

    def evaluate() -> None:
        ul.evaluate(model, tokens, max_tokens=None, batch_size=batch_size, progress=False)

    runs: dict[str, Callable[[], None]] = {
        "forward": forward,
        "to_last_hook": to_last_hook,
        "collect": collect,
        "collect_eager": collect_eager,
        "collect_fused": collect_fused,
        "evaluate": evaluate,
    }
    return _time_runs(runs, repeats, device)


def _time_runs(runs: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, dict[str, float | None]]:
    """Warm each run up (recording its peak memory on CUDA), then time them alternately; medians."""
    peaks: dict[str, float | None] = {}
    for name, fn in runs.items():  # warm-up, and the peak memory of each
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: {"seconds": statistics.median(times[name]), "peak_gib": peaks[name]} for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), nargs="+", default=["gpt2-small"])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for shape in args.shape:
        with tempfile.TemporaryDirectory() as folder:
            model, vocab = build(shape, args.device, getattr(torch, args.dtype), folder)
            tokens = random_rows(args.tokens, args.seq_len, vocab)
            result = measure(model, tokens, args.batch_size, args.repeats, args.device)
        per_token = {name: r["seconds"] / tokens.n_tokens * 1e6 for name, r in result.items()}
        print(
            json.dumps(
                {
                    "shape": shape,
                    "device": args.device,
                    "dtype": args.dtype,
                    "tokens": tokens.n_tokens,
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "repeats": args.repeats,
                    "us_per_token": {k: round(v, 3) for k, v in per_token.items()},
                    "collect_over_forward": round(per_token["collect"] / per_token["forward"], 3),
                    "collect_over_to_last_hook": round(per_token["collect"] / per_token["to_last_hook"], 3),
                    "collect_eager_over_forward": round(per_token["collect_eager"] / per_token["forward"], 3),
                    "collect_fused_over_forward": round(per_token["collect_fused"] / per_token["forward"], 3),
                    "collect_fused_over_to_last_hook": round(per_token["collect_fused"] / per_token["to_last_hook"], 3),
                    "evaluate_over_forward": round(per_token["evaluate"] / per_token["forward"], 3),
                    "peak_gib": {
                        k: (round(r["peak_gib"], 2) if r["peak_gib"] is not None else None) for k, r in result.items()
                    },
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
