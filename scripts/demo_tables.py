"""Write the demo's result tables from a run directory, so that no page types them by hand.

Usage::

    python scripts/demo_tables.py RUN_DIR [--out docs/generated] [--readme README.md]
        [--sample "seed 1=RUN_DIR_1" --sample "seed 2=RUN_DIR_2"] [--outside]

RUN_DIR is the default run (``unlearn-lens prune --out RUN_DIR``). The script writes these
Markdown files into ``--out``:

* ``demo_summary.md``: the short table of the README (unpruned, selective, random seed 0)
  and one sentence on the random seeds;
* ``demo_result.md``: the full table of the demo page (every metric, both datasets);
* ``demo_seeds.md``: one line per random baseline seed;
* ``demo_samples.md``: one line per sample of the test files, the default run first, then
  each ``--sample`` (runs of ``unlearn-lens prune --seed N --shuffle-buffer 100``);
* with ``--outside``, ``demo_outside.md``: the run's masks on the sources the model never
  saw (``demo:code:outside``, ``demo:prose:outside``), which loads the demo model.

The documentation includes them (``{include}``); the README cannot include files, so the
script also rewrites every block of ``--readme`` that lies between
``<!-- generated: NAME -->`` and ``<!-- end generated -->`` with the file NAME. Since the
default run gives the same numbers on every run, ``tests/test_demo_run.py`` runs this script
on its run and asserts that the committed files and the README's block are what it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

import unlearn_lens as ul

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
HEADER = "<!-- Written by scripts/demo_tables.py from the demo runs (see docs/demo.md); do not edit by hand. -->\n"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _pct(value: float | None, digits: int = 0) -> str:
    return "not reached" if value is None else f"{100 * value:.{digits}f} %"


def _kept(run: ul.PruneRun, dataset: str, metric: str = "top1") -> float:
    base, final = getattr(run.base, dataset), getattr(run.final, dataset)
    return getattr(final, metric) / getattr(base, metric)


def _cell(run: ul.PruneRun, dataset: str, metric: str, *, bold: bool = False) -> str:
    value = getattr(getattr(run.final, dataset), metric)
    if metric == "loss":
        return f"{value:.2f}"
    kept = _pct(_kept(run, dataset, metric))
    return f"{value:.3f} ({f'**{kept}**' if bold else kept})"


def _headline(run: ul.PruneRun, *, bold: bool = False, code_level: bool = True) -> str:
    """Prose kept where code top-1 reaches 50 %; if never, where code ended (with ``code_level``)."""
    value = run.retain_at_forget(0.5)
    if value is None:
        return f"not reached (code at {_pct(_kept(run, 'forget'))})" if code_level else "not reached"
    return f"**{_pct(value, 1)}**" if bold else _pct(value, 1)


def _units(run: ul.PruneRun) -> tuple[str, str]:
    return _pct(run.final.n_mlp / run.dims.n_mlp, 1), _pct(run.final.n_attn / run.dims.n_attn, 1)


def _seed_span(seeds: list[ul.PruneRun], dataset: str) -> str:
    """The range of top-1 kept on ``dataset`` at the seeds' last steps, in whole percent."""
    kept = sorted(round(100 * _kept(r, dataset)) for r in seeds)
    return f"{kept[0]}–{kept[-1]} %" if kept[0] != kept[-1] else f"{kept[0]} %"


def _head(run: ul.PruneRun) -> list[str]:
    """The header of a table with the columns unpruned, selective and random seed 0."""
    n, seed = len(run.history) - 1, run.random_runs()[0].seed
    return [f"| | unpruned | selective ({n} steps) | random, same units per layer (seed {seed}) |", "|---|---|---|---|"]


def summary_table(run: ul.PruneRun) -> str:
    """The README's table: unpruned, selective and random seed 0, top-1 and the headline."""
    rnd = run.random_runs()[0]
    (mlp, attn), (rmlp, rattn) = _units(run), _units(rnd)
    rows = [
        *_head(run),
        f"| MLP / attention neurons pruned | 0 % / 0 % | {mlp} / {attn} | {rmlp} / {rattn} |",
        f"| code (forget) top-1 | {run.base.forget.top1:.3f} | {_cell(run, 'forget', 'top1', bold=True)} "
        f"| {_cell(rnd, 'forget', 'top1')} |",
        f"| prose (retain) top-1 | {run.base.retain.top1:.3f} | {_cell(run, 'retain', 'top1', bold=True)} "
        f"| {_cell(rnd, 'retain', 'top1')} |",
        f"| **prose top-1 kept where code top-1 reaches 50 %** | | {_headline(run, bold=True)} "
        f"| {_headline(rnd, code_level=False)} |",
    ]
    seeds = run.random_runs()
    names = ", ".join(str(r.seed) for r in seeds)
    sentence = (
        f"Random pruning of as many units in each layer takes code only to {_seed_span(seeds, 'forget')} of its "
        f"unpruned top-1 (seeds {names}), and prose to {_seed_span(seeds, 'retain')}."
    )
    return "\n".join(rows) + "\n\n" + sentence + "\n"


def result_table(run: ul.PruneRun) -> str:
    """The demo page's table: every metric of both datasets, unpruned, selective and random seed 0."""
    rnd = run.random_runs()[0]
    (mlp, attn), (rmlp, rattn) = _units(run), _units(rnd)
    rows = [
        *_head(run),
        f"| MLP neurons pruned | 0 % | {mlp} | {rmlp} |",
        f"| attention neurons pruned | 0 % | {attn} | {rattn} |",
    ]
    for dataset, label in (("forget", "code"), ("retain", "prose")):
        base = getattr(run.base, dataset)
        rows += [
            _row(
                f"{label} ({dataset}) top-1",
                f"{base.top1:.3f}",
                _cell(run, dataset, "top1", bold=True),
                _cell(rnd, dataset, "top1"),
            ),
            _row(f"{label} top-{base.k}", f"{base.topk:.3f}", _cell(run, dataset, "topk"), _cell(rnd, dataset, "topk")),
            _row(f"{label} loss", f"{base.loss:.2f}", _cell(run, dataset, "loss"), _cell(rnd, dataset, "loss")),
        ]
    rows += [
        f"| **prose top-1 kept where code top-1 reaches 50 %** | | {_headline(run, bold=True)} | {_headline(rnd)} |",
        f"| separability area (closed from the last step; depends on the stop) | | "
        f"{run.separability_area():.3f} | {rnd.separability_area():.3f} |",
    ]
    return "\n".join(rows) + "\n"


def seeds_table(run: ul.PruneRun) -> str:
    """One line per random baseline seed: where code ended, the prose kept there, the headline and the area."""
    rows = [
        _row(
            "random baseline seed",
            "code top-1 at its last step",
            "prose top-1 kept there",
            "prose kept at code 50 %",
            "area",
        ),
        "|---|---|---|---|---|",
    ]
    seeds = run.random_runs()
    for r in seeds:
        rows.append(
            f"| {r.seed} | {_pct(_kept(r, 'forget'))} | {_pct(_kept(r, 'retain'), 1)} "
            f"| {_pct(r.retain_at_forget(0.5), 1)} | {r.separability_area():.3f} |"
        )
    return "\n".join(rows) + "\n"


def sample_row(label: str, run: ul.PruneRun) -> str:
    """One line of the samples table: a run of the demo on one sample of the test files, with its random seeds."""
    seeds = run.random_runs()
    reached = [r.retain_at_forget(0.5) for r in seeds]
    random_at = (
        f"not reached ({_seed_span(seeds, 'forget')})"
        if all(v is None for v in reached)
        else ", ".join(_pct(v, 1) for v in reached)
    )
    areas = sorted(r.separability_area() for r in seeds)
    return _row(
        label,
        str(len(run.history) - 1),
        _pct(run.retain_at_forget(0.5), 1),
        random_at,
        f"{run.separability_area():.3f} ({areas[0]:.3f}–{areas[-1]:.3f})",
    )


def samples_table(samples: dict[str, ul.PruneRun]) -> str:
    """The samples table: one line per run of the demo on another sample of the test files."""
    rows = [
        _row(
            "sample",
            "selective steps",
            "prose kept at code 50 %",
            "random baselines: code top-1 at their last step",
            "separability area (random)",
        ),
        "|---|---|---|---|---|",
    ]
    return "\n".join(rows + [sample_row(label, run) for label, run in samples.items()]) + "\n"


def outside_top1(run: ul.PruneRun, model: object, max_tokens: int = 20_000) -> dict[str, dict[str, float]]:
    """Top-1 on the sources the model never saw (``demo:*:outside``), unpruned and under the run's masks.

    Each domain is cut into ``max_tokens`` tokens of 128-token rows, and evaluated unpruned,
    under the selective masks and under each random seed's masks (``"seed N"``), with the
    run's ablation. Returns ``{domain: {"unpruned" | "selective" | "seed N": top1}}``.
    """
    masks = {"unpruned": None, "selective": run.masks} | {f"seed {r.seed}": r.masks for r in run.random_runs()}
    out: dict[str, dict[str, float]] = {}
    for domain in ("code", "prose"):
        texts = ul.load_texts(f"demo:{domain}:outside")
        tokens = ul.tokenize_texts(model.tokenizer, texts, seq_len=128, max_tokens=max_tokens)
        out[domain] = {}
        for name, mask in masks.items():
            with contextlib.nullcontext() if mask is None else ul.pruned(model, mask, run.ablation):
                result = ul.evaluate(model, tokens, max_tokens=None, batch_size=16, progress=False)
            out[domain][name] = result.top1
    return out


def outside_table(top1: dict[str, dict[str, float]]) -> str:
    """The table of :func:`outside_top1`'s numbers: top-1 and its change, selective and every random seed."""

    def change(values: dict[str, float], name: str) -> str:
        return f"{100 * (values[name] / values['unpruned'] - 1):+.0f} %".replace("-", "−")

    seeds = [name for name in next(iter(top1.values())) if name.startswith("seed ")]
    rows = [
        _row(
            "outside sources",
            "unpruned top-1",
            "selective masks",
            f"random masks, {seeds[0]} ({' / '.join(seeds[1:])})",
        ),
        "|---|---|---|---|",
    ]
    for domain, values in top1.items():
        rest = " / ".join(change(values, name) for name in seeds[1:])
        rows.append(
            _row(
                domain,
                f"{values['unpruned']:.3f}",
                f"{values['selective']:.3f} (**{change(values, 'selective')}**)",
                f"{values[seeds[0]]:.3f} ({change(values, seeds[0])}; {rest})",
            )
        )
    return "\n".join(rows) + "\n"


def tables(run: ul.PruneRun) -> dict[str, str]:
    """The generated files, by name, each with the header that says where it comes from."""
    if not run.random_runs():
        raise SystemExit("error: the run has no random baseline (run unlearn-lens prune without --no-baseline)")
    return {
        "demo_summary.md": HEADER + summary_table(run),
        "demo_result.md": HEADER + result_table(run),
        "demo_seeds.md": HEADER + seeds_table(run),
        "demo_samples.md": HEADER + samples_table({"default order (seed 0)": run}),
    }


def fill_blocks(text: str, files: dict[str, str]) -> str:
    """``text`` with every ``<!-- generated: NAME -->`` block holding ``files[NAME]`` (its header left out)."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in files:
            raise SystemExit(f"error: a generated block names {name!r}, which this script does not write")
        return match.group(1) + files[name].removeprefix(HEADER) + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the default run's directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "generated", help="where the tables go")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the file whose blocks are filled")
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="another sample of the test files (e.g. 'seed 1=runs/seed1'): a line of demo_samples.md",
    )
    parser.add_argument(
        "--outside", action="store_true", help="also evaluate the masks on demo:*:outside (demo_outside.md)"
    )
    args = parser.parse_args(argv)
    run = ul.PruneRun.load(args.run_dir)
    files = tables(run)
    if args.sample:
        samples = {"default order (seed 0)": run}
        for spec in args.sample:
            label, sep, path = spec.partition("=")
            if not sep:
                parser.error(f"--sample wants LABEL=RUN_DIR, got {spec!r}")
            samples[label] = ul.PruneRun.load(path)
        files["demo_samples.md"] = HEADER + samples_table(samples)
    if args.outside:
        files["demo_outside.md"] = HEADER + outside_table(outside_top1(run, ul.load_model("demo", device="cpu")))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    readme = args.readme.read_text()
    args.readme.write_text(fill_blocks(readme, files))
    print(f"wrote {', '.join(files)} to {args.out} and filled the blocks of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
