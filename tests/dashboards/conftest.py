"""A real tiny run for the dashboard tests: heuristics, exact_dedup and embed on the tiny corpus, in Ray."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from dq_ray.config import load_config

BASE_STAGES = ["heuristics", "exact_dedup", {"name": "embed", "params": {"backend": "onnx", "max_seq_length": 64}}]


def _pipeline_run(out: Path, corpus: Path, stages: list) -> Path:
    from dq_ray.pipeline import run_job

    cfg = load_config(
        {
            "input": {"paths": [str(corpus)], "batch_rows": 50, "keep_fields": ["source"]},
            "output": {"path": str(out)},
            "stages": stages,
        }
    )
    run_job(cfg)
    return out


@pytest.fixture(scope="session")
def dash_run(ray_local, tiny_corpus, tmp_path_factory) -> Path:
    """A run directory written by the real pipeline (no map stage: the store projects the embeddings)."""
    return _pipeline_run(tmp_path_factory.mktemp("dash") / "run", tiny_corpus, BASE_STAGES)


@pytest.fixture(scope="session")
def map_run(ray_local, tiny_corpus, tmp_path_factory) -> Path:
    """A run with the map's own columns: topics and map coordinates (PCA: no numba compile) from the pipeline."""
    stages = [*BASE_STAGES, {"name": "topics", "params": {"n_topics": 6}}, {"name": "map", "params": {"method": "pca"}}]
    return _pipeline_run(tmp_path_factory.mktemp("dash-map") / "run", tiny_corpus, stages)


def input_receipt(path: str, **fields) -> dict:
    """The receipt the reader writes for an input file that exists: path, counts, format, size, mtime, sha256.

    ``fields`` override or add entries (a forged receipt: ``sha256=None`` drops the digest).
    """
    import os

    from dq_ray.io.digest import file_sha256
    from dq_ray.io.readers import format_of

    size, digest = file_sha256(path)
    receipt = {
        "path": path,
        "records": 1,
        "accepted": 1,
        "rejected": 0,
        "format": format_of(path) or "jsonl",
        "size": size,
        "mtime": os.path.getmtime(path),
        "sha256": digest,
    }
    receipt.update(fields)
    return {k: v for k, v in receipt.items() if v is not None}


def write_synthetic_run(
    root: Path, table, inputs: list[str] = (), manifest: dict | None = None, receipts: list[dict] = ()
) -> Path:
    """A minimal run directory around a ``docs`` table (known points for exact checks); no Ray needed.

    Each path of ``inputs`` gets a receipt as the reader writes it (:func:`input_receipt`) when the file exists,
    else a bare one (path and count only); ``receipts`` are written as given (forged ones).
    """
    import json
    import os

    import pyarrow.parquet as pq

    (root / "docs").mkdir(parents=True)
    (root / "_shards").mkdir()
    pq.write_table(table, root / "docs" / "part-0.parquet", row_group_size=max(1, table.num_rows // 3))
    written = [input_receipt(p) if os.path.isfile(p) else {"path": p, "records": 1} for p in inputs]
    for i, receipt in enumerate([*written, *receipts]):
        (root / "_shards" / f"{i}.json").write_text(json.dumps(receipt))
    base = {"status": "succeeded", "run_dir": str(root), "counts": {"input": table.num_rows}, "stages": {}}
    (root / "manifest.json").write_text(json.dumps({**base, **(manifest or {})}))
    return root


@pytest.fixture
def grid_table():
    """16 documents at known points: 4 per unit cell of a 2x2 grid over [0, 2] x [0, 2], known signals."""
    import pyarrow as pa

    xs, ys, score, flag, cat, text = [], [], [], [], [], []
    for i, (cx, cy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        for j in range(4):
            xs.append(cx + 0.25 + 0.5 * (j % 2))
            ys.append(cy + 0.25 + 0.5 * (j // 2))
            score.append(float(10 * i + j))  # cell i has mean 10 i + 1.5
            flag.append(j != 3)
            cat.append("a" if j < 2 else "b")
            text.append(f"document {i}-{j} " + "words " * 80)
    n = len(xs)
    return pa.table(
        {
            "id": [f"d{k}" for k in range(n)],
            "text": text,
            "source_file": ["/nonexistent/input.jsonl"] * n,
            "source_index": pa.array(range(1, n + 1), pa.int64()),
            "source": cat,
            "score": pa.array(score, pa.float32()),
            "ok_keep": flag,
            "map_x": pa.array(xs, pa.float32()),
            "map_y": pa.array(ys, pa.float32()),
        }
    )


def box_select(page, canvas) -> None:
    """Drag Bokeh's box-select tool over the middle of the map's ``canvas`` (10-80 % across, 8-90 % down)."""
    page.locator(".dq-map [title='Box Select']").first.click()
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.08
    x1, y1 = box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.9
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()


# -- text of the map run, for the search tests ------------------------------------------------------------


def words(text: str | None) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


@pytest.fixture(scope="session")
def doc_texts(map_run) -> list[str | None]:
    """Every document's whole text, in docs/ order, read from the run's verified inputs."""
    from dashboards.data_store import RunStore

    store = RunStore(map_run)
    rows = store.dataset.to_table(columns=["id", "source_file", "source_index"])
    return store.snippets(rows, chars=10**7)


def matching_rows(texts: list[str | None], query: str) -> list[int]:
    """The rows whose text holds every word of ``query`` (or each word pair of a quoted phrase), by brute force."""
    q = words(query)
    if query.startswith('"'):
        joined = [" " + " ".join(words(t)) + " " for t in texts]
        pairs = [f" {a} {b} " for a, b in zip(q, q[1:])]
        return [i for i, j in enumerate(joined) if all(p in j for p in pairs)]
    return [i for i, t in enumerate(texts) if set(q) <= set(words(t))]


def sample_queries(texts: list[str | None]) -> list[str]:
    """A rare word, a common one, two words together and a phrase: all taken from the corpus itself."""
    df: dict[str, int] = {}
    for t in texts:
        for w in set(words(t)):
            df[w] = df.get(w, 0) + 1
    rare = sorted(w for w, n in df.items() if 2 <= n <= 5 and w.isalpha() and len(w) > 5)[0]
    common = max(df, key=lambda w: (df[w], w))
    first = next(t for t in texts if t and len(words(t)) > 8)
    a, b, c = words(first)[3:6]
    return [rare, common, f"{rare} {common}", f'"{a} {b} {c}"', "zzzqqqnotaword"]


# -- an update run (dq-ray run --baseline) with a gaps report, for the run colouring and the probes layer --------

UPDATE_STAGES = [
    {"name": "embed", "params": {"backend": "onnx", "max_seq_length": 64}},
    {"name": "density", "params": {"k": 8}},
    {"name": "map", "params": {"method": "pca"}},
]


def _cli_run(top: Path, name: str, inputs: list, baseline: Path | None = None) -> Path:
    import yaml
    from click.testing import CliRunner

    from dq_ray.cli import main

    cfg = {"input": {"paths": [str(p) for p in inputs]}, "output": {"path": str(top / name)}, "stages": UPDATE_STAGES}
    (top / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    args = ["run", str(top / f"{name}.yaml"), "--no-progress", *(["--baseline", str(baseline)] if baseline else [])]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return top / name


@pytest.fixture(scope="session")
def update_run(ray_local, tiny_corpus, tmp_path_factory) -> Path:
    """``base``: tweets + news (embed, density, a PCA map); ``update``: the Wikipedia articles, made with
    ``--baseline base``; then ``dq-ray gaps update --probes probes.jsonl`` (three news texts and two made-up
    ones), so the update holds ``gaps-probes/``. Returns the update's run directory."""
    import json

    from click.testing import CliRunner

    from dq_ray.cli import main

    top = tmp_path_factory.mktemp("dash-update")
    base = _cli_run(top, "base", [tiny_corpus / "tweets.jsonl.zst", tiny_corpus / "news.jsonl"])
    update = _cli_run(top, "update", [tiny_corpus / "wikipedia.jsonl.gz"], baseline=base)
    from dq_ray.io import InputConfig, ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(str(tiny_corpus / "news.jsonl"),))
    news = [r for f in discover_inputs(cfg) for t in read_shard(f, cfg, ShardResult(f.path)) for r in t.to_pylist()]
    texts = [r["text"] for r in news[:3]]
    texts += ["How do tidal harbours silt up, and how are they dredged?", "Eine Frage zur deutschen Grammatik."]
    probes = top / "probes.jsonl"
    probes.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    args = ["gaps", str(update), "--probes", str(probes), "--k", "4"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return update


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard_server(run: Path, log_path: Path):
    """``dq-ray dashboard RUN`` in a subprocess on a free port (its output in ``log_path``); yields its URL."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    exe = shutil.which("dq-ray", path=os.path.dirname(sys.executable)) or "dq-ray"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen([exe, "dashboard", str(run), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180  # imports and the first load of the store; slow on a busy 2-core machine
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dq-ray dashboard exited with {proc.returncode}; see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break  # listening: the server binds only after the store is loaded
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"dq-ray dashboard did not listen within 180 s; see {log.name}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
