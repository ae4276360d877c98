"""Capability overlap: Jaccard overlap of pruned units, its matrix, the random control and the figure."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn_lens.checks.overlap import OverlapMatrix, jaccard, overlap_figure, overlap_matrix, random_control
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import ModelDims

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


# --- the random-initialisation control: the same selective runs on a re-initialised copy ----------------------

from conftest import CODE, PROSE, _HookedTransformer  # noqa: E402

import unlearn_lens as ul  # noqa: E402
from unlearn_lens.checks.overlap import random_init_control, random_init_copy  # noqa: E402

INIT_FIXTURES = [
    "gpt2",
    "neox",
    "llama",
    "native_gpt2",
    "native_gated",
    *(["legacy_gpt2", "legacy_gated"] if _HookedTransformer is not None else []),
]
CONTROL_CFG = dict(
    mlp_frac=0.1, attn_frac=0.05, n_steps=2, collect_tokens=400, eval_tokens=200, seq_len=16, batch_size=4
)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("fixture", INIT_FIXTURES)
def test_random_init_copy_same_shapes_new_weights_seeded_original_untouched(fixture, request):
    model = request.getfixturevalue(fixture)
    before, rng = _weights(model), torch.get_rng_state()
    fresh = random_init_copy(model, seed=7)  # not the fixtures' own seeds (native_gpt2 is boot_native seed 0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is left as it was
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the original is untouched
    new = _weights(fresh)
    assert sorted(new) == sorted(before)
    assert all(new[n].shape == before[n].shape and new[n].dtype == before[n].dtype for n in before)
    matrices = [n for n in before if before[n].dim() >= 2 and before[n].std() > 0]  # not the zero biases
    assert matrices and all(not torch.equal(new[n], before[n]) for n in matrices)
    assert type(fresh) is type(model) and fresh.tokenizer is model.tokenizer and fresh.training == model.training
    assert ul.ModelDims.of(fresh) == ul.ModelDims.of(model)
    tokens = model.to_tokens(CODE[0])
    with torch.no_grad():
        logits, fresh_logits = model(tokens), fresh(tokens)
    assert logits.shape == fresh_logits.shape and not torch.allclose(logits, fresh_logits)
    again, other = _weights(random_init_copy(model, seed=7)), _weights(random_init_copy(model, seed=8))
    assert all(torch.equal(again[n], new[n]) for n in new)  # deterministic per seed
    assert any(not torch.equal(other[n], new[n]) for n in matrices)


def test_random_init_copy_rejects_what_it_cannot_reinitialise():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.original_model = torch.nn.Linear(2, 2)

    with pytest.raises(UnlearnLensError, match="wrapping Linear"):
        random_init_copy(Wrapper())
    with pytest.raises(UnlearnLensError, match="HookedTransformer"):
        random_init_copy(torch.nn.Linear(2, 2))
    with pytest.raises(UnlearnLensError, match="seed"):
        random_init_copy(torch.nn.Linear(2, 2), seed=0.5)  # type: ignore[arg-type]


def test_random_init_control_runs_the_loop_with_the_right_counts(gpt2):
    forget = {"code": CODE, "code reversed": CODE[::-1]}
    cfg = ul.PruneConfig(**CONTROL_CFG, stop_at_forget=0.99)  # ignored by the control: every step is run
    control = random_init_control(gpt2, forget, PROSE, cfg)
    assert list(control) == ["code", "code reversed"]
    full = ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**CONTROL_CFG), progress=False)
    for masks in control.values():
        assert masks.dims == ul.ModelDims.of(gpt2)
        assert (masks.n_mlp, masks.n_attn) == (full.masks.n_mlp, full.masks.n_attn)
    assert control == random_init_control(gpt2, forget, PROSE, cfg)  # seeded
    matrix = overlap_matrix(control)
    assert matrix.overall[0, 0].item() == 1.0 and 0.0 <= matrix.overall[0, 1].item() <= 1.0

    # like: each control run mirrors its run's config and number of steps
    runs = {
        "code": ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(**{**CONTROL_CFG, "n_steps": 1}), progress=False),
        "code reversed": full,
    }
    mirrored = random_init_control(gpt2, forget, PROSE, like=runs)
    for name, run in runs.items():
        assert (mirrored[name].n_mlp, mirrored[name].n_attn) == (run.masks.n_mlp, run.masks.n_attn)
    fig = overlap_figure(
        overlap_matrix(runs),
        controls={"random masks": overlap_matrix(random_control(runs)), "random init": overlap_matrix(mirrored)},
    )
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert [a.text for a in fig.layout.annotations][:3] == ["pruned units", "random masks", "random init"]


def test_random_init_control_errors(gpt2):
    cfg = ul.PruneConfig(**CONTROL_CFG)
    with pytest.raises(UnlearnLensError, match="at least two"):
        random_init_control(gpt2, {"code": CODE}, PROSE, cfg)
    with pytest.raises(UnlearnLensError, match="read once per forget set"):
        random_init_control(gpt2, {"a": CODE, "b": CODE}, iter(PROSE), cfg)
    with pytest.raises(UnlearnLensError, match="not both"):
        random_init_control(gpt2, {"a": CODE, "b": CODE}, PROSE, cfg, like={})
    with pytest.raises(UnlearnLensError, match="same runs"):
        random_init_control(gpt2, {"a": CODE, "b": CODE}, PROSE, like={"a": None})
    with pytest.raises(UnlearnLensError, match="PruneRun"):
        random_init_control(gpt2, {"a": CODE, "b": CODE}, PROSE, like={"a": None, "b": None})


def test_figure_controls_beside_control():
    m = overlap_matrix({"a": A, "b": B, "c": C})
    chance = overlap_matrix(random_control({"a": A, "b": B, "c": C}))
    fig = overlap_figure(m, chance, controls={"random init": m})
    assert [a.text for a in fig.layout.annotations][:3] == [
        "pruned units",
        "random control (same counts)",
        "random init",
    ]
    assert fig.data[2].xaxis == "x3"
    with pytest.raises(UnlearnLensError, match="OverlapMatrix"):
        overlap_figure(m, controls={"x": {"a": A}})  # type: ignore[dict-item]
    with pytest.raises(UnlearnLensError, match="two panels"):
        overlap_figure(m, chance, controls={"random control (same counts)": m})
