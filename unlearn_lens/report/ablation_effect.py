"""What ablating one unit alone does to the next-token log-probabilities of some token rows.

For a unit and a row of tokens, :func:`ablation_effects` runs the model twice on the row:
unpruned, and with that unit alone ablated at every position by the run's
:class:`~unlearn_lens.ablations.Ablation` (zero, its retain mean, its retain mode, or at
each position its value at a random retain token), and returns, at each position ``t``,
the change of ``log p(token t + 1 | tokens <= t)``. Negative values: ablating the unit
makes the actual next token less likely.

Many (unit, row) requests share one forward pass: each row of a batch carries its own
unit's ablation (a hook that overwrites that unit in that row only), and the unpruned
pass of a row is made once for every unit that asks for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from unlearn_lens.ablations import Ablation
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import attached, exclusive, model_device, model_dims
from unlearn_lens.report.display import Unit

__all__ = ["LOGIT_BUDGET", "ablation_effects", "next_token_logprobs"]

LOGIT_BUDGET = 2**25
"""Logits (batch x positions x vocabulary) one forward pass of :func:`ablation_effects` may hold, by default."""


@torch.no_grad()
def next_token_logprobs(model: Any, rows: Sequence[Int[torch.Tensor, " pos"]]) -> list[Float[torch.Tensor, " pos"]]:
    """``log p(token t + 1 | tokens <= t)`` at every position but the last of each row (float32, CPU).

    The rows are right-padded into one batch: a causal model's earlier positions never see the padding.
    """
    if not rows:
        return []
    width = max(int(r.numel()) for r in rows)
    device = model_device(model)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    logits = model(tokens.to(device)).float()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None].to(device)).squeeze(-1).cpu()
    return [logp[i, : int(r.numel()) - 1] for i, r in enumerate(rows)]


def _values(ablation: Ablation, unit: Unit, length: int, generator: torch.Generator) -> torch.Tensor:
    """What ``unit`` reads at each of ``length`` positions under ``ablation``."""
    method = ablation.methods[unit.kind]
    if method == "zero":
        return torch.zeros(length)
    if method == "resample":
        pool = getattr(ablation.sample, unit.kind)[:, unit.layer].reshape(ablation.sample.n, -1)[:, unit.index]
        return pool[torch.randint(pool.numel(), (length,), generator=generator)].float()
    value = ablation.constant(unit.kind)[unit.layer].reshape(-1)[unit.index]
    return torch.full((length,), float(value))


def _row_hooks(units: Sequence[Unit], values: torch.Tensor) -> list[tuple[str, Any]]:
    """Hooks that set, in batch row ``b``, unit ``units[b]`` to ``values[b]`` ``[pos]`` at every position."""
    by_hook: dict[str, list[int]] = {}
    for b, u in enumerate(units):
        by_hook.setdefault(u.hook, []).append(b)
    hooks = []
    for name, rows in by_hook.items():
        batch_rows = torch.tensor(rows)
        columns = torch.tensor([units[b].index for b in rows])

        def fn(activation: torch.Tensor, hook: Any, r: torch.Tensor = batch_rows, c: torch.Tensor = columns) -> Any:
            out = activation.clone(memory_format=torch.contiguous_format)  # hook_z may come strided
            flat = out.view(*out.shape[:2], -1)  # [batch pos units]
            pos = torch.arange(flat.shape[1], device=flat.device)
            new = values[r][:, : flat.shape[1]].to(device=flat.device, dtype=flat.dtype)
            flat[r.to(flat.device)[:, None], pos[None, :], c.to(flat.device)[:, None]] = new
            return out

        hooks.append((name, fn))
    return hooks


@torch.no_grad()
def ablation_effects(
    model: Any,
    ablation: Ablation,
    rows: Mapping[Hashable, Int[torch.Tensor, " pos"]],
    requests: Sequence[tuple[Unit, Hashable, int]],
    *,
    batch_size: int | None = None,
    seed: int = 0,
) -> list[Float[torch.Tensor, " pos"]]:
    """The change of next-token log-probability when one unit alone is ablated, for each request.

    Args:
        model: the unpruned model.
        ablation: the run's ablation (its retain values for mean, peak or resample).
        rows: token rows by key (each row as the model reads it: BOS first).
        requests: ``(unit, row key, length)``: run the first ``length`` tokens of the row with
            ``unit`` ablated at every position.
        batch_size: rows per forward pass (default: as many as keep the logits of a batch
            within :data:`LOGIT_BUDGET` numbers, at most 64).
        seed: seed of the resample draws.

    Returns:
        Per request ``[length - 1]`` float32: at position ``t``, ablated minus unpruned
        ``log p(token t + 1)``.

    Raises:
        UnlearnLensError: a request for a row that is not given, or longer than it.
    """
    for unit, key, length in requests:
        if key not in rows or not 2 <= length <= rows[key].numel():
            raise UnlearnLensError(f"ablation effect of {unit.label}: row {key!r} has no {length} tokens")
    ablation.check(model_dims(model), tuple(sorted({unit.kind for unit, _, _ in requests})))
    longest: dict[Hashable, int] = {}
    for _, key, length in requests:
        longest[key] = max(longest.get(key, 0), length)
    keys = list(longest)
    if batch_size is None:
        width = max(longest.values(), default=1)
        vocab = int(getattr(getattr(model, "cfg", None), "d_vocab", 0) or 50_000)
        batch_size = max(1, min(64, LOGIT_BUDGET // (width * vocab)))
    base: dict[Hashable, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i][2])  # similar lengths share a batch
    with exclusive(model, "ablation_effects"):
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            found = next_token_logprobs(model, [rows[k][: longest[k]] for k in chunk])
            base.update(zip(chunk, found))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            units = [requests[i][0] for i in chunk]
            tokens = [rows[requests[i][1]][: requests[i][2]] for i in chunk]
            width = max(t.numel() for t in tokens)
            values = torch.stack([_values(ablation, u, width, generator) for u in units])
            with attached(model, _row_hooks(units, values)):
                found = next_token_logprobs(model, tokens)
            for i, logp in zip(chunk, found):
                out[i] = logp - base[requests[i][1]][: logp.numel()]
    return [o for o in out if o is not None]
