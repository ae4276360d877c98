"""Compare two run directories: every metric of every step (all seeds), the config, and every tensor.

Made to check that a change to the code leaves a run's numbers as they were: the
run of results format 2 or 3 on one side, the same command on the other. Step
records are compared field by field under format-3 names (``frac_mlp`` is
``mlp_frac``, a summary's ``steps`` is ``n_steps``), wall times left out; the
safetensors files are compared tensor by tensor, byte for byte, and their metadata
is listed where it differs.

Usage::

    python scripts/compare_runs.py BEFORE_DIR AFTER_DIR

Exits 1 if a number or a tensor differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open

RENAMED = {"frac_mlp": "mlp_frac", "frac_attn": "attn_frac", "steps": "n_steps"}


def _runs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs = [("run", results["run"]), ("baseline", results.get("baseline"))]
    runs += [(f"baselines[{i}]", r) for i, r in enumerate(results.get("baselines") or [])]
    return [(name, run) for name, run in runs if run]


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {RENAMED.get(k, k): v for k, v in record.items() if k != "seconds"}


def compare_records(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Differences between the step records, summaries and configs of two results files."""
    problems = []
    pairs = list(zip(_runs(before), _runs(after)))
    if len(_runs(before)) != len(_runs(after)):
        problems.append(f"{len(_runs(before))} runs against {len(_runs(after))}")
    for (name, a), (_, b) in pairs:
        steps_a, steps_b = a.get("history", a.get("steps")), b.get("history", b.get("steps"))
        if len(steps_a) != len(steps_b):
            problems.append(f"{name}: {len(steps_a)} steps against {len(steps_b)}")
        for x, y in zip(map(_plain, steps_a), map(_plain, steps_b)):
            changed = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            if changed:
                problems.append(f"{name} step {x.get('step')}: {changed} differ")
        if _plain(a["summary"]) != _plain(b["summary"]):
            problems.append(f"{name}: the summaries differ")
        changed = sorted(k for k in a["config"].keys() | b["config"].keys() if a["config"].get(k) != b["config"].get(k))
        added = {k: b["config"][k] for k in changed if k not in a["config"]}
        if added:  # settings introduced after BEFORE was written: reported, not a difference of the run
            print(f"{name}: config fields new since BEFORE: {added}")
        if set(changed) - set(added):
            problems.append(f"{name}: config fields {sorted(set(changed) - set(added))} differ")
        print(f"{name}: {len(steps_a)} steps compared")
    return problems


def compare_tensors(before: Path, after: Path) -> list[str]:
    """Differences between the safetensors files of two run directories, tensor by tensor."""
    problems = []
    names = sorted({p.name for p in before.glob("*.safetensors")} | {p.name for p in after.glob("*.safetensors")})
    for name in names:
        if not (before / name).is_file() or not (after / name).is_file():
            problems.append(f"{name}: in one directory only")
            continue
        with safe_open(before / name, "pt") as x, safe_open(after / name, "pt") as y:
            keys = sorted(x.keys())
            same = keys == sorted(y.keys()) and all(
                x.get_tensor(k).numpy().tobytes() == y.get_tensor(k).numpy().tobytes() for k in keys
            )
            meta_x, meta_y = x.metadata() or {}, y.metadata() or {}
        meta = sorted(k for k in meta_x.keys() | meta_y.keys() if meta_x.get(k) != meta_y.get(k))
        print(
            f"{name:36s} {len(keys):3d} tensors {'byte-identical' if same else 'DIFFERENT'}; metadata differs in {meta}"
        )
        if not same:
            problems.append(f"{name}: the tensors differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    a = json.loads((args.before / "results.json").read_text())
    b = json.loads((args.after / "results.json").read_text())
    print(f"results format {a['format']} -> {b['format']}")
    problems = compare_records(a, b) + compare_tensors(args.before, args.after)
    print("\n".join(problems) if problems else "every number and every tensor is the same")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
