"""The neuron explorer: streamed top-k against a naive reference, every unit covered, the pruned-step record,
the report section, and a real browser (search, sort, contexts, 10^5 units)."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from _viz_support import tiny
from conftest import chromium

import unlearn_lens as ul
from unlearn_lens.models import ModelDims
from unlearn_lens.report.cards import _capture, _resolve_unit
from unlearn_lens.report.explorer import explorer_css, explorer_data, explorer_html, top_activations, unit_order
from unlearn_lens.report.html import write_report
from unlearn_lens.results import PRUNED_STEP_FILE


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    return tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def data(t):
    return explorer_data(t.run, t.model, t.code, t.prose, max_tokens=600)


def _steps_from_history(run) -> list[int]:
    """The step that pruned each unit, in the explorer's order, from the history's cumulative masks."""
    out = []
    for kind, layer, unit in unit_order(run.dims):
        found = 0
        for s in run.history[1:]:
            m = s.masks.mlp[layer, unit] if kind == "mlp" else s.masks.attn[layer].reshape(-1)[unit]
            if bool(m):
                found = s.step
                break
        out.append(found)
    return out


# --- the data -------------------------------------------------------------------------------------------------


def test_streamed_top_k_matches_a_naive_reference(t):
    """Top-k values, positions and windows of every unit equal torch.topk over the full activations."""
    k, before, after = 6, 3, 2
    top = top_activations(t.model, t.code, k=k, context=(before, after), max_tokens=600, batch_size=3)
    tokens, dims = top.tokens, ul.models.model_dims(t.model)
    assert tokens.n_tokens == 600 and len(tokens) > 3, "several batches are merged"
    units = [_resolve_unit(t.model, kind, layer, unit) for kind, layer, unit in unit_order(dims)]
    full = _capture(t.model, tokens, units, batch_size=3)  # [rows pos] per unit: the naive reference
    width = tokens.tokens.shape[1]
    assert top.values.shape == top.positions.shape == (dims.n_mlp + dims.n_attn, k)
    for u, acts in enumerate(full):
        flat = acts.masked_fill(~tokens.valid, -math.inf).reshape(-1)
        values, _ = torch.topk(flat, k)
        torch.testing.assert_close(top.values[u], values, rtol=1e-6, atol=1e-7)
        assert (top.positions[u] >= 0).all()
        torch.testing.assert_close(flat[top.positions[u]], top.values[u], rtol=1e-6, atol=1e-7)
        assert len(set(top.positions[u].tolist())) == k
        for j, p in enumerate(top.positions[u].tolist()):
            row, pos = divmod(p, width)
            expected = [
                float(acts[row, c]) if 0 <= c < width and bool(tokens.valid[row, c]) else math.nan
                for c in range(pos - before, pos + after + 1)
            ]
            torch.testing.assert_close(top.windows[u, j], torch.tensor(expected), equal_nan=True, rtol=1e-6, atol=1e-7)
    # The statistics of the same pass are collect_stats'.
    ref = ul.collect_stats(t.model, tokens, max_tokens=None, batch_size=3, progress=False)
    for name in ("mean", "abs_mean", "freq", "max"):
        torch.testing.assert_close(getattr(top.stats.mlp, name), getattr(ref.mlp, name))
        torch.testing.assert_close(getattr(top.stats.attn, name), getattr(ref.attn, name))


def test_explorer_data_covers_every_unit(t, data):
    run, dims = t.run, t.run.dims
    n = dims.n_mlp + dims.n_attn
    order = unit_order(dims)
    assert len(order) == n == len(set(order))
    assert (
        order[0] == ("mlp", 0, 0)
        and order[dims.n_mlp] == ("attn", 0, 0)
        and order[-1] == ("attn", dims.n_layers - 1, dims.n_heads * dims.d_head - 1)
    )
    assert data["dims"] == dims.to_dict() and data["step_known"] is True and data["last_step"] == run.final.step
    assert len(data["score"]) == len(data["step"]) == len(data["scale"]) == n
    nc, (before, after) = data["n_contexts"], data["window"]
    for s in data["sets"]:
        assert len(s["mean"]) == len(s["abs_mean"]) == len(s["freq"]) == n
        assert len(s["pos"]) == len(s["act"]) == n * nc and len(s["win"]) == n * nc * (before + after + 1)
        assert len(s["tok"]) % s["width"] == 0 and s["n_tokens"] == 600
    # Score and kind/layer/unit of every unit, in order.
    scores = run.initial_scores
    for i, (kind, layer, unit) in enumerate(order):
        value = scores.mlp[layer, unit] if kind == "mlp" else scores.attn[layer].reshape(-1)[unit]
        assert data["score"][i] == pytest.approx(float(value), rel=1e-3)
    # Pruned steps: those of the history's masks, and the run's final masks.
    assert data["step"] == _steps_from_history(run)
    pruned = torch.cat([run.masks.mlp.reshape(-1), run.masks.attn.reshape(-1)])
    assert [s != 0 for s in data["step"]] == pruned.tolist() and 0 < sum(pruned.tolist()) < n
    assert {s for s in data["step"]} == set(range(run.final.step + 1))
    # Contexts: real activations at real tokens, distinct stretches, the window centre at its level.
    forget = data["sets"][0]
    top = top_activations(
        t.model, t.code, k=12, context=(before, after), max_tokens=600, batch_size=run.config.batch_size
    )
    for i in range(n):
        positions = [p for p in forget["pos"][i * nc : (i + 1) * nc] if p >= 0]
        assert positions and forget["act"][i * nc] == pytest.approx(float(top.values[i, 0]), rel=1e-3)
        for j, p in enumerate(positions):
            assert forget["tok"][p] >= 0
            assert forget["act"][i * nc + j] == pytest.approx(float(top.values[i][top.positions[i] == p][0]), rel=1e-3)
            centre = forget["win"][(i * nc + j) * (before + after + 1) + before]
            level = "abcdefghijklmnopqrstuvwxy".index(centre) - data["levels"]
            assert abs(level - forget["act"][i * nc + j] / data["scale"][i] * data["levels"]) < 0.51
            for q in positions[:j]:
                assert q // forget["width"] != p // forget["width"] or abs(q - p) > before
    json.dumps(data, allow_nan=False)


def test_pruned_step_round_trips_and_old_run_dirs_still_load(t, tmp_path):
    for run in (t.run, t.random_run):
        mlp, attn = run.pruned_step
        assert torch.cat([mlp.reshape(-1), attn.reshape(-1)]).tolist() == _steps_from_history(run)
    out = t.run.save(tmp_path / "run")
    assert (out / PRUNED_STEP_FILE).is_file()
    back = ul.PruneRun.load(out)
    assert all(s.masks is None for s in back.history), "history masks are not saved; the record is"
    assert all(torch.equal(a, b) for a, b in zip(back.pruned_step, t.run.pruned_step))
    data = explorer_data(back, t.model, t.code, None, max_tokens=200, n_contexts=1)
    assert data["step"] == _steps_from_history(t.run) and data["step_known"] and len(data["sets"]) == 1
    # A run directory from before the record (results.json lists no such file): it loads, and the explorer
    # says the step is unknown.
    (out / PRUNED_STEP_FILE).unlink()
    results = json.loads((out / "results.json").read_text())
    del results["files"][PRUNED_STEP_FILE]
    (out / "results.json").write_text(json.dumps(results))
    old = ul.PruneRun.load(out)
    assert old.pruned_step is None and old.masks == t.run.masks
    data = explorer_data(old, t.model, t.code, t.prose, max_tokens=200, n_contexts=1)
    assert not data["step_known"] and data["step"] == [-int(s != 0) for s in _steps_from_history(t.run)]
    page = write_report(
        out,
        tmp_path / "old-report",
        model=t.model,
        forget_texts=t.code,
        retain_texts=t.prose,
        n_cards=0,
        explorer_tokens=200,
    ).read_text(encoding="utf-8")
    assert "does not record at which step each unit was pruned" in page
    # A corrupt or foreign record is an error naming the file.
    ul.Masks.empty(ModelDims(1, 2, 1, 1)).save(out / PRUNED_STEP_FILE)
    with pytest.raises(ul.UnlearnLensError, match=PRUNED_STEP_FILE):
        ul.PruneRun.load(out)


@pytest.mark.parametrize("cut", [1, 2], ids=["after-step-0", "after-step-1"])
def test_pruned_step_survives_an_interrupted_run(t, tmp_path, monkeypatch, interrupt_at_step, cut):
    interrupt_at_step(cut)
    with pytest.raises(KeyboardInterrupt):
        ul.selective_prune(t.model, t.code, t.prose, t.config, progress=False, checkpoint=tmp_path / "ckpt")
    monkeypatch.undo()
    resumed = ul.selective_prune(t.model, checkpoint=tmp_path / "ckpt", progress=False)
    assert resumed.masks == t.run.masks
    assert all(torch.equal(a, b) for a, b in zip(resumed.pruned_step, t.run.pruned_step))


def test_explorer_data_refuses_another_model(t):
    other = dataclasses.replace(t.run, dims=ModelDims(3, 8, 2, 2))
    with pytest.raises(ul.UnlearnLensError, match="the run was made for"):
        explorer_data(other, t.model, t.code)


# --- the report -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory, t):
    out = tmp_path_factory.mktemp("explorer-report")
    return write_report(
        t.run,
        out,
        model=t.model,
        forget_texts=t.code,
        retain_texts=t.prose,
        n_cards=1,
        card_tokens=600,
        explorer_tokens=600,
    )


def _embedded(page: str) -> dict:
    (payload,) = re.findall(r'<script type="application/json" class="ulx-data">(.*?)</script>', page, re.S)
    return json.loads(payload)


def test_report_has_the_explorer(report, data, t, tmp_path):
    page = report.read_text(encoding="utf-8")
    assert '<section id="explorer"><h2>Neuron explorer</h2>' in page and '<a href="#explorer">' in page
    assert page.count("<style>") == 1 and page.index(explorer_css()) < page.index("</head>")
    assert _embedded(page) == data
    assert page.index('id="cards"') < page.index('id="explorer"')
    off = write_report(t.run, tmp_path / "off", model=t.model, forget_texts=t.code, n_cards=0, explorer=False)
    assert "The neuron explorer was switched off" in off.read_text(encoding="utf-8")
    bare = write_report(t.run, tmp_path / "bare", n_cards=0).read_text(encoding="utf-8")
    assert "No model was given, so the neuron explorer is left out" in bare and "ulx-data" not in bare


def test_embedded_data_cannot_close_the_script(data):
    evil = {**data, "vocab": ["</script><img src=x onerror=alert(1)>", "&amp;", *data["vocab"][2:]]}
    fragment = explorer_html(evil)
    payload = re.search(r'class="ulx-data">(.*?)</script>', fragment, re.S).group(1)
    assert "<" not in payload and ">" not in payload and "&" not in payload
    assert json.loads(payload)["vocab"][:2] == evil["vocab"][:2]


# --- a real browser -------------------------------------------------------------------------------------------


def _browse(page: Path, query: str, profile: Path) -> tuple[dict, str]:
    """Open ``page`` with the explorer's test hash; return its result and the DOM."""
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
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1600",
        "--dump-dom",
        page.resolve().as_uri() + "#ulx-test?" + query,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "\n".join(console)
    result = re.search(r'<pre id="ulx-test-result">(.*?)</pre>', proc.stdout, re.S)
    assert result, "the explorer's test hook did not run"
    return json.loads(html.unescape(result.group(1))), proc.stdout


def _page(path: Path, data: dict) -> Path:
    path.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{explorer_html(data)}</body></html>',
        encoding="utf-8",
    )
    return path


def _labels(data: dict) -> list[str]:
    d = data["dims"]
    return [
        f"L{layer}.N{unit}" if kind == "mlp" else f"L{layer}.H{unit // d['d_head']}.D{unit % d['d_head']}"
        for kind, layer, unit in unit_order(ModelDims(**d))
    ]


def _by_score(data: dict) -> list[int]:
    return sorted(range(len(data["score"])), key=lambda i: (data["score"][i] is None, -(data["score"][i] or 0), i))


@pytest.mark.browser
def test_report_explorer_in_headless_chromium(report, data, tmp_path):
    """The real report: one row per unit (drawn as they scroll into view), sorted by score, and a unit's contexts."""
    n = len(data["step"])
    result, dom = _browse(report, "open=0&scroll=100", tmp_path / "profile")
    assert result["shown"] == result["distinct"] == n
    assert result["first"] == _by_score(data)[:20]
    assert result["labels"] == [_labels(data)[i] for i in result["first"]]
    assert result["drawn"][:10] == _by_score(data)[90:100], "rows are drawn around the scroll position"
    assert len(result["drawn"]) < 60, "only the rows in view are in the DOM"
    top = _by_score(data)[0]
    card = re.search(r'<div class="ulx-card" data-unit="(\d+)"><h3>([^<]*)</h3>(.*?)</div></div>', dom, re.S)
    assert int(card.group(1)) == top and card.group(2).endswith(_labels(data)[top])
    forget = data["sets"][0]
    shown = re.findall(
        r'<span class="ulx-act">([^<]*)</span><span class="ulx-ctx">(.*?)</span></li>', card.group(3), re.S
    )
    assert len(shown) == sum(p >= 0 for p in forget["pos"][top * 3 : top * 3 + 3]) + sum(
        p >= 0 for p in data["sets"][1]["pos"][top * 3 : top * 3 + 3]
    )
    p = forget["pos"][top * 3]
    centre = re.search(r'<span[^>]*class="[^"]*ulx-max[^"]*"[^>]*>([^<]*)</span>', shown[0][1]).group(1)
    assert html.unescape(centre) == data["vocab"][forget["tok"][p]]


@pytest.mark.browser
def test_search_and_sort_in_headless_chromium(data, tmp_path):
    page, labels = _page(tmp_path / "explorer.html", data), _labels(data)
    result, _ = _browse(page, "q=L1+mlp+17", tmp_path / "profile")
    assert result["labels"] == ["L1.N17"] and result["shown"] == 1
    steps = data["step"]
    result, _ = _browse(page, "q=pruned&sort=step&dir=asc", tmp_path / "profile")
    pruned = sorted((i for i, s in enumerate(steps) if s), key=lambda i: (steps[i], i))
    assert result["shown"] == len(pruned) and result["first"] == pruned[:20]
    result, _ = _browse(page, "q=attn+L0.H2&sort=ratio&dir=asc", tmp_path / "profile")
    f, r = data["sets"][0]["abs_mean"], data["sets"][1]["abs_mean"]
    heads = [i for i, name in enumerate(labels) if name.startswith("L0.H2.")]
    assert result["shown"] == len(heads) == data["dims"]["d_head"]
    assert result["first"] == sorted(heads, key=lambda i: (f[i] / r[i], i))[:20]


def _synthetic(dims: ModelDims, seed: int = 0) -> dict:
    """Explorer data of the layout explorer_data writes, with random numbers, for any number of units."""
    g = torch.Generator().manual_seed(seed)
    n = dims.n_mlp + dims.n_attn

    def column() -> list[float]:
        return [float(f"{v:.4g}") for v in torch.rand(n, generator=g).tolist()]

    step = torch.where(torch.rand(n, generator=g) < 0.05, torch.randint(1, 8, (n,), generator=g), 0).tolist()
    window = "".join("abcdefghijklmnopqrstuvwxy"[v] for v in torch.randint(0, 25, (n * 4,), generator=g).tolist())
    sets = [
        {
            "name": name,
            "n_tokens": 64,
            "width": 32,
            "tok": [i % 5 for i in range(64)],
            "mean": column(),
            "abs_mean": column(),
            "freq": column(),
            "pos": torch.randint(1, 64, (n,), generator=g).tolist(),
            "act": column(),
            "win": window,
        }
        for name in ("forget", "retain")
    ]
    return {
        "format": 1,
        "dims": dims.to_dict(),
        "hooks": {"mlp": "blocks.{l}.mlp.hook_post", "attn": "blocks.{l}.attn.hook_z"},
        "score": column(),
        "score_methods": {"mlp": "abs", "attn": "abs"},
        "score_from": "synthetic",
        "step": step,
        "step_known": True,
        "last_step": 7,
        "window": [2, 1],
        "levels": 12,
        "n_contexts": 1,
        "vocab": ["</script><img src=x onerror=alert(1)>", " a", "\n", "&lt;", "b"],
        "special": [],
        "scale": column(),
        "sets": sets,
    }


@pytest.mark.browser
def test_demo_model_scale_in_headless_chromium(t, tmp_path):
    """The demo model's 4,096 MLP and 1,024 attention neurons, read from the model: every one reachable."""
    model = ul.load_model("demo", device="cpu")
    dims = ul.models.model_dims(model)
    assert (dims.n_mlp, dims.n_attn) == (4096, 1024)
    g = torch.Generator().manual_seed(0)
    scores = ul.Scores(
        torch.rand(dims.mlp_shape, generator=g, dtype=torch.float64),
        torch.rand(dims.attn_shape, generator=g, dtype=torch.float64),
    )
    steps = (torch.where(scores.mlp > 0.9, 1, 0).int(), torch.where(scores.attn > 0.95, 2, 0).int())
    run = dataclasses.replace(
        t.run,
        dims=dims,
        masks=ul.Masks(steps[0] > 0, steps[1] > 0),
        initial_scores=scores,
        scores=None,
        pruned_step=steps,
        baseline=None,
    )
    run.config = dataclasses.replace(run.config, seq_len=128, batch_size=16)
    texts = ul.load_texts("demo:code")
    data = explorer_data(run, model, texts[:40], ul.load_texts("demo:prose")[:40], max_tokens=2_000)
    page = _page(tmp_path / "demo.html", data)
    print(f"demo-scale explorer page: {page.stat().st_size:,} bytes")
    result, dom = _browse(page, "q=&open=0", tmp_path / "profile")
    assert result["shown"] == result["distinct"] == 5120 and result["first"] == _by_score(data)[:20]
    assert dom.count('class="ulx-ctx"') == 6, "three contexts on each dataset"
    result, _ = _browse(page, "q=L2+mlp+17", tmp_path / "profile")
    assert result["labels"] == ["L2.N17"]


@pytest.mark.browser
def test_sort_and_filter_of_1e5_units_stay_fast(tmp_path):
    """A synthetic table of 102,400 units sorts and filters within a generous bound, measured in the browser."""
    data = _synthetic(ModelDims(n_layers=25, d_mlp=3072, n_heads=16, d_head=64))
    page = _page(tmp_path / "big.html", data)
    result, dom = _browse(page, "bench=1&open=3", tmp_path / "profile")
    print(
        f"10^5 units ({page.stat().st_size:,} bytes): sort {result['ms']['sort']:.0f} ms, "
        f"filter {result['ms']['filter']:.0f} ms (slowest of several)"
    )
    assert result["shown"] == result["distinct"] == 102_400
    assert result["ms"]["sort"] < 2000 and result["ms"]["filter"] < 2000
    assert len(result["drawn"]) < 60
    # Token strings are text: the one that looks like markup is shown, not parsed.
    assert "<img" not in dom.split('class="ulx-detail"')[1]
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in dom
