"""This package's textbook rules against the reference implementation's (``compat="taker"``) on the demo model.

For each importance function, one selective step (2 % of all MLP neurons, zero
ablation, no attention neurons pruned) with the default rules and one with
``compat="taker"``, each on its own rows of the same texts: 20,000 statistics and
20,000 evaluation tokens of ``demo:code`` (forget) and of ``demo:prose`` (retain), the
test split of the demo corpora. Their texts are whole files, and the reference reads
one row (here 128 tokens, the demo model's context) of each text and no more, which
would leave about 3,000 tokens per dataset; so both modes read the files cut at line
breaks into pieces of at most 128 tokens, in order. Prints, per importance function:

* the Jaccard overlap of the two MLP masks (whole modes: rows, formulas, precision, count);
* the rows alone: the textbook mask against textbook formulas and count on the
  reference's rows;
* the formulas and precision alone: on the reference's rows, textbook formulas against
  the reference's, each selecting int(0.02 · N) neurons;
* the Jaccard overlap of the top 2 % of attention neurons by the two modes' scores
  (attention neurons are scored, not pruned, in this step);
* forget and retain top-1 after the step, both ways, beside the unpruned values.

Usage::

    python scripts/compare_reference.py [--threads 1] [--tokens 20000] [--json compare.json]

About 4 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import unlearn_lens as ul
from unlearn_lens.compat import units_per_step

METHODS = ("abs", "freq", "rms", "std", "sqrt")
FRAC = 0.02


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean masks."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def row_sized_pieces(texts, tokenizer, size: int) -> list[str]:
    """The texts cut at line breaks into pieces of at most ``size`` tokens (a longer line is a piece of its own)."""
    pieces = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        counts = [len(ids) for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]] if lines else []
        piece, n = [], 0
        for line, k in zip(lines, counts):
            if piece and n + k > size:
                pieces.append("".join(piece))
                piece, n = [], 0
            piece.append(line)
            n += k
        if piece:
            pieces.append("".join(piece))
    return pieces


def one_step(model, forget, retain, scoring: str, compat: str, tokens: int) -> ul.PruneRun:
    config = ul.PruneConfig(
        mlp_frac=FRAC,
        attn_frac=0.0,
        n_steps=1,
        scoring=scoring,
        ablation="zero",
        collect_tokens=tokens,
        eval_tokens=tokens,
        batch_size=16,
        compat=compat,
    )
    return ul.selective_prune(model, forget, retain, config, progress=False)


def compare(model, forget, retain, method: str, tokens: int) -> dict:
    textbook = one_step(model, forget, retain, method, "none", tokens)
    taker = one_step(model, forget, retain, method, "taker", tokens)
    n_mlp = textbook.dims.n_mlp
    # the reference's rows, both formulas, the same count: what the formulas and precision change
    stats = (taker.forget_stats, taker.retain_stats)
    on_rows = ul.score(*stats, scoring=method, mlp_eps=textbook.config.mlp_eps)
    same_count = ul.select(on_rows, mlp_frac=FRAC, compat="taker")
    rows_alone = ul.select(on_rows, mlp_frac=FRAC)  # textbook formulas and count, on the reference's rows
    attn = [ul.select(run.scores, mlp_frac=0.0, attn_frac=FRAC).attn for run in (textbook, taker)]
    return {
        "mlp_jaccard": jaccard(textbook.masks.mlp, taker.masks.mlp),
        "mlp_jaccard_rows_alone": jaccard(textbook.masks.mlp, rows_alone.mlp),
        "mlp_jaccard_same_rows": jaccard(same_count.mlp, taker.masks.mlp),
        "attn_jaccard": jaccard(*attn),
        "n_mlp": [textbook.masks.n_mlp, taker.masks.n_mlp],
        "expected_n_mlp": [round(FRAC * n_mlp), units_per_step(FRAC, n_mlp, "taker")],
        "tokens": [textbook.forget_stats.n_tokens, taker.forget_stats.n_tokens],
        "base": {m: [getattr(r.base, m).top1 for r in (textbook, taker)] for m in ("forget", "retain")},
        "step": {m: [getattr(r.final, m).top1 for r in (textbook, taker)] for m in ("forget", "retain")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=20_000, help="statistics and evaluation tokens per dataset")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = ul.load_model("demo", device="cpu")
    width = model.cfg.n_ctx
    forget, retain = (row_sized_pieces(ul.load_texts(f"demo:{n}"), model.tokenizer, width) for n in ("code", "prose"))
    print(f"{len(forget)} code and {len(retain)} prose pieces of at most {width} tokens")
    results = {m: compare(model, forget, retain, m, args.tokens) for m in METHODS}
    first = results[METHODS[0]]
    print(f"MLP neurons pruned in the step: {first['n_mlp'][0]} textbook (round), {first['n_mlp'][1]} taker (floor)")
    for dataset in ("forget", "retain"):
        base = first["base"][dataset]
        print(f"unpruned {dataset} top-1: {base[0]:.4f} on the textbook rows, {base[1]:.4f} on the taker rows")
    print()
    print(
        "| importance | MLP mask Jaccard, textbook vs taker | rows alone | formulas and precision alone "
        "| attention top 2 % Jaccard | forget top-1 after the step, textbook / taker "
        "| retain top-1 after the step, textbook / taker |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        f, t = r["step"]["forget"], r["step"]["retain"]
        print(
            f"| {method} | {r['mlp_jaccard']:.3f} | {r['mlp_jaccard_rows_alone']:.3f} "
            f"| {r['mlp_jaccard_same_rows']:.3f} | {r['attn_jaccard']:.3f} "
            f"| {f[0]:.4f} / {f[1]:.4f} | {t[0]:.4f} / {t[1]:.4f} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
