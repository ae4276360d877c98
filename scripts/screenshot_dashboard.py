"""Take a screenshot of one unit's dashboard as the report's neuron explorer opens it.

Usage::

    python scripts/screenshot_dashboard.py RUN_DIR/report.html L2.N205 assets/dashboard.png

Starts headless Chromium with its DevTools port, opens the report with the explorer's
test hash (search for the unit, open the first row, scroll the page to it), waits until
the dashboard has drawn itself, and saves the explorer's detail panel, the dashboard, as
a PNG, cropped to ``--max-height`` pixels. Drives Chromium over the DevTools protocol with tornado's WebSocket client (a
dependency of the package), so it needs nothing else. ``$CHROMIUM`` names the browser
binary (default: ``chromium`` on the PATH).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

# Where the detail panel lies on the page, once the dashboard has drawn its histograms.
PANEL = """
(() => {
  const panel = document.querySelector(".ulx-detail");
  if (!panel || !panel.querySelector(".uld-s0")) return null;
  panel.scrollIntoView();
  const r = panel.getBoundingClientRect();
  return JSON.stringify({x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height});
})()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _DevTools:
    """One page of a Chromium instance, driven over its DevTools WebSocket."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.next_id = 0

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.connection.write_message(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.connection.read_message())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


async def _shoot(ws_url: str, url: str, out: Path, timeout: float, max_height: int) -> None:
    page = _DevTools(await websocket_connect(ws_url, max_message_size=256 * 2**20))
    await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1, mobile=False)
    await page.call("Page.enable")
    await page.call("Page.navigate", url=url)
    deadline = time.monotonic() + timeout
    while True:
        found = await page.call("Runtime.evaluate", expression=PANEL, returnByValue=True)
        box = found["result"].get("value")
        if box:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the dashboard did not appear within {timeout:.0f} s")
        await IOLoop.current().run_in_executor(None, time.sleep, 0.5)
    box = json.loads(box)
    box["height"] = min(box["height"], max_height)
    shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip={**box, "scale": 1})
    out.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report.html with unit dashboards")
    parser.add_argument("unit", help="the unit, as the explorer labels it (e.g. L2.N205 or L1.H3.D5)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the page (default 180)")
    parser.add_argument("--max-height", type=int, default=1520, help="crop the panel to this many pixels (1520)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no such report: {args.report}")
    browser = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        parser.error("headless Chromium is needed (Debian: apt-get install -y chromium, or set $CHROMIUM)")
    port = _free_port()
    url = args.report.resolve().as_uri() + f"#ulx-test?q={args.unit}&open=0"
    with tempfile.TemporaryDirectory(prefix="unlearn-lens-shot-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
        command += [f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                        pages = [p for p in json.load(r) if p.get("type") == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit("error: Chromium did not open its DevTools port")
            IOLoop.current().run_sync(
                lambda: _shoot(pages[0]["webSocketDebuggerUrl"], url, args.out, args.timeout, args.max_height)
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {args.out} ({args.unit} in {args.report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
