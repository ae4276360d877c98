"""The iterative selective-pruning loop, the random baseline, and the run history.

One step of the paper's loop (Pochinkov & Schoots 2024):

1. collect statistics on forget and retain with the model as pruned so far;
2. score every unit (forget importance over retain importance);
3. select ``ff_frac`` of all MLP neurons and ``attn_frac`` of all attention
   neurons among those not yet pruned, and prune them;
4. evaluate on held-out forget and retain tokens.

Step 0 is the unpruned model. The loop stops after ``n_steps``, or once forget
top-1 falls to ``stop_at_forget_top1`` times its unpruned value.

The random baseline prunes, at every step, the same number of units in each layer
as selective pruning does, chosen uniformly at random. Given a selective run as
``reference`` it copies that run's per-layer counts and needs no statistics.

The **separability area** summarises a run: the area under the curve of retain
top-1 against forget top-1 (both relative to the unpruned model) traced by the
steps, from (1, 1) and closed at (0, 0), so that runs stopping at different points
compare on the same [0, 1] range. Random pruning that hurts both domains alike
stays near 0.5; perfect unlearning (forget falls to 0, retain stays) approaches 1.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tqdm.auto import tqdm

from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.evaluate import EvalResult, evaluate
from unlearn_lens.masks import Masks, random_masks, select
from unlearn_lens.models import ModelDims, model_dims, model_name
from unlearn_lens.pruning import ABLATIONS
from unlearn_lens.scoring import SCORING_METHODS, Scores, score
from unlearn_lens.stats import ActivationStats, as_token_set, collect_stats

__all__ = ["PruneConfig", "PruneRun", "StepRecord", "selective_prune", "separability_area"]

logger = logging.getLogger(__name__)

BASELINES = ("random",)


def _version() -> str:
    from unlearn_lens import __version__

    return __version__


@dataclass
class PruneConfig:
    """Settings of one selective-pruning run (validated on creation).

    Attributes:
        ff_frac: fraction of all MLP neurons pruned per step.
        attn_frac: fraction of all attention neurons (or heads, with ``heads``) per step.
        n_steps: maximum number of pruning steps.
        scoring: scoring method (``abs freq rms std sqrt mean rand``).
        ablation: ``"zero"`` or ``"mean"`` (retain means of the unpruned model).
        collect_tokens: tokens per dataset for statistics, each step.
        eval_tokens: held-out tokens per dataset for evaluation (disjoint from the
            collection tokens when the dataset is long enough).
        seq_len: row length (None: the model's context, at most 256).
        batch_size: rows per forward pass.
        seed: seed of random choices (``rand`` scoring, the random baseline).
        stop_at_forget_top1: stop once forget top-1 is at most this fraction of its
            unpruned value (None: run all steps).
        per_layer: select within each layer instead of globally.
        heads: prune whole attention heads.
        head_agg: ``"mean"`` or ``"median"`` of neuron scores for head scores.
        mlp_eps, attn_eps: score denominators' offsets.
        topk: k of top-k accuracy.
        skip_common: leave the N most common tokens out of evaluation.
    """

    ff_frac: float = 0.02
    attn_frac: float = 0.0
    n_steps: int = 10
    scoring: str = "abs"
    ablation: str = "zero"
    collect_tokens: int = 100_000
    eval_tokens: int = 100_000
    seq_len: int | None = None
    batch_size: int = 8
    seed: int = 0
    stop_at_forget_top1: float | None = None
    per_layer: bool = False
    heads: bool = False
    head_agg: str = "mean"
    mlp_eps: float = 1e-3
    attn_eps: float = 1e-4
    topk: int = 10
    skip_common: int = 0

    def __post_init__(self) -> None:
        for name in ("ff_frac", "attn_frac"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UnlearnLensError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if self.ff_frac == 0 and self.attn_frac == 0:
            raise UnlearnLensError("ff_frac and attn_frac are both 0: nothing would be pruned")
        for name in ("n_steps", "collect_tokens", "eval_tokens", "batch_size", "topk"):
            if int(getattr(self, name)) < 1:
                raise UnlearnLensError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.seq_len is not None and self.seq_len < 2:
            raise UnlearnLensError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.scoring not in SCORING_METHODS:
            raise UnlearnLensError(f"unknown scoring method {self.scoring!r}; choose one of {', '.join(SCORING_METHODS)}")
        if self.ablation not in ABLATIONS:
            raise UnlearnLensError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        if self.head_agg not in ("mean", "median"):
            raise UnlearnLensError(f"head_agg must be 'mean' or 'median', got {self.head_agg!r}")
        if self.stop_at_forget_top1 is not None and not 0.0 <= self.stop_at_forget_top1 <= 1.0:
            raise UnlearnLensError(f"stop_at_forget_top1 must be in [0, 1], got {self.stop_at_forget_top1!r}")
        if self.skip_common < 0:
            raise UnlearnLensError(f"skip_common must be non-negative, got {self.skip_common}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UnlearnLensError(f"unknown PruneConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class StepRecord:
    """One point of a run's history.

    Attributes:
        step: 0 for the unpruned model.
        new_mlp, new_attn: units pruned at this step, per layer.
        mlp_counts, attn_counts: units pruned so far, per layer.
        forget, retain: evaluation after this step.
        masks: cumulative masks after this step (not kept in JSON).
        seconds: wall time of the step.
    """

    step: int
    new_mlp: list[int]
    new_attn: list[int]
    mlp_counts: list[int]
    attn_counts: list[int]
    forget: EvalResult
    retain: EvalResult
    masks: Masks | None = None
    seconds: float = 0.0

    @property
    def n_mlp(self) -> int:
        return sum(self.mlp_counts)

    @property
    def n_attn(self) -> int:
        return sum(self.attn_counts)

    def to_dict(self, dims: ModelDims, base: StepRecord | None = None) -> dict[str, Any]:
        out = {
            "step": self.step,
            "n_mlp": self.n_mlp,
            "n_attn": self.n_attn,
            "frac_mlp": self.n_mlp / (dims.n_layers * dims.d_mlp),
            "frac_attn": self.n_attn / (dims.n_layers * dims.n_heads * dims.d_head),
            "new_mlp": self.new_mlp,
            "new_attn": self.new_attn,
            "mlp_counts": self.mlp_counts,
            "attn_counts": self.attn_counts,
            "forget": self.forget.to_dict(),
            "retain": self.retain.to_dict(),
            "seconds": round(self.seconds, 3),
        }
        if base is not None:
            out["forget_rel"] = self.forget.relative_to(base.forget)
            out["retain_rel"] = self.retain.relative_to(base.retain)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        return cls(
            step=data["step"], new_mlp=list(data["new_mlp"]), new_attn=list(data["new_attn"]),
            mlp_counts=list(data["mlp_counts"]), attn_counts=list(data["attn_counts"]),
            forget=EvalResult.from_dict(data["forget"]), retain=EvalResult.from_dict(data["retain"]),
            seconds=float(data.get("seconds", 0.0)),
        )


def separability_area(history: Sequence[StepRecord], metric: str = "top1") -> float:
    """Area under retain-vs-forget (relative to step 0), from (1, 1) and closed at (0, 0).

    Args:
        history: a run's steps, step 0 first.
        metric: ``"top1"`` or ``"topk"``.
    """
    if not history:
        raise UnlearnLensError("empty history")
    base = history[0]
    f0, r0 = getattr(base.forget, metric), getattr(base.retain, metric)
    if not f0 or not r0:
        raise UnlearnLensError(f"unpruned {metric} is zero; the relative curve is undefined")
    xs = [1.0] + [max(getattr(s.forget, metric) / f0, 0.0) for s in history[1:]] + [0.0]
    ys = [1.0] + [max(getattr(s.retain, metric) / r0, 0.0) for s in history[1:]] + [0.0]
    # Trapezoids along the traced path; the path runs from x = 1 towards x = 0.
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        area += (x0 - x1) * (y0 + y1) / 2
    return area


@dataclass
class PruneRun:
    """The result of :func:`selective_prune`.

    Attributes:
        config: the settings.
        history: per step (step 0 = unpruned), see :class:`StepRecord`.
        masks: the final cumulative masks.
        means: retain statistics of the unpruned model (used for mean ablation), or None.
        kind: ``"selective"`` or ``"random"``.
        dims: the model's unit shapes.
        model: the model's name.
        version: unlearn_lens version that made the run.
        initial_scores: scores on the unpruned model (selective runs).
        scores: scores of the last step (selective runs).
        forget_stats, retain_stats: statistics of the last step (selective runs).
        seconds: total wall time.
    """

    config: PruneConfig
    history: list[StepRecord]
    masks: Masks
    means: ActivationStats | None
    kind: str
    dims: ModelDims
    model: str = ""
    version: str = field(default_factory=_version)
    initial_scores: Scores | None = None
    scores: Scores | None = None
    forget_stats: ActivationStats | None = None
    retain_stats: ActivationStats | None = None
    seconds: float = 0.0

    @property
    def base(self) -> StepRecord:
        return self.history[0]

    @property
    def final(self) -> StepRecord:
        return self.history[-1]

    def separability_area(self, metric: str = "top1") -> float:
        return separability_area(self.history, metric)

    def summary(self) -> dict[str, Any]:
        """Unpruned and final metrics, relative drops, pruned shares and separability area."""
        d = self.dims
        return {
            "kind": self.kind,
            "steps": len(self.history) - 1,
            "frac_mlp": self.final.n_mlp / (d.n_layers * d.d_mlp),
            "frac_attn": self.final.n_attn / (d.n_layers * d.n_heads * d.d_head),
            "forget_top1": [self.base.forget.top1, self.final.forget.top1],
            "retain_top1": [self.base.retain.top1, self.final.retain.top1],
            "forget_rel": self.final.forget.relative_to(self.base.forget),
            "retain_rel": self.final.retain.relative_to(self.base.retain),
            "separability_area": self.separability_area(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "dims": self.dims.to_dict(),
            "config": self.config.to_dict(),
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "steps": [s.to_dict(self.dims, self.base) for s in self.history],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], masks: Masks | None = None) -> PruneRun:
        """Rebuild a run from :meth:`to_dict` (masks, scores and statistics are stored apart)."""
        dims = ModelDims(**data["dims"])
        history = [StepRecord.from_dict(s) for s in data["steps"]]
        return cls(
            config=PruneConfig.from_dict(data["config"]), history=history,
            masks=masks if masks is not None else Masks.empty(dims), means=None, kind=data["kind"], dims=dims,
            model=data.get("model", ""), version=data.get("version", "?"), seconds=float(data.get("seconds", 0.0)),
        )


def _split_tokens(model: Any, texts: Sequence[str] | TokenSet, cfg: PruneConfig, name: str) -> tuple[TokenSet, TokenSet]:
    tokens = as_token_set(model, texts, seq_len=cfg.seq_len, max_tokens=cfg.collect_tokens + cfg.eval_tokens)
    collect, held = tokens.split(cfg.collect_tokens)
    if held.n_tokens == 0:
        logger.warning(
            "the %s dataset has only %d tokens: evaluation reuses the collection tokens", name, tokens.n_tokens
        )
        held = collect
    return collect, held


def selective_prune(
    model: Any,
    forget_texts: Sequence[str] | TokenSet,
    retain_texts: Sequence[str] | TokenSet,
    config: PruneConfig | None = None,
    *,
    baseline: str | None = None,
    reference: PruneRun | None = None,
    progress: bool = True,
) -> PruneRun:
    """Run iterative selective pruning (or its random baseline) and record every step.

    Args:
        model: a TransformerLens model; it is not modified (pruning is by hooks).
        forget_texts: the capability to remove (texts or a TokenSet).
        retain_texts: the capability to keep.
        config: settings (default :class:`PruneConfig`).
        baseline: None for selective pruning, or ``"random"``: the same number of
            units per layer and step, chosen uniformly at random.
        reference: for ``baseline="random"``, a selective run whose per-layer counts
            to copy (then no statistics are collected). Without it, each step
            collects statistics to find how many units selective pruning would take
            from each layer.
        progress: show progress bars.

    Returns:
        :class:`PruneRun`.
    """
    cfg = config or PruneConfig()
    if baseline not in (None, *BASELINES):
        raise UnlearnLensError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
    if reference is not None and baseline is None:
        raise UnlearnLensError("reference= is only used with baseline='random'")
    dims = model_dims(model)
    if reference is not None and reference.dims != dims:
        raise UnlearnLensError(f"the reference run is for a model with {reference.dims}, not {dims}")
    t_start = time.time()
    forget_collect, forget_eval = _split_tokens(model, forget_texts, cfg, "forget")
    retain_collect, retain_eval = _split_tokens(model, retain_texts, cfg, "retain")
    common = {"batch_size": cfg.batch_size, "max_tokens": None, "progress": progress}

    def run_eval(masks: Masks | None, means: ActivationStats | None) -> tuple[EvalResult, EvalResult]:
        kw = {**common, "topk": cfg.topk, "skip_common": cfg.skip_common, "masks": masks,
              "ablation": cfg.ablation, "means": means}
        return (evaluate(model, forget_eval, desc="eval forget", **kw),
                evaluate(model, retain_eval, desc="eval retain", **kw))

    masks = Masks.empty(dims)
    forget0, retain0 = run_eval(None, None)
    zeros = [0] * dims.n_layers
    history = [StepRecord(0, zeros, zeros, zeros, zeros, forget0, retain0, masks.clone(), time.time() - t_start)]
    means: ActivationStats | None = None
    initial_scores = scores = None
    forget_stats = retain_stats = None
    n_steps = cfg.n_steps if reference is None else min(cfg.n_steps, len(reference.history) - 1)
    kind = baseline or "selective"
    bar = tqdm(range(1, n_steps + 1), desc=f"{kind} pruning", unit="step", disable=not progress)
    for step in bar:
        t_step = time.time()
        active = masks if step > 1 else None
        if reference is not None:
            ref = reference.history[step]
            new_mlp_counts, new_attn_counts = ref.new_mlp, ref.new_attn
            if cfg.ablation == "mean" and means is None:
                means = reference.means
                if means is None:
                    raise UnlearnLensError("the reference run has no means for mean ablation")
        else:
            stat_kw = {**common, "masks": active, "ablation": cfg.ablation, "means": means}
            forget_stats = collect_stats(model, forget_collect, desc="collect forget", **stat_kw)
            retain_stats = collect_stats(model, retain_collect, desc="collect retain", **stat_kw)
            if step == 1 and cfg.ablation == "mean":
                means = retain_stats
            scores = score(forget_stats, retain_stats, method=cfg.scoring, mlp_eps=cfg.mlp_eps,
                           attn_eps=cfg.attn_eps, seed=cfg.seed + step)
            if step == 1:
                initial_scores = scores
            chosen = select(scores, mlp_frac=cfg.ff_frac, attn_frac=cfg.attn_frac, per_layer=cfg.per_layer,
                            exclude=masks, heads=cfg.heads, head_agg=cfg.head_agg)
            new_mlp_counts, new_attn_counts = chosen.mlp_counts(), chosen.attn_counts()
        if baseline == "random":
            chosen = random_masks(new_mlp_counts, new_attn_counts, exclude=masks, seed=cfg.seed * 1000 + step,
                                  heads=cfg.heads)
        if chosen.n_mlp + chosen.n_attn == 0:
            logger.info("step %d: no units left to prune; stopping", step)
            break
        masks = masks | chosen
        forget, retain = run_eval(masks, means)
        record = StepRecord(step, chosen.mlp_counts(), chosen.attn_counts(), masks.mlp_counts(),
                            masks.attn_counts(), forget, retain, masks.clone(), time.time() - t_step)
        history.append(record)
        rel_f, rel_r = forget.top1 / forget0.top1 if forget0.top1 else 0, retain.top1 / retain0.top1 if retain0.top1 else 0
        bar.set_postfix(mlp=f"{record.n_mlp / (dims.n_layers * dims.d_mlp):.0%}", forget=f"{rel_f:.2f}",
                        retain=f"{rel_r:.2f}")
        logger.info("%s step %d: %d MLP, %d attn pruned; forget top1 %.4f (%.2f), retain top1 %.4f (%.2f)",
                    kind, step, record.n_mlp, record.n_attn, forget.top1, rel_f, retain.top1, rel_r)
        if cfg.stop_at_forget_top1 is not None and rel_f <= cfg.stop_at_forget_top1:
            break
    bar.close()
    return PruneRun(
        config=cfg, history=history, masks=masks, means=means, kind=kind, dims=dims, model=model_name(model),
        initial_scores=initial_scores, scores=scores, forget_stats=forget_stats, retain_stats=retain_stats,
        seconds=time.time() - t_start,
    )
