"""Speed and memory of ``collect_stats`` against a bare forward pass.

Times, on the same tokens and batches in one process, a bare forward pass of a
4-layer GPT-2 (d_model 256, d_mlp 1024, 8 heads, vocab 4096, context 128, random
weights) and ``collect_stats`` with every MLP and attention neuron of every layer,
alternating them and taking medians. ``collect_stats`` stops each forward pass after
the last MLP hook (the logits are not needed), so the script also times a forward
pass stopped at that same point: the ratio against it is the cost of the statistics
alone. Then measures the peak resident memory of collecting over 10k and over 100k
tokens, each in a fresh process.

Usage::

    python benchmarks/collect_speed.py [--tokens 20000] [--repeats 5] [--threads 2]

Targets: collect/forward <= 1.15; peak memory does not grow with the token count.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch


def build_model(tmp: str):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import unlearn_lens as ul

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        ["def f(x):\n    return x\n", "A short sentence of prose."] * 20,
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=4096,
        n_positions=128,
        n_embd=256,
        n_layer=4,
        n_head=8,
        n_inner=1024,
        activation_function="relu",
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return ul.load_model(tmp, device="cpu")


def random_tokens(n_tokens: int, seq_len: int = 128):
    import unlearn_lens as ul

    gen = torch.Generator().manual_seed(0)
    n_rows = -(-n_tokens // (seq_len - 1))
    tokens = torch.randint(1, 4096, (n_rows, seq_len), generator=gen)
    tokens[:, 0] = 0
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, 0] = False
    return ul.TokenSet(tokens, valid)


def peak_rss_mib(n_tokens: int, batch_size: int) -> float:
    """Run in a child process: collect over ``n_tokens`` and report the peak RSS."""
    import unlearn_lens as ul

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(tmp)
        tokens = random_tokens(n_tokens)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ul.collect_stats(model, tokens, max_tokens=None, batch_size=batch_size, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024, (peak - base) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_child:
        print(json.dumps(peak_rss_mib(args.memory_child, args.batch_size)))
        return

    import unlearn_lens as ul
    from unlearn_lens.models import attached, mlp_hook_name

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(tmp)
        tokens = random_tokens(args.tokens)

        def bare() -> None:
            with torch.no_grad():
                for batch in tokens.batches(args.batch_size):
                    model(batch.tokens)

        class Stop(Exception):
            pass

        def stop(activation, hook) -> None:
            raise Stop

        def to_last_hook() -> None:
            last = mlp_hook_name(ul.ModelDims.of(model).n_layers - 1)
            with torch.no_grad(), attached(model, [(last, stop)]):
                for batch in tokens.batches(args.batch_size):
                    try:
                        model(batch.tokens)
                    except Stop:
                        pass

        def collect() -> None:
            ul.collect_stats(model, tokens, max_tokens=None, batch_size=args.batch_size, progress=False)

        def collect_fused() -> None:
            ul.collect_stats(model, tokens, max_tokens=None, batch_size=args.batch_size, progress=False, fused=True)

        runs = {"forward": bare, "to_last_hook": to_last_hook, "collect": collect, "collect_fused": collect_fused}
        times = time_runs(runs, args.repeats)
    fwd, part, col, fused = (times[name] for name in runs)
    print(
        f"model: GPT-2 4 layers, d_model 256, d_mlp 1024, 8 heads; {tokens.n_tokens:,} tokens, "
        f"batch {args.batch_size} x 128, {args.threads} threads, {args.repeats} repeats (medians)"
    )
    print(f"bare forward              {fwd:7.3f} s  ({tokens.n_tokens / fwd:,.0f} tok/s)")
    print(f"forward to the last hook  {part:7.3f} s  ({tokens.n_tokens / part:,.0f} tok/s)")
    print(f"collect_stats             {col:7.3f} s  ({tokens.n_tokens / col:,.0f} tok/s)")
    print(f"ratio collect/forward: {col / fwd:.3f}   (target <= 1.15)")
    print(f"ratio collect/forward to the last hook: {col / part:.3f}   (the statistics' own cost)")
    print(
        f"collect_stats(fused=True) {fused:7.3f} s: ratio to forward {fused / fwd:.3f}, to the last hook "
        f"{fused / part:.3f}   (the CUDA default, here compiled for the CPU)"
    )
    print_peak_memory(args.threads, args.batch_size)


def time_runs(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each run: all warmed up once, then timed alternately ``repeats`` times."""
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(times[name]) for name in runs}


def print_peak_memory(threads: int, batch_size: int) -> None:
    """The peak resident memory of collecting over 10k and over 100k tokens, each in a fresh process."""
    peaks = {}
    for n in (10_000, 100_000):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                "--threads",
                str(threads),
                "--batch-size",
                str(batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"peak RSS collecting {n:>7,} tokens: {peaks[n][0]:7.1f} MiB (growth during collection "
            f"{peaks[n][1]:6.1f} MiB)"
        )
    print(f"ratio peak RSS 100k/10k tokens: {peaks[100_000][0] / peaks[10_000][0]:.3f}   (target: ~1.0, no growth)")


if __name__ == "__main__":
    main()
