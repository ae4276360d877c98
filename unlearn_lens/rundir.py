"""A run directory as input: every file checked against ``results.json`` before any work.

A run directory is shared, downloaded and edited, so :meth:`PruneRun.load
<unlearn_lens.results.PruneRun.load>` treats it as input from someone else. Before any
tensor is allocated or any text is read, this module checks, per results format:

* ``results.json`` against one JSON schema (:data:`RESULTS_SCHEMA`): the type and range
  of every field, unit shapes within bounds (so no file can ask for a terabyte);
* every step record against the unit shapes and the records before it: per-layer
  counts of the right length, within the layer's units, each step's cumulative count the
  previous one plus its new units;
* every tensor file against the run: format 3 records the SHA-256 of each file it wrote
  and the model's fingerprint (:func:`~unlearn_lens.models.model_fingerprint`) in
  ``results.json`` and in every file, so a file of another run or another model is
  refused by name; format 2 (unlearn_lens 0.2) records the model's path in each file,
  which must agree with ``results.json``.

Errors name the file and the field (``run.history[2].mlp_counts``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unlearn_lens.ablations import ABLATIONS
from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "MAX_UNITS",
    "RESULTS_SCHEMA",
    "check_results",
    "check_tensor_files",
    "file_fingerprint",
    "file_sha256",
    "runs_of",
]

MAX_UNITS = 2**28
"""The most units of one kind (layers × units per layer) a run may describe."""

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_FINGERPRINT = {"type": "string", "pattern": "^sha256:[0-9a-f]{16}$"}
_COUNT = {"type": "integer", "minimum": 0}
_COUNTS = {"type": "array", "items": _COUNT}
_SOURCES = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ]
}
_SHARES = {
    "anyOf": [
        {"type": "null"},
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
    ]
}
_EVAL = {
    "type": "object",
    "required": ["top1", "topk", "loss", "perplexity", "n_tokens", "k"],
    "properties": {
        "top1": {"type": "number", "minimum": 0, "maximum": 1},
        "topk": {"type": "number", "minimum": 0, "maximum": 1},
        "loss": {"type": "number"},
        "perplexity": {"type": "number"},
        "n_tokens": _COUNT,
        "k": {"type": "integer", "minimum": 1},
        "all_tokens": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/eval"}]},
    },
}
_STEP = {
    "type": "object",
    "required": ["step", "new_mlp", "new_attn", "mlp_counts", "attn_counts", "forget", "retain"],
    "properties": {
        "step": _COUNT,
        "new_mlp": _COUNTS,
        "new_attn": _COUNTS,
        "mlp_counts": _COUNTS,
        "attn_counts": _COUNTS,
        "forget": {"$ref": "#/$defs/eval"},
        "retain": {"$ref": "#/$defs/eval"},
        "seconds": {"type": "number", "minimum": 0},
    },
}
_INFO = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "split": {"type": "string"},
        "text_field": {"type": "string"},
        "forget": _SOURCES,
        "retain": _SOURCES,
        "forget_shares": _SHARES,
        "retain_shares": _SHARES,
        "forget_field": {"type": "string"},
        "retain_field": {"type": "string"},
        "shuffle_seed": {"type": ["integer", "null"]},
        "shuffle_buffer": {"anyOf": [{"type": "null"}, _COUNT]},
        "baseline_seed": {"type": "integer"},
        "tokens_sha256": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                side: {"type": "array", "items": _SHA256, "minItems": 2, "maxItems": 2} for side in ("forget", "retain")
            },
        },
        "texts": {"type": "object"},
    },
}
_RUN = {
    "type": "object",
    "required": ["strategy", "dims", "config", "history"],
    "properties": {
        "strategy": {"enum": ["selective", "random"]},
        "model": {"type": "string"},
        "fingerprint": _FINGERPRINT,
        "version": {"type": "string"},
        "dims": {
            "type": "object",
            "required": ["n_layers", "d_mlp", "n_heads", "d_head"],
            "additionalProperties": False,
            "properties": {
                "n_layers": {"type": "integer", "minimum": 1, "maximum": 4096},
                "d_mlp": {"type": "integer", "minimum": 1, "maximum": 2**20},
                "n_heads": {"type": "integer", "minimum": 1, "maximum": 4096},
                "d_head": {"type": "integer", "minimum": 1, "maximum": 2**16},
            },
        },
        "config": {"type": "object"},
        "info": _INFO,
        "seconds": {"type": "number", "minimum": 0},
        "ablation": {
            "type": "object",
            "required": ["mlp", "attn"],
            "additionalProperties": False,
            "properties": {"mlp": {"enum": list(ABLATIONS)}, "attn": {"enum": list(ABLATIONS)}},
        },
        "summary": {"type": "object"},
        "history": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
    },
}
RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "run"],
    "properties": {
        "library": {"const": "unlearn_lens"},
        "format": {"type": "integer"},
        "version": {"type": "string"},
        "run": {"$ref": "#/$defs/run"},
        "baseline": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/run"}]},
        "baselines": {"type": "array", "items": {"$ref": "#/$defs/run"}},
        "files": {"type": "object", "additionalProperties": _SHA256},
    },
    "$defs": {"run": _RUN, "step": _STEP, "eval": _EVAL},
}
"""The JSON schema of ``results.json`` (format 3; format 2 is read after renaming its fields)."""


def _where(path: Any) -> str:
    """A JSON path as ``run.history[2].mlp_counts``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def runs_of(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(field, run)`` for the run, its first baseline and each further baseline of a results file."""
    yield "run", data["run"]
    if data.get("baseline") is not None:
        yield "baseline", data["baseline"]
    for i, extra in enumerate(data.get("baselines") or []):
        yield f"baselines[{i}]", extra


def _check_history(name: str, run: dict[str, Any]) -> None:
    """Step records that fit the unit shapes and follow from one another."""
    dims = run["dims"]
    n_layers = dims["n_layers"]
    limits = {"mlp": dims["d_mlp"], "attn": dims["n_heads"] * dims["d_head"]}
    before = {"mlp": [0] * n_layers, "attn": [0] * n_layers}
    for i, step in enumerate(run["history"]):
        where = f"{name}.history[{i}]"
        if step["step"] != i:
            raise UnlearnLensError(f"{where}.step: expected {i}, got {step['step']}")
        for kind, limit in limits.items():
            new, counts = step[f"new_{kind}"], step[f"{kind}_counts"]
            for field, values in ((f"new_{kind}", new), (f"{kind}_counts", counts)):
                if len(values) != n_layers:
                    raise UnlearnLensError(
                        f"{where}.{field}: expected {n_layers} values (one per layer), got {len(values)}"
                    )
                if max(values, default=0) > limit:
                    raise UnlearnLensError(f"{where}.{field}: a layer has only {limit} units, got {max(values)}")
            if [b + n for b, n in zip(before[kind], new)] != counts:
                raise UnlearnLensError(f"{where}.{kind}_counts: not the previous step's counts plus new_{kind}")
            before[kind] = counts


def check_results(data: Any, source: str) -> dict[str, Any]:
    """Check a results file (already in format-3 names) against the schema and itself.

    Args:
        data: the parsed ``results.json``.
        source: the file, for messages.

    Returns:
        ``data``, checked.

    Raises:
        UnlearnLensError: naming the file and the first field that is wrong.
    """
    import jsonschema

    for name, run in runs_of(data) if isinstance(data, dict) and isinstance(data.get("run"), dict) else ():
        if isinstance(run, dict) and run.get("history") == []:
            raise UnlearnLensError(
                f"file {source!r}: {name}.history: the run has no steps (not even the unpruned model)"
            )
    validator = jsonschema.Draft202012Validator(RESULTS_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise UnlearnLensError(f"file {source!r}: {_where(error.absolute_path)}: {error.message}")
    try:
        main = data["run"]
        for name, run in runs_of(data):
            units = {"mlp": run["dims"]["n_layers"] * run["dims"]["d_mlp"]}
            units["attn"] = run["dims"]["n_layers"] * run["dims"]["n_heads"] * run["dims"]["d_head"]
            if max(units.values()) > MAX_UNITS:
                raise UnlearnLensError(f"{name}.dims: {units} units, more than the {MAX_UNITS:,} a run may describe")
            if run["dims"] != main["dims"]:
                raise UnlearnLensError(f"{name}.dims: {run['dims']} differ from the run's {main['dims']}")
            if name != "run" and len(run["history"]) != len(main["history"]):
                raise UnlearnLensError(
                    f"{name}.history: {len(run['history'])} steps, the run has {len(main['history'])}"
                )
            _check_history(name, run)
            info = run.get("info") or {}
            for side in ("forget", "retain"):
                shares, sources = info.get(f"{side}_shares"), info.get(side)
                n_sources = len(sources) if isinstance(sources, list) else 1
                if shares is not None and len(shares) != n_sources:
                    raise UnlearnLensError(f"{name}.info.{side}_shares: {len(shares)} shares for {n_sources} sources")
        seeds = [b.get("info", {}).get("baseline_seed") for name, b in runs_of(data) if name != "run"]
        if len(set(map(str, seeds))) < len(seeds):
            raise UnlearnLensError(f"baselines: the random baselines share a seed ({seeds})")
    except UnlearnLensError as exc:
        raise UnlearnLensError(f"file {source!r}: {exc}") from None
    return data


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _header(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= 1 << 24:
            raise UnlearnLensError(f"file {str(path)!r} is not a readable safetensors file (header size {size})")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnlearnLensError(f"file {str(path)!r} is not a readable safetensors file: {exc}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def file_fingerprint(path: str | Path) -> tuple[str | None, str | None]:
    """``(fingerprint, model)`` that a tensor file of a run records (None where it records none).

    Format 3 files record the model's fingerprint (in their metadata, their ``meta`` or
    their scoring ``config``); format-2 files record the model's name or path in ``meta``.
    """
    metadata = _header(Path(path))
    found: dict[str, Any] = {"fingerprint": metadata.get("fingerprint")}
    for key in ("meta", "config"):
        try:
            inner = json.loads(metadata.get(key, "{}"))
        except json.JSONDecodeError:
            inner = {}
        if isinstance(inner, dict):
            found.setdefault("model", inner.get("model"))
            found["fingerprint"] = found["fingerprint"] or inner.get("fingerprint")
    fingerprint, model = found["fingerprint"], found.get("model")
    return (fingerprint if isinstance(fingerprint, str) else None, model if isinstance(model, str) else None)


def check_tensor_files(directory: Path, data: dict[str, Any], names: list[str]) -> None:
    """Check that each tensor file ``names`` of a run directory is the one the run wrote, for its model.

    Format 3: the file's fingerprint must be the run's and its SHA-256 the one
    ``results.json`` lists under ``files``. Format 2: the model a file names must be the
    run's. Files absent from the directory are left to the caller.

    Raises:
        UnlearnLensError: naming the file and what does not fit.
    """
    run = data["run"]
    listed = data.get("files")
    for name in sorted(listed or {}):
        if not (directory / name).is_file():
            raise UnlearnLensError(f"file {str(directory / name)!r} is missing: results.json lists it")
    for name in names:
        path = directory / name
        if not path.is_file():
            continue
        fingerprint, model = file_fingerprint(path)
        if listed is None:  # format 2: files name the model by path
            if model is not None and run.get("model") and model != run["model"]:
                raise UnlearnLensError(
                    f"file {str(path)!r} was made for the model {model!r}, not this run's {run['model']!r}"
                )
            continue
        if run.get("fingerprint") and fingerprint != run["fingerprint"]:
            raise UnlearnLensError(
                f"file {str(path)!r} was made for another model (fingerprint {fingerprint}, this run's is "
                f"{run.get('fingerprint')})"
            )
        if name not in listed:
            raise UnlearnLensError(f"file {str(path)!r} is not one this run wrote (results.json does not list it)")
        if file_sha256(path) != listed[name]:
            raise UnlearnLensError(
                f"file {str(path)!r} is not the one this run wrote (its SHA-256 differs from results.json's)"
            )
