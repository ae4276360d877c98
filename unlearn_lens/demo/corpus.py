"""The bundled demo: corpora built offline from the Python standard library, and the demo model.

The demo needs no network. Its two domains are cut from the source files of the
running interpreter's standard library, which every Python installation carries:

* ``code``: Python source with every comment and docstring removed;
* ``prose``: the English text of those docstrings and comments (comment blocks of
  four or more words; doctest examples are dropped, as they are code).

Files are split by a hash of their path relative to the standard library root:
one file in ten is held out, the rest is ``train`` (what the demo model was trained
on). Test packages, ``idlelib``, ``lib2to3``, installed third-party packages and
files that do not parse are skipped.

The held-out files of CPython 3.11.7 (the interpreter the model was trained with)
ship with the package (``unlearn_lens/demo/data/``), cut in two by another hash of the path:
``validation`` (the demo's settings were chosen on it) and ``test`` (what the demo
reports, and what ``"demo:code"`` / ``"demo:prose"`` mean), so they are the same on
every Python version; ``heldout`` is both. The ``train`` split is rebuilt from the
running interpreter's standard library and cached under the user cache directory
(``$XDG_CACHE_HOME/unlearn_lens`` or ``~/.cache/unlearn_lens``).

The demo model (``unlearn_lens/demo/model/``, loaded with ``load_model("demo")``) is a
small GPT-2-style model with ReLU MLPs trained by ``scripts/train_demo_model.py``
on the ``train`` split of both domains.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import inspect
import io
import json
import logging
import os
import re
import sys
import sysconfig
import tokenize
from pathlib import Path

from unlearn_lens._io import write_text
from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "DEMO_DOMAINS",
    "DEMO_MODEL_DIR",
    "DEMO_SPLITS",
    "PINNED_DIR",
    "PINNED_SPLITS",
    "build_demo_corpus",
    "demo_model_dir",
    "demo_texts",
    "docstring_prose",
    "pin_heldout_corpus",
    "pinned_rows",
    "split_source",
    "write_pinned_rows",
]

logger = logging.getLogger(__name__)

DEMO_DOMAINS = ("code", "prose")
DEMO_SPLITS = ("train", "validation", "test", "heldout", "outside")
PINNED_SPLITS = ("validation", "test")
# Bump when the extraction rules change, so stale caches are rebuilt.
_CORPUS_VERSION = "3"
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
}
_HELDOUT_EVERY = 10
_MIN_COMMENT_WORDS = 4
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
PINNED_DIR = Path(__file__).resolve().parent / "data"


def demo_model_dir() -> Path:
    """Directory of the bundled demo model (HF format), package data of :mod:`unlearn_lens.demo`."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise UnlearnLensError(
            f"the demo model is not available: {str(DEMO_MODEL_DIR)!r} has no config.json. "
            "Train it with `python scripts/train_demo_model.py`."
        )
    return DEMO_MODEL_DIR


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _docstring_nodes(tree: ast.Module) -> list[ast.Expr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and _is_docstring(node.body[0]):
                found.append(node.body[0])
    return found


def docstring_prose(text: str) -> str:
    """The prose paragraphs of a cleaned docstring.

    Doctest examples (a ``>>>`` line up to the next blank line) and reST literal
    blocks (the indented lines after a paragraph ending in ``::``) are code and
    are dropped, and so is any paragraph that does not read as prose.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    literal_indent: int | None = None
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.startswith(">>>") or (current and current[0].startswith(">>>")):
            current.append(stripped)
            if not stripped:
                current = []
            continue
        if not stripped:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(stripped)
        if stripped.endswith("::"):
            literal_indent = indent
            paragraphs.append(" ".join(current)[:-1])
            current = []
    return "\n\n".join(p for p in paragraphs if _is_prose(p))


def _is_prose(text: str) -> bool:
    words = _WORD.findall(text)
    if len(words) < _MIN_COMMENT_WORDS:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters >= 0.8 * len(text)


def split_source(source: str) -> tuple[str, str]:
    """Split one Python file into its code and its English prose.

    Args:
        source: the text of a Python module.

    Returns:
        ``(code, prose)``: the source with comments and docstrings removed, and
        the docstrings and comment blocks (of four or more words) as paragraphs
        separated by blank lines.

    Raises:
        SyntaxError, tokenize.TokenError, ValueError: the file does not parse.
    """
    tree = ast.parse(source)
    doc_lines: set[int] = set()
    paragraphs: list[str] = []
    for node in _docstring_nodes(tree):
        doc_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        text = docstring_prose(inspect.cleandoc(node.value.value))  # type: ignore[attr-defined]
        if text:
            paragraphs.append(text)

    lines = source.splitlines(keepends=True)
    cuts: dict[int, list[tuple[int, int]]] = {}
    comment_block: list[str] = []
    last_comment_row = -2

    def flush() -> None:
        text = " ".join(comment_block).strip()
        if _is_prose(text):
            paragraphs.append(text)
        comment_block.clear()

    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        (srow, scol), (erow, ecol) = tok.start, tok.end
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not (text.startswith("!") or ("coding" in text[:20] and ":" in text)):
                # comments on consecutive lines form one paragraph
                if srow != last_comment_row + 1:
                    flush()
                comment_block.append(text)
                last_comment_row = srow
            cuts.setdefault(srow, []).append((scol, len(lines[srow - 1].rstrip("\r\n"))))
        elif tok.type == tokenize.STRING and srow in doc_lines:
            for row in range(srow, erow + 1):
                start = scol if row == srow else 0
                end = ecol if row == erow else len(lines[row - 1].rstrip("\r\n"))
                cuts.setdefault(row, []).append((start, end))
    flush()
    return _without_cuts(lines, cuts), "\n\n".join(paragraphs)


def _without_cuts(lines: list[str], cuts: dict[int, list[tuple[int, int]]]) -> str:
    """The source less the column ranges cut from each row (1-based); a line left blank by its cuts is dropped."""
    out: list[str] = []
    for row, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if row in cuts:
            for start, end in sorted(cuts[row], reverse=True):
                line = line[:start] + line[end:]
            if not line.strip():
                continue
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


# reST directives whose body is code, markup or a list of links, never prose
def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                files.append(Path(dirpath) / name)
    return files


def _split_of(relpath: str) -> str:
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % _HELDOUT_EVERY == 0 else "train"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = "py{}.{}.{}-v{}".format(*sys.version_info[:3], _CORPUS_VERSION)
    return Path(base) / "unlearn_lens" / f"demo-corpus-{tag}"


def _corpus_files(root: Path) -> tuple[list[tuple[str, str, str, str]], int]:
    """``(relative path, split, code, prose)`` of every standard library file that parses, in path order."""
    files = []
    skipped = 0
    for path in _stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
            code, prose = split_source(source)
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError, IndentationError):
            skipped += 1
            continue
        files.append((rel, _split_of(rel), code, prose))
    return files, skipped


def _heldout_files(root: Path) -> dict[str, list[tuple[str, str]]]:
    """``{domain: [(relative path, text), ...]}`` of the held-out files, as :func:`build_demo_corpus` keeps them."""
    files, skipped = _corpus_files(root)
    logger.info("demo corpus: %d files skipped (did not parse)", skipped)
    out: dict[str, list[tuple[str, str]]] = {}
    for i, domain in enumerate(DEMO_DOMAINS):
        # Some files share text (e.g. the codec tables in encodings/): a held-out text is
        # never also a training text, nor repeated.
        seen = {f[2 + i] for f in files if f[1] == "train"}
        out[domain] = []
        for rel, split, *texts in files:
            text = texts[i]
            if split == "heldout" and text.strip() and text not in seen:
                seen.add(text)
                out[domain].append((rel, text))
    return out


def build_demo_corpus(root: Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Build both domains and both splits from a standard library tree.

    Args:
        root: the standard library directory (default: the running interpreter's).

    Returns:
        ``corpus[domain][split]`` for ``split`` in ``("train", "heldout")``: one text
        per source file, in sorted path order; files whose code or prose is empty
        contribute nothing to that domain.
    """
    root = (root or _stdlib_root()).resolve()
    files, _ = _corpus_files(root)
    heldout = _heldout_files(root)
    return {
        domain: {
            "train": [f[2 + i] for f in files if f[1] == "train" and f[2 + i].strip()],
            "heldout": [text for _, text in heldout[domain]],
        }
        for i, domain in enumerate(DEMO_DOMAINS)
    }


def _walk_order(relpath: str) -> list[tuple[int, str]]:
    """Sort key of a path in the order :func:`_stdlib_files` walks: a folder's files, then its subfolders."""
    *folders, name = relpath.split("/")
    return [(1, folder) for folder in folders] + [(0, name)]


def _part_of(relpath: str) -> str:
    """Which half of the held-out files a file belongs to: ``validation`` or ``test``."""
    return "test" if hashlib.sha256(relpath.encode("utf-8")).digest()[0] % 2 else "validation"


def pin_heldout_corpus(out_dir: str | os.PathLike, root: Path | None = None) -> dict[str, str]:
    """Write the held-out files of a standard library tree as the pinned validation and test splits.

    Each ``{domain}-{part}.jsonl.gz`` holds rows ``{"path", "text"}`` in path order,
    gzip-compressed without a timestamp, so the same tree gives the same bytes.

    Args:
        out_dir: the folder to write into.
        root: the standard library directory (default: the running interpreter's).

    Returns:
        The SHA-256 of each split's uncompressed JSON lines, by file name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for domain, rows in _heldout_files((root or _stdlib_root()).resolve()).items():
        for part in PINNED_SPLITS:
            name = f"{domain}-{part}.jsonl.gz"
            checksums[name] = write_pinned_rows(
                out / name, [{"path": rel, "text": text} for rel, text in rows if _part_of(rel) == part]
            )
    return checksums


def write_pinned_rows(path: str | os.PathLike, rows: list[dict[str, str]]) -> str:
    """Write rows as gzip-compressed JSON lines without a timestamp (the same rows give the same bytes).

    Returns:
        The SHA-256 of the uncompressed JSON lines (what the model card records).
    """
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(lines)
    Path(path).write_bytes(buf.getvalue())
    return hashlib.sha256(lines).hexdigest()


def pinned_rows(domain: str, part: str) -> list[dict[str, str]]:
    """The rows ``{"path", "text"}`` of a pinned split (``part``: ``validation``, ``test`` or ``outside``)."""
    path = PINNED_DIR / f"{domain}-{part}.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    except (OSError, json.JSONDecodeError) as exc:
        raise UnlearnLensError(
            f"the pinned demo corpus file {str(path)!r} is missing or corrupt ({exc}); reinstall unlearn_lens"
        ) from exc


def _load_or_build() -> dict[str, dict[str, list[str]]]:
    cache = _cache_dir()
    path = cache / "corpus.json"
    if path.is_file():
        try:
            with path.open(encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            logger.warning("demo corpus cache %s is unreadable; rebuilding it", path)
    logger.info("building the demo corpus from %s (cached in %s)", _stdlib_root(), cache)
    corpus = build_demo_corpus()
    try:
        write_text(path, json.dumps(corpus))
    except OSError as exc:  # a read-only cache is not fatal
        logger.warning("could not cache the demo corpus in %s: %s", cache, exc)
    return corpus


_CORPUS: dict[str, dict[str, list[str]]] | None = None


def demo_texts(domain: str, split: str = "test") -> list[str]:
    """Texts of one demo domain.

    Args:
        domain: ``"code"`` or ``"prose"``.
        split: ``"test"`` (default: what the demo reports), ``"validation"`` (what
            the demo's settings were chosen on), ``"heldout"`` (both, in path order),
            ``"train"`` (what the demo model was trained on, rebuilt from the running
            interpreter's standard library), or ``"outside"`` (code and prose of a few
            third-party packages, sources the model never saw; see
            ``scripts/build_outside_corpus.py``).

    Returns:
        One text per standard library file of that split.
    """
    global _CORPUS
    if domain not in DEMO_DOMAINS:
        raise UnlearnLensError(f"unknown demo domain {domain!r}; choose one of {DEMO_DOMAINS}")
    if split not in DEMO_SPLITS:
        raise UnlearnLensError(f"unknown demo split {split!r}; choose one of {DEMO_SPLITS}")
    if split in (*PINNED_SPLITS, "outside"):
        return [row["text"] for row in pinned_rows(domain, split)]
    if split == "heldout":
        rows = pinned_rows(domain, "validation") + pinned_rows(domain, "test")
        return [row["text"] for row in sorted(rows, key=lambda row: _walk_order(row["path"]))]
    if _CORPUS is None:
        _CORPUS = _load_or_build()
    return list(_CORPUS[domain][split])
