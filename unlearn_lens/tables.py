"""Plain-text tables for the terminal: a run against its baseline, and the cells of a sweep."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_table", "sweep_table"]


def summary_table(run: Any, level: float = 0.5) -> str:
    """A one-screen text table: the unpruned model vs the final step of the run and of its baseline."""
    runs = run.runs()
    base = run.base
    rows: list[list[str]] = [["", "unpruned", *runs]]

    def rel(value: float, ref: float) -> str:
        return f"{value:.4f} ({value / ref:.0%})" if ref else f"{value:.4f}"

    rows.append(["steps", "0", *[str(len(r.history) - 1) for r in runs.values()]])
    rows.append(["MLP neurons pruned", "0%", *[f"{r.final.n_mlp / r.dims.n_mlp:.1%}" for r in runs.values()]])
    rows.append(["attention neurons pruned", "0%", *[f"{r.final.n_attn / r.dims.n_attn:.1%}" for r in runs.values()]])
    skipped = base.forget.all_tokens is not None
    for dataset in ("forget", "retain"):
        for metric in ("top1", "topk", "loss"):
            b = getattr(getattr(base, dataset), metric)
            label = f"{dataset} {metric if metric != 'topk' else f'top{base.forget.k}'}"
            label += f" (w/o {run.config.skip_common} most common)" if skipped else ""
            rows.append([label, f"{b:.4f}", *[rel(getattr(getattr(r.final, dataset), metric), b) for r in runs.values()]])
        for metric in ("top1", "topk") if skipped else ():
            b = getattr(getattr(base, dataset).all_tokens, metric)
            label = f"{dataset} {metric if metric != 'topk' else f'top{base.forget.k}'} (all tokens)"
            rows.append([label, f"{b:.4f}", *[rel(getattr(getattr(r.final, dataset).all_tokens, metric), b)
                                              for r in runs.values()]])
    headline = []
    for r in runs.values():
        value = r.retain_at_forget(level)
        headline.append(f"{value:.1%}" if value is not None else f"not reached ({r.relative_path()[0][-1]:.0%})")
    rows.append([f"retain top1 at forget top1 = {level:.0%}", "-", *headline])
    rows.append(["separability area (to last step)", "-", *[f"{r.separability_area():.3f}" for r in runs.values()]])
    return aligned(rows, n_left=1)


def aligned(rows: list[list[str]], n_left: int) -> str:
    """Rows as text columns (the first ``n_left`` left-aligned, the rest right-aligned), a rule under the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def sweep_table(result: Any) -> str:
    """One line per cell of a :class:`~unlearn_lens.sweep.Sweep`: the headline, the area, the steps run."""
    rows = [["ablation", "scoring", f"retain at forget {result.level:.0%}", "area", "steps"]]
    for r in result.table():
        value = r["retain_at_forget"]
        rows.append([r["ablation"], r["scoring"], f"{value:.1%}" if value is not None else
                     f"not reached ({r['forget_rel']:.0%})", f"{r['separability_area']:.3f}", str(r["steps"])])
    return aligned(rows, n_left=2)
