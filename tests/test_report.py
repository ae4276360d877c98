"""The HTML report: content, self-containment, rebuilding from a run directory, the CLI, and a real browser."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _viz_support import forget_falling, interpolated_retain, tiny
from conftest import chromium

import unlearn_lens as ul
from unlearn_lens.cli import main
from unlearn_lens.pipeline import run_tokens
from unlearn_lens.report.html import write_report
from unlearn_lens.scoring import top_units

N_FIGURES = 9  # effects, separability, 2 maps, heads, 2 distributions, 2 per-layer bars (attention was pruned)
HEADLINE = "retain top-1 at forget top-1 = 50 %"
AREA = "separability area (top-1)"


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    return tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory, t):
    """The forget and retain texts as folders of .txt files (what a run's data sources can name)."""
    root = tmp_path_factory.mktemp("texts")
    for name, texts in (("code", t.code), ("prose", t.prose)):
        folder = root / name
        folder.mkdir()
        for i in range(0, len(texts), 10):
            (folder / f"{i:03d}.txt").write_text("\n".join(texts[i : i + 10]), encoding="utf-8")
    return root / "code", root / "prose"


@pytest.fixture(scope="module")
def run(t, text_dirs):
    """The tiny selective run (with its random baseline) and the data sources the command line records."""
    info = {
        "model": str(t.model_dir),
        "forget": str(text_dirs[0]),
        "retain": str(text_dirs[1]),
        "forget_field": "text",
        "retain_field": "text",
        "split": "train",
        "texts": t.run.info["texts"],
    }
    # as the command line records them: the checksum of the tokens these sources give
    named = dataclasses.replace(t.run, info=info)
    info["tokens_sha256"] = {
        key: [part.sha256() for part in run_tokens(named, t.model, key, trust_sources=True)]
        for key in ("forget", "retain")
    }
    return dataclasses.replace(t.run, info=info)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, run):
    """The run directory, as `unlearn-lens prune` writes it (PruneRun.save)."""
    return run.save(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def memory_report(tmp_path_factory, run, t):
    out = tmp_path_factory.mktemp("memory-report")
    return write_report(run, out, model=t.model, forget_texts=t.code, retain_texts=t.prose, card_tokens=400)


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
    assert page.index("* plotly.js v") < page.index("</head>") < page.index("Plotly.newPlot"), (
        "plotly.js is in the head, before the first figure"
    )


def _summary_table(page: str) -> str:
    return re.search(r'<table class="summary">.*?</table>', page, re.S).group(0)


_CELL = re.compile(r'<td(?: class="[^"]*")?(?: data-value="([^"]*)")?>(.*?)</td>', re.S)


def _summary_rows(page: str) -> dict[str, list[tuple[str, str, float | None]]]:
    """{row label: [(text, bracketed text, exact value or None) per run]} of the summary table.

    Rows of the forget and retain groups are named "forget top-1 accuracy", "retain loss (nats)", ...
    """
    rows, group = {}, ""
    for cls, row in re.findall(r'<tr(?: class="(\w+)")?>(.*?)</tr>', _summary_table(page), re.S):
        if cls == "group":
            group = re.sub(r"<[^>]+>", "", row).split()[0]
            continue
        cells = _CELL.findall(row)
        if not cells:
            continue
        label = html.unescape(re.sub(r'<div class="def">.*?</div>', "", cells[0][1]))
        parsed = []
        for value, body in cells[2:]:
            text, _, rel = body.partition('<span class="rel">(')
            parsed.append(
                (html.unescape(text), html.unescape(rel.removesuffix(")</span>")), float(value) if value else None)
            )
        rows[f"{group} {label}" if group in ("forget", "retain") else label] = parsed
    return rows


def _row_definition(page: str, label: str) -> str:
    return re.search(re.escape(label) + r'<div class="def">(.*?)</div>', _summary_table(page), re.S).group(1)


def _assert_summary_numbers(page: str, runs: dict) -> None:
    rows = _summary_rows(page)
    for i, r in enumerate(runs.values()):
        for label, metric, fmt in (
            ("top-1 accuracy", "top1", ".4f"),
            ("top-10 accuracy", "topk", ".4f"),
            ("loss (nats)", "loss", ".4f"),
            ("perplexity", "perplexity", ".2f"),
        ):
            for dataset in ("forget", "retain"):
                value, unpruned = (getattr(getattr(step, dataset), metric) for step in (r.final, r.base))
                assert rows[f"{dataset} {label}"][i] == (f"{value:{fmt}}", f"{value / unpruned:.0%}", value)
        text, rel, value = rows[AREA][i]
        assert value == r.separability_area() and text == f"{value:.3f}"
        assert rel == f"stopped with forget at {r.relative_path()[0][-1]:.0%} after step {r.final.step}"
        assert rows["steps"][i][0] == str(len(r.history) - 1)
        assert rows["MLP neurons"][i][:2] == (f"{r.final.n_mlp:,}", f"{r.final.n_mlp / r.dims.n_mlp:.1%}")


# --- content --------------------------------------------------------------------------------------------------


def test_report_from_memory(memory_report, run, t):
    assert memory_report.name == "report.html" and memory_report.is_file()
    page = memory_report.read_text(encoding="utf-8")
    _assert_self_contained(page)
    figures = _figure_data(page)
    assert len(figures) == N_FIGURES
    assert set(figures) >= {"fig-effects", "fig-separability", "fig-map-mlp", "fig-heads", "fig-pl-mlp"}
    table = _summary_table(page)
    assert "<th>selective<br>" in table and "<th>random<br>" in table
    _assert_summary_numbers(page, run.runs())
    for key, value in t.config.to_dict().items():
        assert f"<td>{key}</td><td><code>{value}</code></td>" in page
    assert f"<td>forget dataset</td><td><code>{run.info['forget']}</code></td>" in page
    spans = run.info["texts"]["retain"]["statistics"]
    assert re.search(
        rf"<td>retain texts</td><td><code>statistics: {spans[0]['tokens']:,} tokens from texts 0–"
        r"\d+ of [^<]*evaluation: [^<]*texts shared: 0</code></td>",
        page,
    )
    assert f"<title>Selective pruning report: {t.model_dir}</title>" in page
    cards = re.findall(r'<div class="ul-card" data-layer="(\d+)" data-unit="(\d+)" data-kind="mlp">', page)
    assert [(int(a), int(b)) for a, b in cards] == top_units(t.run.initial_scores, 4)
    assert page.count("Top 5 contexts on forget") == 4 and page.count("Top 5 contexts on retain") == 4
    assert page.count("<style>") == 1, "the card style sheet is included once, in the head"
    # Every step of both runs is in the step tables.
    for name, r in run.runs().items():
        steps = re.search(rf"Step by step: {name} run</summary>(.*?)</details>", page, re.S).group(1)
        values = [float(v) for v in re.findall(r'data-value="([^"]+)"', steps)]
        assert values == [
            getattr(getattr(s, ds), m)
            for s in r.history
            for ds in ("forget", "retain")
            for m in ("top1", "topk", "loss")
        ]


def test_report_headline_is_retain_where_forget_halves(t, tmp_path):
    run = forget_falling(t.run, (0.8, 0.3))  # the untrained model never halves forget; see _viz_support
    expected = interpolated_retain(run, 0.5)
    assert expected is not None
    page = write_report(run, tmp_path, n_cards=0).read_text(encoding="utf-8")
    rows = _summary_rows(page)
    (selective, random) = rows[HEADLINE]
    assert selective[2] == pytest.approx(expected, abs=1e-12)
    assert selective[0] == f"{expected:.1%}"
    assert selective[1] == f"top-1 {expected * run.base.retain.top1:.4f}"
    # The random baseline does not get there; the table says so, with where it stopped.
    assert run.baseline.retain_at_forget(0.5) is None
    x_last = run.baseline.relative_path()[0][-1]
    assert random == ("not reached", f"forget at {x_last:.0%} after step {run.baseline.final.step}", None)
    # The headline is the first row of the table; the area comes with its definition and its dependence on the stop.
    assert list(rows)[:2] == [HEADLINE, AREA]
    definition = _row_definition(page, AREA)
    assert "closed by a straight line from the last step to (0, 0)" in definition
    assert "depends on where the run stopped" in definition
    assert rows[AREA][0][2] == run.separability_area() != t.run.separability_area()
    # The separability figure marks the same point.
    sep = _figure_data(page)["fig-separability"]
    (star,) = [tr for tr in sep if tr.get("marker", {}).get("symbol") == "star"]
    assert star["x"] == [0.5] and star["y"][0] == pytest.approx(expected, abs=1e-12)


def test_report_headline_not_reached_on_the_real_runs(memory_report, run):
    rows = _summary_rows(memory_report.read_text(encoding="utf-8"))
    for cells, r in zip(rows[HEADLINE], run.runs().values()):
        assert r.retain_at_forget(0.5) is None
        assert cells == ("not reached", f"forget at {r.relative_path()[0][-1]:.0%} after step {r.final.step}", None)


def test_report_escapes_data_sources(run, tmp_path):
    evil = dataclasses.replace(run, info={**run.info, "forget": "<script>alert(1)</script>"})
    page = write_report(evil, tmp_path, n_cards=0).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def _comparable(page: str) -> str:
    """The page without what may differ between two writes: the meta line (time, directory) and timings."""
    page = re.sub(r'<div class="meta">.*?</div>', "", page, count=1, flags=re.S)
    page = re.sub(r'<td class="secs">[^<]*</td>', "", page)
    return re.sub(r"<tr><td>run time \(\w+\)</td><td><code>[^<]*</code></td></tr>", "", page)


def test_report_from_run_dir_equals_report_from_memory(memory_report, run_dir, run, t, tmp_path):
    rebuilt = write_report(
        run_dir, tmp_path / "rebuilt", model=t.model, forget_texts=t.code, retain_texts=t.prose, card_tokens=400
    )
    assert rebuilt == tmp_path / "rebuilt" / "report.html"
    memory, disk = memory_report.read_text(encoding="utf-8"), rebuilt.read_text(encoding="utf-8")
    assert _summary_rows(disk) == _summary_rows(memory)
    assert _figure_data(disk) == _figure_data(memory)
    assert _comparable(disk) == _comparable(memory)
    assert _comparable(disk) != disk and disk.count('<div class="ul-card"') == 4
    _assert_summary_numbers(disk, run.runs())


def test_report_from_run_dir_without_model(run_dir, run):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert len(_figure_data(page)) == N_FIGURES
    _assert_summary_numbers(page, run.runs())
    assert "No model was given, so there are no neuron cards" in page
    assert "<code>unlearn-lens report RUN_DIR</code>" in page
    assert 'class="ul-card"' not in page
    assert run.info["model"] in page


def test_report_loads_model_and_texts_named_in_the_run(run_dir, t):
    page = write_report(run_dir, load_model_from_results=True, n_cards=2, card_tokens=300, device="cpu").read_text(
        encoding="utf-8"
    )
    cards = re.findall(r'<div class="ul-card" data-layer="(\d+)" data-unit="(\d+)"', page)
    assert [(int(a), int(b)) for a, b in cards] == top_units(t.run.initial_scores, 2)
    assert page.count("Top 5 contexts on forget") == 2 and page.count("Top 5 contexts on retain") == 2


def test_report_says_when_the_model_is_unavailable(run_dir, tmp_path):
    page = write_report(run_dir, tmp_path, model=str(tmp_path / "no-such-model")).read_text(encoding="utf-8")
    assert "is unavailable, so there are no neuron cards" in page
    assert "no-such-model" in page
    assert len(_figure_data(page)) == N_FIGURES


def test_report_says_when_the_texts_are_unavailable(run, t, tmp_path):
    lost = dataclasses.replace(run, info={**run.info, "forget": str(tmp_path / "gone")})
    page = write_report(lost, tmp_path, model=t.model).read_text(encoding="utf-8")
    assert "The forget texts are unavailable, so there are no neuron cards" in page
    assert "gone" in page and 'class="ul-card"' not in page
    bare = dataclasses.replace(run, info={})
    page = write_report(bare, tmp_path, model=t.model).read_text(encoding="utf-8")
    assert "none named in the run&#39;s data sources" in page


def test_write_report_needs_a_directory_for_a_run_in_memory(run):
    with pytest.raises(ul.UnlearnLensError, match="out_dir"):
        write_report(run)
    with pytest.raises(ul.UnlearnLensError, match="PruneRun or a run directory"):
        write_report(42, "somewhere")


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
        (lambda d: (d / "results.json").write_text('{"format": 2, "run": {"strategy": "selective"}}'), "results.json"),
        (lambda d: (d / "masks.safetensors").unlink(), "masks.safetensors"),
        (lambda d: (d / "baseline_masks.safetensors").write_bytes(b"garbage"), "baseline_masks.safetensors"),
        (lambda d: (d / "initial_scores.safetensors").write_bytes(b"\x00" * 64), "initial_scores.safetensors"),
        (lambda d: (d / "forget_stats.safetensors").write_bytes(b"junk"), "forget_stats.safetensors"),
    ],
    ids=[
        "no-results",
        "bad-json",
        "old-format",
        "incomplete-run",
        "no-masks",
        "bad-baseline-masks",
        "bad-scores",
        "bad-stats",
    ],
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


# --- command line ---------------------------------------------------------------------------------------------


def test_cli_report(run_dir, run, tmp_path, capsys):
    copy = _copy(run_dir, tmp_path)
    assert main(["report", str(copy), "--no-cards"]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert '<div class="ul-card"' not in page and len(_figure_data(page)) == N_FIGURES
    assert "Neuron cards were switched off" in page
    _assert_summary_numbers(page, run.runs())
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_cli_report_loads_the_model(run_dir, t, tmp_path, capsys):
    copy = _copy(run_dir, tmp_path)
    assert main(["report", str(copy), "--device", "cpu"]) == 0
    page = (copy / "report.html").read_text(encoding="utf-8")
    cards = re.findall(r'<div class="ul-card" data-layer="(\d+)" data-unit="(\d+)"', page)
    assert [(int(a), int(b)) for a, b in cards] == top_units(t.run.initial_scores, 4)


def test_cli_prune_writes_the_report(t, text_dirs, tmp_path, capsys):
    common = [
        "prune",
        "--model",
        str(t.model_dir),
        "--forget",
        str(text_dirs[0]),
        "--retain",
        str(text_dirs[1]),
        "--mlp-frac",
        "0.1",
        "--n-steps",
        "1",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "300",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main([*common, "--out", str(tmp_path / "with")]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "with" / "report.html"
    assert f"report: {report}" in out
    page = report.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert page.count('<div class="ul-card"') == 4
    saved = ul.PruneRun.load(tmp_path / "with")
    rows = _summary_rows(page)
    assert [cells[2] for cells in rows[AREA]] == [r.separability_area() for r in saved.runs().values()]
    results = json.loads((tmp_path / "with" / "results.json").read_text())
    assert rows[AREA][0][2] == results["run"]["summary"]["separability_area"]
    assert main([*common, "--out", str(tmp_path / "without"), "--no-report"]) == 0
    assert "report:" not in capsys.readouterr().out
    assert (tmp_path / "without" / "results.json").is_file()
    assert not (tmp_path / "without" / "report.html").exists()


# --- a real browser ------------------------------------------------------------------------------------------


def _rendered_traces(dom: str, div_id: str) -> tuple[bool, int]:
    """(has an SVG plot, number of drawn traces) of the plotly div ``div_id`` in a DOM dump."""
    start = dom.index(f'<div id="{div_id}"')
    nxt = dom.find('<div id="fig-', start + 1)
    block = dom[start : nxt if nxt != -1 else len(dom)]
    head = block[:300]
    has_svg = "js-plotly-plot" in head and 'class="main-svg"' in block
    traces = len(re.findall(r'<g class="trace[ "]', block)) + block.count('<g class="hm"')
    return has_svg, traces


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(memory_report, tmp_path):
    screenshot = tmp_path / "report.png"
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--window-size=1280,2000",
        f"--screenshot={screenshot}",
        "--dump-dom",
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
