"""Issue 17, defects 1-4, each in a real headless Chromium (Playwright, the system Chromium) on real Parquet runs.

The runs are derived from the pipeline's ``map_run`` (heuristics, exact_dedup, embed, topics, map on the tiny
corpus): its ``docs/`` read with pyarrow, columns added or dropped, written back as Parquet beside a copy of its
manifest, receipts and artifacts.

- ``sparse_run``: as the demo, ``askllm_score`` is filled for one document in 20 (the LLM-scored sample) and
  ``askllm_pred`` (the distilled prediction) for every document;
- ``flat_run``: no ``map_x`` / ``map_y`` and no ``embedding`` (the map plots two heuristics), no pairs.
"""

from __future__ import annotations

import json
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
from .test_browser import ARGS, ARTIFACTS, CHROMIUM, WAIT_MS, _free_port, _map_image, _new_map_image, _shot

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs the system Chromium")

#: ``askllm_score`` is filled for one document in this many (the demo: 200 of 3,812)
SCORED_EVERY = 20
FLAG = "heur_gopher_quality_pass"
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the first two category colours: true, false


def derive_run(src: Path, dst: Path, transform) -> Path:
    """A copy of run ``src`` at ``dst`` whose ``docs/`` is ``transform(docs table)``, written as one Parquet file."""
    import pyarrow.parquet as pq

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("docs", "dashboard"))
    table = transform(pq.read_table(src / "docs"))
    (dst / "docs").mkdir()
    pq.write_table(table, dst / "docs" / "part-0.parquet", row_group_size=64)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["run_dir"] = str(dst)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _with_askllm(table):
    """Add ``askllm_pred`` (every row) and ``askllm_score`` (one row in :data:`SCORED_EVERY`, else null)."""
    import pyarrow as pa

    n = table.num_rows
    rng = np.random.default_rng(0)
    words = table.column("heur_n_words").to_numpy().astype(np.float64)
    pred = np.clip(np.log1p(words) / np.log1p(words.max()) + rng.normal(0, 0.05, n), 0, 1).astype(np.float32)
    scored = np.arange(n) % SCORED_EVERY == 0
    score = np.clip(pred + rng.normal(0, 0.05, n), 0, 1).astype(np.float32)
    table = table.append_column("askllm_score", pa.array(score, pa.float32(), mask=~scored))
    return table.append_column("askllm_pred", pa.array(pred, pa.float32()))


def _flat(table):
    return table.drop_columns([c for c in ("map_x", "map_y", "embedding") if c in table.column_names])


@pytest.fixture(scope="module")
def sparse_run(map_run, tmp_path_factory) -> Path:
    return derive_run(map_run, tmp_path_factory.mktemp("dash-sparse") / "run", _with_askllm)


@pytest.fixture(scope="module")
def flat_run(map_run, tmp_path_factory) -> Path:
    return derive_run(map_run, tmp_path_factory.mktemp("dash-flat") / "run", _flat)


class _Server:
    """``dq-ray dashboard RUN`` on a free port, as a subprocess (stopped by :meth:`stop`)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        port = _free_port()
        exe = shutil.which("dq-ray", path=os.path.dirname(sys.executable)) or "dq-ray"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log = open(ARTIFACTS / f"server-{name}.log", "w")
        self.proc = subprocess.Popen(
            [exe, "dashboard", str(run_dir), "--port", str(port)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dq-ray dashboard exited with {self.proc.returncode}; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"dq-ray dashboard did not listen within 180 s; see {self.log.name}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def sparse_server(sparse_run):
    server = _Server(sparse_run, "sparse")
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def flat_server(flat_run):
    server = _Server(flat_run, "flat")
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser, url: str, width: int = 1700, height: int = 1300):
    """A page on ``url`` whose console errors and uncaught exceptions are collected in ``page.errors``."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url, wait_until="networkidle", timeout=60_000)
    expect(page.locator(".dq-map canvas").first).to_be_visible(timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # the first frame arrives over the websocket
    return page


def _count(page) -> int:
    """The number of documents passing the filters, from the counts line (``**N** of M documents ...``)."""
    text = page.locator(".dq-counts p").first.inner_text()  # the text is inside the pane's shadow root
    return int(re.search(r"([\d,]+) of", text).group(1).replace(",", ""))


def _pixels_near(png: bytes, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels of the map image are within ``tol`` (per channel) of the colour ``rgb``.

    The rightmost 60 pixels (Bokeh's toolbar, whose logo holds orange) are left out.
    """
    from PIL import Image

    img = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)[:, :-60]
    return int((np.abs(img - np.array(rgb, np.int16)) <= tol).all(axis=-1).sum())


def _settled_image(page, done, timeout_s: float = 60.0) -> bytes:
    """The map image once ``done(png)`` holds (polled), or the last one after ``timeout_s``; at least 1.5 s after
    the call, so a later frame of the same change is seen too."""
    page.wait_for_timeout(1500)
    deadline = time.time() + timeout_s
    png = _map_image(page)
    while not done(png) and time.time() < deadline:
        page.wait_for_timeout(500)
        png = _map_image(page)
    return png


# -- defect 1: a categorical colour survives any filter ------------------------------------------------------


def _set_flag(page, flag: str, value: str) -> None:
    page.locator(f".dq-flag-{flag} button", has_text=re.compile(f"^{value}$")).click()


def _empty_combination(run: Path) -> tuple[str, str]:
    """A flag and a value that no document with :data:`FLAG` true has (the filters then leave no document)."""
    import pyarrow.parquet as pq

    df = pq.read_table(run / "docs").to_pandas()
    passing = df[df[FLAG] == True]  # noqa: E712
    for name in df.columns:
        if name != FLAG and df[name].dtype == bool:
            for value in (True, False):
                if not (passing[name] == value).any() and (df[name] == value).any():
                    return name, str(value).lower()
    pytest.skip("no flag combination leaves zero documents in this corpus")


def test_flag_colour_survives_a_filter_leaving_one_category_or_none(sparse_server, sparse_run, browser):
    from playwright.sync_api import expect

    empty = _empty_combination(sparse_run)
    page = _open(browser, sparse_server)
    try:
        total = _count(page)
        before = _map_image(page)
        page.locator(".dq-colour select").select_option(FLAG)
        both = _new_map_image(page, before)
        assert _pixels_near(both, ORANGE) > 0 and _pixels_near(both, BLUE) > 0, "true and false both drawn"
        _shot(page, "d1-flag-colour")

        # keep only the documents passing the flag: no false (orange) point may stay on the map
        _set_flag(page, FLAG, "true")
        expect(page.locator(".dq-counts p").first).not_to_have_text(re.compile(rf"^\s*{total:,} of"), timeout=WAIT_MS)
        kept = _count(page)
        assert 0 < kept < total
        _new_map_image(page, both)
        # the frames of one change can arrive in steps on a loaded machine: wait for the filtered frame; stale false
        # points that never go away (the defect) still fail
        only_true = _settled_image(page, lambda png: _pixels_near(png, ORANGE) == 0)
        _shot(page, "d1-flag-true")
        assert _pixels_near(only_true, ORANGE) == 0, "false (orange) points still drawn after filtering to true"
        assert _pixels_near(only_true, BLUE) > 0, "the true points are drawn"
        expect(page.locator(".dq-legend")).to_contain_text("true")
        expect(page.locator(".dq-legend")).not_to_contain_text("false")

        # and the other way round: only false (orange), no true (blue)
        _set_flag(page, FLAG, "false")
        _new_map_image(page, only_true)
        only_false = _settled_image(page, lambda png: _pixels_near(png, BLUE) == 0)
        assert _pixels_near(only_false, BLUE) == 0 and _pixels_near(only_false, ORANGE) > 0

        # a filter leaving no document at all (the flag true and another flag that none of those has): no error
        other, value = empty
        _set_flag(page, FLAG, "true")
        _set_flag(page, other, value)
        expect(page.locator(".dq-counts p").first).to_have_text(re.compile(r"^\s*0 of"), timeout=WAIT_MS)
        page.wait_for_timeout(2500)
        assert _pixels_near(_map_image(page), BLUE) == 0 and _pixels_near(_map_image(page), ORANGE) == 0
        _shot(page, "d1-flag-combined")
        palette = [e for e in page.errors if "palette" in e]
        assert not palette, f"browser errors: {palette}"
        assert not [e for e in page.errors if "Error" in e], f"browser errors: {page.errors}"
    finally:
        page.close()


# -- defect 2: defaults pick filled columns; a range filter never silently drops documents without a value --------


def _scored(run: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_table(run / "docs", columns=["askllm_score"]).column("askllm_score").drop_null().length()


def test_defaults_use_filled_columns_and_nulls_are_kept_with_a_toggle(sparse_server, sparse_run, browser):
    from playwright.sync_api import expect

    scored = _scored(sparse_run)
    page = _open(browser, sparse_server)
    try:
        total = _count(page)
        assert 0 < scored <= total / 10, "the fixture run: askllm_score is sparse"
        # the default filters and the what-if's score are filled columns: askllm_pred stands in for askllm_score
        expect(page.locator(".dq-filter-askllm_pred")).to_have_count(1)
        expect(page.locator(".dq-filter-askllm_score")).to_have_count(0)
        assert page.locator(".dq-whatif-score select").input_value() == "askllm_pred"
        expect(page.locator(".dq-keep-null input")).to_be_checked()

        # one keyboard step on the first default filter keeps (almost) every document
        handle = page.locator(".dq-filter .noUi-handle-lower").first
        handle.focus()
        handle.press("ArrowRight")
        page.wait_for_timeout(2500)
        assert _count(page) >= total - 3, "one step on the default filter dropped most documents"

        # the what-if's top fraction by the default score: 95% keeps about 95% of the documents it considers
        result = page.locator(".dq-whatif-result p").first
        fraction = page.locator(".dq-whatif-fraction .noUi-handle").first
        fraction.focus()
        fraction.press("ArrowLeft")
        expect(page.locator(".dq-whatif-fraction")).to_contain_text("0.95", timeout=WAIT_MS)
        page.wait_for_timeout(2500)
        kept, considered = (int(v.replace(",", "")) for v in re.findall(r"([\d,]+)", result.inner_text())[:2])
        assert kept >= 0.8 * considered, f"the what-if's default keeps {kept} of {considered}"

        # a filter on the sparse askllm_score: documents without a score are kept, and the page says so ...
        box = page.locator(".dq-more input").first
        box.click()
        box.type("askllm_sc", delay=50)
        page.wait_for_timeout(500)
        box.press("Enter")
        expect(page.locator(".dq-filter-askllm_score")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator(".dq-nulls")).to_contain_text(f"askllm_score {total - scored:,}", timeout=WAIT_MS)
        expect(page.locator(".dq-nulls")).to_contain_text("kept")
        before = _count(page)
        handle = page.locator(".dq-filter-askllm_score .noUi-handle-lower").first
        handle.focus()
        handle.press("ArrowRight")  # drops the lowest-scored document
        expect(page.locator(".dq-counts p").first).to_have_text(re.compile(rf"^\s*{before - 1:,} of"), timeout=WAIT_MS)
        _shot(page, "d2-nulls-kept")

        # ... and dropped, when the toggle says so
        page.locator(".dq-keep-null input").first.click()
        expect(page.locator(".dq-counts p").first).to_have_text(re.compile(rf"^\s*{scored - 1:,} of"), timeout=WAIT_MS)
        expect(page.locator(".dq-nulls")).to_contain_text("dropped")
        _shot(page, "d2-nulls-dropped")
        assert not page.errors, f"browser errors: {page.errors}"
    finally:
        page.close()


# -- defect 3: the page fits a laptop screen ---------------------------------------------------------------------


def _inside_horizontally(page, selector: str, shown_only: bool = False) -> None:
    """Every element matching ``selector`` lies within the window's width (``shown_only``: those displayed)."""
    width = page.evaluate("() => window.innerWidth")
    boxes = [page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())]
    if shown_only:
        boxes = [b for b in boxes if b is not None]
    assert boxes, f"{selector}: not on the page"
    for b in boxes:
        assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= width + 0.5, f"{selector} at {b}: off-screen"


def _no_horizontal_scroll(page) -> None:
    scroll, width = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert scroll <= width, f"the page scrolls sideways: {scroll} px wide in a {width} px window"


def test_layout_fits_1280x800_without_horizontal_scrolling(sparse_server, browser):
    from playwright.sync_api import expect

    page = _open(browser, sparse_server, width=1280, height=800)
    try:
        _shot(page, "d3-1280x800")
        _no_horizontal_scroll(page)
        for selector in (".dq-map", ".dq-colour", ".dq-filter", ".dq-whatif", ".dq-whatif .tabulator"):
            _inside_horizontally(page, selector)
        _inside_horizontally(page, ".dq-histograms")
        m = page.locator(".dq-map").first.bounding_box()
        assert m["y"] + m["height"] <= 800, "the map is on the first screen"

        # a box selection fills the table: every column, the snippet above all, is on screen, with its text
        box_select(page, page.locator(".dq-map canvas").first)
        expect(page.locator(".dq-table .tabulator-row")).not_to_have_count(0, timeout=WAIT_MS)
        snippet = page.locator(".dq-table .tabulator-row .tabulator-cell[tabulator-field='snippet']").first
        expect(snippet).to_have_text(re.compile(r"\S.{20,}"), timeout=WAIT_MS)
        _shot(page, "d3-1280x800-selection")
        _no_horizontal_scroll(page)
        _inside_horizontally(page, ".dq-table")
        _inside_horizontally(page, ".dq-table .tabulator-col[tabulator-field='snippet']")
        _inside_horizontally(page, ".dq-table .tabulator-col[tabulator-field]", shown_only=True)
        assert not page.errors, f"browser errors: {page.errors}"
    finally:
        page.close()


# -- defect 4: no empty preference tab, readable numbers, true axis labels, ARIA tabs -------------------------------

#: the axis labels of the map plot (the figure titled "... — colour: ..."), read from the Bokeh document
MAP_AXES_JS = """() => {
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models)
      if (m.title && m.title.text && m.title.text.includes("colour:") && m.below && m.left)
        return [m.below[0].axis_label, m.left[0].axis_label];
  return null;
}"""


def _selected(page) -> list[str]:
    tabs = page.locator("[role=tablist] [role=tab]")
    return [t.inner_text() for t in tabs.all() if t.get_attribute("aria-selected") == "true"]


def test_tabs_have_aria_roles_no_empty_preference_tab_and_the_summary_reads_well(sparse_server, browser):
    from playwright.sync_api import expect

    page = _open(browser, sparse_server)
    try:
        # ARIA: one tablist, a tab per page, the active one selected (and following the choice)
        expect(page.locator("[role=tablist]")).to_have_count(1, timeout=WAIT_MS)
        tabs = page.locator("[role=tablist] [role=tab]")
        expect(tabs).to_have_count(3, timeout=WAIT_MS)  # a run without preference pairs: no Preference tab
        assert tabs.all_inner_texts() == ["Map", "Run summary", "Topics"]
        assert _selected(page) == ["Map"]
        page.get_by_role("tab", name="Run summary").click()
        expect(page.get_by_role("tab", name="Run summary")).to_have_attribute("aria-selected", "true", timeout=WAIT_MS)
        assert _selected(page) == ["Run summary"]

        # the stage table: document counts as integers, seconds to one decimal
        docs = page.locator(".dq-stages .tabulator-cell[tabulator-field='docs']")
        expect(docs.first).to_have_text(re.compile(r"^[\d,]+$"), timeout=WAIT_MS)
        for text in docs.all_inner_texts():
            assert re.fullmatch(r"[\d,]*", text), f"a document count shown as {text!r}"
        walls = page.locator(".dq-stages .tabulator-cell[tabulator-field='wall_s']").all_inner_texts()
        assert walls and all(re.fullmatch(r"[\d,]+\.\d", t) for t in walls), f"stage times shown as {walls}"
        _shot(page, "d4-summary")
        assert not page.errors, f"browser errors: {page.errors}"
    finally:
        page.close()


def test_a_run_without_map_or_embeddings_labels_the_axes_with_its_columns(flat_server, flat_run, browser):
    import pyarrow.dataset as pads

    from dashboards.data_store import discover_columns

    a, b = discover_columns(pads.dataset(flat_run / "docs").schema).numeric[:2]
    page = _open(browser, flat_server)
    try:
        page.wait_for_function(f"({MAP_AXES_JS})() !== null", timeout=WAIT_MS)
        assert page.evaluate(MAP_AXES_JS) == [a, b]
        _shot(page, "d4-flat-axes")
        assert not page.errors, f"browser errors: {page.errors}"
    finally:
        page.close()
