"""Check a built documentation site: its links lead somewhere, it fetches nothing, and the API is all there.

Usage::

    python docs/check_site.py docs/_build/html

Three checks, each listing every failure it finds:

* **internal links**: every ``href`` and ``src`` of every page that points inside the site
  names a file that exists, and a ``#fragment`` names an element ``id`` of that page;
* **nothing fetched**: no page loads a script, style sheet, image or frame from another
  host (links a reader clicks may lead anywhere);
* **the API**: every name of ``unlearn_lens.__all__`` has an entry in the site's object
  inventory (``objects.inv``), under ``unlearn_lens.NAME`` or, for a sub-package, its
  module name.

Exits with 1 and the list of problems if any check fails, 0 otherwise.
"""

from __future__ import annotations

import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Attributes that make the browser fetch something when the page loads, by tag.
FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src"}


class _Page(HTMLParser):
    """The ids, the links and the fetched resources of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.fetched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "name" in values:
            self.ids.add(values["name"])
        for attr in ("href", "src"):
            if attr in values:
                self.links.append(values[attr])
        if tag in FETCHED and FETCHED[tag] in values:
            self.fetched.append(values[FETCHED[tag]])
        if tag == "link" and "stylesheet" in values.get("rel", "") and "href" in values:
            self.fetched.append(values["href"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def check_links(site: Path) -> list[str]:
    """Broken internal links and resources fetched from another host, one line each."""
    pages = {p.resolve(): _parse(p) for p in sorted(site.rglob("*.html"))}
    problems = []
    for path, page in pages.items():
        where = path.relative_to(site.resolve())
        for url in page.fetched:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                problems.append(f"{where}: fetches {url} from another host")
        for url in page.links:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                continue  # http(s):, mailto:, data: and the like: not part of the site
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{where}: {url} leads to no file")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html" and fragment not in pages[target].ids:
                problems.append(f"{where}: {url} names no element of {target.relative_to(site.resolve())}")
    return problems


def inventory(site: Path) -> set[str]:
    """The names of the site's object inventory (``objects.inv``, format 2)."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four plain-text header lines, then the zlib-compressed entries
        header_end = data.index(b"\n", header_end) + 1
    if not data.startswith(b"# Sphinx inventory version 2"):
        raise SystemExit(f"error: {site / 'objects.inv'} is not a Sphinx inventory of version 2")
    lines = zlib.decompress(data[header_end:]).decode("utf-8").splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def undocumented(documented: set[str]) -> list[str]:
    """The public names of ``unlearn_lens`` not in ``documented`` (``unlearn_lens.NAME``, or a sub-package's module)."""
    import unlearn_lens as ul

    missing = []
    for name in ul.__all__:
        if name == "__version__":
            continue
        obj = getattr(ul, name)
        wanted = {f"unlearn_lens.{name}"} | ({obj.__name__} if isinstance(obj, type(ul)) else set())
        if not wanted & documented:
            missing.append(f"unlearn_lens.{name} has no entry in the API pages")
    return missing


def check_api(site: Path) -> list[str]:
    """The public names of ``unlearn_lens`` that have no entry in the site's inventory."""
    return undocumented(inventory(site))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python docs/check_site.py BUILT_SITE_DIR", file=sys.stderr)
        return 2
    site = Path(args[0])
    if not (site / "index.html").is_file():
        print(f"error: {site} holds no built site (no index.html); build it with sphinx first", file=sys.stderr)
        return 2
    problems = check_links(site) + check_api(site)
    n_pages = sum(1 for _ in site.rglob("*.html"))
    if problems:
        print(f"{len(problems)} problems in the site at {site}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{site}: {n_pages} pages, every internal link resolves, nothing fetched, every public name documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
