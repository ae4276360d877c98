"""Capability overlap: Jaccard overlap of pruned units, its matrix, the random control and the figure."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import ModelDims
from unlearn_lens.overlap import OverlapMatrix, jaccard, overlap_figure, overlap_matrix, random_control

TINY = ModelDims(n_layers=2, d_mlp=4, n_heads=2, d_head=2)
BIG = ModelDims(n_layers=4, d_mlp=512, n_heads=4, d_head=16)


def _masks(mlp: list[list[int]], attn: torch.Tensor | None = None, dims: ModelDims = TINY) -> Masks:
    masks = Masks.empty(dims)
    masks.mlp[:] = torch.tensor(mlp, dtype=torch.bool)
    if attn is not None:
        masks.attn[:] = attn
    return masks


# Layer 0: A = {0, 1, 2}, B = {1, 2, 3} -> |A∩B| = 2, |A∪B| = 4, J = 0.5. Layer 1: both empty -> nan.
A = _masks([[1, 1, 1, 0], [0, 0, 0, 0]])
B = _masks([[0, 1, 1, 1], [0, 0, 0, 0]])
# Layer 0: C = {0} vs A -> 1/3; layer 1: C = {3}, A = {} -> 0/1 = 0. Overall (1 + 0) / (3 + 1) = 0.25.
C = _masks([[1, 0, 0, 0], [0, 0, 0, 1]])


def _sparse(seed: int, frac: float = 0.03) -> Masks:
    gen = torch.Generator().manual_seed(seed)
    return Masks(torch.rand(BIG.mlp_shape, generator=gen) < frac, torch.rand(BIG.attn_shape, generator=gen) < frac)


def test_jaccard_hand_computed():
    stats = jaccard(A, B)
    assert stats.kind == "mlp"
    assert stats.overall == pytest.approx(0.5)
    assert stats.per_layer[0].item() == pytest.approx(0.5)
    assert math.isnan(stats.per_layer[1].item())
    assert stats.intersection.tolist() == [2, 0] and stats.union.tolist() == [4, 0]
    other = jaccard(A, C)
    assert other.overall == pytest.approx(0.25)
    assert other.per_layer.tolist() == pytest.approx([1 / 3, 0.0])
    assert stats.to_dict()["per_layer"] == [0.5, None]


def test_jaccard_empty_is_nan_and_attn_kind():
    assert math.isnan(jaccard(Masks.empty(TINY), Masks.empty(TINY)).overall)
    attn_a = torch.zeros(TINY.attn_shape, dtype=torch.bool)
    attn_b = torch.zeros(TINY.attn_shape, dtype=torch.bool)
    attn_a[0, 0, :] = True  # layer 0: head 0 whole
    attn_b[0, 0, 1] = True  # layer 0: one neuron of head 0 -> 1/2
    attn_a[1, 1, 0] = True  # layer 1: disjoint -> 0/2
    attn_b[1, 0, 0] = True
    stats = jaccard(_masks([[0] * 4] * 2, attn_a), _masks([[0] * 4] * 2, attn_b), kind="attn")
    assert stats.per_layer.tolist() == pytest.approx([0.5, 0.0])
    assert stats.overall == pytest.approx(1 / 4)


def test_matrix_symmetric_unit_diagonal_and_per_layer():
    m = overlap_matrix({"a": A, "b": B, "c": C})
    assert m.names == ["a", "b", "c"] and m.kind == "mlp"
    assert m.overall.shape == (3, 3) and m.per_layer.shape == (2, 3, 3)
    assert torch.equal(m.overall, m.overall.T)
    assert torch.allclose(m.overall.diagonal(), torch.ones(3, dtype=torch.float64))
    assert m.overall[0, 1].item() == pytest.approx(0.5) and m.overall[0, 2].item() == pytest.approx(0.25)
    for i, x in enumerate((A, B, C)):
        for j, y in enumerate((A, B, C)):
            expect = jaccard(x, y).per_layer
            assert torch.allclose(m.per_layer[:, i, j], expect, equal_nan=True)
    # Layer 1: a and b prune nothing -> nan between them and on their diagonal; c's own is 1.
    assert math.isnan(m.per_layer[1, 0, 1].item()) and math.isnan(m.per_layer[1, 0, 0].item())
    assert m.per_layer[1, 2, 2].item() == 1.0 and m.per_layer[1, 0, 2].item() == 0.0
    out = m.to_dict()
    assert out["per_layer"][1][0][1] is None and out["counts"]["c"] == [1, 1]


def test_random_control_keeps_counts_and_overlaps_by_chance_only():
    masks = {f"m{i}": _sparse(i) for i in range(3)}
    control = random_control(masks, seed=0)
    assert list(control) == list(masks)
    for name in masks:
        assert control[name].mlp_counts() == masks[name].mlp_counts()
        assert control[name].attn_counts() == masks[name].attn_counts()
    assert control["m0"] != control["m1"]
    same = overlap_matrix({"x": masks["m0"], "y": masks["m0"].clone()})
    chance = overlap_matrix(control)
    assert same.overall[0, 1].item() == 1.0
    off = chance.overall[~torch.eye(3, dtype=torch.bool)]
    assert off.max().item() < 0.1  # ~ frac / (2 - frac) for 3 % masks
    assert overlap_matrix(control, kind="attn").overall.diagonal().tolist() == [1.0, 1.0, 1.0]


def test_random_control_is_seeded():
    masks = {"a": _sparse(0), "b": _sparse(1)}
    assert random_control(masks, seed=5)["b"] == random_control(masks, seed=5)["b"]


def test_figure_traces():
    m = overlap_matrix({"a": A, "b": B, "c": C})
    fig = overlap_figure(m)
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    assert fig.data[0].text[0][1] == "0.50" and fig.data[0].text[0][0] == "1.00"
    control = overlap_matrix(random_control({"a": A, "b": B, "c": C}))
    fig = overlap_figure(m, control)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert list(fig.data[1].x) == ["a", "b", "c"]
    assert fig.data[0].xaxis == "x" and fig.data[1].xaxis == "x2"


def test_errors():
    with pytest.raises(UnlearnLensError, match="at least two"):
        overlap_matrix({"a": A})
    with pytest.raises(UnlearnLensError, match="at least two"):
        random_control({})
    with pytest.raises(UnlearnLensError, match="model"):
        overlap_matrix({"a": A, "big": _sparse(0)})
    with pytest.raises(UnlearnLensError, match="compared"):
        jaccard(A, _sparse(0))
    with pytest.raises(UnlearnLensError, match="unit kind"):
        jaccard(A, B, kind="heads")
    with pytest.raises(UnlearnLensError, match="unit kind"):
        overlap_matrix({"a": A, "b": B}, kind="embed")
    with pytest.raises(UnlearnLensError, match="Masks"):
        jaccard(A, "b")  # type: ignore[arg-type]
    with pytest.raises(UnlearnLensError, match="OverlapMatrix"):
        overlap_figure({"a": A})  # type: ignore[arg-type]
    assert isinstance(overlap_matrix({"a": A, "b": B}), OverlapMatrix)
