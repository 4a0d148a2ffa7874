"""What a run may touch: it deletes only what it wrote, never writes into a root, a home or an input, and
one writer at a time. Real CLI runs on tiny inputs (the refusals happen before Ray starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.io.guard import LOCK_NAME, RunLock, RunLockedError, UnsafeOutputError, check_output
from tests.helpers import wiki_texts, write_jsonl

REPO = Path(__file__).resolve().parents[2]
FAST = str(REPO / "tests" / "data" / "fast.yaml")


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(wiki_texts(6))])
    return folder


def run_cli(*args: str):
    return CliRunner().invoke(main, ["run", FAST, *args])


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_folder_dq_ray_did_not_create_is_never_deleted(data, tmp_path):
    v = tmp_path / "v"
    (v / "docs").mkdir(parents=True)
    (v / "_work").mkdir()
    (v / "docs" / "important.md").write_text("x")
    (v / "_work" / ".half.tmp").write_text("a user's hidden file")
    before = tree(v)
    for flags in ([], ["--overwrite"], ["--resume"]):
        r = run_cli("-i", str(data), "-o", str(v), *flags)
        assert r.exit_code != 0, (flags, r.output)
        assert "not a dq-ray run directory" in r.output and "docs" in r.output, r.output
    assert tree(v) == before and (v / "_work").is_dir()


def test_overwrite_deletes_only_the_runs_own_files(ray_local, data, tmp_path):
    out = tmp_path / "run"
    assert run_cli("-i", str(data), "-o", str(out)).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["run_id"]) == 32 and not (out / LOCK_NAME).exists()  # the lock is released
    (out / "notes.md").write_text("mine")  # beside the run: kept by --overwrite
    (out / "docs" / "keep.md").write_text("mine too")  # inside the run's layout: stops the overwrite
    r = run_cli("-i", str(data), "-o", str(out), "--overwrite")
    assert r.exit_code != 0 and "docs/keep.md" in r.output and "nothing was deleted" in r.output
    assert (out / "docs" / "keep.md").exists() and (out / "manifest.json").exists()
    (out / "docs" / "keep.md").unlink()
    r = run_cli("-i", str(data), "-o", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "notes.md").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["run_id"] != manifest["run_id"]


def test_output_in_or_around_an_input_a_root_or_a_home_is_refused(data, tmp_path, monkeypatch):
    inner = data / "run"
    for out, words in ((inner, "inside input"), (data, "inside input"), (tmp_path, "holds input")):
        r = run_cli("-i", str(data), "-o", str(out))
        assert r.exit_code != 0 and words in r.output, r.output
    assert not inner.exists()
    r = run_cli("-i", str(data / "*.jsonl"), "-o", str(data / "sub"))  # a glob reads under its folder
    assert r.exit_code != 0 and "inside input" in r.output
    r = run_cli("-i", str(data), "-o", "/")
    assert r.exit_code != 0 and "filesystem root" in r.output
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    r = run_cli("-i", str(data), "-o", "~")
    r2 = run_cli("-i", str(data), "-o", str(home))
    assert r.exit_code != 0 and r2.exit_code != 0 and "home directory" in r2.output
    with pytest.raises(UnsafeOutputError):
        check_output(str(tmp_path), [str(data / "a.jsonl")])
    check_output(str(tmp_path / "elsewhere"), [str(data)])  # a sibling folder is fine
    r = CliRunner().invoke(main, ["validate", FAST, "-i", str(data), "-o", str(inner)])
    assert r.exit_code != 0 and "inside input" in r.output


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(ray_local, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    import fsspec

    fs = fsspec.filesystem("file")
    held = RunLock(fs, str(out))
    held.acquire("live")
    r = run_cli("-i", str(data), "-o", str(out))
    assert r.exit_code != 0 and f"process {os.getpid()}" in r.output and LOCK_NAME in r.output, r.output
    with pytest.raises(RunLockedError):
        RunLock(fs, str(out)).acquire()
    held.release()
    # a lock left by a process that is gone (a SIGKILLed run) does not block the next attempt
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": 0.0}))
    r = run_cli("-i", str(data), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert not (out / LOCK_NAME).exists()


def test_select_never_deletes_a_foreign_selected_folder(ray_local, data, tmp_path):
    out = tmp_path / "run"
    assert run_cli("-i", str(data), "-o", str(out)).exit_code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {kind: filter, column: exact_dup_keep, op: is_true}\n")
    target = tmp_path / "mine"
    (target / "selected").mkdir(parents=True)
    (target / "selected" / "thesis.tex").write_text("years of work")
    r = CliRunner().invoke(main, ["select", str(out), "--policy", str(policy), "--output", str(target)])
    assert r.exit_code != 0 and "no earlier dq-ray selection" in r.output, r.output
    assert (target / "selected" / "thesis.tex").read_text() == "years of work"
    fresh = tmp_path / "fresh"
    r = CliRunner().invoke(main, ["select", str(out), "--policy", str(policy), "--output", str(fresh)])
    assert r.exit_code == 0, r.output
    again = CliRunner().invoke(main, ["select", str(out), "--policy", str(policy), "--output", str(fresh)])
    assert again.exit_code == 0, again.output  # an earlier selection of its own is replaced


def test_embedded_ray_listens_on_loopback_only():
    """A fresh process starts dq-ray's embedded Ray and lists the TCP ports its processes listen on."""
    script = """
import psutil, ray
from dq_ray.pipeline import init_local_ray
init_local_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
pids = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
bad = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
       if c.status == "LISTEN" and c.pid in pids and c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
print("LISTENING", len([c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.pid in pids]))
print("BAD", bad)
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BAD []" in proc.stdout, proc.stdout
    assert int(proc.stdout.split("LISTENING ")[1].split()[0]) >= 3  # the check saw Ray's servers


def test_resume_refuses_an_input_that_changed(ray_local, data, tmp_path):
    out = tmp_path / "run"
    assert run_cli("-i", str(data), "-o", str(out)).exit_code == 0
    with open(data / "a.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "late", "text": wiki_texts(7)[-1]}) + "\n")
    r = run_cli("-i", str(data), "-o", str(out), "--resume")
    assert r.exit_code != 0 and "changed since this run read them" in r.output and "a.jsonl" in r.output, r.output


SECRETS = ("s3cr3tPass", "SIGSECRET123", "TOKSECRET456")


@pytest.fixture
def http_input(data):
    """The data folder served over HTTP on 127.0.0.1; the URL carries a password and signed-URL secrets."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the test server's own access log is not dq-ray's output
            pass

    handler = functools.partial(Quiet, directory=str(data))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    yield f"http://user:{SECRETS[0]}@127.0.0.1:{port}/a.jsonl?X-Amz-Signature={SECRETS[1]}&token={SECRETS[2]}"
    server.shutdown()


def test_no_credential_reaches_any_output_file(ray_local, http_input, tmp_path):
    out = tmp_path / "run"
    r = run_cli("-i", http_input, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["counts"]["accepted"] == 6
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("_shards" in p.parts for p in files)
    for path in files:
        blob = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in blob, (secret, path)
    for secret in SECRETS:
        assert secret not in r.output
    # an input that fails (a missing file on the same server) reports its error without the secrets
    missing = http_input.replace("/a.jsonl", "/gone.jsonl")
    r = run_cli("-i", missing, "-o", str(tmp_path / "run2"))
    assert r.exit_code != 0 and not any(s in r.output for s in SECRETS), r.output
