"""End to end in a real headless Chromium: `dq-ray dashboard` on a real tiny run, driven by Playwright.

Uses the system Chromium (Debian `chromium`, installed by `make test` when missing); Playwright never downloads a
browser. Screenshots go to tests/artifacts/dashboard/ (their paths are printed).
"""

from __future__ import annotations

import os
import re
import socket
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from .conftest import box_select, dashboard_server
from .conftest import free_port as _free_port  # noqa: F401 (test_defects imports it from here)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: how long to wait for a re-render or an update over the websocket: generous, since a passing run returns at
#: once and a loaded CI machine can take a minute (only a failure waits this long)
WAIT_S = 120.0
WAIT_MS = int(WAIT_S * 1000)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
#: written by the first test when DQ_RAY_DOCS_PICTURE is set (how the committed picture was made)
DOCS_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "map.png"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs the system Chromium (make test installs it)"
)


@pytest.fixture(scope="module")
def server(map_run):
    with dashboard_server(map_run, ARTIFACTS / "server.log") as url:
        yield url


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
            if os.environ.get("DQ_RAY_DOCS_PICTURE"):  # the README's picture of the map: docs/map.png
                page.screenshot(path=str(DOCS_PICTURE), full_page=False)

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


# -- search, neighbours and text on hover ---------------------------------------------------------------------

#: The page position of data coordinates ``[x, y]`` on the map's Bokeh figure (its title counts "documents").
TO_SCREEN_JS = """([x, y]) => {
  const views = [], seen = new Set();
  const walk = (v) => { if (v && !seen.has(v)) { seen.add(v); views.push(v); (v.child_views ?? []).forEach(walk); } };
  for (const root of Bokeh.index.roots) walk(root);
  const plot = views.find(v => v.model.type === "Figure" && String(v.model.title?.text ?? "").includes("documents"));
  const rect = plot.canvas_view.el.getBoundingClientRect();
  return [rect.left + plot.frame.x_scale.compute(x), rect.top + plot.frame.y_scale.compute(y)];
}"""
#: The text of Bokeh's visible tooltips (they render inside shadow roots).
TOOLTIP_JS = """() => [...document.querySelectorAll(".bk-Tooltip")]
  .filter(t => t.shadowRoot && t.checkVisibility())
  .map(t => [...t.shadowRoot.children].filter(c => c.tagName !== "STYLE").map(c => c.innerText).join(" "))
  .join(" ")"""


def _open_map(p, server):
    from playwright.sync_api import expect

    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server, wait_until="networkidle", timeout=60_000)
    expect(page.locator(".dq-map canvas").first).to_be_visible(timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # the first frame arrives over the websocket
    return browser, page


def test_search_marks_and_lists_the_matching_documents(server, doc_texts):
    from playwright.sync_api import expect, sync_playwright

    from .conftest import matching_rows, sample_queries

    word = sample_queries(doc_texts)[0]
    n = len(matching_rows(doc_texts, word))
    with sync_playwright() as p:
        browser, page = _open_map(p, server)
        try:
            before = _map_image(page)
            box = page.locator(".dq-search input")
            box.fill(word)
            box.press("Enter")
            expect(page.locator(".dq-search-status")).to_contain_text(f"{n:,} documents match", timeout=WAIT_MS)
            expect(page.locator(".dq-selection")).to_contain_text(f'Search "{word}": {n:,} documents', timeout=WAIT_MS)
            rows = page.locator(".dq-table .tabulator-row")
            expect(rows).to_have_count(min(n, 10), timeout=WAIT_MS)
            snippet = page.locator(".dq-table .tabulator-row .tabulator-cell[tabulator-field='snippet']").first
            expect(snippet).to_have_text(re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE))
            assert _new_map_image(page, before) != before  # the hits are ringed on the map
            _shot(page, "05-search")
            page.locator(".dq-search-clear button").click()
            expect(page.locator(".dq-search input")).to_have_value("", timeout=WAIT_MS)
        finally:
            browser.close()


def test_clicking_a_document_shows_its_nearest_neighbours(server, map_run):
    from playwright.sync_api import expect, sync_playwright

    from dashboards.data_store import RunStore
    from dq_ray.vectors import embedding_matrix

    store = RunStore(map_run)
    x, y = store.xy()
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    np.fill_diagonal(d2, np.inf)
    row = int(np.argmax(d2.min(axis=1)))  # the most isolated document: a click lands on it alone
    doc = store.take_rows([row]).to_pylist()[0]
    e = embedding_matrix(store.dataset.to_table(columns=["embedding"]).column(0))
    sims = e @ e[row]
    sims[row] = -np.inf
    best = np.flatnonzero(sims >= sims.max() - 1e-5)  # exact copies tie: any of them may come first
    nearest = store.take_rows(best).column("id").to_pylist()
    nearest_re = re.compile("^(" + "|".join(re.escape(i) for i in nearest) + ")$")
    with sync_playwright() as p:
        browser, page = _open_map(p, server)
        try:
            sx, sy = page.evaluate(TO_SCREEN_JS, [doc["map_x"], doc["map_y"]])
            page.mouse.click(sx, sy)
            title = page.locator(".dq-neighbours-title")
            expect(title).to_contain_text(f"Neighbours of {doc['id']}", timeout=WAIT_MS)
            expect(page.locator(".dq-neighbours .tabulator-row")).to_have_count(10, timeout=WAIT_MS)
            first = page.locator(".dq-neighbours .tabulator-row").first
            first_id = first.locator(".tabulator-cell[tabulator-field='id']")
            expect(first_id).to_have_text(nearest_re)
            _shot(page, "06-neighbours")
            clicked = first_id.text_content().strip()
            first_id.click()  # a row of the table: its own neighbours
            expect(title).to_contain_text(f"Neighbours of {clicked}", timeout=WAIT_MS)
        finally:
            browser.close()


def test_hovering_a_document_shows_its_id_signals_and_text(server, map_run):
    from playwright.sync_api import sync_playwright

    from dashboards.data_store import RunStore

    store = RunStore(map_run)
    x, y = store.xy()
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    np.fill_diagonal(d2, np.inf)
    row = int(np.argmax(d2.min(axis=1)))  # alone in its pixel: the tooltip can only name this one
    doc = store.take_rows([row])
    doc_id = doc.column("id")[0].as_py()
    start = " ".join(store.snippets(doc, 40)[0].split()[:3])
    with sync_playwright() as p:
        browser, page = _open_map(p, server)
        try:
            sx, sy = page.evaluate(TO_SCREEN_JS, [float(x[row]), float(y[row])])
            text, deadline = "", time.time() + WAIT_S
            while doc_id not in text and time.time() < deadline:
                # the server answers a hover with that pixel's document; the tooltip shows it on the next move
                page.mouse.move(sx + 1, sy)
                page.mouse.move(sx, sy)
                page.wait_for_timeout(500)
                text = page.evaluate(TOOLTIP_JS)
            _shot(page, "07-hover")
            assert doc_id in text, text
            assert start in text  # the beginning of its text
            assert "heur_n_words" in text and str(doc.column("heur_n_words")[0].as_py()) in text
        finally:
            browser.close()


def test_export_writes_the_documents_passing_the_filters(server, map_run):
    """The map's Export writes RUN/exports/<name>/ (data, card) with exactly the documents the counts show; a
    name that would leave the folder, or one already used, is refused."""
    import pandas as pd
    from playwright.sync_api import expect, sync_playwright

    name = f"browser-{os.getpid()}"
    with sync_playwright() as p:
        browser, page = _open_map(p, server)
        try:
            counts = page.locator(".dq-counts")
            expect(counts).to_contain_text("of", timeout=WAIT_MS)
            shown = int(page.locator(".dq-counts strong").first.text_content().replace(",", ""))  # **N** of M
            field, status = page.locator(".dq-export-name input"), page.locator(".dq-export-status")
            field.fill("../outside")
            field.press("Enter")
            page.locator(".dq-export button").click()
            expect(status).to_contain_text("Not exported", timeout=WAIT_MS)
            field.fill(name)
            field.press("Enter")
            page.locator(".dq-export button").click()
            expect(status).to_contain_text(f"Exported {shown:,} documents", timeout=WAIT_MS)
            page.locator(".dq-export button").click()  # the same name again: never overwritten
            expect(status).to_contain_text("exists already", timeout=WAIT_MS)
            _shot(page, "08-export")
        finally:
            browser.close()
    out = map_run / "exports" / name
    frame = pd.read_parquet(out / "data")
    assert len(frame) == shown and {"id", "source_file", "source_index"} <= set(frame.columns)
    assert "the map's filters" in (out / "README.md").read_text()
    assert not (map_run.parent / "outside").exists()
