"""The dashboard's preference tab in a real headless Chromium, on a real preference run (constructed pairs).

The run: the tiny constructed preference set (Wikipedia leads vs tweets, tests/test_preference.py) through the
Ray pipeline with ``embed`` (prompt embeddings: the prompt map) and ``pairs``. Screenshots go to
tests/artifacts/dashboard/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dq_ray.config import load_config
from tests.test_preference import tiny_pref  # noqa: F401  (the session fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs the system Chromium")


@pytest.fixture(scope="module")
def pref_dash_run(ray_local, tiny_pref, tmp_path_factory) -> Path:  # noqa: F811
    from dq_ray.pipeline import run_job

    out, _ = tiny_pref
    run_dir = tmp_path_factory.mktemp("pref_dash") / "run"
    cfg = load_config(
        {
            "input": {"paths": [str(out / "dpo")], "shape": "dpo", "keep_fields": ["kind"]},
            "output": {"path": str(run_dir)},
            # two model stages in one segment on 2 CPUs: half a CPU each leaves the read tasks a whole one
            "stages": [
                {
                    "name": "embed",
                    "params": {"backend": "onnx", "max_seq_length": 64},
                    "resources": {"num_cpus": 0.5, "concurrency": 1},
                },
                {"name": "pairs", "params": {"backend": "onnx"}, "resources": {"num_cpus": 0.5, "concurrency": 1}},
            ],
        }
    )
    run_job(cfg)
    return run_dir


@pytest.fixture(scope="module")
def server(pref_dash_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("dq-ray", path=os.path.dirname(sys.executable)) or "dq-ray"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "preference-server.log", "w")
    proc = subprocess.Popen(
        [exe, "dashboard", str(pref_dash_run), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dq-ray dashboard exited with {proc.returncode}; see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.terminate()
                raise RuntimeError(f"dq-ray dashboard did not listen within 180 s; see {log.name}") from None
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_preference_tab_renders_plots_and_flagged_pairs(server, tiny_pref):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    _, summary = tiny_pref
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1600})
            page.goto(server, wait_until="networkidle", timeout=60_000)
            page.get_by_text("Preference", exact=True).first.click()
            expect(page.get_by_text("Preference pairs").first).to_be_visible(timeout=60_000)
            # the rasterized plots (margin vs length difference, the prompt map) arrive as canvases
            expect(page.locator("canvas").first).to_be_visible(timeout=60_000)
            assert page.locator("canvas").count() >= 2
            # the flagged-pairs table: the first flag is pair_identical, one row per constructed identical pair
            identical = summary["ids"]["identical"]
            expect(page.get_by_text(identical[0], exact=True).first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "preference-tab.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
