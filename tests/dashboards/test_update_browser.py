"""An update run in a real headless Chromium: the map coloured by run, and the probes layer of a gaps report.

`dq-ray dashboard` serves the update of :func:`update_run` (with its baseline and a ``gaps-probes/`` report);
Playwright drives the system Chromium. Screenshots go to tests/artifacts/dashboard/.
"""

from __future__ import annotations

import os

import pytest

from .conftest import dashboard_server
from .test_browser import ARGS, ARTIFACTS, CHROMIUM, WAIT_MS

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs the system Chromium")


@pytest.fixture(scope="module")
def update_server(update_run):
    with dashboard_server(update_run, ARTIFACTS / "update-server.log") as url:
        yield url


def test_the_map_colours_by_run_and_shows_the_probes(update_server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1300})
            page.goto(update_server, wait_until="networkidle", timeout=60_000)
            expect(page.locator(".dq-map canvas").first).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("this run and its baselines base")).to_be_visible()

            # colour by run: the legend names the update and its baseline
            page.locator(".dq-colour select").select_option("run")
            legend = page.locator(".dq-legend")
            expect(legend).to_contain_text("update", timeout=WAIT_MS)
            expect(legend).to_contain_text("base", timeout=WAIT_MS)

            # the probes layer: the report's probes listed; a click on one lists its nearest documents
            page.locator(".dq-probes select").select_option("gaps-probes")
            expect(page.locator(".dq-probes-status")).to_contain_text("5 on the map", timeout=WAIT_MS)
            rows = page.locator(".dq-probe-table .tabulator-row")
            expect(rows).to_have_count(5, timeout=WAIT_MS)
            rows.first.click()
            expect(page.locator(".dq-probe-title")).to_contain_text("nearest documents by embedding", timeout=WAIT_MS)
            expect(page.locator(".dq-probe-neighbours .tabulator-row")).not_to_have_count(0, timeout=WAIT_MS)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "update-probes.png"), full_page=True)
        finally:
            browser.close()
