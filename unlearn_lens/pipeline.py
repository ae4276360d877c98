"""The iterative selective-pruning loop and its random baseline.

One step of the paper's loop (Pochinkov & Schoots 2024):

1. collect statistics on forget and retain with the model as pruned so far;
2. score every unit (forget importance over retain importance);
3. select ``mlp_frac`` of all MLP neurons and ``attn_frac`` of all attention
   neurons among those not yet pruned, and prune them;
4. evaluate on held-out forget and retain tokens (never the collection tokens).

Step 0 is the unpruned model. The loop stops after ``n_steps``, or once forget
top-1 falls to ``stop_at_forget`` times its unpruned value. With
``config.compat="taker"`` its rows, scores and units per step follow the reference
implementation's rules (:mod:`unlearn_lens.compat`).

:func:`random_baseline` prunes, at every step of a selective run, exactly as many
units in each layer as that run did, chosen uniformly at random, under the run's
own config (ablation, token budgets, row length): the control selective pruning
must beat; called once per seed (``seed=``), it gives the band that chance spans.
Both return a :class:`~unlearn_lens.results.PruneRun`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unlearn_lens.ablations import Ablation, collect_ablation_values
from unlearn_lens.checkpoint import TOKEN_SETS, checkpoint_lock, load_checkpoint, save_checkpoint
from unlearn_lens.compat import rules
from unlearn_lens.config import is_int
from unlearn_lens.data import TokenSet, as_token_sets
from unlearn_lens.distributed import shard, world
from unlearn_lens.errors import SourceCheckError, UnlearnLensError
from unlearn_lens.evaluate import EvalResult, check_topk, evaluate
from unlearn_lens.masks import Masks
from unlearn_lens.models import model_dims, model_fingerprint, model_label, model_name
from unlearn_lens.pruning import output_norms, pruned
from unlearn_lens.results import PruneConfig, PruneRun, StepRecord
from unlearn_lens.scoring import WEIGHT_METHODS, random_masks, score, select
from unlearn_lens.stats import ActivationStats, collect_stats

__all__ = [
    "TOKENS_SHA256",
    "random_baseline",
    "run_tokens",
    "selective_prune",
]

TOKENS_SHA256 = "tokens_sha256"
"""The key of ``PruneRun.info`` that records the checksum of every token budget a run used."""

logger = logging.getLogger(__name__)


@dataclass
class _Data:
    """Collection and held-out evaluation tokens of both datasets."""

    forget_collect: TokenSet
    forget_eval: TokenSet
    retain_collect: TokenSet
    retain_eval: TokenSet

    @classmethod
    def split(
        cls, model: Any, forget: Sequence[str] | TokenSet, retain: Sequence[str] | TokenSet, cfg: PruneConfig
    ) -> _Data:
        parts = []
        for name, texts in (("forget", forget), ("retain", retain)):
            collect, held = as_token_sets(
                model, texts, [cfg.collect_tokens, cfg.eval_tokens], seq_len=cfg.seq_len, compat=cfg.compat
            )
            if held.n_tokens == 0:
                raise _no_evaluation_tokens(name, collect, cfg)
            if held.n_tokens < cfg.eval_tokens:
                logger.warning(
                    "the %s dataset ran out: evaluation uses %s tokens, not eval_tokens=%s (statistics use %s)",
                    name,
                    f"{held.n_tokens:,}",
                    f"{cfg.eval_tokens:,}",
                    f"{collect.n_tokens:,}",
                )
            parts += [collect, held]
        return cls(*parts)

    def describe(self) -> dict[str, Any]:
        """Which texts gave the statistics and the evaluation tokens, and how many texts they share."""
        out: dict[str, Any] = {}
        for name in ("forget", "retain"):
            collect, held = getattr(self, f"{name}_collect"), getattr(self, f"{name}_eval")
            out[name] = {
                "statistics": collect.text_ranges(),
                "evaluation": held.text_ranges(),
                "shared_texts": _shared_texts(collect, held) if collect.spans and held.spans else None,
            }
        return out

    def checksums(self) -> dict[str, list[str]]:
        """Each token budget's checksum (:meth:`TokenSet.sha256`): ``{"forget": [statistics, evaluation], ...}``."""
        return {
            name: [getattr(self, f"{name}_{part}").sha256() for part in ("collect", "eval")]
            for name in ("forget", "retain")
        }

    def distribution(self) -> dict[str, Any]:
        """Under a process group: its size and the tokens each rank processes in every pass."""
        size = world()[1]
        if size == 1:
            return {}
        return {
            "distributed": {
                "world_size": size,
                "tokens_per_rank": {
                    name: [shard(getattr(self, name), r, size).n_tokens for r in range(size)] for name in TOKEN_SETS
                },
            }
        }


def _no_evaluation_tokens(name: str, collect: TokenSet, cfg: PruneConfig) -> UnlearnLensError:
    """The error for a dataset whose statistics budget took every token: it had too little text, or one text."""
    if rules(cfg.compat).text_per_row:
        return UnlearnLensError(
            f"the {name} dataset gives {collect.n_tokens:,} tokens, all taken for statistics "
            f"(collect_tokens={cfg.collect_tokens:,}): under compat={cfg.compat!r} each text is one row of at most "
            "seq_len tokens, and the rest of a longer text is not read (as in the reference implementation); give "
            "more texts, cut long texts into pieces, or lower collect_tokens"
        )
    last = collect.spans[-1] if collect.spans else None
    if last is not None and last.truncated:  # the text the statistics ended in goes on, and no other follows
        return UnlearnLensError(
            f"the {name} dataset ends with text {last.first + len(last.ends) - 1} of {last.source!r}, whose first "
            f"part the statistics took (collect_tokens={cfg.collect_tokens:,}): one text cannot feed both budgets, "
            "since the loop takes statistics and evaluation tokens from separate texts (evaluation is held out); "
            "split it into several texts (files, lines of a .jsonl) or add texts"
        )
    return UnlearnLensError(
        f"the {name} dataset has {collect.n_tokens:,} tokens, all taken for statistics "
        f"(collect_tokens={cfg.collect_tokens:,}); evaluation needs tokens apart from them: "
        "give more text or lower collect_tokens"
    )


def _shared_texts(a: TokenSet, b: TokenSet) -> int:
    """How many texts (same source, same index) lend tokens to both ``a`` and ``b``."""

    def texts(tokens: TokenSet) -> set[tuple[str, int]]:
        return {(s.source, i) for s in tokens.spans for i in range(s.first, s.first + len(s.ends))}

    return len(texts(a) & texts(b))


def _evaluate_both(model: Any, data: _Data, cfg: PruneConfig, progress: bool) -> tuple[EvalResult, EvalResult]:
    kw = {
        "batch_size": cfg.batch_size,
        "max_tokens": None,
        "topk": cfg.topk,
        "skip_common": cfg.skip_common,
        "progress": progress,
    }
    return (
        evaluate(model, data.forget_eval, desc="eval forget", **kw),
        evaluate(model, data.retain_eval, desc="eval retain", **kw),
    )


def _ablation(model: Any, retain_stats: ActivationStats, data: _Data, cfg: PruneConfig, progress: bool) -> Ablation:
    """The run's ablation: its config's methods with the unpruned model's retain values they need."""
    ablation = Ablation(**cfg.ablations)
    needs = ablation.needs()
    peaks = sample = None
    if "peaks" in needs or "sample" in needs:
        peaks, sample = collect_ablation_values(
            model,
            data.retain_collect,
            retain_stats,
            bins=cfg.peak_bins if "peaks" in needs else None,
            sample_tokens=min(cfg.resample_tokens, data.retain_collect.n_tokens) if "sample" in needs else 0,
            seed=cfg.seed,
            max_tokens=None,
            batch_size=cfg.batch_size,
            progress=progress,
        )
    return ablation.with_values(means=retain_stats, peaks=peaks, sample=sample)


def _pruned(model: Any, masks: Masks, ablation: Ablation, cfg: PruneConfig) -> Any:
    """The run's pruning so far, as hooks (nothing is pruned before the first step)."""
    return pruned(model, masks, ablation, seed=cfg.seed)


def _prune_and_evaluate(
    model: Any, masks: Masks, ablation: Ablation, data: _Data, cfg: PruneConfig, progress: bool
) -> tuple[EvalResult, EvalResult]:
    with _pruned(model, masks, ablation, cfg):
        return _evaluate_both(model, data, cfg, progress)


def _collect(model: Any, tokens: TokenSet, name: str, cfg: PruneConfig, progress: bool) -> ActivationStats:
    return collect_stats(
        model, tokens, batch_size=cfg.batch_size, max_tokens=None, progress=progress, desc=f"collect {name}"
    )


def _collect_both(
    model: Any, masks: Masks, ablation: Ablation, data: _Data, cfg: PruneConfig, progress: bool
) -> tuple[ActivationStats, ActivationStats]:
    with _pruned(model, masks, ablation, cfg):
        return (
            _collect(model, data.forget_collect, "forget", cfg, progress),
            _collect(model, data.retain_collect, "retain", cfg, progress),
        )


class _Recorder:
    """Builds the history of a run step by step, with a progress bar and a log line per step."""

    def __init__(
        self,
        model: Any,
        data: _Data,
        cfg: PruneConfig,
        strategy: str,
        n_steps: int,
        progress: bool,
        resumed: PruneRun | None = None,
    ):
        self.dims = model_dims(model)
        self.t_start = time.time()
        if resumed is None:
            forget, retain = _evaluate_both(model, data, cfg, progress)
            zeros = [0] * self.dims.n_layers
            self.masks = Masks.empty(self.dims)
            self.history = [
                StepRecord(
                    0, zeros, zeros, zeros, zeros, forget, retain, self.masks.clone(), time.time() - self.t_start
                )
            ]
            self.pruned_step: tuple[torch.Tensor, torch.Tensor] | None = (
                torch.zeros(self.dims.mlp_shape, dtype=torch.int32),
                torch.zeros(self.dims.attn_shape, dtype=torch.int32),
            )
        else:
            self.masks, self.history = resumed.masks.clone(), list(resumed.history)
            self.pruned_step = None if resumed.pruned_step is None else tuple(t.clone() for t in resumed.pruned_step)
            self.t_start -= resumed.seconds
        self.strategy = strategy
        self.bar = tqdm(
            total=n_steps, initial=len(self.history) - 1, desc=f"{strategy} pruning", unit="step", disable=not progress
        )

    def add(self, chosen: Masks, forget: EvalResult, retain: EvalResult, t_step: float) -> float:
        """Record a step that pruned ``chosen`` (already merged into ``self.masks``); return relative forget top-1."""
        step = len(self.history)
        m = self.masks
        self.history.append(
            StepRecord(
                step,
                chosen.mlp_counts(),
                chosen.attn_counts(),
                m.mlp_counts(),
                m.attn_counts(),
                forget,
                retain,
                m.clone(),
                time.time() - t_step,
            )
        )
        if self.pruned_step is not None:  # the step that pruned each unit (None: unknown, resumed from an old run)
            self.pruned_step[0][chosen.mlp.cpu()], self.pruned_step[1][chosen.attn.cpu()] = step, step
        base = self.history[0]
        rel_f = forget.top1 / base.forget.top1 if base.forget.top1 else math.nan
        rel_r = retain.top1 / base.retain.top1 if base.retain.top1 else math.nan
        self.bar.update(1)
        self.bar.set_postfix(mlp=f"{m.n_mlp / self.dims.n_mlp:.0%}", forget=f"{rel_f:.2f}", retain=f"{rel_r:.2f}")
        logger.info(
            "%s step %d: %d MLP, %d attn pruned; forget top1 %.4f (%.2f), retain top1 %.4f (%.2f)",
            self.strategy,
            step,
            m.n_mlp,
            m.n_attn,
            forget.top1,
            rel_f,
            retain.top1,
            rel_r,
        )
        return rel_f

    def close(self) -> float:
        self.bar.close()
        return time.time() - self.t_start


def run_tokens(
    run: PruneRun, model: Any, key: str, extra: Sequence[int] = (), *, trust_sources: bool = False
) -> list[TokenSet]:
    """One dataset of a run read again from the sources ``run.info`` names, checked against the run's record.

    The sources, text fields, shares and shuffle the run recorded are opened again and
    read lazily, as far as the budgets need: the run's own statistics and evaluation
    budgets, then each of ``extra``, packed from texts the run never used. Before
    anything is returned, the checksum of the statistics and evaluation tokens is
    compared with the one the run recorded (``run.info["tokens_sha256"]``): edited data
    files, or a run directory that names a file it never used, are refused.

    Args:
        run: a run made from named sources (the command line records them).
        model: the model whose tokenizer packs the texts.
        key: ``"forget"`` or ``"retain"``.
        extra: further token budgets, in order, after the run's own two.
        trust_sources: read the sources of a run that recorded no checksum (run directories
            of unlearn_lens 0.2) without checking them. A checksum that differs is refused
            all the same.

    Returns:
        ``[statistics, evaluation, *extra]``, one :class:`TokenSet` per budget.

    Raises:
        SourceCheckError: the tokens differ from the run's, or the run recorded no checksum
            (without ``trust_sources``).
        UnlearnLensError: the run names no source for ``key``, or a source cannot be read.
    """
    from unlearn_lens.data import mix_token_sets
    from unlearn_lens.sources import iter_texts

    info, cfg = run.info, run.config
    if not info.get(key):
        raise UnlearnLensError(f"the run does not name its {key} data source (run.info[{key!r}])")
    sources = info[key] if isinstance(info[key], list) else [info[key]]
    recorded = (info.get(TOKENS_SHA256) or {}).get(key)
    if recorded is None and not trust_sources:
        raise SourceCheckError(
            f"the run records no checksum of its {key} tokens (written before unlearn_lens 0.3), so its {key} "
            f"sources {sources} are read again only when trusted: pass --trust-sources (trust_sources=True)"
        )
    field_name = info.get(f"{key}_field", info.get("text_field", "text"))
    streams = [
        iter_texts(
            src,
            split=info.get("split", "train"),
            text_field=field_name,
            shuffle_seed=info.get("shuffle_seed"),
            buffer_size=info.get("shuffle_buffer") or 1,
        )
        for src in sources
    ]
    budgets = [cfg.collect_tokens, cfg.eval_tokens, *extra]
    whole = mix_token_sets(model, streams, info.get(f"{key}_shares"), budgets, seq_len=cfg.seq_len, compat=cfg.compat)
    parts = []
    for budget in budgets:
        part, whole = whole.split(budget)
        parts.append(part)
    if recorded is not None and [p.sha256() for p in parts[:2]] != list(recorded):
        raise SourceCheckError(
            f"the {key} sources {sources} do not give the tokens this run used (their checksum differs from the "
            "one in results.json): the data changed since the run, or the run directory names files it did not "
            "use; nothing of them was shown or used"
        )
    if recorded is None:
        logger.warning("the %s sources %s of this run are trusted unchecked (--trust-sources)", key, sources)
    return parts


def selective_prune(
    model: Any,
    forget_texts: Iterable[str] | TokenSet | None = None,
    retain_texts: Iterable[str] | TokenSet | None = None,
    config: PruneConfig | None = None,
    *,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    info: dict[str, Any] | None = None,
    checkpoint_settings: dict[str, Any] | None = None,
) -> PruneRun:
    """Run iterative selective pruning and record every step.

    Each step collects statistics on the first ``collect_tokens`` tokens of each
    dataset with the model as pruned so far, scores and selects among the units not
    yet pruned, and evaluates on the next ``eval_tokens`` tokens (which statistics
    never see).

    With ``checkpoint``, the run so far (masks, means, scores, history and the exact
    tokens) is written to that directory after every step. Calling again with the
    same ``checkpoint`` continues where it stopped, to the same result as a run that
    was never interrupted; the texts are then not needed (the checkpoint holds the
    tokens), and ``config``, if given, must be the checkpoint's. A checkpoint is
    checked before any work (its token ids must lie in the model's vocabulary), and
    held under :func:`checkpoint_lock` while the call runs: a second process that
    writes the same directory is refused at once.

    Args:
        model: a TransformerLens model; it is not modified (pruning is by hooks).
        forget_texts: the capability to remove (texts, a lazy stream, or a TokenSet).
        retain_texts: the capability to keep.
        config: settings (default :class:`PruneConfig`).
        progress: show progress bars.
        checkpoint: a directory to write the run's state to after every step, and to
            resume from if it already holds one.
        info: where the data came from, recorded as :attr:`PruneRun.info`.
        checkpoint_settings: JSON values the caller keeps with the checkpoint (the
            command line keeps its baseline settings there); a resumed checkpoint keeps
            its own. Read them with :func:`read_checkpoint_settings`.

    Returns:
        A :class:`PruneRun` with ``strategy="selective"``; compare it with
        :func:`random_baseline`.

    Raises:
        UnlearnLensError: bad config (e.g. ``topk`` above the vocabulary), texts that
            cannot give both budgets, or a checkpoint that is corrupt, another run's
            or in use.
    """
    if config is not None and not isinstance(config, PruneConfig):
        raise UnlearnLensError(f"config must be a PruneConfig, got {type(config).__name__}")
    path = Path(checkpoint) if checkpoint is not None else None
    with checkpoint_lock(path) if path is not None else contextlib.nullcontext():
        return _selective_prune(model, forget_texts, retain_texts, config, progress, path, info, checkpoint_settings)


def _resume(path: Path, model: Any, config: PruneConfig | None) -> tuple[PruneRun, _Data, dict[str, Any]]:
    """The run, tokens and state of the checkpoint in ``path``, checked against ``model`` and ``config``."""
    resumed, sets, state = load_checkpoint(path, model)
    data = _Data(*sets)
    if config is not None and config != resumed.config:
        raise UnlearnLensError(
            f"checkpoint {str(path)!r} was made with another config; resume it with its own "
            "(config=None) or choose another checkpoint directory"
        )
    check_topk(model, resumed.config.topk)
    return resumed, data, state


def _selective_prune(
    model: Any,
    forget_texts: Iterable[str] | TokenSet | None,
    retain_texts: Iterable[str] | TokenSet | None,
    config: PruneConfig | None,
    progress: bool,
    path: Path | None,
    info: dict[str, Any] | None,
    settings: dict[str, Any] | None,
) -> PruneRun:
    dims = model_dims(model)
    resumed = None
    if path is not None and (path / "checkpoint.json").is_file():
        resumed, data, state = _resume(path, model, config)
        if state["finished"]:
            return resumed
        cfg, settings = resumed.config, state.get("settings")
        logger.info("resuming %s after step %d", path, resumed.final.step)
    else:
        if forget_texts is None or retain_texts is None:
            raise UnlearnLensError("selective_prune needs forget and retain texts (or a checkpoint to resume)")
        cfg = config or PruneConfig()
        check_topk(model, cfg.topk)
        data = _Data.split(model, forget_texts, retain_texts, cfg)
    rec = _Recorder(model, data, cfg, "selective", cfg.n_steps, progress, resumed=resumed)
    run = resumed or PruneRun(
        config=cfg,
        history=rec.history,
        masks=rec.masks,
        dims=dims,
        strategy="selective",
        model=model_label(model),
        fingerprint=model_fingerprint(model),
        pruned_step=rec.pruned_step,
        info={**(info or {}), "texts": data.describe(), TOKENS_SHA256: data.checksums(), **data.distribution()},
    )
    if path is not None and resumed is None:
        save_checkpoint(path, run, data, False, settings)
    # weight-aware scores read the output weights once: pruning by hooks never changes them
    norms = output_norms(model) if set(cfg.scorings.values()) & set(WEIGHT_METHODS) else None
    finished = False
    while not finished:
        step = len(rec.history)
        t_step = time.time()
        forget_stats, retain_stats = _collect_both(model, rec.masks, run.ablation, data, cfg, progress)
        if step == 1:  # the unpruned model's retain means, modes or sample, kept for every later step
            run.ablation = _ablation(model, retain_stats, data, cfg, progress)
        scores = score(
            forget_stats,
            retain_stats,
            mlp_scoring=cfg.scorings["mlp"],
            attn_scoring=cfg.scorings["attn"],
            mlp_eps=cfg.mlp_eps,
            attn_eps=cfg.attn_eps,
            seed=cfg.seed + step,
            output_norms=norms,
            compat=cfg.compat,
        )
        run.initial_scores = scores if step == 1 else run.initial_scores
        run.scores, run.forget_stats, run.retain_stats = scores, forget_stats, retain_stats
        chosen = select(
            scores,
            mlp_frac=cfg.mlp_frac,
            attn_frac=cfg.attn_frac,
            per_layer=cfg.per_layer,
            exclude=rec.masks,
            heads=cfg.heads,
            head_agg=cfg.head_agg,
            compat=cfg.compat,
        )
        if chosen.n_mlp + chosen.n_attn == 0:
            logger.info("step %d: no units left to prune; stopping", step)
            finished = True
        else:
            rec.masks = rec.masks | chosen
            forget, retain = _prune_and_evaluate(model, rec.masks, run.ablation, data, cfg, progress)
            rel_f = rec.add(chosen, forget, retain, t_step)
            stopped = cfg.stop_at_forget is not None and rel_f <= cfg.stop_at_forget
            finished = stopped or step >= cfg.n_steps
        run.history, run.masks, run.seconds = rec.history, rec.masks, time.time() - rec.t_start
        run.pruned_step = rec.pruned_step
        if path is not None:
            save_checkpoint(path, run, data, finished, settings)
    run.seconds = rec.close()
    return run


def _same_scores(a: EvalResult | None, b: EvalResult | None, rel_tol: float = 1e-9) -> bool:
    """Whether two evaluations agree: counts exactly, metrics to ``rel_tol``.

    Sums over tokens differ in their last bits with the order of the additions (one
    process, or ranks of a process group), so the float fields are compared with a
    relative tolerance.
    """
    if a is None or b is None:
        return a is b
    return (
        (a.n_tokens, a.k) == (b.n_tokens, b.k)
        and all(
            math.isclose(x, y, rel_tol=rel_tol)
            for x, y in zip((a.top1, a.topk, a.loss, a.perplexity), (b.top1, b.topk, b.loss, b.perplexity))
        )
        and _same_scores(a.all_tokens, b.all_tokens, rel_tol)
    )


def random_baseline(
    model: Any,
    forget_texts: Sequence[str] | TokenSet,
    retain_texts: Sequence[str] | TokenSet,
    reference: PruneRun,
    *,
    seed: int | None = None,
    progress: bool = True,
) -> PruneRun:
    """The random baseline of a selective run: the same units per layer and step, chosen at random.

    At every step of ``reference`` this prunes exactly as many MLP and attention
    neurons (or whole heads) in each layer as ``reference`` did at that step, chosen
    uniformly among those not yet pruned, and evaluates exactly as ``reference``
    did: its config (ablation, token budgets, row length, batch size) is used, never
    a default. Mean, peak and resample ablation use the reference's retain means,
    modes and sample (or, for a run read back without them, the same collected again
    on the unpruned model).

    Args:
        model: the model ``reference`` was made on.
        forget_texts, retain_texts: the datasets ``reference`` was made on.
        reference: a selective run (from :func:`selective_prune` or :meth:`PruneRun.load`).
        seed: seed of the random choices (step ``s`` draws with ``seed * 1000 + s``); None: the
            reference's ``config.seed``. Baselines of several seeds draw a band around chance.
        progress: show progress bars.

    Returns:
        A :class:`PruneRun` with ``strategy="random"``, as many steps as ``reference``, and its
        seed in ``info["baseline_seed"]`` (:attr:`PruneRun.seed`).

    Raises:
        UnlearnLensError: ``reference`` is not a selective run of this model, or ``seed`` is not an integer.
    """
    if not isinstance(reference, PruneRun):
        raise UnlearnLensError(f"reference must be a PruneRun, got {type(reference).__name__}")
    if reference.strategy != "selective":
        raise UnlearnLensError(
            f"the reference of a random baseline must be a selective run, not {reference.strategy!r}"
        )
    dims = model_dims(model)
    if reference.dims != dims:
        raise UnlearnLensError(
            f"the reference run is for a model with {reference.dims.to_dict()}, not "
            f"{model_name(model)!r} ({dims.to_dict()})"
        )
    reference.check_model(model)
    cfg = reference.config
    seed = cfg.seed if seed is None else seed
    if not is_int(seed):
        raise UnlearnLensError(f"seed must be an integer, got {seed!r}")
    check_topk(model, cfg.topk)
    data = _Data.split(model, forget_texts, retain_texts, cfg)
    n_steps = len(reference.history) - 1
    rec = _Recorder(model, data, cfg, "random", n_steps, progress)
    if not (
        _same_scores(rec.history[0].forget, reference.base.forget)
        and _same_scores(rec.history[0].retain, reference.base.retain)
    ):
        logger.warning(
            "the unpruned model scores differently than in the reference run: are the model and "
            "texts the ones it was made on?"
        )
    ablation = reference.ablation
    if any(getattr(ablation, name) is None for name in ablation.needs()):
        ablation = _ablation(model, _collect(model, data.retain_collect, "retain", cfg, progress), data, cfg, progress)
    for ref in reference.history[1:]:
        t_step = time.time()
        chosen = random_masks(
            ref.new_mlp, ref.new_attn, exclude=rec.masks, seed=seed * 1000 + ref.step, heads=cfg.heads
        )
        rec.masks = rec.masks | chosen
        forget, retain = _prune_and_evaluate(model, rec.masks, ablation, data, cfg, progress)
        rec.add(chosen, forget, retain, t_step)
    seconds = rec.close()
    return PruneRun(
        config=cfg,
        history=rec.history,
        masks=rec.masks,
        dims=dims,
        strategy="random",
        pruned_step=rec.pruned_step,
        model=model_label(model),
        fingerprint=model_fingerprint(model),
        info={**reference.info, "baseline_seed": int(seed)},
        seconds=seconds,
        ablation=ablation,
    )
