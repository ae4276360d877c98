"""The two per-unit batch reductions against float64 references: gathered rows, and masked in place."""

from __future__ import annotations

import logging

import pytest
import torch

from unlearn_lens import kernels


def reference(x: torch.Tensor, valid: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    rows = x[valid].double()
    mag = rows.abs()
    return torch.stack(
        [
            (rows - shift.double()).sum(0),
            ((rows - shift.double()) ** 2).sum(0),
            mag.sum(0),
            mag.sqrt().sum(0),
            (rows > 0).double().sum(0),
            rows.amax(0),
        ]
    )


def activations(dtype: torch.dtype, rows: int = 300, units: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, units, generator=gen).relu_() * 3 + torch.arange(units) - 2  # zeros, negatives, offsets
    x[:, 0] = -5.0  # a unit never positive
    valid = torch.rand(rows, generator=gen) > 0.2
    x[~valid] = 1e4  # rows that must not count: they would dominate every sum and the max
    return x.to(dtype), valid


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_masked_sums_equal_float64_reference(dtype, compiled):
    x, valid = activations(dtype)
    acc = kernels.accumulation_dtype(dtype)
    assert acc == torch.float32
    shift = kernels.masked_mean(x, valid, int(valid.sum()), acc)
    got = kernels.masked_sums(x, valid, shift, compiled=compiled)
    assert not kernels._compiled.get("failed"), "torch.compile should work on this machine"
    assert got.dtype == torch.float64 and got.shape == (6, 7)
    ref = reference(x, valid, shift)
    # the sums are over the (already rounded) half-precision values, accumulated in float32
    torch.testing.assert_close(got[2:], ref[2:], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[:2], ref[:2], rtol=1e-4, atol=1e-3)
    assert (got[4, 0] == 0) and got[5, 0] == -5.0


def test_masked_sums_equal_gathered_batch_sums():
    x, valid = activations(torch.float32)
    shift = x[valid].mean(0)
    gathered = kernels.batch_sums(x[valid].contiguous(), shift, kernels.Workspace())
    torch.testing.assert_close(kernels.masked_sums(x, valid, shift, compiled=False), gathered, rtol=1e-5, atol=1e-4)


def test_float64_activations_stay_float64():
    x, valid = activations(torch.float64)
    assert kernels.accumulation_dtype(torch.float64) == torch.float64
    shift = kernels.masked_mean(x, valid, int(valid.sum()), torch.float64)
    torch.testing.assert_close(
        kernels.masked_sums(x, valid, shift, compiled=False), reference(x, valid, shift), rtol=1e-12, atol=1e-9
    )


def test_a_failed_compile_falls_back_to_the_eager_reduction(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no backend for this device")

    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    x, valid = activations(torch.float32)
    shift = x[valid].mean(0)
    with caplog.at_level(logging.WARNING, logger="unlearn_lens.kernels"):
        got = kernels.masked_sums(x, valid, shift)
        again = kernels.masked_sums(x, valid, shift)
    assert sum("torch.compile" in r.getMessage() for r in caplog.records) == 1
    assert "no backend for this device" in caplog.text
    torch.testing.assert_close(got, reference(x, valid, shift), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(again, got)


def test_errors_after_a_successful_compile_are_raised(monkeypatch):
    calls = []

    def flaky(fn, **kwargs):
        def run(*args):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            return fn(*args)

        return run

    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(torch, "compile", flaky)
    x, valid = activations(torch.float32)
    shift = x[valid].mean(0)
    kernels.masked_sums(x, valid, shift)
    with pytest.raises(RuntimeError, match="out of memory"):
        kernels.masked_sums(x, valid, shift)
    assert not kernels._compiled.get("failed")
