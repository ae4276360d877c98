"""``unlearn-lens serve``: a run's report, served with a live panel that runs the model on any text.

The page is the run's report (:func:`~unlearn_lens.report.html.write_report`, explorer and
dashboards included), made once at start, with a live panel (``templates/live.html.j2``,
``static/live.js``): type a text, pick a unit, and see the unit's activation at each token
and the model's top-5 next tokens, unpruned beside pruned. The server is Tornado's
(:mod:`tornado.web`): a maintained asynchronous HTTP server that needs nothing else; the
model runs on one worker thread, one request at a time.

Endpoints (every answer JSON, errors ``{"error": "..."}`` with a 4xx status):

* ``GET /``: the page;
* ``GET /api/activations?unit=L2.mlp.17&text=...``: ``{"unit", "tokens", "acts", "acts_pruned"}``
  (:func:`~unlearn_lens.report.live.text_activations`);
* ``GET /api/predict?text=...``: ``{"tokens", "unpruned": [[token, p], ...], "pruned": [...]}``, the
  top-5 next tokens (:func:`~unlearn_lens.report.live.next_tokens`);
* ``GET /api/dashboard?unit=L2.mlp.17``: the full dashboard of any unit, computed on demand from
  the run's texts, as the page's script draws it (:func:`~unlearn_lens.report.dashboard_view.unit_pages`,
  keyed by the unit's explorer row). The report holds the dashboards of the pruned and the
  top-scoring units; the explorer asks here for any other unit it opens, so that a model of
  any size gets every unit's dashboard without the page growing. The last
  :data:`KEPT_DASHBOARDS` are kept, so that a unit opened again is drawn at once.

Nothing a request names reaches the file system: there are these four routes and no file
handler. A text may hold at most :data:`MAX_CHARS` characters (and the model's context in
tokens); each client may make :data:`BURST` requests at once and :data:`PER_SECOND` a second
after that (429 beyond). The server binds to 127.0.0.1 unless told otherwise, and then
answers only requests addressed to 127.0.0.1, localhost or ::1 (403 otherwise: a page of
another site that has made its name point here cannot use it). Ctrl-C stops it: the
listening socket is closed and open connections are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.web

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.report.dashboard_view import display_rules, unit_pages
from unlearn_lens.report.display import Unit
from unlearn_lens.report.html import card_inputs
from unlearn_lens.report.live import next_tokens, text_activations
from unlearn_lens.report.templating import render, script_json, static_text
from unlearn_lens.results import PruneRun

__all__ = ["BURST", "KEPT_DASHBOARDS", "MAX_CHARS", "PER_SECOND", "live_app", "serve_run"]

logger = logging.getLogger(__name__)

MAX_CHARS = 2000
"""The longest text a request may send, in characters."""
BURST = 20
"""Requests a client may make at once."""
PER_SECOND = 5.0
"""Requests a client may make per second, once its burst is spent."""
KEPT_DASHBOARDS = 64
"""Dashboards computed on demand that the server keeps, the most recently asked."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Limiter:
    """A token bucket per client address: ``burst`` requests at once, refilled at ``rate`` a second."""

    def __init__(self, burst: int, rate: float):
        self.burst, self.rate = burst, rate
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@dataclass
class _State:
    """What every request handler shares: the page, the model and run, the limiter, the model's worker thread."""

    page: str
    model: Any
    run: PruneRun
    limiter: _Limiter
    executor: ThreadPoolExecutor
    hosts: frozenset[str] | None = None  # the host names a request may be addressed to (None: any)
    texts: tuple[Any, Any] | None = None  # forget and retain texts, for dashboards on demand (None: none)
    tokens: int = 20_000  # tokens of each dataset a dashboard reads
    kept: collections.OrderedDict[str, dict[str, Any]] = field(default_factory=collections.OrderedDict)


class _Base(tornado.web.RequestHandler):
    """Answers in JSON, errors as ``{"error": ...}``; every request passes the rate limiter first."""

    def initialize(self, state: _State) -> None:
        self.state = state

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:")

    def prepare(self) -> None:
        hosts = self.state.hosts
        if hosts is not None and self.request.host_name.strip("[]").lower() not in hosts:
            # a page elsewhere that renamed itself to this address (DNS rebinding) reaches no endpoint
            self.fail(403, f"this server answers requests addressed to {', '.join(sorted(hosts))} only")
            return
        limiter = self.state.limiter
        if not limiter.allow(self.request.remote_ip or "?"):
            self.set_header("Retry-After", "1")
            self.fail(429, f"too many requests: at most {limiter.burst} at once and {limiter.rate:g} a second")

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason})

    def answer(self, data: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(_finite(data), ensure_ascii=False, allow_nan=False))

    def text(self) -> str | None:
        """The request's text, or None once a 400 is sent (no text, or a text too long)."""
        text = self.get_query_argument("text", None)
        if not text:
            self.fail(400, "give the text as ?text=...")
            return None
        if len(text) > MAX_CHARS:
            self.fail(400, f"the text has {len(text):,} characters; at most {MAX_CHARS:,} are read")
            return None
        return text

    def unit(self) -> Unit | None:
        """The request's unit (``?unit=L2.mlp.17``), or None once a 400 is sent (no such unit)."""
        try:
            return Unit.parse(self.get_query_argument("unit", ""), self.state.run.dims)
        except UnlearnLensError as exc:
            self.fail(400, str(exc))
            return None

    async def compute(self, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
        """Run ``fn(*args)`` on the model's thread and answer with it (400 for the user's errors)."""
        try:
            found = await asyncio.get_running_loop().run_in_executor(self.state.executor, fn, *args)
        except UnlearnLensError as exc:
            self.fail(400, str(exc))
            return
        self.answer(found)


class _Page(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.state.page)


def _unit_activations(model: Any, run: PruneRun, unit: Unit, text: str) -> dict[str, Any]:
    return {"unit": unit.name, **text_activations(model, run, unit, text)}


class _Activations(_Base):
    async def get(self) -> None:
        text = self.text()
        if text is None:
            return
        unit = self.unit()
        if unit is not None:
            await self.compute(_unit_activations, self.state.model, self.state.run, unit, text)


class _Predict(_Base):
    async def get(self) -> None:
        text = self.text()
        if text is not None:
            await self.compute(next_tokens, self.state.model, self.state.run, text)


def _unit_page(state: _State, unit: Unit) -> dict[str, Any]:
    """The unit's dashboard as the page draws it, computed once and kept among the last :data:`KEPT_DASHBOARDS`."""
    if unit.name in state.kept:
        state.kept.move_to_end(unit.name)
        return state.kept[unit.name]
    forget, retain = state.texts
    page = unit_pages(state.run, state.model, forget, retain, [unit], max_tokens=state.tokens)
    state.kept[unit.name] = page
    while len(state.kept) > KEPT_DASHBOARDS:
        state.kept.popitem(last=False)
    return page


class _Dashboard(_Base):
    async def get(self) -> None:
        if self.state.texts is None:
            self.fail(404, "this server has no texts to compute dashboards from")
            return
        unit = self.unit()
        if unit is not None:
            await self.compute(_unit_page, self.state, unit)


class _NotFound(_Base):
    def get(self) -> None:
        self.fail(404, "not found: this server answers /, /api/activations, /api/predict and /api/dashboard")


def live_app(
    page: str,
    model: Any,
    run: PruneRun,
    *,
    burst: int = BURST,
    per_second: float = PER_SECOND,
    hosts: Sequence[str] | None = _LOOPBACK,
    texts: tuple[Any, Any] | None = None,
    tokens: int = 20_000,
) -> tornado.web.Application:
    """The Tornado application that serves ``page`` and the endpoints for ``model`` and ``run``.

    Args:
        page: the HTML of ``/``.
        model: the unpruned model.
        run: the run (its masks and ablation give the pruned side).
        burst: requests a client may make at once.
        per_second: requests a client may make per second after that.
        hosts: the host names requests must be addressed to (403 otherwise); None: any.
        texts: the forget and retain texts (sources) for dashboards on demand; None: no
            dashboards (``/api/dashboard`` answers 404).
        tokens: tokens of each dataset a dashboard on demand reads.

    Its ``settings["executor"]`` is the model's worker thread (shut it down when done).
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlearn-lens-model")
    allowed = None if hosts is None else frozenset(h.lower() for h in hosts)
    state = {"state": _State(page, model, run, _Limiter(burst, per_second), executor, allowed, texts, tokens)}
    routes = [
        ("/", _Page),
        ("/api/activations", _Activations),
        ("/api/predict", _Predict),
        ("/api/dashboard", _Dashboard),
    ]
    return tornado.web.Application(
        [(path, handler, state) for path, handler in routes],
        default_handler_class=_NotFound,
        default_handler_args=state,
        executor=executor,
        compress_response=True,
    )


def live_panel(units: list[str]) -> str:
    """The live panel: a text box, a unit picker offering ``units``, and two columns (``templates/live.html.j2``)."""
    config = {"units": units, "max_chars": MAX_CHARS, "display": display_rules()}
    return render("live.html.j2", config=script_json(config), script=static_text("live.js"))


def _page(
    run_dir: Path, run: PruneRun, inputs: Any, tokens: int, trust_sources: bool, report: dict[str, Any]
) -> tuple[str, list[str]]:
    """The run's report with the live panel, and the units its dashboards cover (offered in the panel)."""
    from unlearn_lens.checks.suite import RunChecks
    from unlearn_lens.report.dashboards import choose_units
    from unlearn_lens.report.html import write_report

    with tempfile.TemporaryDirectory() as tmp:
        path = write_report(
            run,
            tmp,
            model=inputs.model,
            forget_texts=inputs.forget,
            retain_texts=inputs.retain,
            card_tokens=tokens,
            explorer_tokens=tokens,
            checks=RunChecks.load(run_dir),
            trust_sources=trust_sources,
            **report,
        )
        page = path.read_text(encoding="utf-8")
    scored = run.initial_scores is not None or run.scores is not None
    top = report.get("dashboard_top", 200)
    spec = ["pruned", *([f"top:{top}"] if scored and top > 0 else []), *report.get("dashboard_units", ())]
    units = [u.name for u in choose_units(run, spec)]
    panel = live_panel(units)
    anchor = '<section id="summary">'
    page = page.replace(anchor, panel + anchor, 1) if anchor in page else page.replace("</body>", panel + "</body>")
    return page, units


async def _serve(app: Any, host: str, port: int, announce: Callable[[str], None]) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(port, address=host)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    announce(f"http://{shown}:{bound[1]}/")
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
        await server.close_all_connections()


def serve_run(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: Any = None,
    device: str | None = None,
    tokens: int = 20_000,
    trust_sources: bool = False,
    announce: Callable[[str], None] | None = None,
    report: dict[str, Any] | None = None,
) -> None:
    """Serve a run directory's report with the live panel until Ctrl-C (then return).

    Args:
        run_dir: a directory written by ``unlearn-lens prune``.
        host: the address to bind (default 127.0.0.1: this machine only).
        port: the port (0: any free one).
        model: the model, or a name or directory (default: the one the run names).
        device: device for a model loaded here.
        tokens: tokens of each dataset the report's explorer and dashboards read.
        trust_sources: as :func:`unlearn_lens.write_report`.
        announce: called with the server's address once it listens (default: a log line).
        report: further arguments of :func:`~unlearn_lens.report.html.write_report` (its dashboards).

    Raises:
        UnlearnLensError: the run, its model or its texts cannot be had.
        OSError: the address cannot be bound.
    """
    run_path = Path(run_dir)
    run = PruneRun.load(run_path)
    inputs = card_inputs(run, model, None, None, True, device, tokens, trust_sources)
    if inputs.note is not None:
        raise UnlearnLensError(str(inputs.note).replace("there are no neuron cards", "there is nothing to serve"))
    page, _ = _page(run_path, run, inputs, tokens, trust_sources, report or {})
    hosts = _LOOPBACK if host in _LOOPBACK else None
    app = live_app(page, inputs.model, run, hosts=hosts, texts=(inputs.forget, inputs.retain), tokens=tokens)
    if host not in _LOOPBACK:
        logger.warning("serving on %s: anyone who can reach this address can run the model", host)

    def say(url: str) -> None:
        logger.warning("serving %s (Ctrl-C stops it)", url)

    try:
        asyncio.run(_serve(app, host, port, announce or say))
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        app.settings["executor"].shutdown(wait=True, cancel_futures=True)
