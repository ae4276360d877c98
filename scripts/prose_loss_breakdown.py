"""Which retain tokens a run's pruning costs: English words, or code inside the prose?

The demo's retain set is the English of docstrings and comments, which quotes code:
doctest lines (``>>> f(1)``), identifiers (``os.path``, ``__init__``), literals. This
script takes a run directory, reads its retain evaluation tokens again from the
sources the run recorded, and scores every target token with the unpruned model, the
run's final masks and each random baseline's final masks (the run's ablations). Each
target token falls in one class:

* ``doctest``: on a line that starts with ``>>>`` or ``...`` (after indentation);
* ``word``: letters only (a leading space allowed), elsewhere;
* ``punctuation``: whitespace and ``.,;:!?'"()-`` only, elsewhere;
* ``code-like``: everything else (underscores, digits, dots inside names, brackets,
  operators, backticks, ...).

It prints, per class: the share of targets, top-1 unpruned and under each set of
masks, and the share of the lost top-1 hits that the class accounts for. The totals
equal the run's own evaluation of its last step (the same tokens, the same hooks).

A second table groups the same targets by how much their token belongs to the
forget side: the token's *forget share* is the fraction of its occurrences, over both
sides' evaluation targets, that are forget targets (a word used as much in code as in
prose has 0.5 when both sides have as many targets).

A third table follows the selective run step by step: the MLP neurons pruned at each
step, the median and minimum of their scores on the unpruned model
(``run.initial_scores``), and forget and retain top-1 kept after the step.

Usage::

    unlearn-lens prune --out RUN && python scripts/prose_loss_breakdown.py RUN [--side retain|forget]
"""

from __future__ import annotations

import argparse
import re

import torch

import unlearn_lens as ul
from unlearn_lens.checks.suite import run_token_sets

CLASSES = ("word", "punctuation", "code-like", "doctest")
_WORD = re.compile(r"^ ?[A-Za-z]+$")
_PUNCT = re.compile(r"^[\s.,;:!?'\"()\-]*$")


def classify(model, tokens: ul.TokenSet) -> torch.Tensor:
    """The class (an index into CLASSES) of every target ``[rows pos-1]``; -1 where not counted."""
    out = torch.full(tokens.tokens[:, 1:].shape, -1, dtype=torch.long)
    for r, row in enumerate(tokens.tokens.tolist()):
        pieces = [model.tokenizer.decode([t]) for t in row]
        text, starts = "", []
        for piece in pieces:
            starts.append(len(text))
            text += piece
        line_start = [0] * (len(text) + 1)
        for i in range(1, len(text) + 1):
            line_start[i] = i if text[i - 1] == "\n" else line_start[i - 1]
        for p in range(1, len(row)):
            if not tokens.valid[r, p]:
                continue
            start = starts[p]
            end = text.find("\n", start)
            line = text[line_start[start] : end if end >= 0 else len(text)].lstrip()
            piece = pieces[p]
            if line.startswith((">>>", "...")):
                cls = "doctest"
            elif _WORD.match(piece):
                cls = "word"
            elif _PUNCT.match(piece):
                cls = "punctuation"
            else:
                cls = "code-like"
            out[r, p - 1] = CLASSES.index(cls)
    return out


@torch.no_grad()
def hits(model, tokens: ul.TokenSet, batch_size: int) -> torch.Tensor:
    """Top-1 hit of every target ``[rows pos-1]`` (bool)."""
    out = []
    for start in range(0, len(tokens), batch_size):
        rows = tokens.tokens[start : start + batch_size]
        out.append((model(rows)[:, :-1].argmax(-1) == rows[:, 1:]).cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--side", choices=["retain", "forget"], default="retain")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    run = ul.PruneRun.load(args.run_dir)
    model = ul.load_model(run.model or "demo")
    data = run_token_sets(run, model)
    tokens = data[args.side][1]  # the run's evaluation tokens of that side
    cls = classify(model, tokens)
    counted = cls >= 0
    cfg = run.config
    results = {"unpruned": hits(model, tokens, args.batch_size)}
    for name, r in [("selective", run)] + [(f"random seed {b.seed}", b) for b in run.random_runs()]:
        with ul.pruned(model, r.masks, r.ablation, seed=cfg.seed):
            results[name] = hits(model, tokens, args.batch_size)

    n = int(counted.sum())
    print(f"{args.side} evaluation tokens of {args.run_dir}: {n:,} targets")
    for name, h in results.items():
        print(f"  top-1 {name:>14}: {float(h[counted].float().mean()):.4f}")
    names = list(results)[1:]
    table("class", [(c, cls == i) for i, c in enumerate(CLASSES)], results, counted, names)

    vocab = int(max(int(data[k][1].tokens.max()) for k in data)) + 1
    count = {
        k: torch.bincount(data[k][1].tokens[:, 1:][data[k][1].valid[:, 1:]], minlength=vocab).double() for k in data
    }
    share = count["forget"] / (count["forget"] + count["retain"])
    target_share = share[tokens.tokens[:, 1:]]
    edges = [0.0, 0.2, 0.4, 0.6, 1.0]
    groups = [
        (f"{lo:.1f}-{hi:.1f}", counted & (target_share >= lo) & ((target_share < hi) | (hi == 1.0)))
        for lo, hi in zip(edges[:-1], edges[1:])
    ]
    table("forget share of the token", groups, results, counted, names)

    if run.pruned_step is not None and run.initial_scores is not None:
        score, step = run.initial_scores.mlp.flatten().double(), run.pruned_step[0].flatten()
        forget, retain = run.relative_path()
        print()
        print(
            "| step | MLP neurons pruned at it | their initial score: median (min) | forget top-1 kept | "
            "retain top-1 kept |"
        )
        print("|---|---|---|---|---|")
        for k in range(1, len(forget)):
            sel = step == k
            cells = f"{float(score[sel].median()):.2f} ({float(score[sel].min()):.2f})" if sel.any() else "-"
            print(f"| {k} | {int(sel.sum())} | {cells} | {forget[k]:.1%} | {retain[k]:.1%} |")
        print(
            f"(MLP neurons with an initial score >= 2: {float((score >= 2).double().mean()):.1%}; >= 1.5: "
            f"{float((score >= 1.5).double().mean()):.1%})"
        )


def table(label: str, groups, results: dict[str, torch.Tensor], counted: torch.Tensor, names: list[str]) -> None:
    n = int(counted.sum())
    print()
    print(
        f"| {label} | share of targets | top-1 unpruned | "
        + " | ".join(f"top-1 {m} (kept)" for m in names)
        + " | "
        + " | ".join(f"share of lost hits, {m}" for m in names)
        + " |"
    )
    print("|---" * (3 + 2 * len(names)) + "|")
    base = results["unpruned"]
    for c, sel in groups:
        k = int(sel.sum())
        if k == 0:
            continue
        u = float(base[sel].float().mean())
        cells = [
            f"{float(results[m][sel].float().mean()):.3f} ({float(results[m][sel].float().mean()) / u:.0%})"
            for m in names
        ]
        lost = [
            (int(base[sel].sum()) - int(results[m][sel].sum()))
            / max(1, int(base[counted].sum()) - int(results[m][counted].sum()))
            for m in names
        ]
        print(
            f"| {c} | {k / n:.1%} | {u:.3f} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(f"{x:.0%}" for x in lost)
            + " |"
        )


if __name__ == "__main__":
    main()
