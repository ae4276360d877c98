"""Memory and time to tokenise a token budget from a local source, against the source's size.

Writes one ``.jsonl`` source per row count (rows of about 100 characters of English),
then, each in a fresh process, opens it with ``unlearn_lens.sources.iter_texts`` and
packs the first ``--tokens`` tokens with the demo model's tokenizer, as the pruning
loop does. It prints the rows read, the seconds to the packed tokens and the peak
resident memory, beside the same process that only loads the tokenizer. A lazy reader
reads the same rows and uses the same memory whatever the size of the source.

Usage::

    python benchmarks/stream_memory.py [--rows 10000 10000000] [--tokens 40000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from transformers import AutoTokenizer
from unlearn_lens.data import tokenize_texts
from unlearn_lens.models import demo_model_dir
from unlearn_lens.sources import iter_texts

tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
rows = 0
if sys.argv[1] != "-":
    stream = iter_texts(sys.argv[1])
    tokens = tokenize_texts(tokenizer, stream, seq_len=128, max_tokens=int(sys.argv[2]))
    rows = stream.n_rows
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows_read": rows, "seconds": seconds, "peak_mib": peak, "tokenizer_only_mib": before}))
"""

SENTENCES = [
    "The library opens at nine and closes late on Thursdays and Fridays, said the note on the door.",
    "Rain fell over the city all night, and the streets were quiet and shining at dawn.",
    "She wrote a long letter to her grandmother about the summer they spent in the mountains.",
]


def write_source(path: Path, n_rows: int) -> None:
    if path.exists():
        return
    with path.open("w", encoding="utf-8") as f:
        chunk = []
        for i in range(n_rows):
            chunk.append(json.dumps({"text": f"{SENTENCES[i % 3]} ({i})"}) + "\n")
            if len(chunk) == 100_000:
                f.writelines(chunk)
                chunk = []
        f.writelines(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 10_000_000])
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--dir", help="where to keep the sources (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for n_rows in args.rows:
            path = folder / f"rows-{n_rows}.jsonl"
            write_source(path, n_rows)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(args.tokens)], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            size = path.stat().st_size / 2**20
            print(
                f"{n_rows:>12,} rows ({size:8.1f} MiB): {result['rows_read']:,} rows read, "
                f"{result['seconds']:.2f} s, peak RSS {result['peak_mib']:.1f} MiB "
                f"(tokenizer alone {result['tokenizer_only_mib']:.1f} MiB)"
            )


if __name__ == "__main__":
    main()
