"""The dashboard reads nothing outside the run directory and the inputs the run read: no path traversal.

A run directory is data, possibly forged: its receipts, docs rows and manifest may name any file. The store opens
an input for snippets only when a receipt names it and the file still has the receipt's size and SHA-256, reads it
in the receipt's format only, and never opens a FIFO or device; the server imports no module named in a URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

import dashboards.inputs as inputs
from dashboards.data_store import RunPathError, RunStore, read_records

from .conftest import input_receipt, write_synthetic_run

SECRET = "top-secret-outside-the-run"


def _docs(grid_table, source_files: list[str], ids: list[str] | None = None) -> pa.Table:
    """The grid's docs without text (so snippets come from the inputs), pointing at ``source_files``."""
    t = grid_table.drop_columns(["text"])
    t = t.set_column(t.column_names.index("source_file"), "source_file", pa.array(source_files))
    if ids is not None:
        t = t.set_column(t.column_names.index("id"), "id", pa.array(ids))
    return t


@pytest.fixture
def corpus(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = inputs / "corpus.jsonl"
    src.write_text("".join(f'{{"id": "d{k}", "text": "input text {k}"}}\n' for k in range(16)))
    return src


@pytest.fixture
def secret(tmp_path):
    """A file outside the run that the run never read (JSONL, so a forged text_field or format could parse it)."""
    path = tmp_path / "secret.jsonl"
    path.write_text(json.dumps({"text": SECRET, "password": SECRET}) + "\n")
    return path


@pytest.fixture
def run(tmp_path, grid_table, corpus, secret):
    """A genuine run: its docs point at one real input, with a receipt holding the input's size and SHA-256."""
    return write_synthetic_run(tmp_path / "run", _docs(grid_table, [str(corpus)] * 16), inputs=[str(corpus)])


def _forged_run(root, grid_table, corpus, secret, **receipt_fields):
    """Rows d0..d11 from the genuine input, rows leak0..leak3 pointing at ``secret`` (line 1), named by a receipt
    with ``receipt_fields`` (what a forger can write without knowing the secret), and a manifest whose text_field
    is changed to the secret's other field."""
    files = [str(corpus)] * 12 + [str(secret)] * 4
    ids = [f"d{k}" for k in range(12)] + [f"leak{k}" for k in range(4)]
    t = _docs(grid_table, files, ids)
    t = t.set_column(t.column_names.index("source_index"), "source_index", pa.array([*range(1, 13), 1, 1, 1, 1]))
    size = secret.stat().st_size
    forged = {"path": str(secret), "records": 1, "accepted": 1, "rejected": 0, "format": "jsonl", "size": size}
    forged.update(receipt_fields)
    forged = {k: v for k, v in forged.items() if v is not None}  # None: the key is left out
    return write_synthetic_run(root, t, inputs=[str(corpus)], receipts=[forged])


#: receipt fields a forger can write without knowing the secret -> the reason the server log gives
FORGERIES = {
    "no digest": ({}, "receipt has no digest"),  # an older run's receipt: path and counts only
    "wrong digest": ({"sha256": "0" * 64}, "SHA-256 differs"),
    "digest of other bytes": ({"sha256": hashlib.sha256(b'{"text": "harmless"}\n').hexdigest()}, "SHA-256 differs"),
    "wrong size and digest": ({"size": 3, "sha256": "f" * 64}, "input changed since the run (now"),
    "digest, no format": ({"sha256": "a" * 64, "format": None}, "receipt names no input format"),
    "a format not read": ({"sha256": "a" * 64, "format": "raw"}, "receipt names no input format"),
}


@pytest.mark.parametrize("forgery", FORGERIES, ids=list(FORGERIES))
def test_a_forged_receipt_serves_no_snippet_of_the_outside_file(tmp_path, grid_table, corpus, secret, forgery, caplog):
    fields, reason = FORGERIES[forgery]
    run = _forged_run(tmp_path / "run", grid_table, corpus, secret, **fields)
    store = RunStore(run)
    assert str(secret) in store.allowed_inputs()  # named by a receipt: it gets as far as the content check
    _, rows = store.select(limit=100)
    with caplog.at_level(logging.WARNING, logger="dashboards.inputs"):
        for _ in range(3):  # repeated requests: still nothing, and one warning per file
            snippets = store.snippets(rows)
            assert not any(SECRET in (s or "") for s in snippets)
            by_id = dict(zip(rows.column("id").to_pylist(), snippets))
            assert all(by_id[f"leak{k}"] is None for k in range(4))
            # the genuine input is still read, with the default text field (the forged manifest names none)
            assert by_id["d3"] == "input text 3"
        assert store.document_text("leak0") is None
    warnings = [r.getMessage() for r in caplog.records if str(secret) in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert reason in warnings[0], warnings


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
    # a relative spelling (or a file:// URL) of a real input resolves to the same file and is allowed
    real = os.path.realpath(tmp_path / "inputs" / "corpus.jsonl")
    rel = os.path.relpath(tmp_path / "inputs" / "corpus.jsonl")
    assert store.check_input(rel) == real == store.check_input(f"file://{real}")
    assert store.verified_input(real) == "jsonl"
    assert read_records(store.check_input(rel), [2]) == {2: "input text 1"}


def test_a_document_id_is_never_a_path(run):
    store = RunStore(run)
    assert store.document_text("d3") == "input text 3"
    for doc_id in ("../secret.jsonl", "../../../../etc/passwd", "/etc/passwd", "d3/../d4"):
        assert store.document_text(doc_id) is None


def test_a_forged_manifest_text_field_reads_no_other_field(tmp_path, grid_table, corpus, secret):
    run = _forged_run(tmp_path / "run", grid_table, corpus, secret, sha256="0" * 64)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"] = {"input": {"text_field": "password"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    store = RunStore(run)
    _, rows = store.select(limit=100)
    snippets = store.snippets(rows)
    assert not any(SECRET in (s or "") for s in snippets)
    assert store.document_text("leak1") is None


def test_a_docs_row_naming_a_file_no_receipt_names_is_refused(tmp_path, grid_table, corpus, secret):
    files = [str(corpus)] * 15 + [str(secret)]
    run = write_synthetic_run(tmp_path / "run", _docs(grid_table, files), inputs=[str(corpus)])
    store = RunStore(run)
    assert str(secret) not in store.allowed_inputs()
    _, rows = store.select(limit=100)
    with pytest.raises(RunPathError):
        store.snippets(rows)
    assert store.document_text("d15") is None  # the page shows "no document", never the file or an error
    assert store.document_text("d2") == "input text 2"


def test_an_input_changed_after_the_run_serves_no_snippets(run, corpus, caplog):
    store = RunStore(run)
    _, rows = store.select(limit=3)
    assert store.snippets(rows) == ["input text 0", "input text 1", "input text 2"]
    with corpus.open("a") as fh:  # one more line: a new size
        fh.write(json.dumps({"text": SECRET}) + "\n")
    with caplog.at_level(logging.WARNING, logger="dashboards.inputs"):
        assert store.snippets(rows) == [None, None, None]
        assert RunStore(run).document_text("d1") is None
    assert any("input changed since the run" in r.getMessage() for r in caplog.records)


def test_an_input_rewritten_in_place_with_the_same_size_serves_no_snippets(run, corpus):
    store = RunStore(run)
    _, rows = store.select(limit=3)
    assert store.snippets(rows)[0] == "input text 0"
    data = corpus.read_bytes()
    corpus.write_bytes(data.replace(b"input text 0", b"other text 0"))
    assert corpus.stat().st_size == len(data)
    assert store.snippets(rows) == [None, None, None]  # the whole file is refused, not just the changed line


def test_a_genuine_input_is_hashed_once_per_version(run, corpus, monkeypatch):
    calls = []
    real = inputs.file_sha256

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(inputs, "file_sha256", counting)
    for _ in range(3):
        store = RunStore(run)  # also a fresh store: the digest belongs to the process, not to one store
        _, rows = store.select(limit=16)
        assert store.snippets(rows) == [f"input text {k}" for k in range(16)]
        assert store.document_text("d7") == "input text 7"
    assert calls == [str(corpus)]


def test_records_are_read_in_the_receipts_format_only(tmp_path, grid_table):
    """A file whose bytes match its receipt is still never served as raw text: only its records' text field."""
    raw = tmp_path / "notes.jsonl"
    raw.write_text(f"{SECRET} line one\n" + "".join(json.dumps({"text": f"record {k}"}) + "\n" for k in range(15)))
    as_parquet = tmp_path / "table.jsonl"  # JSON lines, but the receipt says parquet
    as_parquet.write_text("".join(json.dumps({"text": f"{SECRET} {k}"}) + "\n" for k in range(16)))
    files = [str(raw)] * 8 + [str(as_parquet)] * 8
    t = _docs(grid_table, files)
    t = t.set_column(t.column_names.index("source_index"), "source_index", pa.array([*range(1, 9), *range(1, 9)]))
    run = write_synthetic_run(
        tmp_path / "run", t, receipts=[input_receipt(str(raw)), input_receipt(str(as_parquet), format="parquet")]
    )
    store = RunStore(run)
    _, rows = store.select(limit=100)
    snippets = store.snippets(rows)
    assert not any(SECRET in (s or "") for s in snippets)
    by_id = dict(zip(rows.column("id").to_pylist(), snippets))
    assert by_id["d0"] is None and by_id["d1"] == "record 0"  # line 1 is not JSON: no text, not the line
    assert all(by_id[f"d{k}"] is None for k in range(8, 16))  # not Parquet: nothing
    with pytest.raises(ValueError):
        read_records(str(tmp_path / "notes.txt"), [1])  # no format, no guess


def test_genuine_json_array_and_parquet_inputs_serve_their_records(tmp_path, grid_table):
    """Snippets follow the reader's numbering: array elements and Parquet rows from 0, JSON lines from 1."""
    import pyarrow.parquet as pq

    pretty = tmp_path / "pretty.json"  # one array over many lines: read by element, not by line
    pretty.write_text("[\n" + ",\n".join(json.dumps({"text": f"element {k}"}) for k in range(6)) + "\n]\n")
    one_line = tmp_path / "one_line.json"
    one_line.write_text(json.dumps([{"text": f"item {k}"} for k in range(5)]))
    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"text": [f"row {k}" for k in range(5)]}), table, row_group_size=2)
    files = [str(pretty)] * 6 + [str(one_line)] * 5 + [str(table)] * 5
    t = _docs(grid_table, files)
    t = t.set_column(t.column_names.index("source_index"), "source_index", pa.array([*range(6), *range(5), *range(5)]))
    run = write_synthetic_run(tmp_path / "run", t, inputs=[str(pretty), str(one_line), str(table)])
    store = RunStore(run)
    _, rows = store.select(limit=100)
    by_id = dict(zip(rows.column("id").to_pylist(), store.snippets(rows)))
    want = [f"element {k}" for k in range(6)] + [f"item {k}" for k in range(5)] + [f"row {k}" for k in range(5)]
    assert [by_id[f"d{k}"] for k in range(16)] == want


def _release(fifo: str) -> None:
    """Unblock a reader stuck on ``fifo`` (only if the test failed: then a writer end exists to open)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting: nothing opened it


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_receipt_naming_a_fifo_device_or_directory_is_never_opened(tmp_path, grid_table, corpus, kind, caplog):
    if kind == "fifo":
        target = str(tmp_path / "pipe.jsonl")
        os.mkfifo(target)
    elif kind == "directory":
        target = str(tmp_path / "dir.jsonl")
        os.mkdir(target)
    else:
        target = "/dev/null"  # reads as 0 bytes hashing to the receipt's digest: only its type gives it away
    empty = hashlib.sha256(b"").hexdigest()
    forged = {"path": target, "records": 1, "format": "jsonl", "size": 0, "sha256": empty}
    files = [str(corpus)] * 8 + [target] * 8
    run = write_synthetic_run(tmp_path / "run", _docs(grid_table, files), inputs=[str(corpus)], receipts=[forged])
    if kind == "fifo":
        os.mkfifo(run / "_shards" / "9.json")  # a receipt that is itself a FIFO: skipped, not read
    result: dict = {}

    def load():
        store = RunStore(run)
        _, rows = store.select(limit=100)
        result["snippets"] = store.snippets(rows)
        result["doc"] = store.document_text("d12")

    with caplog.at_level(logging.WARNING, logger="dashboards.inputs"):
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        worker.join(timeout=60)
    hung = worker.is_alive()
    if hung and kind == "fifo":
        _release(target)
        _release(str(run / "_shards" / "9.json"))
    assert not hung, f"the store blocked on the {kind}"
    assert result["snippets"][:8] == [f"input text {k}" for k in range(8)]
    assert result["snippets"][8:] == [None] * 8 and result["doc"] is None
    assert any(target in r.getMessage() and "not a regular file" in r.getMessage() for r in caplog.records)


# -- a real server -------------------------------------------------------------------------------------------


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


@pytest.fixture
def served(tmp_path, grid_table, corpus, secret):
    """``dashboards.app.serve`` (threaded, in this process) on a forged run: ``leak*`` rows name the secret."""
    from dashboards.app import serve

    run = _forged_run(tmp_path / "run", grid_table, corpus, secret, sha256="0" * 64)
    port = _free_port()
    server = serve(str(run), port=port, threaded=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the dashboard did not listen within 120 s") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _page_text(base: str, doc: str) -> str:
    """Everything the server sends a browser session for ``/?doc=<doc>``: the HTML and the document's models."""
    from bokeh.client import pull_session

    _, html = _get(f"{base}/?doc={urllib.request.quote(doc)}")
    with pull_session(url=f"{base}/", arguments={"doc": doc}) as session:
        models = json.dumps(session.document.to_json(), default=repr)
    return html + models


def test_the_server_serves_no_file_outside_the_run(served):
    for path in (
        "/../secret.jsonl",
        "/%2e%2e/secret.jsonl",
        "/static/../../secret.jsonl",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/extensions/panel/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/?doc=../secret.jsonl",
        "/?doc=../../../../etc/passwd",
    ):
        _, body = _get(served + path)
        assert SECRET not in body and "root:x:0:0" not in body, path
    leak = _page_text(served, "leak0")  # the forged document: its receipt's digest does not match
    assert "Document leak0" in leak and SECRET not in leak
    genuine = _page_text(served, "d3")
    assert "Document d3" in genuine and "input text 3" in genuine


def test_the_server_imports_no_module_named_in_a_url(served, tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "imported"
    name = f"dq_canary_{os.getpid()}"
    (mods / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\nclass C:\n    __css__ = ['a.css']\n"
    )
    (mods / "a.css").write_text("body {}")
    monkeypatch.syspath_prepend(str(mods))
    for path in (
        f"/components/{name}/C/__css__/a.css",  # Panel's own handler would import it and serve a.css
        "/components/os/path/__css__/x.css",
        "/components/os/system/__css__/x",
        "/components/json/x.js",
        "/components/json/JSONDecoder/__javascript__/x.js",
        "/components/%6fs/path/__css__/x.css",
        "/components/panel/io/server/__css__/x",
    ):
        status, body = _get(served + path)
        assert status in (403, 404), (path, status)
        assert "body {}" not in body and SECRET not in body
    assert not marker.exists() and name not in sys.modules
