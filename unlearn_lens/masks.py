"""Which units are pruned: boolean masks, as data.

A :class:`Masks` is data, separate from choosing it (:func:`unlearn_lens.select`,
:func:`unlearn_lens.random_masks`) and from applying it (:func:`unlearn_lens.pruned`):
``mlp`` ``[layer d_mlp]`` and ``attn`` ``[layer head d_head]`` booleans, True where a
unit is pruned. Masks files (safetensors) record the unit shapes of the model they
were made for, and refuse to load for another.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int

from unlearn_lens._io import read_safetensors, write_safetensors
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import ModelDims, model_dims, model_name

__all__ = ["Masks"]


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
        return cls(
            torch.zeros(dims.mlp_shape, dtype=torch.bool, device=device),
            torch.zeros(dims.attn_shape, dtype=torch.bool, device=device),
        )

    @property
    def dims(self) -> ModelDims:
        n_layers, d_mlp = self.mlp.shape
        _, n_heads, d_head = self.attn.shape
        return ModelDims(int(n_layers), int(d_mlp), int(n_heads), int(d_head))

    def __or__(self, other: Masks) -> Masks:
        self.check_same(other)
        return Masks(self.mlp | other.mlp.to(self.mlp.device), self.attn | other.attn.to(self.attn.device))

    def __and__(self, other: Masks) -> Masks:
        self.check_same(other)
        return Masks(self.mlp & other.mlp.to(self.mlp.device), self.attn & other.attn.to(self.attn.device))

    def __invert__(self) -> Masks:
        return Masks(~self.mlp, ~self.attn)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Masks)
            and self.dims == other.dims
            and bool(torch.equal(self.mlp.cpu(), other.mlp.cpu()))
            and bool(torch.equal(self.attn.cpu(), other.attn.cpu()))
        )

    def check_same(self, other: Masks) -> None:
        """Raise :class:`UnlearnLensError` unless ``other`` masks a model of the same dimensions."""
        if other.dims != self.dims:
            raise UnlearnLensError(f"masks of a {other.dims} model do not fit a {self.dims} model")

    def mlp_counts(self) -> list[int]:
        """Pruned MLP neurons per layer."""
        return [int(c) for c in self.mlp.sum(1)]

    def attn_counts(self) -> list[int]:
        """Pruned attention neurons per layer."""
        return [int(c) for c in self.attn.sum((1, 2))]

    def counts(self, kind: str) -> list[int]:
        """Pruned units of one kind (``"mlp"`` or ``"attn"``) per layer."""
        return self.mlp_counts() if kind == "mlp" else self.attn_counts()

    def head_counts(self) -> Int[torch.Tensor, "layer head"]:
        """Pruned neurons of each head, ``[layer head]`` (integers from 0 to d_head)."""
        return self.attn.sum(-1)

    @property
    def whole_heads(self) -> bool:
        """True when some attention neurons are pruned and every head is pruned whole or not at all."""
        counts = self.head_counts()
        return bool(counts.any()) and bool(((counts == 0) | (counts == self.attn.shape[-1])).all())

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
        tensors = {
            "mlp": self.mlp.cpu().to(torch.uint8).contiguous(),
            "attn": self.attn.cpu().to(torch.uint8).contiguous(),
        }
        metadata = {
            "format": "unlearn_lens.Masks",
            "dims": json.dumps(self.dims.to_dict()),
            "meta": json.dumps(meta or {}, default=str),
        }
        write_safetensors(path, tensors, metadata)

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
