"""Choosing units to prune: boolean masks, selection by score, and the random baseline.

A :class:`Masks` is data, separate from applying it (see :mod:`unlearn_lens.pruning`):
``mlp`` ``[layer d_mlp]`` and ``attn`` ``[layer head d_head]`` booleans, True where
a unit is pruned.

:func:`select` takes the top ``frac`` of *all* units of a kind by score, globally
across layers (the paper's choice) or within each layer, never choosing a unit in
``exclude`` (already pruned). Ties break towards the lower flat index, so the same
scores always give the same masks. :func:`random_masks_like` draws the same number
of units per layer uniformly at random: the baseline selective pruning must beat.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool

from unlearn_lens._io import atomic_write, read_safetensors
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import ModelDims
from unlearn_lens.scoring import Scores, head_scores

__all__ = ["Masks", "random_masks", "random_masks_like", "select"]


@dataclass
class Masks:
    """Which units are pruned (True = pruned).

    Attributes:
        mlp: ``[layer d_mlp]`` bool.
        attn: ``[layer head d_head]`` bool.
    """

    mlp: Bool[torch.Tensor, "layer d_mlp"]
    attn: Bool[torch.Tensor, "layer head d_head"]

    def __post_init__(self) -> None:
        if self.mlp.dtype != torch.bool or self.attn.dtype != torch.bool:
            raise UnlearnLensError("masks must be boolean tensors")
        if self.mlp.dim() != 2 or self.attn.dim() != 3 or self.mlp.shape[0] != self.attn.shape[0]:
            raise UnlearnLensError(
                f"masks need shapes [layer, d_mlp] and [layer, head, d_head], got {tuple(self.mlp.shape)} "
                f"and {tuple(self.attn.shape)}"
            )

    @classmethod
    def empty(cls, dims: ModelDims, device: torch.device | str | None = None) -> Masks:
        """Nothing pruned."""
        return cls(torch.zeros(dims.mlp_shape, dtype=torch.bool, device=device),
                   torch.zeros(dims.attn_shape, dtype=torch.bool, device=device))

    @property
    def dims(self) -> ModelDims:
        n_layers, d_mlp = self.mlp.shape
        _, n_heads, d_head = self.attn.shape
        return ModelDims(int(n_layers), int(d_mlp), int(n_heads), int(d_head))

    def __or__(self, other: Masks) -> Masks:
        self._check_same(other)
        return Masks(self.mlp | other.mlp.to(self.mlp.device), self.attn | other.attn.to(self.attn.device))

    def __and__(self, other: Masks) -> Masks:
        self._check_same(other)
        return Masks(self.mlp & other.mlp.to(self.mlp.device), self.attn & other.attn.to(self.attn.device))

    def __invert__(self) -> Masks:
        return Masks(~self.mlp, ~self.attn)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Masks) and self.dims == other.dims
                and bool(torch.equal(self.mlp.cpu(), other.mlp.cpu()))
                and bool(torch.equal(self.attn.cpu(), other.attn.cpu())))

    def _check_same(self, other: Masks) -> None:
        if other.dims != self.dims:
            raise UnlearnLensError(f"masks of a {other.dims} model do not fit a {self.dims} model")

    def mlp_counts(self) -> list[int]:
        """Pruned MLP neurons per layer."""
        return [int(c) for c in self.mlp.sum(1)]

    def attn_counts(self) -> list[int]:
        """Pruned attention neurons per layer."""
        return [int(c) for c in self.attn.sum((1, 2))]

    def head_counts(self) -> Bool[torch.Tensor, "layer head"]:
        """Pruned neurons of each head, ``[layer head]``."""
        return self.attn.sum(-1)

    @property
    def n_mlp(self) -> int:
        return int(self.mlp.sum())

    @property
    def n_attn(self) -> int:
        return int(self.attn.sum())

    def to(self, device: torch.device | str) -> Masks:
        return Masks(self.mlp.to(device), self.attn.to(device))

    def clone(self) -> Masks:
        return Masks(self.mlp.clone(), self.attn.clone())

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write to a safetensors file (atomically)."""
        from safetensors.torch import save_file

        tensors = {"mlp": self.mlp.cpu().to(torch.uint8).contiguous(), "attn": self.attn.cpu().to(torch.uint8).contiguous()}
        metadata = {"format": "unlearn_lens.Masks", "dims": json.dumps(self.dims.to_dict()),
                    "meta": json.dumps(meta or {}, default=str)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, *, dims: ModelDims | None = None, model: Any = None) -> Masks:
        """Read masks written by :meth:`save`.

        Args:
            path: the file.
            dims: refuse the file unless it was made for a model of these unit shapes.
            model: or give the model itself, whose shapes are checked.

        Raises:
            UnlearnLensError: missing or corrupt file, or a file made for another model.
        """
        tensors, _ = read_safetensors(path, "unlearn_lens.Masks", "cpu")
        if "mlp" not in tensors or "attn" not in tensors:
            raise UnlearnLensError(f"mask file {str(path)!r} lacks the mlp or attn tensor")
        masks = cls(tensors["mlp"].bool(), tensors["attn"].bool())
        if model is not None:
            from unlearn_lens.models import model_dims, model_name

            want = model_dims(model)
            if masks.dims != want:
                raise UnlearnLensError(
                    f"mask file {str(path)!r} was made for a model with {masks.dims.to_dict()}, "
                    f"but {model_name(model)!r} has {want.to_dict()}"
                )
        if dims is not None and masks.dims != dims:
            raise UnlearnLensError(
                f"mask file {str(path)!r} was made for a model with {masks.dims.to_dict()}, not {dims.to_dict()}"
            )
        return masks


def _check_frac(name: str, frac: float) -> None:
    if not isinstance(frac, (int, float)) or not 0.0 <= float(frac) <= 1.0:
        raise UnlearnLensError(f"{name} must be a fraction in [0, 1], got {frac!r}")


def _top_k(values: torch.Tensor, blocked: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest ``values`` not ``blocked``; ties go to the lower index.

    ``values`` and ``blocked`` are 1-D. At most the number of free entries is chosen.
    """
    out = torch.zeros_like(blocked)
    free = (~blocked).nonzero().squeeze(1)
    k = min(k, free.numel())
    if k <= 0:
        return out
    v = values[free].double().nan_to_num(nan=-torch.inf)
    order = torch.sort(v, descending=True, stable=True).indices[:k]
    out[free[order]] = True
    return out


def _select_blocks(values: torch.Tensor, blocked: torch.Tensor, frac: float, per_layer: bool) -> torch.Tensor:
    """Select ``round(frac * values.numel())`` entries, globally or per layer (dim 0)."""
    if per_layer:
        per = values[0].numel()
        k = round(frac * per)
        return torch.stack([
            _top_k(values[l].reshape(-1), blocked[l].reshape(-1), k).view(values.shape[1:])
            for l in range(values.shape[0])
        ])
    k = round(frac * values.numel())
    return _top_k(values.reshape(-1), blocked.reshape(-1), k).view(values.shape)


def select(
    scores: Scores,
    *,
    mlp_frac: float = 0.02,
    attn_frac: float = 0.0,
    per_layer: bool = False,
    exclude: Masks | None = None,
    heads: bool = False,
    head_agg: str = "mean",
) -> Masks:
    """Pick the most forget-specific units.

    Args:
        scores: unit scores.
        mlp_frac: fraction of *all* MLP neurons to select, in [0, 1].
        attn_frac: fraction of *all* attention neurons to select (with ``heads``, of all heads).
        per_layer: select that fraction within each layer instead of globally.
        exclude: units never to select (e.g. those already pruned).
        heads: select whole attention heads, ranked by the ``head_agg`` of their
            neuron scores; a head with any excluded neuron is not selected.
        head_agg: ``"mean"`` or ``"median"``.

    Returns:
        :class:`Masks` of the newly selected units only.
    """
    _check_frac("mlp_frac", mlp_frac)
    _check_frac("attn_frac", attn_frac)
    dims_mlp, dims_attn = scores.mlp.shape, scores.attn.shape
    device = scores.mlp.device
    if exclude is None:
        exclude = Masks(torch.zeros(dims_mlp, dtype=torch.bool, device=device),
                        torch.zeros(dims_attn, dtype=torch.bool, device=device))
    if tuple(exclude.mlp.shape) != tuple(dims_mlp) or tuple(exclude.attn.shape) != tuple(dims_attn):
        raise UnlearnLensError(
            f"exclude masks {tuple(exclude.mlp.shape)}/{tuple(exclude.attn.shape)} do not fit scores "
            f"{tuple(dims_mlp)}/{tuple(dims_attn)}"
        )
    exclude = exclude.to(device)
    mlp = _select_blocks(scores.mlp, exclude.mlp, mlp_frac, per_layer)
    if heads:
        chosen = _select_blocks(head_scores(scores.attn, head_agg), exclude.attn.any(-1), attn_frac, per_layer)
        attn = chosen.unsqueeze(-1).expand(dims_attn).clone()
    else:
        attn = _select_blocks(scores.attn, exclude.attn, attn_frac, per_layer)
    return Masks(mlp, attn)


def _random_like(counts: Sequence[int], blocked: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per layer (dim 0), ``counts[l]`` entries chosen uniformly among those not blocked."""
    out = torch.zeros(blocked.shape, dtype=torch.bool)
    for layer in range(blocked.shape[0]):
        free = (~blocked[layer].reshape(-1).cpu()).nonzero().squeeze(1)
        k = min(int(counts[layer]), free.numel())
        pick = free[torch.randperm(free.numel(), generator=gen)[:k]]
        out[layer].view(-1)[pick] = True
    return out.to(blocked.device)


def random_masks(
    mlp_counts: Sequence[int],
    attn_counts: Sequence[int],
    *,
    exclude: Masks,
    seed: int = 0,
    heads: bool = False,
) -> Masks:
    """Masks with the given number of pruned units per layer, chosen uniformly at random.

    Args:
        mlp_counts: MLP neurons to choose in each layer.
        attn_counts: attention neurons to choose in each layer (with ``heads``, whole
            heads are chosen: ``attn_counts[l] // d_head`` of them).
        exclude: units never to choose; also gives the shapes.
        seed: random seed.
        heads: choose whole heads.
    """
    gen = torch.Generator().manual_seed(seed)
    mlp = _random_like(mlp_counts, exclude.mlp, gen)
    if heads:
        d_head = exclude.attn.shape[-1]
        chosen = _random_like([c // d_head for c in attn_counts], exclude.attn.any(-1), gen)
        attn = chosen.unsqueeze(-1).expand(exclude.attn.shape).clone()
    else:
        attn = _random_like(attn_counts, exclude.attn, gen)
    return Masks(mlp, attn)


def random_masks_like(masks: Masks, seed: int = 0, *, exclude: Masks | None = None) -> Masks:
    """Random masks with the same number of pruned units per layer as ``masks``.

    Args:
        masks: the masks whose per-layer counts to copy.
        seed: random seed.
        exclude: units never to choose (e.g. already pruned in the baseline run).
    """
    exclude = exclude if exclude is not None else Masks(torch.zeros_like(masks.mlp), torch.zeros_like(masks.attn))
    masks._check_same(exclude)
    return random_masks(masks.mlp_counts(), masks.attn_counts(), exclude=exclude, seed=seed)
