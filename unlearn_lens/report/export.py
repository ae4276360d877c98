"""Dashboards of a run directory, written as JSON lines: the layout of this package, or Neuronpedia's.

:func:`export_dashboards` is ``unlearn-lens dashboards``: it loads the run (``PruneRun.load``),
the model it names and its texts (read again from the run's sources and checked against the
run's checksums, as the report reads them), makes the dashboard of every chosen unit
(:func:`~unlearn_lens.report.dashboards.unit_dashboards`) and writes them, one JSON object
per line: one record per unit (:data:`~unlearn_lens.report.dashboards.FIELDS`), or with
``fmt="neuronpedia"`` one SAEDashboard batch per layer and unit kind
(:mod:`~unlearn_lens.report.neuronpedia`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unlearn_lens._io import write_text
from unlearn_lens.data import default_seq_len
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.report.dashboards import DashboardConfig, choose_units, unit_dashboards
from unlearn_lens.report.html import card_inputs
from unlearn_lens.report.neuronpedia import neuronpedia_batches
from unlearn_lens.results import PruneRun

__all__ = ["EXPORT_FORMATS", "export_dashboards"]

EXPORT_FORMATS = ("unlearn_lens", "neuronpedia")
"""``unlearn_lens``: one dashboard record per line; ``neuronpedia``: one SAEDashboard batch per layer and kind."""


def export_dashboards(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    units: str = "pruned,top:200",
    fmt: str = "unlearn_lens",
    model: Any = None,
    device: str | None = None,
    config: DashboardConfig | None = None,
    trust_sources: bool = False,
) -> tuple[Path, int]:
    """Write the dashboards of a run directory's units to ``out``, one JSON object per line.

    Args:
        run_dir: a directory written by ``unlearn-lens prune`` (or :meth:`PruneRun.save`).
        out: the file to write (atomically).
        units: which units (:func:`~unlearn_lens.report.dashboards.choose_units`): ``pruned``,
            ``top:N``, ``all`` or unit names, comma-separated.
        fmt: one of :data:`EXPORT_FORMATS`.
        model: the model, or a name or directory to load it from (default: the one the run names).
        device: device for a model loaded here.
        config: what each dashboard holds (default :class:`DashboardConfig`).
        trust_sources: as :func:`unlearn_lens.write_report`.

    Returns:
        ``(path, number of units)``.

    Raises:
        UnlearnLensError: an unknown format or unit, or the model or texts cannot be had.
    """
    if fmt not in EXPORT_FORMATS:
        raise UnlearnLensError(f"unknown dashboard format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    config = config or DashboardConfig()
    run = PruneRun.load(run_dir)
    chosen = choose_units(run, units)  # a bad spec fails before the model is loaded
    inputs = card_inputs(run, model, None, None, True, device, config.max_tokens or 20_000, trust_sources)
    if inputs.note is not None:
        raise UnlearnLensError(str(inputs.note).replace("there are no neuron cards", "no dashboards can be made"))
    records = unit_dashboards(run, inputs.model, inputs.forget, inputs.retain, chosen, config)
    lines: list[Any] = records
    if fmt == "neuronpedia":
        lines = neuronpedia_batches(
            records,
            model_id=str(run.info.get("model") or run.model or "model"),
            dataset=str(run.info.get("forget") or "forget"),
            row_length=config.seq_len or run.config.seq_len or default_seq_len(inputs.model),
        )
    path = Path(out)
    write_text(path, "".join(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n" for line in lines))
    return path, len(records)
