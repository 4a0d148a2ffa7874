"""End to end in a real headless Chromium: `dq-ray dashboard` on a real tiny run, driven by Playwright.

Uses the system Chromium (Debian `chromium`, installed by `make test` when missing); Playwright never downloads a
browser. Screenshots go to tests/artifacts/dashboard/ (their paths are printed).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from .conftest import box_select

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: how long to wait for a re-render or an update over the websocket: generous, since a passing run returns at
#: once and a loaded CI machine can take a minute (only a failure waits this long)
WAIT_S = 120.0
WAIT_MS = int(WAIT_S * 1000)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs the system Chromium (make test installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(map_run):
    port = _free_port()
    exe = shutil.which("dq-ray", path=os.path.dirname(sys.executable)) or "dq-ray"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")
    proc = subprocess.Popen([exe, "dashboard", str(map_run), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180  # imports and the first load of the store; slow on a busy 2-core machine
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dq-ray dashboard exited with {proc.returncode}; see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break  # listening: the server binds only after the store is loaded
        except OSError:
            if time.time() > deadline:
                proc.terminate()
                raise RuntimeError(f"dq-ray dashboard did not listen within 180 s; see {log.name}") from None
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def _variance(png: bytes) -> float:
    from PIL import Image

    img = np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=np.float64)
    return float(img.var())


def _map_image(page, attempts: int = 20) -> bytes:
    """A screenshot of the map's plot area (the canvas inside the .dq-map pane).

    A colour change replaces the plot, so the canvas can be detached mid-screenshot: then try again.
    """
    from playwright.sync_api import Error

    for _ in range(attempts - 1):
        try:
            return page.locator(".dq-map canvas").first.screenshot(timeout=10_000)
        except Error:
            page.wait_for_timeout(500)
    return page.locator(".dq-map canvas").first.screenshot()


def _new_map_image(page, old: bytes, timeout_s: float = WAIT_S) -> bytes:
    """Wait until the map image differs from ``old`` (the server re-renders over the websocket)."""
    deadline = time.time() + timeout_s
    while True:
        img = _map_image(page)
        if img != old or time.time() > deadline:
            return img
        page.wait_for_timeout(300)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # noqa: T201 (where to find the test artefact)


def test_map_renders_filters_and_box_select_fill_the_table(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1300})
            page.goto(server, wait_until="networkidle", timeout=60_000)
            map_canvas = page.locator(".dq-map canvas").first
            expect(map_canvas).to_be_visible(timeout=WAIT_MS)
            page.wait_for_timeout(1500)  # the first frame arrives over the websocket
            _shot(page, "01-loaded")

            # the map is an image, not a blank plot: an empty plot area has (almost) no pixel variance
            first = _map_image(page)
            assert _variance(first) > 50, "the map image looks blank"
            expect(page.get_by_text("coordinates: map_x / map_y")).to_be_visible()  # the map stage's own columns
            counts = page.locator(".dq-counts")
            expect(counts).to_contain_text("of")
            before = counts.inner_text()

            # colour by a numeric signal: the image changes and a colour bar appears
            page.locator(".dq-colour select").select_option("heur_mean_word_length")
            second = _new_map_image(page, first)
            assert second != first and _variance(second) > 50
            _shot(page, "02-colour-numeric")

            # move a filter: the lower handle of the first range slider, by keyboard
            handle = page.locator(".dq-filter .noUi-handle-lower").first
            handle.focus()
            for _ in range(40):
                handle.press("ArrowRight")
            page.wait_for_timeout(2500)
            expect(counts).not_to_have_text(before, timeout=WAIT_MS)
            _shot(page, "03-filtered")

            # box-select with Bokeh's box select tool: drag over the middle of the map
            box_select(page, map_canvas)
            expect(page.locator(".dq-selection")).to_contain_text("showing", timeout=WAIT_MS)
            rows = page.locator(".dq-table .tabulator-row")
            expect(rows).not_to_have_count(0, timeout=WAIT_MS)
            # each row carries a text snippet, read on demand from the original input file
            snippet = page.locator(".dq-table .tabulator-row .tabulator-cell[tabulator-field='snippet']").first
            expect(snippet).to_have_text(re.compile(r"\S.{20,}"), timeout=WAIT_MS)
            _shot(page, "04-box-selected")
        finally:
            browser.close()


def test_the_server_listens_on_loopback_only(server):
    port = int(server.rsplit(":", 1)[1].strip("/"))
    import psutil

    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    other = others[0]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it is up
    with pytest.raises(OSError):  # but not reachable from another interface
        socket.create_connection((other, port), timeout=2).close()
