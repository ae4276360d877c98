"""Capability overlap: do different capabilities live in the same units?

Selective runs for several forget sets (against one retain set) each prune a set of
units. The Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of two runs' pruned units says how
much they share: 1 for identical masks, 0 for disjoint ones. It is computed over all
units of one kind (``"mlp"`` neurons or ``"attn"`` neurons) and per layer; where
neither mask prunes anything (``0 / 0``) the overlap is undefined and given as nan.

Masks that prune a few percent of units already overlap a little by chance, so
:func:`random_control` draws, for each entry, random masks with the same per-layer
counts; their matrix is the overlap chance alone gives::

    from unlearn_lens.checks.overlap import overlap_figure, overlap_matrix, random_control
    masks = {"code": code_run.masks, "maths": maths_run.masks, "french": french_run.masks}
    matrix = overlap_matrix(masks)
    overlap_figure(matrix, overlap_matrix(random_control(masks)))

Random masks say nothing of what the architecture and the data do by themselves:
even a model that learned nothing may prune the same units for code and for maths
(units that fire on any frequent token, say). :func:`random_init_control` runs the
same selective loop, on the same texts, on :func:`random_init_copy` of the model (the
same architecture with fresh weights from its own initialisation); overlap there
comes from the architecture and the data statistics alone, not from learned
capabilities::

    init = random_init_control(model, {"code": code, "maths": maths, "french": french}, prose, like=runs)
    overlap_figure(matrix, controls={"random masks": overlap_matrix(random_control(masks)),
                                     "random init": overlap_matrix(init)})
"""

from __future__ import annotations

import copy
import dataclasses
import html
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import check_kind, model_device, model_name, underlying_model
from unlearn_lens.pipeline import selective_prune
from unlearn_lens.results import PruneConfig, PruneRun
from unlearn_lens.scoring import random_masks_like

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "OverlapMatrix",
    "OverlapStats",
    "jaccard",
    "overlap_figure",
    "overlap_matrix",
    "random_control",
    "random_init_control",
    "random_init_copy",
]

logger = logging.getLogger(__name__)


def _as_masks(value: Any, name: str) -> Masks:
    """The masks of ``value`` (a :class:`Masks`, or a :class:`PruneRun`'s final masks)."""
    if isinstance(value, PruneRun):
        return value.masks
    if not isinstance(value, Masks):
        raise UnlearnLensError(f"{name} must be a Masks or a PruneRun, got {type(value).__name__}")
    return value


def _flat(masks: Masks, kind: str) -> Bool[torch.Tensor, "layer unit"]:
    """The pruned units of one kind as ``[layer unit]`` (attention: ``unit = head * d_head``), on the CPU."""
    units = masks.mlp if kind == "mlp" else masks.attn
    return units.reshape(units.shape[0], -1).cpu()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as float64, nan where ``den`` is 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def _nan_to_none(values: list[Any]) -> list[Any]:
    return [_nan_to_none(v) if isinstance(v, list) else (None if math.isnan(v) else v) for v in values]


@dataclass
class OverlapStats:
    """The Jaccard overlap of two masks' pruned units of one kind.

    Attributes:
        kind: ``"mlp"`` or ``"attn"``.
        overall: ``|A ∩ B| / |A ∪ B|`` over all units of the kind (nan when neither prunes any).
        per_layer: ``[layer]`` float64, the same within each layer (nan where neither prunes any).
        intersection: ``[layer]`` units pruned by both.
        union: ``[layer]`` units pruned by either.
    """

    kind: str
    overall: float
    per_layer: Float[torch.Tensor, " layer"]
    intersection: Int[torch.Tensor, " layer"]
    union: Int[torch.Tensor, " layer"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (nan written as None)."""
        return {
            "kind": self.kind,
            "overall": None if math.isnan(self.overall) else self.overall,
            "per_layer": _nan_to_none(self.per_layer.tolist()),
            "intersection": self.intersection.tolist(),
            "union": self.union.tolist(),
        }


def jaccard(a: Masks | PruneRun, b: Masks | PruneRun, kind: str = "mlp") -> OverlapStats:
    """The Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of the units two masks prune, overall and per layer.

    Args:
        a, b: masks (or pruning runs, whose final masks are used) of one model.
        kind: ``"mlp"`` (MLP neurons) or ``"attn"`` (attention neurons).

    Returns:
        An :class:`OverlapStats`; ``0 / 0`` (neither prunes any unit) is nan.

    Raises:
        UnlearnLensError: not masks, masks of different model shapes, or an unknown kind.
    """
    check_kind(kind)
    a, b = _as_masks(a, "a"), _as_masks(b, "b")
    if a.dims != b.dims:
        raise UnlearnLensError(f"masks of a {a.dims} model and of a {b.dims} model cannot be compared")
    fa, fb = _flat(a, kind), _flat(b, kind)
    inter, union = (fa & fb).sum(1), (fa | fb).sum(1)
    overall = float(_ratio(inter.sum(), union.sum()))
    return OverlapStats(kind=kind, overall=overall, per_layer=_ratio(inter, union), intersection=inter, union=union)


@dataclass
class OverlapMatrix:
    """Pairwise Jaccard overlaps of several masks (symmetric; the diagonal is 1, or nan for empty masks).

    Attributes:
        names: the masks' names, in the order of the rows and columns.
        kind: ``"mlp"`` or ``"attn"``.
        overall: ``[n n]`` float64, overlap over all units of the kind.
        per_layer: ``[layer n n]`` float64, overlap within each layer.
        counts: pruned units of each mask per layer, ``{name: [count per layer]}``.
    """

    names: list[str]
    kind: str
    overall: Float[torch.Tensor, "n n"]
    per_layer: Float[torch.Tensor, "layer n n"]
    counts: dict[str, list[int]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (nan written as None)."""
        return {
            "names": list(self.names),
            "kind": self.kind,
            "overall": _nan_to_none(self.overall.tolist()),
            "per_layer": _nan_to_none(self.per_layer.tolist()),
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OverlapMatrix:
        """The inverse of :meth:`to_dict`."""

        def tensor(values: Any) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64) if values else torch.zeros(0, dtype=torch.float64)

        nan = float("nan")
        overall = [[nan if v is None else v for v in row] for row in data["overall"]]
        per_layer = [[[nan if v is None else v for v in row] for row in layer] for layer in data["per_layer"]]
        return cls(
            list(data["names"]),
            str(data["kind"]),
            tensor(overall),
            tensor(per_layer),
            {str(k): list(v) for k, v in data["counts"].items()},
        )


def _checked(masks: Mapping[str, Masks | PruneRun]) -> dict[str, Masks]:
    """``masks`` as ``{name: Masks}``, at least two of them, all of one model's shapes."""
    if not isinstance(masks, Mapping):
        raise UnlearnLensError(f"masks must be a mapping of names to Masks, got {type(masks).__name__}")
    out = {str(name): _as_masks(m, f"masks[{name!r}]") for name, m in masks.items()}
    if len(out) < 2:
        raise UnlearnLensError(f"overlap needs at least two masks, got {len(out)}")
    first_name, first = next(iter(out.items()))
    for name, m in out.items():
        if m.dims != first.dims:
            raise UnlearnLensError(
                f"masks {name!r} are for a model with {m.dims.to_dict()}, but {first_name!r} for {first.dims.to_dict()}"
            )
    return out


def overlap_matrix(masks: Mapping[str, Masks | PruneRun], kind: str = "mlp") -> OverlapMatrix:
    """The Jaccard overlap of every pair of ``masks``, overall and per layer.

    Args:
        masks: ``{name: Masks}`` (or pruning runs), at least two, all for one model.
        kind: ``"mlp"`` or ``"attn"``.

    Returns:
        An :class:`OverlapMatrix`.

    Raises:
        UnlearnLensError: fewer than two masks, masks of different model shapes, or an unknown kind.
    """
    check_kind(kind)
    checked = _checked(masks)
    names = list(checked)
    flat = torch.stack([_flat(checked[name], kind) for name in names]).double()  # [n layer unit]
    inter = torch.einsum("ilu,jlu->lij", flat, flat).round().long()  # [layer n n], exact below 2**53
    sizes = flat.sum(-1).round().long().T  # [layer n]
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return OverlapMatrix(
        names=names,
        kind=kind,
        overall=_ratio(inter.sum(0), union.sum(0)),
        per_layer=_ratio(inter, union),
        counts={n: checked[n].counts(kind) for n in names},
    )


def random_control(masks: Mapping[str, Masks | PruneRun], seed: int = 0) -> dict[str, Masks]:
    """For each entry, random masks with the same pruned-unit counts per layer (both kinds).

    Entry ``i`` (in order) is drawn with :func:`unlearn_lens.scoring.random_masks_like`
    and seed ``seed + i``, so no two are drawn alike; masks pruning whole heads get
    random whole heads. The :func:`overlap_matrix` of the result is the overlap that
    chance alone gives masks of these sizes.

    Raises:
        UnlearnLensError: fewer than two masks, or masks of different model shapes.
    """
    checked = _checked(masks)
    return {name: random_masks_like(m, seed=seed + i) for i, (name, m) in enumerate(checked.items())}


def _fresh_hf_bridge(model: Any, seed: int) -> Any:
    """A new bridge around a freshly initialised copy of the Hugging Face model that ``model`` wraps."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = underlying_model(model)
    device = model_device(model)
    dtype = next((p.dtype for p in hf.parameters() if p.is_floating_point()), torch.float32)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was (booting draws too)
        torch.manual_seed(seed)
        fresh = type(hf)(copy.deepcopy(hf.config))  # the architecture's own initialisation, on the CPU
        fresh = fresh.to(device=device, dtype=dtype)
        return TransformerBridge.boot_transformers(
            model_name(model), hf_model=fresh, tokenizer=model.tokenizer, device=device, dtype=dtype
        )


def _fresh_deep_copy(model: Any) -> Any:
    tokenizer = getattr(model, "tokenizer", None)
    return copy.deepcopy(model, {id(tokenizer): tokenizer} if tokenizer is not None else {})


def random_init_copy(model: Any, seed: int = 0) -> Any:
    """A copy of ``model`` with the same architecture and freshly initialised weights.

    The weights come from the architecture's own initialisation, seeded with ``seed``
    (the same seed gives the same weights; the global random state is left as it
    was): a Hugging Face model's ``_init_weights`` for a ``TransformerBridge`` over a
    Hugging Face model (a new model is built from its config and wrapped in a new
    bridge), ``initialize_native_model`` for a TL-native bridge (``boot_native``), and
    ``init_weights`` for a legacy ``HookedTransformer`` (biases and norm offsets set
    to 0, norm scales to 1, as for a new model). The copy shares the tokenizer, sits on
    the device of ``model``'s first parameter (one device, even where ``model`` was
    placed with a ``device_map``), in its dtype and train/eval mode; ``model`` is left
    untouched. Weight processing (``enable_compatibility_mode``) is not carried over.

    Args:
        model: a TransformerLens model (see above for the kinds supported).
        seed: seed of the initialisation.

    Returns:
        The re-initialised copy, of the same kind as ``model``.

    Raises:
        UnlearnLensError: a kind of model this cannot re-initialise.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UnlearnLensError(f"seed must be an integer, got {seed!r}")
    original = getattr(model, "original_model", None)
    kind = type(original).__name__ if original is not None else type(model).__name__
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # noqa: N806
    if isinstance(original, PreTrainedModel):
        fresh = _fresh_hf_bridge(model, seed)
    elif kind == "NativeModel" and hasattr(model, "init_weights"):
        from transformer_lens.model_bridge.sources.native.init import initialize_native_model

        fresh = _fresh_deep_copy(model)
        with torch.no_grad():
            initialize_native_model(fresh.original_model, fresh.cfg, seed=seed)
    elif original is None and type(model).__name__ == "HookedTransformer" and hasattr(model, "init_weights"):
        fresh = _fresh_deep_copy(model)
        fresh.cfg.seed = seed  # init_weights seeds the global generator with cfg.seed
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for name, param in fresh.named_parameters():
                last = name.rsplit(".", 1)[-1]
                if last == "b" or last.startswith("b_"):  # b_in, b_out, b_Q, ... and the norms' offsets
                    param.zero_()
                elif last == "w":  # LayerNorm / RMSNorm scale
                    param.fill_(1.0)
            fresh.init_weights()  # every W_* matrix, by cfg.init_mode
    else:
        raise UnlearnLensError(
            f"random_init_copy supports a TransformerBridge over a Hugging Face model or a TL-native model, and a "
            f"legacy HookedTransformer; got a {type(model).__name__} wrapping {kind} ({model_name(model)!r})"
        )
    fresh.train(model.training)
    return fresh


def _reusable(texts: Any, name: str) -> Any:
    if isinstance(texts, TokenSet):
        return texts
    if isinstance(texts, str) or not isinstance(texts, Iterable) or iter(texts) is texts:
        raise UnlearnLensError(
            f"{name} must be a list of texts or a TokenSet (it is read once per forget set), got {type(texts).__name__}"
        )
    return texts


def random_init_control(
    model: Any,
    forget_sets: Mapping[str, Iterable[str] | TokenSet],
    retain: Iterable[str] | TokenSet,
    config: PruneConfig | None = None,
    *,
    like: Mapping[str, PruneRun] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Masks]:
    """Selective pruning of each forget set on a randomly initialised copy of ``model``.

    The :func:`overlap_matrix` of the result is the overlap that the architecture and
    the data statistics give by themselves, with nothing learned: compare it with the
    matrix of the same runs on ``model`` (and with :func:`random_control`, chance alone).
    Each run prunes every step it is given (``stop_at_forget`` is ignored: a model that
    learned nothing has no accuracy to halve), so the masks have known sizes.

    Args:
        model: the trained model (left untouched); see :func:`random_init_copy`.
        forget_sets: ``{name: texts}``, at least two, each pruned against ``retain``.
        retain: the retain texts (a list or a TokenSet: every run reads them).
        config: settings of every run (default :class:`PruneConfig`), for ``n_steps`` steps.
        like: the selective runs on ``model`` to mirror, ``{name: run}`` with the names of
            ``forget_sets``: each control run takes its run's config and number of steps,
            so it prunes as many units of each kind (instead of ``config``).
        seed: seed of the initialisation (the runs' own seeds are their configs').
        progress: show progress bars.

    Returns:
        ``{name: Masks}`` of the runs on the re-initialised copy, in the order of ``forget_sets``.

    Raises:
        UnlearnLensError: fewer than two forget sets, ``like`` with other names or not
            runs, both ``config`` and ``like``, texts that can be read only once, or a
            model :func:`random_init_copy` does not support.
    """
    if not isinstance(forget_sets, Mapping) or len(forget_sets) < 2:
        raise UnlearnLensError(
            "random_init_control needs a mapping of at least two named forget sets, got "
            f"{len(forget_sets) if isinstance(forget_sets, Mapping) else type(forget_sets).__name__}"
        )
    if config is not None and like is not None:
        raise UnlearnLensError("give config or like (whose runs carry their own configs), not both")
    if config is not None and not isinstance(config, PruneConfig):
        raise UnlearnLensError(f"config must be a PruneConfig, got {type(config).__name__}")
    configs: dict[str, PruneConfig] = {}
    for name in forget_sets:
        if like is None:
            base = config or PruneConfig()
            configs[str(name)] = dataclasses.replace(base, stop_at_forget=None)
            continue
        if not isinstance(like, Mapping) or set(map(str, like)) != set(map(str, forget_sets)):
            raise UnlearnLensError(
                f"like must name the same runs as forget_sets ({sorted(map(str, forget_sets))}), "
                f"got {sorted(map(str, like)) if isinstance(like, Mapping) else type(like).__name__}"
            )
        run = like[name]
        if not isinstance(run, PruneRun) or len(run.history) < 2:
            raise UnlearnLensError(f"like[{name!r}] must be a PruneRun with at least one pruning step")
        configs[str(name)] = dataclasses.replace(run.config, stop_at_forget=None, n_steps=len(run.history) - 1)
    retain = _reusable(retain, "retain")
    fresh = random_init_copy(model, seed=seed)
    out: dict[str, Masks] = {}
    for name, texts in forget_sets.items():
        logger.info("random-init control %r: %d steps", name, configs[str(name)].n_steps)
        run = selective_prune(
            fresh,
            texts,
            retain,
            configs[str(name)],
            progress=progress,
            info={"control": "random init", "init_seed": seed},
        )
        out[str(name)] = run.masks
    return out


def _heatmap(matrix: OverlapMatrix, show_scale: bool) -> go.Heatmap:
    import plotly.graph_objects as go

    values = matrix.overall.tolist()
    text = [["–" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    labels = [html.escape(n) for n in matrix.names]
    return go.Heatmap(
        z=values,
        x=labels,
        y=labels,
        text=text,
        texttemplate="%{text}",
        zmin=0.0,
        zmax=1.0,
        colorscale="Viridis",
        showscale=show_scale,
        colorbar={"title": {"text": "Jaccard"}},
        hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.4f}<extra></extra>",
    )


def overlap_figure(
    matrix: OverlapMatrix,
    control: OverlapMatrix | None = None,
    *,
    controls: Mapping[str, OverlapMatrix] | None = None,
    title: str | None = None,
) -> go.Figure:
    """A heatmap of ``matrix.overall`` with annotated values, beside each control's.

    Args:
        matrix: overlaps of the selective masks.
        control: overlaps of their random control (:func:`random_control`), drawn on the
            same 0-1 scale under "random control (same counts)".
        controls: further controls by panel title, e.g. ``{"random masks": ...,
            "random init": overlap_matrix(random_init_control(...))}``, drawn after ``control``.
        title: figure title.

    Returns:
        A figure with one heatmap trace per panel: the selective masks, then ``control``,
        then ``controls`` in order.
    """
    from plotly.subplots import make_subplots

    if controls is not None and not isinstance(controls, Mapping):
        raise UnlearnLensError(f"controls must map panel titles to OverlapMatrix, got {type(controls).__name__}")
    panels = {"pruned units": matrix}
    if control is not None:
        panels["random control (same counts)"] = control
    for name, m in (controls or {}).items():
        if str(name) in panels:
            raise UnlearnLensError(f"two panels are titled {str(name)!r}")
        panels[str(name)] = m
    for name, m in (("matrix", matrix), *((f"control {n!r}", m) for n, m in list(panels.items())[1:])):
        if not isinstance(m, OverlapMatrix):
            raise UnlearnLensError(f"{name} must be an OverlapMatrix, got {type(m).__name__}")
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        horizontal_spacing=0.15 if len(panels) < 3 else 0.08,
        subplot_titles=[html.escape(n) for n in panels],
    )
    for col, panel in enumerate(panels.values(), start=1):
        fig.add_trace(_heatmap(panel, show_scale=col == len(panels)), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    units = "MLP neurons" if matrix.kind == "mlp" else "attention neurons"
    fig.update_layout(
        template="plotly_white",
        height=420,
        width=480 * len(panels),
        title={
            "text": title or f"Overlap of pruned {units} (Jaccard |A∩B| / |A∪B|)",
            "subtitle": {"text": "1 = the same units, 0 = disjoint; – = neither prunes any"},
        },
        margin={"t": 110},
    )
    return fig
