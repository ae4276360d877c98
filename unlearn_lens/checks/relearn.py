"""Relearning check: was a capability removed by pruning, or only hidden?

A capability that pruning merely hid comes back after a little fine-tuning on the
forget data; one that was removed has to be learned again, slowly. The check (a
standard test of unlearning) fine-tunes a **copy** of the pruned model on a small
budget of forget text and records how fast forget accuracy recovers, beside the
same for the random baseline's masks and for the unpruned model.

How :func:`relearn` fine-tunes:

* the model is deep-copied (sharing its tokenizer); the user's model keeps its
  weights and gets no hooks;
* the hooks of :func:`unlearn_lens.pruned` stay on the copy through training and
  evaluation, so a pruned unit reads its ablated value (0, or its retain mean) on
  every pass (resample: a random retain token's value). The hook overwrites the
  activation, so no gradient flows back through a pruned unit (its own input
  weights stay as they are). With zero ablation its row of the output projection
  gets none either; with mean (peak) ablation mean * row acts as a bias and is
  trained as one;
* every parameter is trained with AdamW (fixed learning rate, no weight decay) on
  next-token cross-entropy over the real tokens of packed rows, in the model's
  mode (eval for models from ``load_model``: no dropout). Rows are taken in a
  seeded random order, each once before any is reused; only the
  ``n_steps * batch_size`` rows of the budget are read from the texts;
* forget (and retain) accuracy are measured with :func:`unlearn_lens.evaluate` on
  held-out tokens at step 0, every ``eval_every`` steps and after the last; a
  warning is logged if evaluation rows also occur among the training rows.

:func:`relearn_comparison` runs the check for a :class:`~unlearn_lens.results.PruneRun`
(its masks, its baseline's, none) under the run's ablation and ablation values;
:func:`relearn_figure` draws the curves::

    from unlearn_lens.checks.relearn import relearn_comparison, relearn_figure
    curves = relearn_comparison(model, run, train_code, held_code, held_prose, n_steps=20, lr=1e-4)
    relearn_figure(curves)
"""

from __future__ import annotations

import copy
import html
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from unlearn_lens._version import __version__
from unlearn_lens.ablations import Ablation
from unlearn_lens.config import check_ints, check_seq_len
from unlearn_lens.data import TokenSet, as_token_set, default_seq_len
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.evaluate import EvalResult, evaluate
from unlearn_lens.masks import Masks
from unlearn_lens.models import exclusive, model_device, model_dims, model_name
from unlearn_lens.pruning import pruned
from unlearn_lens.results import PruneRun

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["RelearnConfig", "RelearnCurve", "finetune_", "relearn", "relearn_comparison", "relearn_figure"]

logger = logging.getLogger(__name__)

Texts = Iterable[str] | TokenSet


@dataclass
class RelearnConfig:
    """Settings of one relearning check (validated on creation).

    The ablation of the pruned units is not a setting of the check: it is the run's
    (an :class:`~unlearn_lens.ablations.Ablation`, passed to :func:`relearn` beside the masks).

    Attributes:
        n_steps: optimisation steps.
        lr: AdamW learning rate (fixed; no weight decay).
        batch_size: rows per optimisation step (and per evaluation forward pass).
        eval_every: evaluate after every this many steps (and after the last).
        seed: seed of the order of the training rows (and of any other randomness).
        seq_len: row length of texts (None: the model's context, at most 256).
        eval_tokens: evaluation tokens per dataset at most (None: all given).
        topk: k of the top-k accuracy recorded beside top-1.
        skip_common: leave the N most common target tokens out of evaluation.
    """

    n_steps: int = 20
    lr: float = 1e-4
    batch_size: int = 8
    eval_every: int = 5
    seed: int = 0
    seq_len: int | None = None
    eval_tokens: int | None = 10_000
    topk: int = 10
    skip_common: int = 0

    def __post_init__(self) -> None:
        check_ints(self, {"n_steps": 1, "batch_size": 1, "eval_every": 1, "topk": 1, "skip_common": 0, "seed": None})
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (0 < self.lr < math.inf):
            raise UnlearnLensError(f"lr must be a positive finite number, got {self.lr!r}")
        check_seq_len(self.seq_len)
        if self.eval_tokens is not None:
            check_ints(self, {"eval_tokens": 1})

    @property
    def eval_steps(self) -> list[int]:
        """The steps after which the model is evaluated: 0, every ``eval_every``, and the last."""
        return sorted({*range(0, self.n_steps + 1, self.eval_every), self.n_steps})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelearnConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UnlearnLensError(f"unknown RelearnConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class RelearnCurve:
    """How forget (and retain) accuracy recover while a pruned model is fine-tuned on forget text.

    Attributes:
        config: the settings.
        eval_steps: the optimisation steps at which the model was evaluated (0 = before training).
        forget: evaluation on held-out forget tokens at each of ``eval_steps``.
        retain: the same on retain tokens (empty without retain data).
        train_loss: mean cross-entropy of each step's batch, before its update (``config.n_steps`` values).
        ablation: the methods the pruned units were held at (``{"mlp": ..., "attn": ...}``).
        n_mlp, n_attn: units held pruned.
        train_tokens: distinct training tokens (rows are reused once they are all used).
        model: the model's name.
        version: unlearn_lens version.
        seconds: wall time.
    """

    config: RelearnConfig
    eval_steps: list[int]
    forget: list[EvalResult]
    retain: list[EvalResult] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    ablation: dict[str, str] = field(default_factory=lambda: {"mlp": "zero", "attn": "zero"})
    n_mlp: int = 0
    n_attn: int = 0
    train_tokens: int = 0
    model: str = ""
    version: str = __version__
    seconds: float = 0.0

    @property
    def forget_top1(self) -> list[float]:
        """Forget top-1 at each of :attr:`eval_steps`."""
        return [r.top1 for r in self.forget]

    @property
    def retain_top1(self) -> list[float]:
        """Retain top-1 at each of :attr:`eval_steps` (empty without retain data)."""
        return [r.top1 for r in self.retain]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_dict()
        out["forget"] = [r.to_dict() for r in self.forget]
        out["retain"] = [r.to_dict() for r in self.retain]
        out["seconds"] = round(self.seconds, 3)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelearnCurve:
        data = _curve_of_format_2(dict(data))
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UnlearnLensError(f"unknown RelearnCurve fields: {sorted(unknown)}")
        return cls(
            **{
                **data,
                "config": RelearnConfig.from_dict(data["config"]),
                "forget": [EvalResult.from_dict(r) for r in data["forget"]],
                "retain": [EvalResult.from_dict(r) for r in data.get("retain", [])],
            }
        )


def _curve_of_format_2(data: dict[str, Any]) -> dict[str, Any]:
    """A curve as ``checks.json`` of results format 2 wrote it, under today's names (others unchanged).

    Format 2 called the evaluated steps ``steps`` and kept the ablation in the config.
    """
    if "steps" not in data or "eval_steps" in data:
        return data
    data["eval_steps"] = data.pop("steps")
    config = dict(data["config"])
    config["n_steps"] = config.pop("steps")
    shared = config.pop("ablation", "zero")
    methods = {kind: config.pop(f"{kind}_ablation", None) or shared for kind in ("mlp", "attn")}
    data["config"], data["ablation"] = config, methods
    return data


def _batch_loss(
    model: Any, tokens: Int[torch.Tensor, "batch pos"], valid: Bool[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, ""]:
    """Mean next-token cross-entropy over the real targets of a batch (padding never counts)."""
    logits: Float[torch.Tensor, "batch pos d_vocab"] = model(tokens)
    counted = valid[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1][counted].float(), tokens[:, 1:][counted])


def _trainable_rows(tokens: TokenSet, what: str) -> TokenSet:
    """The rows of ``tokens`` that have at least one real target."""
    keep = tokens.valid[:, 1:].any(1)
    if not bool(keep.any()):
        raise UnlearnLensError(f"{what} has no tokens to train on (empty dataset)")
    return TokenSet(tokens.tokens[keep], tokens.valid[keep])


def finetune_(
    model: Any,
    tokens: TokenSet,
    *,
    n_steps: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> list[float]:
    """Fine-tune ``model`` in place on next-token cross-entropy (AdamW, fixed ``lr``, no weight decay).

    The model runs as it is, hooks included: inside :func:`unlearn_lens.pruned` the
    pruned units stay at their ablated values throughout. Each step takes
    ``batch_size`` rows ``[batch pos]`` of ``tokens`` in a random order fixed by
    ``seed``; every row is used once before any is used again. The model's mode
    (train/eval) is left as it is.

    Args:
        model: a TransformerLens model (changed in place).
        tokens: training rows; padding and BOS targets never count.
        n_steps: optimisation steps.
        lr: learning rate.
        batch_size: rows per step.
        seed: seed of the row order (and of any randomness of the forward pass).
        callback: called as ``callback(step, loss)`` after every step (step from 1).
        progress: show a progress bar.
        desc: its label.

    Returns:
        The loss of each step's batch, before its update.

    Raises:
        UnlearnLensError: bad settings, or no tokens to train on.
    """
    RelearnConfig(n_steps=n_steps, lr=lr, batch_size=batch_size, seed=seed)  # validates
    tokens = _trainable_rows(tokens, "the training data")
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnlearnLensError(f"model {model_name(model)!r} has no trainable parameters")
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork), torch.enable_grad(), exclusive(model, "fine-tuning"):
        torch.manual_seed(seed)
        for step in tqdm(range(1, n_steps + 1), desc=desc, unit="step", disable=not progress, leave=False):
            while len(order) < batch_size:
                order += torch.randperm(len(tokens), generator=generator).tolist()
            rows, order = order[:batch_size], order[batch_size:]
            loss = _batch_loss(model, tokens.tokens[rows].to(device), tokens.valid[rows].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, losses[-1])
    optimiser.zero_grad(set_to_none=True)
    return losses


def _has_hooks(model: Any) -> bool:
    """Whether any hook point of ``model`` has a hook attached (aliases share one point)."""
    points = {id(p): p for p in getattr(model, "hook_dict", {}).values()}.values()
    return any(getattr(p, "_forward_hooks", None) or getattr(p, "_backward_hooks", None) for p in points)


def _fresh_copy(model: Any) -> Any:
    """A deep copy of ``model`` that shares its tokenizer (which fine-tuning never changes)."""
    tokenizer = getattr(model, "tokenizer", None)
    return copy.deepcopy(model, {id(tokenizer): tokenizer} if tokenizer is not None else {})


def _overlap(train: TokenSet, held: TokenSet) -> int:
    """Rows of ``held`` that also occur among the rows of ``train``."""
    if train.tokens.shape[1] != held.tokens.shape[1]:
        return 0
    seen = set(map(tuple, train.tokens.tolist()))
    return sum(tuple(row) in seen for row in held.tokens.tolist())


def relearn(
    model: Any,
    masks: Masks,
    forget_train: Texts,
    forget_eval: Texts,
    retain_eval: Texts | None = None,
    *,
    ablation: Ablation | str = "zero",
    n_steps: int = 20,
    lr: float = 1e-4,
    batch_size: int = 8,
    eval_every: int = 5,
    seed: int = 0,
    seq_len: int | None = None,
    eval_tokens: int | None = 10_000,
    topk: int = 10,
    skip_common: int = 0,
    progress: bool = False,
    desc: str = "relearn",
) -> RelearnCurve:
    """Fine-tune a pruned copy of ``model`` on forget text and record how fast forget accuracy returns.

    The copy is pruned with the hooks of :func:`unlearn_lens.pruned`, which stay in
    place while it trains, so the pruned units keep their ablated values; ``model``
    itself is left as it was. See the module docstring for the training recipe.

    Args:
        model: a TransformerLens model; it must have no hooks attached (call this
            outside ``with ul.pruned(...)``: the masks are applied to the copy).
        masks: the units to hold pruned (``Masks.empty(dims)``: the unpruned model).
        forget_train: forget texts (or a TokenSet) to fine-tune on; only the
            ``n_steps * batch_size`` rows the budget needs are read.
        forget_eval: held-out forget texts (or a TokenSet) to evaluate on.
        retain_eval: held-out retain texts (or a TokenSet), or None.
        ablation: what the pruned units read (a run's ``run.ablation``), or a method name
            that needs no retain values (``"zero"``).
        n_steps, lr, batch_size, eval_every, seed, seq_len, eval_tokens, topk,
            skip_common: see :class:`RelearnConfig`.
        progress: show a progress bar over the steps.
        desc: its label.

    Returns:
        A :class:`RelearnCurve`.

    Raises:
        UnlearnLensError: bad settings, empty data, masks (or means) for another
            model, or a model with hooks attached.
    """
    t_start = time.time()
    ablation = Ablation.of(ablation)
    cfg = RelearnConfig(
        n_steps=n_steps,
        lr=lr,
        batch_size=batch_size,
        eval_every=eval_every,
        seed=seed,
        seq_len=seq_len,
        eval_tokens=eval_tokens,
        topk=topk,
        skip_common=skip_common,
    )
    if not isinstance(masks, Masks):
        raise UnlearnLensError(f"masks must be a Masks, got {type(masks).__name__}")
    dims = model_dims(model)
    if masks.dims != dims:
        raise UnlearnLensError(
            f"masks for a model with {masks.dims.to_dict()} do not fit {model_name(model)!r} ({dims.to_dict()})"
        )
    if _has_hooks(model):
        raise UnlearnLensError(
            f"model {model_name(model)!r} has hooks attached; relearn prunes a copy of it with the masks given, "
            "so call it on the model without hooks (outside `with ul.pruned(...)`)"
        )
    width = cfg.seq_len or default_seq_len(model)
    train = _trainable_rows(
        as_token_set(model, forget_train, seq_len=width, max_tokens=cfg.n_steps * cfg.batch_size * (width - 1)),
        "forget_train",
    )
    held = {"forget": as_token_set(model, forget_eval, seq_len=width, max_tokens=cfg.eval_tokens)}
    if retain_eval is not None:
        held["retain"] = as_token_set(model, retain_eval, seq_len=width, max_tokens=cfg.eval_tokens)
    for name, tokens in held.items():
        if tokens.n_tokens == 0:
            raise UnlearnLensError(f"{name}_eval has no tokens to evaluate on (empty dataset)")
        shared = _overlap(train, tokens)
        if shared:
            logger.warning(
                "%d of the %d %s evaluation rows also occur among the training rows: evaluate on held-out text",
                shared,
                len(tokens),
                name,
            )

    results: dict[str, list[EvalResult]] = {name: [] for name in held}
    work = _fresh_copy(model)
    bar = tqdm(total=cfg.n_steps, desc=desc, unit="step", disable=not progress)

    def measure(step: int) -> None:
        for name, tokens in held.items():
            results[name].append(
                evaluate(
                    work,
                    tokens,
                    max_tokens=None,
                    batch_size=cfg.batch_size,
                    topk=cfg.topk,
                    skip_common=cfg.skip_common,
                    progress=False,
                )
            )
        bar.set_postfix(forget=f"{results['forget'][-1].top1:.3f}")
        logger.info("%s step %d: forget top1 %.4f", desc, step, results["forget"][-1].top1)

    def after_step(step: int, loss: float) -> None:
        bar.update(1)
        if step in eval_steps:
            measure(step)

    eval_steps = set(cfg.eval_steps)
    try:
        with pruned(work, masks, ablation, seed=cfg.seed):
            measure(0)
            losses = finetune_(
                work,
                train,
                n_steps=cfg.n_steps,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                callback=after_step,
            )
    finally:
        bar.close()
    return RelearnCurve(
        config=cfg,
        eval_steps=cfg.eval_steps,
        forget=results["forget"],
        retain=results.get("retain", []),
        train_loss=losses,
        ablation=ablation.to_dict(),
        n_mlp=masks.n_mlp,
        n_attn=masks.n_attn,
        train_tokens=train.n_tokens,
        model=model_name(model),
        seconds=time.time() - t_start,
    )


_FIXED = ("ablation",)


def relearn_comparison(
    model: Any,
    run: PruneRun,
    forget_train: Texts,
    forget_eval: Texts,
    retain_eval: Texts | None = None,
    *,
    progress: bool = False,
    **settings: Any,
) -> dict[str, RelearnCurve]:
    """The relearning check for a pruning run, its random baseline and the unpruned model.

    Args:
        model: the model ``run`` was made on.
        run: a :class:`~unlearn_lens.results.PruneRun`; its ablation (``run.ablation``), row
            length, top-k and ``skip_common`` are used (the last three unless given).
        forget_train: forget text to fine-tune on, used by neither the run's statistics
            nor its evaluation.
        forget_eval, retain_eval: held-out evaluation text (e.g. the run's own).
        progress: show a progress bar per curve.
        **settings: other arguments of :func:`relearn` (``n_steps``, ``lr``, ``batch_size``,
            ``n_steps``, ``eval_every``, ``seed``, ``eval_tokens``, ...).

    Returns:
        ``{"selective": ..., "random": ..., "unpruned": ...}`` (``"random"`` only when
        ``run.baseline`` is set; a random run given as ``run`` appears as ``"random"``).

    Raises:
        UnlearnLensError: not a run, a run for another model, or an ablation in
            ``settings`` (it is the run's).
    """
    if not isinstance(run, PruneRun):
        raise UnlearnLensError(f"run must be a PruneRun, got {type(run).__name__}")
    fixed = sorted(set(settings) & set(_FIXED))
    if fixed:
        raise UnlearnLensError("the ablation and its values come from the run (run.ablation); do not pass them")
    dims = model_dims(model)
    if run.dims != dims:
        raise UnlearnLensError(
            f"the run is for a model with {run.dims.to_dict()}, not {model_name(model)!r} ({dims.to_dict()})"
        )
    cfg = run.config
    kw: dict[str, Any] = {
        "seq_len": cfg.seq_len,
        "topk": cfg.topk,
        "skip_common": cfg.skip_common,
        **settings,
        "ablation": run.ablation,
    }
    masks = {name: r.masks for name, r in run.runs().items()}
    masks["unpruned"] = Masks.empty(dims)
    return {
        name: relearn(model, m, forget_train, forget_eval, retain_eval, progress=progress, desc=f"relearn {name}", **kw)
        for name, m in masks.items()
    }


_CURVE_COLOURS = {"selective": "#1b9e77", "random": "#d95f02", "unpruned": "#7570b3"}
_OTHER_COLOURS = ("#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def relearn_figure(curves: Mapping[str, RelearnCurve] | RelearnCurve, *, title: str | None = None) -> go.Figure:
    """Forget top-1 (solid) and retain top-1 (dashed) against fine-tuning steps, one colour per curve.

    Args:
        curves: ``{name: RelearnCurve}`` (e.g. from :func:`relearn_comparison`) or one curve.
        title: figure title.

    Returns:
        A figure with one forget line per curve and one retain line per curve that has retain data.
    """
    import plotly.graph_objects as go

    curves = {"pruned": curves} if isinstance(curves, RelearnCurve) else curves
    if not isinstance(curves, Mapping) or not curves:
        raise UnlearnLensError("no relearning curves to plot")
    fig = go.Figure()
    others = iter(_OTHER_COLOURS * len(curves))
    for name, curve in curves.items():
        if not isinstance(curve, RelearnCurve):
            raise UnlearnLensError(f"curve {name!r} is a {type(curve).__name__}, not a RelearnCurve")
        colour = _CURVE_COLOURS.get(name) or next(others)
        for dataset, values, dash, symbol in (
            ("forget", curve.forget_top1, "solid", "circle"),
            ("retain", curve.retain_top1, "dash", "diamond"),
        ):
            if not values:
                continue
            fig.add_trace(
                go.Scatter(
                    x=curve.eval_steps,
                    y=values,
                    mode="lines+markers",
                    name=f"{name} · {dataset}",
                    legendgroup=name,
                    line={"color": colour, "dash": dash},
                    marker={"size": 6, "symbol": symbol},
                    hovertemplate=f"{html.escape(name)}, {dataset}<br>step %{{x}}<br>top-1 %{{y:.4f}}<extra></extra>",
                )
            )
    first = next(iter(curves.values())).config
    fig.update_layout(
        template="plotly_white",
        height=420,
        title={
            "text": title or "Relearning: top-1 while fine-tuning on forget text",
            "subtitle": {
                "text": f"AdamW lr {first.lr:g}, batch {first.batch_size} rows; pruned units held "
                "at their ablated values; evaluation on held-out tokens"
            },
        },
        xaxis={"title": {"text": "fine-tuning steps"}},
        yaxis={"title": {"text": "top-1 accuracy"}, "rangemode": "tozero"},
        margin={"t": 100},
    )
    return fig
