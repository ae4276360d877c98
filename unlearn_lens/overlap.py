"""Capability overlap: do different capabilities live in the same units?

Selective runs for several forget sets (against one retain set) each prune a set of
units. The Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of two runs' pruned units says how
much they share: 1 for identical masks, 0 for disjoint ones. It is computed over all
units of one kind (``"mlp"`` neurons or ``"attn"`` neurons) and per layer; where
neither mask prunes anything (``0 / 0``) the overlap is undefined and given as nan.

Masks that prune a few percent of units already overlap a little by chance, so
:func:`random_control` draws, for each entry, random masks with the same per-layer
counts; their matrix is the overlap chance alone gives::

    from unlearn_lens.overlap import overlap_figure, overlap_matrix, random_control
    masks = {"code": code_run.masks, "maths": maths_run.masks, "french": french_run.masks}
    matrix = overlap_matrix(masks)
    overlap_figure(matrix, overlap_matrix(random_control(masks)))
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import UNIT_KINDS
from unlearn_lens.results import PruneRun
from unlearn_lens.scoring import random_masks_like

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["OverlapMatrix", "OverlapStats", "jaccard", "overlap_figure", "overlap_matrix", "random_control"]


def _check_kind(kind: str) -> None:
    if kind not in UNIT_KINDS:
        raise UnlearnLensError(f"unit kind must be 'mlp' or 'attn', got {kind!r}")


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
        return {"kind": self.kind, "overall": None if math.isnan(self.overall) else self.overall,
                "per_layer": _nan_to_none(self.per_layer.tolist()), "intersection": self.intersection.tolist(),
                "union": self.union.tolist()}


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
    _check_kind(kind)
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
        return {"names": list(self.names), "kind": self.kind, "overall": _nan_to_none(self.overall.tolist()),
                "per_layer": _nan_to_none(self.per_layer.tolist()), "counts": dict(self.counts)}


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
                f"masks {name!r} are for a model with {m.dims.to_dict()}, but {first_name!r} for {first.dims.to_dict()}")
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
    _check_kind(kind)
    checked = _checked(masks)
    names = list(checked)
    flat = torch.stack([_flat(checked[name], kind) for name in names]).double()  # [n layer unit]
    inter = torch.einsum("ilu,jlu->lij", flat, flat).round().long()  # [layer n n], exact below 2**53
    sizes = flat.sum(-1).round().long().T  # [layer n]
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return OverlapMatrix(names=names, kind=kind, overall=_ratio(inter.sum(0), union.sum(0)),
                         per_layer=_ratio(inter, union), counts={n: checked[n].counts(kind) for n in names})


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


def _heatmap(matrix: OverlapMatrix, show_scale: bool) -> go.Heatmap:
    import plotly.graph_objects as go

    values = matrix.overall.tolist()
    text = [["–" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    labels = [html.escape(n) for n in matrix.names]
    return go.Heatmap(
        z=values, x=labels, y=labels, text=text, texttemplate="%{text}", zmin=0.0, zmax=1.0, colorscale="Viridis",
        showscale=show_scale, colorbar={"title": {"text": "Jaccard"}},
        hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.4f}<extra></extra>",
    )


def overlap_figure(matrix: OverlapMatrix, control: OverlapMatrix | None = None, *, title: str | None = None
                   ) -> go.Figure:
    """A heatmap of ``matrix.overall`` with annotated values, beside ``control``'s if given.

    Args:
        matrix: overlaps of the selective masks.
        control: overlaps of their random control (:func:`random_control`), drawn on the same 0-1 scale.
        title: figure title.

    Returns:
        A figure with one heatmap trace, or two (selective, then control).
    """
    from plotly.subplots import make_subplots

    for name, m in (("matrix", matrix), ("control", control)):
        if m is not None and not isinstance(m, OverlapMatrix):
            raise UnlearnLensError(f"{name} must be an OverlapMatrix, got {type(m).__name__}")
    panels = [matrix] if control is None else [matrix, control]
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.15,
                        subplot_titles=["pruned units", "random control (same counts)"][:len(panels)])
    for col, panel in enumerate(panels, start=1):
        fig.add_trace(_heatmap(panel, show_scale=col == len(panels)), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    units = "MLP neurons" if matrix.kind == "mlp" else "attention neurons"
    fig.update_layout(
        template="plotly_white", height=420, width=480 * len(panels),
        title={"text": title or f"Overlap of pruned {units} (Jaccard |A∩B| / |A∪B|)",
               "subtitle": {"text": "1 = the same units, 0 = disjoint; – = neither prunes any"}},
        margin={"t": 110},
    )
    return fig
