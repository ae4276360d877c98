"""Command line: ``unlearn-lens prune`` and ``unlearn-lens report``.

``unlearn-lens prune`` with no arguments runs the bundled demo offline: the demo
model, forget = Python code, retain = English prose, with settings sized to finish
in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from unlearn_lens.errors import UnlearnLensError

__all__ = ["DEMO_SETTINGS", "main", "write_run"]

logger = logging.getLogger("unlearn_lens")

# Settings of the default (demo) run; a flag given on the command line wins.
DEMO_SETTINGS: dict[str, Any] = {
    "ff_frac": 0.045,
    "attn_frac": 0.02,
    "n_steps": 11,
    "ablation": "mean",
    "collect_tokens": 20_000,
    "eval_tokens": 20_000,
    "batch_size": 16,
    "stop_at_forget_top1": 0.5,
}

_FLAG_TO_FIELD = {
    "ff_frac": "ff_frac",
    "attn_frac": "attn_frac",
    "steps": "n_steps",
    "scoring": "scoring",
    "ablation": "ablation",
    "collect_tokens": "collect_tokens",
    "eval_tokens": "eval_tokens",
    "seq_len": "seq_len",
    "batch_size": "batch_size",
    "seed": "seed",
    "stop_at": "stop_at_forget_top1",
    "per_layer": "per_layer",
    "heads": "heads",
    "skip_common": "skip_common",
    "topk": "topk",
}


def _parser() -> argparse.ArgumentParser:
    from unlearn_lens import __version__
    from unlearn_lens.scoring import SCORING_METHODS

    parser = argparse.ArgumentParser(
        prog="unlearn-lens",
        description="Machine unlearning by selective pruning on TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"unlearn_lens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prune",
        help="score and prune forget-specific units step by step, evaluate, write results",
        description="Iterative selective pruning. With no arguments: the bundled demo model, "
        "forget = demo:code, retain = demo:prose, offline.",
    )
    p.add_argument("--model", default="demo", help="'demo' (default), a local HF model directory, or a Hub id")
    p.add_argument("--forget", default="demo:code", help="forget dataset: demo:code, a local file/folder, or a Hub id")
    p.add_argument("--retain", default="demo:prose", help="retain dataset (same forms as --forget)")
    p.add_argument("--text-field", default="text", help="text column of the datasets (default: text)")
    p.add_argument("--forget-field", help="text column of the forget dataset (default: --text-field)")
    p.add_argument("--retain-field", help="text column of the retain dataset (default: --text-field)")
    p.add_argument("--split", default="train", help="dataset split for Hub datasets (default: train)")
    p.add_argument("--ff-frac", type=float, help="fraction of all MLP neurons pruned per step (default 0.02; demo 0.045)")
    p.add_argument("--attn-frac", type=float, help="fraction of all attention neurons pruned per step (default 0; demo 0.02)")
    p.add_argument("--steps", type=int, help="maximum pruning steps (default 10; demo 11)")
    p.add_argument("--scoring", choices=SCORING_METHODS, help="scoring method (default abs)")
    p.add_argument("--ablation", choices=("zero", "mean"), help="replace pruned units by 0 or their retain mean (default zero; demo mean)")
    p.add_argument("--collect-tokens", type=int, help="tokens per dataset for statistics (default 100000; demo 20000)")
    p.add_argument("--eval-tokens", type=int, help="tokens per dataset for evaluation (default 100000; demo 20000)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default: the model's context, at most 256)")
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default 8; demo 16)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--stop-at", type=float,
                   help="stop once forget top-1 falls to this fraction of its unpruned value (demo 0.5)")
    p.add_argument("--per-layer", action="store_true", default=None, help="select within each layer, not globally")
    p.add_argument("--heads", action="store_true", default=None, help="prune whole attention heads")
    p.add_argument("--skip-common", type=int, help="leave the N most common tokens out of evaluation")
    p.add_argument("--topk", type=int, help="k of top-k accuracy (default 10)")
    p.add_argument("--baseline", choices=("random", "none"), default="random",
                   help="also run the random baseline with the same per-layer counts (default random)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", help="model dtype: float32 (default), bfloat16, float16")
    p.add_argument("--out", help="output directory (default: unlearn_lens_runs/<model>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not write report.html into the output directory")

    r = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html (figures, summary, neuron cards) from a finished prune run",
        description="Rebuild the self-contained HTML report of a run directory written by `unlearn-lens prune`. "
        "Neuron cards need the model: by default the one named in results.json is loaded; if it cannot be "
        "loaded the report says so.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `unlearn-lens prune`")
    r.add_argument("--model", help="model for the neuron cards (default: the one named in results.json)")
    r.add_argument("--device", help="device for the model (default: cuda if available)")
    r.add_argument("--no-cards", action="store_true", help="no neuron cards (does not load the model)")

    return parser


def _config_from_args(args: argparse.Namespace) -> Any:
    from unlearn_lens.pipeline import PruneConfig

    settings: dict[str, Any] = dict(DEMO_SETTINGS) if args.model == "demo" else {}
    for flag, name in _FLAG_TO_FIELD.items():
        value = getattr(args, flag)
        if value is not None:
            settings[name] = value
    return PruneConfig(**settings)


def write_run(out: Path, runs: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the outputs of a prune command into ``out`` (each file atomically, results.json last)."""
    from unlearn_lens._io import write_json
    from unlearn_lens.scoring import save_scores

    out.mkdir(parents=True, exist_ok=True)
    selective = runs["selective"]
    selective.masks.save(out / "masks.safetensors", meta={"kind": "selective", "model": selective.model})
    if "random" in runs:
        runs["random"].masks.save(out / "random_masks.safetensors", meta={"kind": "random"})
    if selective.forget_stats is not None and selective.retain_stats is not None:
        selective.forget_stats.save(out / "forget_stats.safetensors")
        selective.retain_stats.save(out / "retain_stats.safetensors")
    if selective.means is not None:
        selective.means.save(out / "means.safetensors")
    if selective.initial_scores is not None:
        save_scores(selective.initial_scores, out / "initial_scores.safetensors")
    if selective.scores is not None:
        save_scores(selective.scores, out / "scores.safetensors")
    results = {**extra, "runs": {name: run.to_dict() for name, run in runs.items()}}
    write_json(out / "results.json", results)


def summary_table(runs: dict[str, Any]) -> str:
    """A one-screen text table: unpruned vs each run's final step."""
    sel = runs["selective"]
    base = sel.base
    names = list(runs)
    rows: list[list[str]] = [["", "unpruned", *names]]

    def rel(value: float, ref: float) -> str:
        return f"{value:.4f} ({value / ref:.0%})" if ref else f"{value:.4f}"

    rows.append(["steps", "0", *[str(len(r.history) - 1) for r in runs.values()]])
    rows.append(["MLP units pruned", "0%", *[f"{r.summary()['frac_mlp']:.1%}" for r in runs.values()]])
    rows.append(["attention units pruned", "0%", *[f"{r.summary()['frac_attn']:.1%}" for r in runs.values()]])
    for dataset in ("forget", "retain"):
        for metric in ("top1", "topk", "loss"):
            b = getattr(getattr(base, dataset), metric)
            label = f"{dataset} {metric if metric != 'topk' else f'top{base.forget.k}'}"
            rows.append([label, f"{b:.4f}", *[rel(getattr(getattr(r.final, dataset), metric), b) for r in runs.values()]])
    rows.append(["separability area", "-", *[f"{r.separability_area():.3f}" for r in runs.values()]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cmd_prune(args: argparse.Namespace) -> int:
    from unlearn_lens import __version__
    from unlearn_lens.data import load_texts
    from unlearn_lens.models import load_model, model_dims
    from unlearn_lens.pipeline import selective_prune

    config = _config_from_args(args)
    progress = not args.quiet
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    forget_field = args.forget_field or args.text_field
    retain_field = args.retain_field or args.text_field
    forget = load_texts(args.forget, split=args.split, text_field=forget_field)
    retain = load_texts(args.retain, split=args.split, text_field=retain_field)
    runs = {"selective": selective_prune(model, forget, retain, config, progress=progress)}
    if args.baseline == "random":
        runs["random"] = selective_prune(model, forget, retain, config, baseline="random",
                                         reference=runs["selective"], progress=progress)
    out = Path(args.out) if args.out else Path("unlearn_lens_runs") / (
        f"{Path(str(args.model)).name or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}")
    extra = {
        "library": "unlearn_lens",
        "version": __version__,
        "model": str(args.model),
        "dims": model_dims(model).to_dict(),
        "forget": str(args.forget),
        "retain": str(args.retain),
        "forget_field": forget_field,
        "retain_field": retain_field,
        "split": args.split,
        "config": config.to_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    write_run(out, runs, extra)
    print(summary_table(runs))
    print(f"results: {out / 'results.json'}  ({time.time() - t0:.0f}s)")
    if not args.no_report:
        from unlearn_lens.report import write_report

        report = write_report(out, runs=runs, model=model, forget_texts=forget, retain_texts=retain, info=extra)
        print(f"report: {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from unlearn_lens.report import write_report

    report = write_report(args.run_dir, model=args.model, load_model_from_results=not args.no_cards,
                          n_cards=0 if args.no_cards else 4, device=args.device)
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unlearn-lens``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "report":
            return _cmd_report(args)
        return _cmd_prune(args)
    except UnlearnLensError as exc:
        print(f"unlearn-lens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearn-lens: interrupted; no partial output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
