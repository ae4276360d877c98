"""Per-unit sums of one batch of activations: the reductions behind every statistic.

Two ways to reduce a hook's activations to the six per-unit sums that
:class:`unlearn_lens.stats.RunningStats` merges (``sum(x - shift)``,
``sum((x - shift)^2)``, ``sum|x|``, ``sum sqrt|x|``, ``#(x > 0)``, ``max x``):

* :func:`batch_sums` (the eager path, the reference): the counted rows are first
  gathered into a dense ``[tokens, units]`` block, then each sum is one elementwise
  pass into a reused buffer and one column reduction. Fastest on CPU.
* :func:`masked_sums` (the fused path): the hook's whole activation
  ``[batch*pos, units]`` and a mask of the counted rows go to one function that
  reads each value once, casts it to float32 (or float64) in registers and
  accumulates all six sums; under ``torch.compile`` it becomes one fused reduction
  kernel, with no row gather and no float32 copy of a bf16/fp16 activation.
  The default on CUDA (``collect_stats(fused=None)``).

Both accumulate in float32 at least, whatever the model's dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float

__all__ = ["RowMask", "Workspace", "accumulation_dtype", "batch_sums", "masked_mean", "masked_sums"]

logger = logging.getLogger(__name__)

# sqrt is many times slower on exact zeros (common after a ReLU) than on tiny positive
# numbers; clamping |x| at 1e-30 first changes each term by at most 1e-15.
SQRT_FLOOR = 1e-30


class Workspace:
    """Scratch buffers reused across batches and layers, keyed by shape and dtype."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (name, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


@dataclass(frozen=True)
class RowMask:
    """Which rows of a hook's activation ``[rows, *units]`` count.

    Attributes:
        valid: ``[rows]`` bool, true for counted tokens (not BOS, not padding).
        count: the number of true entries (known to the caller, so no device sync).
        compiled: reduce with the compiled kernel (else the same function, eagerly).
    """

    valid: Bool[torch.Tensor, " rows"]
    count: int
    compiled: bool = True


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype for float32 and float64."""
    return torch.promote_types(dtype, torch.float32)


def batch_sums(
    x: Float[torch.Tensor, "tokens units"], shift: Float[torch.Tensor, " units"], workspace: Workspace | None
) -> Float[torch.Tensor, "6 units"]:
    """Per-unit sums of the counted rows ``x`` (float32 or float64), as one float64 tensor.

    Rows: ``sum(x - shift)``, ``sum((x - shift)^2)``, ``sum|x|``, ``sum sqrt|x|``,
    ``#(x > 0)`` and ``max x``. ``shift`` (in x's dtype) should be close to each
    unit's mean: the deviations are then small, so their squares keep full precision
    even when |mean| >> std, and the batch mean is ``shift + row0 / n``.

    Each sum is one elementwise pass into a reused buffer followed by one column
    reduction; the results land in one small buffer that is converted once.
    """
    work = workspace or Workspace()
    buf = work.get("buf", tuple(x.shape), x)
    sums = work.get("sums", (6, x.shape[1]), x)
    torch.sub(x, shift, out=buf)
    torch.sum(buf, 0, out=sums[0])
    buf.mul_(buf)
    torch.sum(buf, 0, out=sums[1])
    torch.abs(x, out=buf)
    torch.sum(buf, 0, out=sums[2])
    buf.clamp_(min=SQRT_FLOOR).sqrt_()
    torch.sum(buf, 0, out=sums[3])
    torch.gt(x, 0, out=buf)
    torch.sum(buf, 0, out=sums[4])
    torch.amax(x, 0, out=sums[5])
    return sums.to(torch.float64)


def _masked_sums(
    x: Float[torch.Tensor, "rows units"], valid: Bool[torch.Tensor, " rows"], shift: Float[torch.Tensor, " units"]
) -> Float[torch.Tensor, "6 units"]:
    xf = x.to(shift.dtype)
    keep = valid.unsqueeze(1)
    dev = torch.where(keep, xf - shift, 0.0)
    mag = xf.abs()
    return torch.stack(
        [
            dev.sum(0),
            (dev * dev).sum(0),
            torch.where(keep, mag, 0.0).sum(0),
            torch.where(keep, mag.clamp(min=SQRT_FLOOR).sqrt(), 0.0).sum(0),
            (keep & (xf > 0)).sum(0).to(shift.dtype),
            torch.where(keep, xf, float("-inf")).amax(0),
        ]
    )


_compiled: dict[str, Any] = {}


def _compiled_masked_sums() -> Any:
    fn = _compiled.get("masked_sums")
    if fn is None:
        # dynamic shapes: one graph per dtype serves every batch size and layer width
        fn = _compiled["masked_sums"] = torch.compile(_masked_sums, fullgraph=True, dynamic=True)
    return fn


def masked_sums(
    x: Float[torch.Tensor, "rows units"],
    valid: Bool[torch.Tensor, " rows"],
    shift: Float[torch.Tensor, " units"],
    *,
    compiled: bool = True,
) -> Float[torch.Tensor, "6 units"]:
    """The six per-unit sums of the rows of ``x`` where ``valid`` is true, as float64.

    Args:
        x: a hook's whole activation, any float dtype; rows not counted are skipped.
        valid: which rows count (BOS and padding do not).
        shift: a value near each unit's mean, in the accumulation dtype
            (:func:`accumulation_dtype` of ``x``), on ``x``'s device.
        compiled: run the reduction through ``torch.compile`` (one fused kernel); if
            it fails before it has ever run, a warning is logged once and the same
            function runs eagerly from then on (later errors are raised).
    """
    if compiled and not _compiled.get("failed"):
        try:
            # One grad mode, and tensors that are not views (a view's base, e.g. the whole
            # activation before the reshape, would add guards): no recompiles per batch.
            with torch.no_grad():
                out = _compiled_masked_sums()(x.detach(), valid.detach(), shift.detach())
            _compiled["worked"] = True
            return out.to(torch.float64)
        except Exception as exc:
            if _compiled.get("worked"):  # it compiled and ran before: a real error (out of memory, ...)
                raise
            # no compiler or backend for this device: stay correct, just slower
            _compiled["failed"] = True
            logger.warning(
                "torch.compile of the statistics reduction failed (%s: %s); reducing eagerly",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
    return _masked_sums(x, valid, shift).to(torch.float64)


def masked_mean(
    x: Float[torch.Tensor, "rows units"], valid: Bool[torch.Tensor, " rows"], count: int, dtype: torch.dtype
) -> Float[torch.Tensor, " units"]:
    """Mean over the counted rows, in ``dtype`` (the first batch's shift)."""
    return torch.where(valid.unsqueeze(1), x.to(dtype), 0.0).sum(0).div_(count)
