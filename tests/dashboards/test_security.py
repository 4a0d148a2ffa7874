"""The dashboard reads nothing outside the run directory and the inputs the run read: no path traversal."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from dashboards.data_store import RunPathError, RunStore, read_records

from .conftest import write_synthetic_run

SECRET = "top-secret-outside-the-run"


@pytest.fixture
def run(tmp_path, grid_table):
    """A run whose docs point at one real input; a secret file sits next to the run directory."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = inputs / "corpus.jsonl"
    src.write_text("".join(f'{{"id": "d{k}", "text": "input text {k}"}}\n' for k in range(16)))
    (tmp_path / "secret.jsonl").write_text(f'{{"text": "{SECRET}"}}\n')
    t = grid_table.drop_columns(["text"])
    t = t.set_column(t.column_names.index("source_file"), "source_file", pa.array([str(src)] * 16))
    return write_synthetic_run(tmp_path / "run", t, inputs=[str(src)])


def test_paths_are_confined_to_the_run(run, tmp_path):
    store = RunStore(run)
    assert store.path("manifest.json") == os.path.join(os.path.realpath(run), "manifest.json")
    for bad in ("../secret.jsonl", "docs/../../secret.jsonl", "/etc/passwd", "a\x00b"):
        with pytest.raises(RunPathError):
            store.path(bad)
    os.symlink(tmp_path / "secret.jsonl", run / "artifacts_link")  # a link inside the run pointing out of it
    with pytest.raises(RunPathError):
        store.path("artifacts_link")


def test_snippets_open_only_inputs_the_run_read(run, tmp_path):
    store = RunStore(run)
    _, rows = store.select(limit=3)
    assert store.snippets(rows) == ["input text 0", "input text 1", "input text 2"]
    for forged in (str(tmp_path / "secret.jsonl"), str(tmp_path / "inputs" / ".." / "secret.jsonl"), "/etc/passwd"):
        bad = rows.set_column(rows.column_names.index("source_file"), "source_file", pa.array([forged] * 3))
        with pytest.raises(RunPathError):
            store.snippets(bad)
    # a relative spelling of a real input resolves to the same file and is allowed
    rel = os.path.relpath(tmp_path / "inputs" / "corpus.jsonl")
    assert store.check_input(rel) == os.path.realpath(tmp_path / "inputs" / "corpus.jsonl")
    assert read_records(store.check_input(rel), [2]) == {2: "input text 1"}


def test_a_document_id_is_never_a_path(run):
    store = RunStore(run)
    assert store.document_text("d3") == "input text 3"
    for doc_id in ("../secret.jsonl", "../../../../etc/passwd", "/etc/passwd", "d3/../d4"):
        assert store.document_text(doc_id) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


def test_the_server_serves_no_file_outside_the_run(run):
    import panel as pn

    from dashboards.app import create_app

    port = _free_port()
    server = pn.serve(
        {"/": lambda: create_app(str(run))}, port=port, address="127.0.0.1", show=False, threaded=True, start=True
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        for path in (
            "/../secret.jsonl",
            "/%2e%2e/secret.jsonl",
            "/static/../../secret.jsonl",
            "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/static/extensions/panel/..%2f..%2f..%2f..%2fetc%2fpasswd",
            "/?doc=../secret.jsonl",
            "/?doc=../../../../etc/passwd",
        ):
            status, body = _get(base + path)
            assert SECRET not in body and "root:x:0:0" not in body, path
        status, body = _get(base + "/?doc=d3")
        assert status == 200
    finally:
        server.stop()
