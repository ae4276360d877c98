"""The HTML report: content, self-containment, rebuilding from a run directory, the CLI, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _viz_support import tiny

import unlearn_lens as ul
from unlearn_lens.cli import main, write_run
from unlearn_lens.report import load_runs, top_units, write_report

N_FIGURES = 9  # effects, separability, 2 maps, heads, 2 distributions, 2 per-layer bars (attention was pruned)


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    return tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory, t):
    """The forget and retain texts as folders of .txt files (what results.json can name)."""
    root = tmp_path_factory.mktemp("texts")
    for name, texts in (("code", t.code), ("prose", t.prose)):
        folder = root / name
        folder.mkdir()
        for i in range(0, len(texts), 10):
            (folder / f"{i:03d}.txt").write_text("\n".join(texts[i : i + 10]), encoding="utf-8")
    return root / "code", root / "prose"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, t, text_dirs):
    """A run directory as `unlearn-lens prune` writes it."""
    out = tmp_path_factory.mktemp("run")
    extra = {"library": "unlearn_lens", "model": str(t.model_dir), "forget": str(text_dirs[0]),
             "retain": str(text_dirs[1]), "config": t.config.to_dict(), "seconds": 1.0}
    write_run(out, t.runs, extra)
    return out


@pytest.fixture(scope="module")
def memory_report(tmp_path_factory, t):
    out = tmp_path_factory.mktemp("memory-report")
    path = write_report(out, runs=t.runs, model=t.model, forget_texts=t.code, retain_texts=t.prose,
                        info={"model": "tiny-gpt2", "forget": "code", "retain": "prose"}, card_tokens=400)
    return path


def _figure_data(page: str) -> dict[str, list]:
    """{div id: trace list} of every Plotly.newPlot call of a page."""
    decoder = json.JSONDecoder()
    figures = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, _ = decoder.raw_decode(page, match.end())
        figures[match.group(1)] = data
    return figures


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, re.I), "no external scripts"
    assert not re.search(r"<link[^>]*\shref\s*=", page, re.I), "no external style sheets"
    assert not re.search(r"url\(\s*['\"]?https?:", page, re.I)
    assert page.count("* plotly.js v") == 1, "plotly.js is embedded exactly once"
    assert page.index("* plotly.js v") < page.index("Plotly.newPlot"), "plotly.js comes before the first figure"


def _summary_values(run) -> list[str]:
    return [f"{run.final.forget.top1:.4f}", f"{run.final.retain.top1:.4f}", f"{run.final.forget.topk:.4f}",
            f"{run.final.retain.loss:.4f}", f"{run.separability_area():.3f}", f"{run.base.forget.top1:.4f}"]


def _summary_table(page: str) -> str:
    return re.search(r'<table class="summary">.*?</table>', page, re.S).group(0)


def test_report_from_memory(memory_report, t):
    assert memory_report.name == "report.html" and memory_report.is_file()
    page = memory_report.read_text(encoding="utf-8")
    _assert_self_contained(page)
    figures = _figure_data(page)
    assert len(figures) == N_FIGURES
    assert set(figures) >= {"fig-effects", "fig-separability", "fig-map-mlp", "fig-heads", "fig-pl-mlp"}
    table = _summary_table(page)
    for run in t.runs.values():
        for value in _summary_values(run):
            assert value in table
    assert "<th>selective<br>" in table and "<th>random<br>" in table
    for key, value in t.config.to_dict().items():
        assert f"<td>{key}</td><td><code>{value}</code></td>" in page
    assert "tiny-gpt2" in page
    cards = re.findall(r'<div class="ul-card" data-layer="(\d+)" data-unit="(\d+)" data-kind="mlp">', page)
    assert [(int(a), int(b)) for a, b in cards] == top_units(t.run.initial_scores, 4)
    assert page.count("Top 5 contexts on forget") == 4 and page.count("Top 5 contexts on retain") == 4
    assert page.count("<style>") == 1, "the card style sheet is included once, in the head"


def test_top_units_are_the_highest_initial_scores(t):
    units = top_units(t.run.initial_scores, 5)
    values = [float(t.run.initial_scores.mlp[layer, unit]) for layer, unit in units]
    assert values == sorted(values, reverse=True)
    assert values[0] == float(t.run.initial_scores.mlp.max())
    assert len(set(units)) == 5


def test_report_from_run_dir_without_model(run_dir, t):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert len(_figure_data(page)) == N_FIGURES
    table = _summary_table(page)
    for run in t.runs.values():
        for value in _summary_values(run):
            assert value in table
    assert "No model was given, so there are no neuron cards" in page
    assert 'class="ul-card"' not in page
    assert str(t.model_dir) in page


def test_report_loads_model_from_results(run_dir, t):
    page = write_report(run_dir, load_model_from_results=True, n_cards=2, card_tokens=300,
                        device="cpu").read_text(encoding="utf-8")
    assert page.count('<div class="ul-card"') == 2
    assert "Top 5 contexts on retain" in page


def test_report_says_when_the_model_is_unavailable(run_dir, tmp_path):
    page = write_report(run_dir, model=str(tmp_path / "no-such-model")).read_text(encoding="utf-8")
    assert "is unavailable, so there are no neuron cards" in page
    assert "no-such-model" in page
    assert len(_figure_data(page)) == N_FIGURES


def test_load_runs_roundtrip(run_dir, t):
    results, runs = load_runs(run_dir)
    assert list(runs) == ["selective", "random"]
    assert results["model"] == str(t.model_dir)
    for name, run in runs.items():
        original = t.runs[name]
        assert run.masks == original.masks
        assert run.to_dict()["steps"] == original.to_dict()["steps"]
        assert run.separability_area() == pytest.approx(original.separability_area())
    sel = runs["selective"]
    assert sel.initial_scores.method == "abs"
    assert sel.initial_scores.mlp.equal(t.run.initial_scores.mlp.cpu())
    assert sel.forget_stats.n_tokens == t.run.forget_stats.n_tokens


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run_dir, dest)
    (dest / "report.html").unlink(missing_ok=True)
    return dest


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / "results.json").unlink(), "results.json"),
        (lambda d: (d / "results.json").write_text("{not json", encoding="utf-8"), "results.json"),
        (lambda d: (d / "results.json").write_text('{"model": "x"}', encoding="utf-8"), "results.json"),
        (lambda d: (d / "results.json").write_text('{"runs": {"selective": {"kind": "selective"}}}'), "results.json"),
        (lambda d: (d / "masks.safetensors").unlink(), "masks.safetensors"),
        (lambda d: (d / "random_masks.safetensors").write_bytes(b"garbage"), "random_masks.safetensors"),
        (lambda d: (d / "initial_scores.safetensors").write_bytes(b"\x00" * 64), "initial_scores.safetensors"),
        (lambda d: (d / "forget_stats.safetensors").write_bytes(b"junk"), "forget_stats.safetensors"),
    ],
    ids=["no-results", "bad-json", "no-runs", "incomplete-run", "no-masks", "bad-random-masks", "bad-scores",
         "bad-stats"],
)
def test_broken_run_dir_names_the_file(run_dir, tmp_path, damage, named):
    broken = _copy(run_dir, tmp_path)
    damage(broken)
    with pytest.raises(ul.UnlearnLensError, match=re.escape(named)):
        write_report(broken)
    assert not (broken / "report.html").exists()


def test_missing_run_dir(tmp_path):
    with pytest.raises(ul.UnlearnLensError, match="results.json"):
        write_report(tmp_path / "nothing-here")


def test_cli_report(run_dir, tmp_path, capsys):
    copy = _copy(run_dir, tmp_path)
    assert main(["report", str(copy), "--no-cards"]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert '<div class="ul-card"' not in page and len(_figure_data(page)) == N_FIGURES
    assert "Neuron cards were switched off" in page
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_cli_prune_writes_the_report(t, text_dirs, tmp_path, capsys):
    common = ["prune", "--model", str(t.model_dir), "--forget", str(text_dirs[0]), "--retain", str(text_dirs[1]),
              "--ff-frac", "0.1", "--steps", "1", "--collect-tokens", "300", "--eval-tokens", "300", "--quiet",
              "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "with")]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "with" / "report.html"
    assert f"report: {report}" in out
    page = report.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert page.count('<div class="ul-card"') == 4
    results = json.loads((tmp_path / "with" / "results.json").read_text())
    assert f"{results['runs']['selective']['summary']['separability_area']:.3f}" in _summary_table(page)
    assert main([*common, "--out", str(tmp_path / "without"), "--no-report"]) == 0
    assert "report:" not in capsys.readouterr().out
    assert (tmp_path / "without" / "results.json").is_file()
    assert not (tmp_path / "without" / "report.html").exists()


# --- a real browser ------------------------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        message = ("headless Chromium is needed to check that the report renders: install it "
                   "(Debian: apt-get install -y chromium) or point $CHROMIUM at the binary")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _rendered_traces(dom: str, div_id: str) -> tuple[bool, int]:
    """(has an SVG plot, number of drawn traces) of the plotly div ``div_id`` in a DOM dump."""
    start = dom.index(f'<div id="{div_id}"')
    nxt = dom.find('<div id="fig-', start + 1)
    block = dom[start : nxt if nxt != -1 else len(dom)]
    head = block[:300]
    has_svg = "js-plotly-plot" in head and 'class="main-svg"' in block
    traces = len(re.findall(r'<g class="trace[ "]', block)) + block.count('<g class="hm"')
    return has_svg, traces


@pytest.mark.browser
def test_report_renders_in_headless_chromium(memory_report, tmp_path):
    chromium = _chromium()
    screenshot = tmp_path / "report.png"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", "--window-size=1280,2000", f"--screenshot={screenshot}", "--dump-dom",
        memory_report.resolve().as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # No script errors and nothing logged to the console by the page (the report never logs).
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "\n".join(console)

    # Every figure was drawn: an SVG plot with as many traces as the figure has.
    dom = proc.stdout
    expected = _figure_data(memory_report.read_text(encoding="utf-8"))
    assert len(expected) == N_FIGURES
    for div_id, data in expected.items():
        has_svg, traces = _rendered_traces(dom, div_id)
        assert has_svg, f"{div_id} was not rendered"
        assert traces == len(data), f"{div_id}: {traces} traces drawn, {len(data)} expected"
    assert dom.count('<div class="ul-card"') == 4

    # The screenshot is a real page, not a blank one.
    from PIL import Image, ImageStat

    assert screenshot.is_file(), "Chromium wrote no screenshot"
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    grey = ImageStat.Stat(image.convert("L"))
    assert grey.stddev[0] > 15, f"screenshot looks blank (grey std {grey.stddev[0]:.1f})"
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "too few colours for a page with tables and plots"
    saturated = sum(count for count, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 60)
    assert saturated > 0.001 * 1280 * 2000, "no coloured plot lines or markers in view"
