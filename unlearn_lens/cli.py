"""Command line: ``unlearn-lens prune``, ``sweep``, ``check``, ``report``, ``dashboards`` and ``serve``.

``unlearn-lens prune`` with no arguments runs the bundled demo offline: the demo
model, forget = Python code, retain = English prose, with settings sized to finish
in a few minutes on a laptop CPU. Flags carry the names of the
:class:`~unlearn_lens.results.PruneConfig` fields (``--mlp-frac`` is ``mlp_frac``);
this module only parses arguments and calls the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from unlearn_lens._io import check_output_dir
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.report.tables import summary_table_text, sweep_table

__all__ = ["DEMO_SETTINGS", "main", "summary_table_text"]

logger = logging.getLogger("unlearn_lens")

# Settings of the default (demo) run; a flag given on the command line wins.
# Chosen on the demo's validation split by scripts/tune_demo.py; the README reports the test split.
DEMO_SETTINGS: dict[str, Any] = {
    "mlp_frac": 0.06,
    "attn_frac": 0.06,
    "n_steps": 8,
    "ablation": "mean",
    "collect_tokens": 20_000,
    "eval_tokens": 20_000,
    "batch_size": 16,
    "stop_at_forget": 0.5,
}

# Random baselines of the default (demo) run, one per seed (seed, seed + 1, ...): a band, not one draw.
DEMO_BASELINE_SEEDS = 3

# Seconds a rank of a torchrun job waits for the others before it gives up (gloo's own default is 30 minutes).
DIST_TIMEOUT = 600.0

# Older flag spellings, still accepted: alias -> field.

_HELP = {
    "mlp_frac": "fraction of all MLP neurons pruned per step (default 0.02; demo 0.06)",
    "attn_frac": "fraction of all attention neurons (or heads, with --heads) pruned per step (default 0; demo 0.06)",
    "n_steps": "maximum pruning steps (default 10; demo 8)",
    "scoring": "scoring method of both unit kinds (default abs)",
    "mlp_scoring": "scoring method of MLP neurons (default: --scoring)",
    "attn_scoring": "scoring method of attention neurons (default: --scoring)",
    "ablation": "pruned units read 0 (zero), their retain mean (mean), their retain mode (peak), or their value at "
    "a random retain token (resample) (default zero; demo mean)",
    "mlp_ablation": "ablation of MLP neurons (default: --ablation)",
    "attn_ablation": "ablation of attention neurons (default: --ablation)",
    "peak_bins": "histogram bins per unit for peak ablation (default 64)",
    "resample_tokens": "retain tokens kept for resample ablation (default 1024)",
    "collect_tokens": "tokens per dataset for statistics, each step (default 100000; demo 20000)",
    "eval_tokens": "tokens per dataset for evaluation, apart from the statistics tokens (default 100000; demo 20000)",
    "seq_len": "tokens per row (default: the model's context, at most 256)",
    "batch_size": "rows per forward pass (default 8; demo 16)",
    "seed": "random seed ('rand' scoring, the random baseline; default 0)",
    "stop_at_forget": "stop once forget top-1 falls to this fraction of its unpruned value (demo 0.5)",
    "per_layer": "select within each layer, not globally",
    "heads": "prune whole attention heads",
    "head_agg": "how neuron scores make a head score: mean or median (default mean)",
    "mlp_eps": "offset of the MLP score denominator (default 1e-3)",
    "attn_eps": "offset of the attention score denominator (default 1e-4)",
    "topk": "k of top-k accuracy (default 10)",
    "skip_common": "leave the N most common target tokens out of evaluation (default 0)",
    "compat": "none (default): this package's textbook statistics and selection; taker: the reference "
    "implementation's rows, std/rms, dtype, units per step and head aggregation, to reproduce the paper's numbers",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``prune`` and ``sweep`` share: model, data, every PruneConfig field, device, output."""
    from unlearn_lens.ablations import ABLATIONS
    from unlearn_lens.compat import COMPAT_MODES
    from unlearn_lens.results import PruneConfig
    from unlearn_lens.scoring import HEAD_AGGREGATIONS, SCORING_METHODS

    p.add_argument("--model", default="demo", help="'demo' (default), a local HF model directory, or a Hub id")
    p.add_argument(
        "--forget",
        nargs="+",
        default=["demo:code"],
        metavar="SRC",
        help="forget dataset: demo:code, a local file/folder, or a Hub id; several are mixed by token share",
    )
    p.add_argument(
        "--retain", nargs="+", default=["demo:prose"], metavar="SRC", help="retain dataset (same forms as --forget)"
    )
    p.add_argument(
        "--forget-shares",
        nargs="+",
        type=float,
        metavar="W",
        help="token share of each --forget source, in order (default: equal shares)",
    )
    p.add_argument(
        "--retain-shares",
        nargs="+",
        type=float,
        metavar="W",
        help="token share of each --retain source, in order (default: equal shares)",
    )
    p.add_argument("--text-field", default="text", help="text column of the datasets (default: text)")
    p.add_argument("--forget-field", help="text column of the forget dataset (default: --text-field)")
    p.add_argument("--retain-field", help="text column of the retain dataset (default: --text-field)")
    p.add_argument("--split", default="train", help="dataset split for Hub datasets (default: train)")
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=0,
        metavar="N",
        help="read each dataset in a random order (seeded by --seed) through a buffer of N texts; "
        "0 keeps the source's order (default 0)",
    )
    choices = {"scoring": SCORING_METHODS, "ablation": ABLATIONS, "head_agg": HEAD_AGGREGATIONS, "compat": COMPAT_MODES}
    for f in fields(PruneConfig):
        names = [_flag(f.name)]
        kind = f.name.split("_", 1)[-1] if f.name.startswith(("mlp_", "attn_")) else f.name
        if f.type in ("bool",):
            p.add_argument(*names, dest=f.name, action="store_true", default=None, help=_HELP[f.name])
            continue
        convert = float if "float" in str(f.type) else int
        if kind in choices:
            p.add_argument(*names, dest=f.name, choices=choices[kind], help=_HELP[f.name])
        else:
            p.add_argument(*names, dest=f.name, type=convert, help=_HELP[f.name])
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--device-map",
        type=_device_map,
        metavar="MAP",
        help="spread a model too large for one device: auto, balanced, or a JSON object of module names "
        'to devices ({"model.layers.0": "cuda:0", ...}); instead of --device',
    )
    p.add_argument("--dtype", help="model dtype: float32 (default), bfloat16, float16")
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=DIST_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others (in joining and in every collective) "
        f"before it stops with an error (default {DIST_TIMEOUT:g})",
    )
    p.add_argument(
        "--out", help="output directory, which must not exist yet (default: unlearn_lens_runs/<model>-<time>)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out directory (whole, and only once the new one is complete)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


_TRUST_SOURCES = (
    "read again the data sources of a run directory that records no checksum of its tokens (written by "
    "unlearn_lens 0.2) without checking them; a checksum that differs is refused all the same"
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``unlearn-lens: error: ...``, like every other error.

    The exit status stays 2; ``--help`` is unchanged. Sub-commands' parsers are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unlearn-lens: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    from unlearn_lens._version import __version__
    from unlearn_lens.ablations import ABLATIONS
    from unlearn_lens.checks.sweep import DEFAULT_SCORINGS
    from unlearn_lens.scoring import SCORING_METHODS

    parser = _Parser(
        prog="unlearn-lens",
        allow_abbrev=False,
        description="Machine unlearning by selective pruning on TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"unlearn_lens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prune",
        allow_abbrev=False,  # a flag is spelt in full: no old spelling is taken as a prefix
        help="score and prune forget-specific units step by step, evaluate, write results",
        description="Iterative selective pruning and its random baseline. With no arguments: the bundled demo "
        "model, forget = demo:code, retain = demo:prose, offline.",
    )
    _add_run_flags(p)
    p.add_argument(
        "--baseline",
        choices=("random", "none"),
        default="random",
        help="also run the random baseline with the same per-layer counts (default random)",
    )
    p.add_argument(
        "--baseline-seeds",
        type=int,
        metavar="N",
        help="random baselines to run, seeded --seed, --seed + 1, ...; the report and figures show them as "
        f"a band (default 1; demo {DEMO_BASELINE_SEEDS})",
    )
    p.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue an interrupted run from its checkpoint (OUT.partial, written after every step); "
        "its model, data and settings are the checkpoint's, other settings are ignored",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html into the output directory")
    p.add_argument("--no-explorer", action="store_true", help="leave the neuron explorer out of the report")
    _add_dashboard_flags(p)

    w = sub.add_parser(
        "sweep",
        allow_abbrev=False,  # a flag is spelt in full: no old spelling is taken as a prefix
        help="the selective loop for every ablation x scoring method, on the same tokens; one table and figure",
        description="Run selective pruning once per cell of a grid of ablations and scoring methods, every cell "
        "on the same statistics and evaluation tokens, and write one directory: sweep.json (the comparison "
        "table), cells/<ablation>-<scoring>/ (each cell's run) and report.html. The other flags are those of "
        "`prune`; with no arguments, the demo.",
    )
    _add_run_flags(w)
    w.add_argument(
        "--ablations",
        nargs="+",
        default=list(ABLATIONS),
        choices=ABLATIONS,
        metavar="A",
        help=f"ablations to compare (default: all of {', '.join(ABLATIONS)})",
    )
    w.add_argument(
        "--scorings",
        nargs="+",
        default=list(DEFAULT_SCORINGS),
        choices=SCORING_METHODS,
        metavar="S",
        help=f"scoring methods to compare (default: {' '.join(DEFAULT_SCORINGS)})",
    )
    w.add_argument(
        "--baseline",
        choices=("random", "none"),
        default="none",
        help="also run each cell's random baseline (default none: it doubles the cost)",
    )
    w.add_argument("--no-report", action="store_true", help="do not write report.html")

    c = sub.add_parser(
        "check",
        allow_abbrev=False,  # a flag is spelt in full: no old spelling is taken as a prefix
        help="does the capability come back? relearning and membership checks of a finished run",
        description="Fine-tune copies of the model (selective masks, random masks, none) on forget text the run "
        "never used and follow forget top-1; score membership (LOSS, zlib, Min-K %%) of the model's training "
        "texts before and after pruning; with --overlap, compare the pruned units with other runs'. Writes "
        "RUN_DIR/checks.json and rebuilds the report.",
    )
    c.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `unlearn-lens prune`")
    c.add_argument("--model", help="the model (default: the one named in results.json)")
    c.add_argument("--device", help="device for the model (default: cuda if available)")
    c.add_argument("--relearn-steps", type=int, default=20, help="fine-tuning steps (default 20)")
    c.add_argument("--relearn-lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    c.add_argument("--relearn-batch-size", type=int, default=8, help="rows per fine-tuning step (default 8)")
    c.add_argument("--no-relearn", action="store_true", help="skip the relearning check")
    for domain in ("forget", "retain"):
        c.add_argument(
            f"--{domain}-members",
            metavar="SRC",
            help=f"{domain}-domain texts the model was trained on (default for the demo model: its training split)",
        )
        c.add_argument(f"--{domain}-nonmembers", metavar="SRC", help=f"{domain}-domain texts it was not trained on")
    c.add_argument("--n-texts", type=int, default=100, help="texts per side of the membership check (default 100)")
    c.add_argument(
        "--overlap",
        nargs="+",
        metavar="NAME=RUN_DIR",
        help="other runs (e.g. other forget sets against "
        "the same retain set) to compare the pruned units with: Jaccard overlap beside random masks",
    )
    c.add_argument(
        "--overlap-init",
        action="store_true",
        help="also repeat the runs on a randomly initialised copy of the model, as a control of the overlap",
    )
    c.add_argument("--no-report", action="store_true", help="do not rebuild report.html")
    c.add_argument("--trust-sources", action="store_true", help=_TRUST_SOURCES)
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser(
        "report",
        allow_abbrev=False,  # a flag is spelt in full: no old spelling is taken as a prefix
        help="write RUN_DIR/report.html (figures, summary, neuron cards) from a finished prune run",
        description="Rebuild the self-contained HTML report of a run directory written by `unlearn-lens prune`. "
        "Neuron cards need the model: by default the one named in results.json is loaded; if it cannot be "
        "loaded the report says so.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `unlearn-lens prune`")
    r.add_argument("--model", help="model for the neuron cards (default: the one named in results.json)")
    r.add_argument("--device", help="device for the model (default: cuda if available)")
    r.add_argument("--no-cards", action="store_true", help="no neuron cards or explorer (does not load the model)")
    r.add_argument("--no-explorer", action="store_true", help="leave the neuron explorer out")
    _add_dashboard_flags(r)
    r.add_argument("--trust-sources", action="store_true", help=_TRUST_SOURCES)
    _add_dashboard_commands(sub)
    return parser


def _device_map(value: str) -> str | dict[str, Any]:
    """``--device-map``: a strategy name, or a JSON object of module names to devices."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a strategy name or a JSON object")
    return parsed


def _config_from_args(args: argparse.Namespace) -> Any:
    from unlearn_lens.results import PruneConfig

    settings: dict[str, Any] = dict(DEMO_SETTINGS) if args.model == "demo" else {}
    for f in fields(PruneConfig):
        value = getattr(args, f.name)
        if value is not None:
            settings[f.name] = value
    return PruneConfig(**settings)


# What a command leaves once its main output is complete and only report.html is still to come.
_SAVED = {
    "prune": "the results in {out} are complete, report.html was not written "
    "(rebuild it with `unlearn-lens report {out}`)",
    "sweep": "the sweep in {out} is complete (sweep.json and cells/), report.html was not written (no command "
    "rebuilds it: in Python, unlearn_lens.report.sweep.write_sweep_report({quoted}) writes it and "
    "unlearn_lens.checks.sweep.Sweep.load({quoted}) reads the sweep)",
    "check": "checks.json was written to {out}, report.html was not rebuilt "
    "(rebuild it with `unlearn-lens report {out}`)",
}


class _Progress:
    """What a command has written so far, for its last line after an interruption or a failure.

    The command records each output the moment it is complete: ``checkpoint`` (prune, on
    rank 0), ``saved`` (the run or sweep directory, or ``checks.json``; report.html is still
    to come), and, on a rank other than 0, ``rank`` and the checkpoint rank 0 keeps.
    """

    def __init__(self, command: str = "prune") -> None:
        self.command = command
        self.checkpoint: Path | None = None
        self.saved: Path | None = None
        self.rank = 0
        self.rank0_checkpoint: Path | None = None

    def left(self) -> str | None:
        """What is on disk, in words; None if nothing (a checkpoint that recorded no step is removed)."""
        if self.rank:
            ckpt = self.rank0_checkpoint
            return f"rank {self.rank} writes nothing: rank 0 alone writes" + (
                f", and keeps the run so far in {ckpt} once step 0 is recorded (continue it with "
                f"`unlearn-lens prune --resume {ckpt}`)"
                if ckpt is not None
                else ""
            )
        if self.saved is not None:
            return _SAVED[self.command].format(out=self.saved, quoted=repr(str(self.saved)))
        ckpt = self.checkpoint
        if ckpt is not None and (ckpt / "checkpoint.json").is_file():
            step = json.loads((ckpt / "checkpoint.json").read_text())["step"]
            return (
                f"the run so far (up to step {step}) is in {ckpt}: continue it with "
                f"`unlearn-lens prune --resume {ckpt}`"
            )
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)  # not even step 0 was recorded
        return None

    def ending(self, exc: BaseException) -> tuple[str, int]:
        """The last line and the exit status after ``exc``: an interruption, a user error or a failed write."""
        if isinstance(exc, (KeyboardInterrupt, _Terminated)):
            how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
            during = " while writing the report" if self.saved is not None and not self.rank else ""
            return f"unlearn-lens: {how}{during}; {self.left() or 'nothing was written'}", (
                130 if isinstance(exc, KeyboardInterrupt) else 143
            )
        if isinstance(exc, OSError):  # a full disk, a file that cannot be written: what is left always counts
            problem = exc.strerror or str(exc) or type(exc).__name__
            problem += f" ({exc.filename})" if exc.filename else ""
            return f"unlearn-lens: error: {problem}; {self.left() or 'nothing was written'}", 2
        left = self.left()
        return "unlearn-lens: error: " + " ".join(str(exc).splitlines()) + (f"; {left}" if left else ""), 2


def _load_data(args: argparse.Namespace, model: Any, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The forget and retain tokens of the run (only what the budgets need is read) and where they came from."""
    from unlearn_lens.data import mix_token_sets
    from unlearn_lens.sources import iter_texts

    if args.shuffle_buffer < 0:
        raise UnlearnLensError(f"--shuffle-buffer must be 0 or more, got {args.shuffle_buffer}")
    info: dict[str, Any] = {
        "model": str(args.model),
        "split": args.split,
        "shuffle_seed": config.seed if args.shuffle_buffer else None,
        "shuffle_buffer": args.shuffle_buffer or None,
    }
    data = {}
    for key in ("forget", "retain"):
        sources, shares = getattr(args, key), getattr(args, f"{key}_shares")
        info[key] = sources[0] if len(sources) == 1 else sources
        info[f"{key}_shares"] = shares
        info[f"{key}_field"] = getattr(args, f"{key}_field") or args.text_field
        streams = [
            iter_texts(
                src,
                split=args.split,
                text_field=info[f"{key}_field"],
                shuffle_seed=info["shuffle_seed"],
                buffer_size=max(args.shuffle_buffer, 1),
            )
            for src in sources
        ]
        data[key] = mix_token_sets(
            model,
            streams,
            shares,
            [config.collect_tokens, config.eval_tokens],
            seq_len=config.seq_len,
            compat=config.compat,
        )
        for what, counts in (
            ("texts", [s.reader.n_texts for s in streams]),
            ("rows", [s.reader.n_rows for s in streams]),
        ):
            info[f"{key}_{what}_read"] = counts if len(counts) > 1 else counts[0]
        info[f"{key}_tokens"] = data[key].n_tokens
    return data, info


def _prune_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checkpoint directory and the output directory of a prune command."""
    if args.resume:
        ckpt = Path(args.resume)
        return ckpt, Path(args.out) if args.out else ckpt.with_name(ckpt.name.removesuffix(".partial"))
    out = (
        Path(args.out)
        if args.out
        else Path("unlearn_lens_runs") / (f"{Path(str(args.model)).name or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    return out.with_name(out.name + ".partial"), out


def _resumed_source(ckpt: Path) -> tuple[str, dict[str, Any]]:
    """The model a checkpoint names, and the settings of the command that it keeps."""
    from unlearn_lens.checkpoint import read_checkpoint_settings
    from unlearn_lens.results import PruneRun

    if not (ckpt / "checkpoint.json").is_file():
        raise UnlearnLensError(f"{str(ckpt)!r} is not a checkpoint of `unlearn-lens prune` (no checkpoint.json)")
    model_source = PruneRun.load(ckpt / "run").info.get("model")
    if not model_source:
        raise UnlearnLensError(f"checkpoint {str(ckpt)!r} does not name its model")
    return model_source, read_checkpoint_settings(ckpt) or {}


def _check_no_checkpoint(ckpt: Path) -> None:
    """A new run's checkpoint directory may exist only empty (left by a run stopped before step 0)."""
    if (ckpt / "checkpoint.json").is_file():
        raise UnlearnLensError(
            f"a checkpoint of an earlier run is in {str(ckpt)!r}: continue it with "
            f"`unlearn-lens prune --resume {ckpt}`, or remove it"
        )
    if ckpt.exists() and not (ckpt.is_dir() and not any(ckpt.iterdir())):
        raise UnlearnLensError(
            f"{str(ckpt)!r}, where this run keeps its checkpoint, exists and is not a checkpoint (no "
            "checkpoint.json): remove it, or choose another --out"
        )


def _baselines(args: argparse.Namespace, model_source: str, kept: dict[str, Any]) -> tuple[str, int]:
    """The random baselines to run after the loop: those a resumed checkpoint keeps, else the flags'."""
    if kept.get("baseline") in ("random", "none") and isinstance(kept.get("baseline_seeds"), int):
        return kept["baseline"], kept["baseline_seeds"]
    if args.baseline_seeds is not None and (args.baseline_seeds < 1 or args.baseline == "none"):
        raise UnlearnLensError(
            f"--baseline-seeds must be at least 1, with --baseline random; got {args.baseline_seeds}"
            f" with --baseline {args.baseline}"
        )
    return args.baseline, args.baseline_seeds or (DEMO_BASELINE_SEEDS if model_source == "demo" else 1)


def _cmd_prune(args: argparse.Namespace, progress_state: _Progress) -> int:
    from unlearn_lens.checkpoint import checkpoint_lock

    ckpt, out = _prune_paths(args)
    model_source, kept = _resumed_source(ckpt) if args.resume else (args.model, {})
    check_output_dir(out, overwrite=args.overwrite)  # a bad path fails before anything is created
    with checkpoint_lock(ckpt):  # one process at a time writes a checkpoint (and its output directory)
        if not args.resume:
            _check_no_checkpoint(ckpt)
        return _prune(args, progress_state, ckpt, out, model_source, kept)


def _prune(
    args: argparse.Namespace,
    progress_state: _Progress,
    ckpt: Path,
    out: Path,
    model_source: str,
    kept: dict[str, Any],
) -> int:
    from unlearn_lens.checkpoint import checkpoint_tokens
    from unlearn_lens.distributed import is_main, local, world
    from unlearn_lens.evaluate import check_topk
    from unlearn_lens.models import load_model
    from unlearn_lens.pipeline import random_baseline, selective_prune

    baseline, n_seeds = _baselines(args, model_source, kept)
    progress = not args.quiet
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    t0 = time.time()
    model = load_model(model_source, device=args.device, dtype=args.dtype, device_map=args.device_map)
    if args.resume:
        forget, retain = checkpoint_tokens(ckpt, model=model)  # checked before any work
        config, info = None, None
    else:
        config = _config_from_args(args)
        check_topk(model, config.topk)
        data, info = _load_data(args, model, config)
        forget, retain = data["forget"], data["retain"]
    if is_main():  # under torchrun, rank 0 alone writes (and cleans up)
        progress_state.checkpoint = ckpt
    else:
        progress_state.rank, progress_state.rank0_checkpoint = world()[0], ckpt
    settings = {"baseline": baseline, "baseline_seeds": n_seeds}  # kept in the checkpoint for --resume
    run = selective_prune(
        model, forget, retain, config, progress=progress, checkpoint=ckpt, info=info, checkpoint_settings=settings
    )
    if baseline == "random":
        baselines = [
            random_baseline(model, forget, retain, run, seed=run.config.seed + i, progress=progress)
            for i in range(n_seeds)
        ]
        run.baseline, run.baselines = baselines[0], baselines[1:]
    if not is_main():
        return 0
    run.save(out, overwrite=args.overwrite)
    progress_state.saved = out
    shutil.rmtree(ckpt, ignore_errors=True)
    print(summary_table_text(run))
    print(f"results: {out / 'results.json'}  ({time.time() - t0:.0f}s)")
    if not args.no_report:
        from unlearn_lens.report.html import write_report

        with local():  # the neuron cards run the model on rank 0 alone
            report = write_report(
                run,
                out,
                model=model,
                forget_texts=forget,
                retain_texts=retain,
                explorer=not args.no_explorer,
                **_dashboard_settings(args),
            )
        print(f"report: {report}")
    return 0


def _cmd_sweep(args: argparse.Namespace, state: _Progress) -> int:
    from unlearn_lens.checks.sweep import sweep
    from unlearn_lens.distributed import world
    from unlearn_lens.models import load_model
    from unlearn_lens.report.sweep import write_sweep_report

    state.rank = world()[0]  # under torchrun, rank 0 alone writes
    out = (
        Path(args.out)
        if args.out
        else Path("unlearn_lens_runs")
        / (f"sweep-{Path(str(args.model)).name or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    check_output_dir(out, overwrite=args.overwrite)
    config = _config_from_args(args)
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    data, info = _load_data(args, model, config)
    result = sweep(
        model,
        data["forget"],
        data["retain"],
        config,
        ablations=args.ablations,
        scorings=args.scorings,
        baseline=args.baseline == "random",
        progress=not args.quiet,
        info=info,
    )
    if state.rank:
        return 0
    result.save(out, overwrite=args.overwrite)
    state.saved = out
    print(sweep_table(result))
    print(f"sweep: {out / 'sweep.json'}  ({time.time() - t0:.0f}s)")
    if not args.no_report:
        print(f"report: {write_sweep_report(result, out)}")
    return 0


def _cmd_check(args: argparse.Namespace, state: _Progress) -> int:
    from unlearn_lens.checks.suite import DEMO_MEMBERS, run_checks
    from unlearn_lens.models import load_model
    from unlearn_lens.results import PruneRun

    run = PruneRun.load(args.run_dir)
    check_output_dir(args.run_dir, overwrite=True)  # checks.json and the report go there: fail before the work
    name = args.model or run.info.get("model") or run.model
    members = {d: (getattr(args, f"{d}_members"), getattr(args, f"{d}_nonmembers")) for d in ("forget", "retain")}
    for domain in [d for d, (a, b) in members.items() if (a is None) != (b is None)]:
        raise UnlearnLensError(f"--{domain}-members and --{domain}-nonmembers go together")
    members = {d: pair for d, pair in members.items() if pair[0] is not None}
    if not members and name == "demo":
        members = dict(DEMO_MEMBERS)
    others = {}
    for item in args.overlap or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise UnlearnLensError(f"--overlap takes NAME=RUN_DIR, got {item!r}")
        others[label] = PruneRun.load(path)
    model = load_model(name, device=args.device)
    checks = run_checks(
        model,
        run,
        relearn=not args.no_relearn,
        members=members or None,
        n_texts=args.n_texts,
        others=others or None,
        init_control=args.overlap_init,
        n_steps=args.relearn_steps,
        lr=args.relearn_lr,
        batch_size=args.relearn_batch_size,
        trust_sources=args.trust_sources,
        progress=not args.quiet,
    )
    print(f"checks: {checks.save(args.run_dir)}  ({checks.seconds:.0f}s)")
    state.saved = Path(args.run_dir)
    for label, curve in checks.relearn.items():
        print(f"relearn {label}: forget top1 " + " -> ".join(f"{v:.3f}" for v in curve.forget_top1))
    for domain, result in checks.membership.items():
        print(
            f"membership {domain}: AUC unpruned "
            + ", ".join(f"{k} {v:.3f}" for k, v in result["unpruned"].items())
            + "; pruned "
            + ", ".join(f"{k} {v:.3f}" for k, v in (result["pruned"] or {}).items())
        )
    if not args.no_report:
        from unlearn_lens.report.html import write_report

        print(f"report: {write_report(args.run_dir, model=model, trust_sources=args.trust_sources)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from unlearn_lens.report.html import write_report

    report = write_report(
        args.run_dir,
        model=args.model,
        load_model_from_results=not args.no_cards,
        n_cards=0 if args.no_cards else 4,
        device=args.device,
        explorer=not (args.no_cards or args.no_explorer),
        trust_sources=args.trust_sources,
        **_dashboard_settings(args),
    )
    print(f"report: {report}")
    return 0


def _megabytes(text: str) -> float:
    """A size in megabytes, 0 or more (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of megabytes: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more megabytes, got {text}")
    return value


def _add_dashboard_flags(p: argparse.ArgumentParser) -> None:
    """The report's unit dashboards: which units get one (``prune``, ``report``, ``serve``)."""
    p.add_argument(
        "--dashboard-top",
        type=int,
        default=200,
        metavar="N",
        help="give the N highest-scoring units a dashboard in the explorer, besides every pruned unit (default 200)",
    )
    p.add_argument(
        "--dashboard-units",
        nargs="+",
        default=[],
        metavar="UNIT",
        help="further units with a dashboard, such as L2.mlp.17 or L1.attn.H3.D5",
    )
    p.add_argument(
        "--dashboard-light-mb",
        type=_megabytes,
        default=8.0,
        metavar="MB",
        help="megabytes of the report the other units' light dashboards (histograms, logit effect, layer map; "
        "about 1 KB a unit) may take, highest score first; 0 for none (default 8)",
    )
    p.add_argument("--no-dashboards", action="store_true", help="no unit dashboards: explorer rows open cards")


def _dashboard_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The dashboard flags as ``write_report`` arguments."""
    return {
        "dashboards": not args.no_dashboards,
        "dashboard_top": args.dashboard_top,
        "dashboard_units": args.dashboard_units,
        "dashboard_light_mb": args.dashboard_light_mb,
    }


def _add_dashboard_commands(sub: Any) -> None:
    """``dashboards`` and ``serve``: the unit dashboards of a run directory, as JSON lines or served live."""
    from unlearn_lens.report.export import EXPORT_FORMATS

    d = sub.add_parser(
        "dashboards",
        allow_abbrev=False,
        help="write the unit dashboards of a finished run as JSON lines (one object per unit)",
        description="For each chosen unit of a run directory: activation histograms on forget and retain, top, "
        "bottom and quantile-band examples, direct logit effect, the effect of ablating it, and its place in the "
        "run, one JSON object per line (the layout is in docs/dashboards.md). Loads the model and texts the run names.",
    )
    d.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `unlearn-lens prune`")
    d.add_argument("--out", required=True, metavar="FILE.jsonl", help="the file to write")
    d.add_argument(
        "--units",
        default="pruned,top:200",
        metavar="SPEC",
        help="pruned, top:N (the N highest scores), all, or unit names such as L2.mlp.17 or L1.attn.H3.D5, "
        "comma-separated (default pruned,top:200)",
    )
    d.add_argument(
        "--format",
        dest="fmt",
        choices=EXPORT_FORMATS,
        default=EXPORT_FORMATS[0],
        help="unlearn_lens (default): one record per unit; neuronpedia: one SAEDashboard batch per layer and kind",
    )
    s = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve a run's report with a live panel: a unit's activations and the next-token top-5 on any text",
        description="Serve RUN_DIR's report, rebuilt with a live panel: type text, pick a unit, and see its "
        "activation on each token and the model's top-5 next tokens, unpruned beside pruned. Binds to "
        "127.0.0.1 unless --host says otherwise; Ctrl-C stops it.",
    )
    s.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `unlearn-lens prune`")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    _add_dashboard_flags(s)
    for p in (d, s):
        p.add_argument("--model", help="the model (default: the one named in results.json)")
        p.add_argument("--device", help="device for the model (default: cuda if available)")
        p.add_argument("--tokens", type=int, default=20_000, help="tokens of each dataset to scan (default 20000)")
        p.add_argument("--trust-sources", action="store_true", help=_TRUST_SOURCES)


def _cmd_dashboards(args: argparse.Namespace) -> int:
    from unlearn_lens.report.dashboards import DashboardConfig
    from unlearn_lens.report.export import export_dashboards

    path, n = export_dashboards(
        args.run_dir,
        args.out,
        units=args.units,
        fmt=args.fmt,
        model=args.model,
        device=args.device,
        config=DashboardConfig(max_tokens=args.tokens),
        trust_sources=args.trust_sources,
    )
    print(f"dashboards: {path} ({n} units, format {args.fmt})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from unlearn_lens.report.serve import serve_run

    serve_run(
        args.run_dir,
        host=args.host,
        port=args.port,
        model=args.model,
        device=args.device,
        tokens=args.tokens,
        trust_sources=args.trust_sources,
        announce=lambda url: print(f"serving {url} (Ctrl-C stops it)", flush=True),
        report=_dashboard_settings(args),
    )
    print("stopped", flush=True)
    return 0


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that partial outputs are cleaned up as after Ctrl-C."""


class _Stop:
    """The handler of SIGINT and SIGTERM: the first raises, and from then on the command is ending.

    Once the command ends (a signal, an error), later signals are ignored, so that a
    second Ctrl-C cannot cut the clean-up short or turn the last line into a traceback.
    """

    def __init__(self) -> None:
        self.ending = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.ending:
            return
        self.ending = True
        raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unlearn-lens``; returns the exit status."""
    own_process = argv is None  # the console script or `python -m unlearn_lens`: the process ends after this
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state = _Progress(args.command)
    stop = _Stop()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    from unlearn_lens.distributed import init_from_env

    joined = False
    try:
        if args.command in ("report", "check"):
            return _cmd_report(args) if args.command == "report" else _cmd_check(args, state)
        if args.command in ("dashboards", "serve"):
            return _cmd_dashboards(args) if args.command == "dashboards" else _cmd_serve(args)
        joined = init_from_env(args.device, args.dist_timeout)  # under torchrun: one process of a data-parallel run
        if args.command == "sweep":
            return _cmd_sweep(args, state)
        return _cmd_prune(args, state)
    except (UnlearnLensError, OSError, KeyboardInterrupt, _Terminated) as exc:
        stop.ending = True
        line, status = state.ending(exc)
        print(line, file=sys.stderr)  # one line
        return status
    finally:
        for signum, handler in previous.items():  # a process that ends now ignores them until it is gone
            signal.signal(signum, signal.SIG_IGN if own_process and stop.ending else handler)
        if joined:
            import torch

            torch.distributed.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
