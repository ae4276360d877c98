"""Write the demo's pinned held-out splits (validation and test) into the package.

The demo model was trained on the ``train`` split of the standard library of CPython
3.11.7; the held-out files of that same library are shipped as data files
(``unlearn_lens/demo/data/{code,prose}-{validation,test}.jsonl.gz``), so that the
texts the demo reports on are the same on every Python version. Run this once, with
the interpreter the model was trained with; it prints the SHA-256 of every split (of
the uncompressed JSON lines), which the model card records and a test checks.

Usage::

    python scripts/pin_demo_corpus.py [--out unlearn_lens/demo/data]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearn_lens.demo import pin_heldout_corpus, pinned_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "unlearn_lens" / "demo" / "data"))
    args = parser.parse_args()
    if sys.version_info[:3] != (3, 11, 7):
        print(
            f"note: the demo model was trained on CPython 3.11.7's standard library, this is {sys.version.split()[0]}",
            file=sys.stderr,
        )
    checksums = pin_heldout_corpus(args.out)
    print(json.dumps(checksums, indent=2))
    for name in sorted(checksums):
        domain, part = name.removesuffix(".jsonl.gz").split("-")
        rows = pinned_rows(domain, part)
        print(f"{name}: {len(rows)} files, {sum(len(r['text']) for r in rows):,} characters")


if __name__ == "__main__":
    main()
