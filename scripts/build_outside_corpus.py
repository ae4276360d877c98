"""Build the demo's second evaluation set: code and prose from sources the demo model never saw.

The demo model was trained on the Python standard library only. This script takes the
Python files of a few widely used, permissively licensed pure-Python packages installed
in the running environment, splits each into code (comments and docstrings removed) and
prose (its docstrings and comments) exactly as the demo corpora are split, and writes
``unlearn_lens/demo/data/{code,prose}-outside.jsonl.gz`` (rows ``{"path", "text"}``,
gzip without a timestamp) and each package's licence under ``unlearn_lens/demo/data/LICENSES/``.
It prints the SHA-256 of each file's uncompressed JSON lines, which the model card
records. ``load_texts("demo:code:outside")`` reads the result.

Usage::

    python scripts/build_outside_corpus.py
"""

from __future__ import annotations

import importlib.metadata as md
import tokenize
from pathlib import Path

from unlearn_lens.demo import PINNED_DIR, split_source, write_pinned_rows

# (distribution, import package): BSD, MIT or Apache licences, pure Python, none vendored from the standard library
PACKAGES = [
    ("jinja2", "jinja2"),
    ("click", "click"),
    ("idna", "idna"),
    ("urllib3", "urllib3"),
    ("packaging", "packaging"),
    ("attrs", "attr"),
    ("filelock", "filelock"),
]
MAX_CHARS = 400_000  # per domain: files are taken from the packages in turn until this much text is in


def _interleaved(per_package: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    """The files of every package in turn (first of each, then second of each, ...) up to MAX_CHARS characters."""
    out, total = [], 0
    for i in range(max(map(len, per_package), default=0)):
        for files in per_package:
            if i < len(files) and total < MAX_CHARS:
                out.append(files[i])
                total += len(files[i]["text"])
    return out


def main() -> None:
    per_package: dict[str, list[list[dict[str, str]]]] = {"code": [], "prose": []}
    licences = PINNED_DIR / "LICENSES"
    licences.mkdir(parents=True, exist_ok=True)
    for dist_name, package in PACKAGES:
        dist = md.distribution(dist_name)
        root = Path(dist.locate_file(package))
        rows: dict[str, list[dict[str, str]]] = {"code": [], "prose": []}
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).as_posix()
            if "/tests/" in rel or "/_vendor/" in rel:
                continue
            try:
                code, prose = split_source(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError):
                continue
            label = f"{dist_name}-{dist.version}/{rel}"
            if code.strip():
                rows["code"].append({"path": label, "text": code})
            if prose.strip():
                rows["prose"].append({"path": label, "text": prose})
        for domain in rows:
            per_package[domain].append(rows[domain])
        files = [f for f in (dist.files or []) if "licen" in f.name.lower() or "copying" in f.name.lower()]
        text = "\n\n".join(Path(dist.locate_file(f)).read_text(encoding="utf-8") for f in files)
        (licences / f"{dist_name}-{dist.version}.txt").write_text(
            text or f"{dist.metadata.get('License-Expression')}\n", encoding="utf-8"
        )
    for domain, packages in per_package.items():
        items = _interleaved(packages)
        name = f"{domain}-outside.jsonl.gz"
        digest = write_pinned_rows(PINNED_DIR / name, items)
        print(f"{name}: {len(items)} files, {sum(len(r['text']) for r in items):,} characters, sha256 {digest}")


if __name__ == "__main__":
    main()
