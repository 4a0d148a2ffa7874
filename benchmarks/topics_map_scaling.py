"""How the ``topics`` and ``map`` stages scale: fit and per-document apply throughput at 10k, 100k and 1M vectors.

Data (synthetic, seeded): ``N`` unit vectors of dimension 384 around ``N / 1000`` (at least 10) random topic
directions, as in ``semdedup_scaling.py``.

Measured, each size in its own process (peak memory is its own), single-threaded BLAS (one Ray worker's share):

* **topics fit**: FAISS spherical k-means with the stage's default ``n_topics`` (``sqrt(N / 2)``) on a seeded
  sample of ``256 * n_topics`` rows (at most ``--max-sample``), plus the coarse k-means over the centroids;
* **topic assignment**: ``Topics.process`` (nearest centroid, chunked numpy matmul) over batches of 8,192 rows,
  against the baseline **FAISS** ``IndexFlatIP.search(k=1)`` over the same centroids (the same answer);
* **map, PCA**: ``Map.process`` with the PCA projection (fit on 10,000 rows);
* **map, UMAP**: ``Map.process`` with a UMAP model fitted on a 10,000-row sample, timed on ``--umap-rows`` rows
  (its per-document cost depends on the fitted model, not on N); numba's compilation (a tiny fit + transform
  run first) is timed apart. Baseline: **UMAP fitted on all N rows** (``fit_transform``, what a
  fit-on-everything map costs), run up to ``--umap-full-max`` rows.

Reported: seconds, documents per second, peak RSS of the process (``ru_maxrss``) and the vectors' size.

    .venv/bin/python benchmarks/topics_map_scaling.py [--sizes 10000 100000 1000000] [--umap-rows 20000]
        [--umap-full-max 10000] [--out benchmarks/results/topics_map_scaling.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import pyarrow as pa

DIM = 384
BATCH = 8192
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def make_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = topics[rng.integers(0, len(topics), n)] + 0.05 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _table(x: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
            "source_file": pa.array(["synthetic"] * len(x)),
            "source_index": pa.array(np.arange(len(x))),
        }
    )


def _batches(table: pa.Table):
    for lo in range(0, table.num_rows, BATCH):
        yield table.slice(lo, BATCH)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(n: int, umap_rows: int, umap_full_max: int, max_sample: int, umap_max_n: int) -> dict:
    """Everything for one size, in this process."""
    import faiss

    from dq_ray.stage import TableFitData
    from dq_ray.stages.map import Map, MapParams
    from dq_ray.stages.topics import Topics, TopicsParams, default_topics, spherical_kmeans

    out: dict = {"n": n}
    x = make_vectors(n)
    table = _table(x)
    out["vectors_gb"] = x.nbytes / 2**30
    tmp = tempfile.mkdtemp(prefix="dqbench-")

    # topics: fit k-means on the sample the stage would draw, then assignment throughput vs FAISS flat search
    k = default_topics(n)
    sample = min(256 * k, max_sample, n)
    rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
    t0 = time.perf_counter()
    centroids = spherical_kmeans(x[rows], k, 25, 0)
    coarse = spherical_kmeans(centroids, max(2, round(k**0.5)), 25, 0)
    out["topics_fit_s"] = time.perf_counter() - t0
    out["n_topics"], out["fit_sample"] = k, sample
    stage = Topics(TopicsParams(n_topics=k))
    stage.centroids = centroids
    from dq_ray.vectors import nearest_centroid

    stage.coarse_of_fine = nearest_centroid(centroids, coarse)[0]
    stage._ready = True
    stage.process(table.slice(0, 256))  # warm-up (first-call allocations), as for FAISS below
    t0 = time.perf_counter()
    ours = np.concatenate([b.column("topic_id").to_numpy() for b in map(stage.process, _batches(table))])
    out["assign_s"] = time.perf_counter() - t0
    index = faiss.IndexFlatIP(DIM)
    index.add(centroids)
    index.search(x[:256], 1)
    t0 = time.perf_counter()
    base = np.concatenate([index.search(x[lo : lo + BATCH], 1)[1][:, 0] for lo in range(0, n, BATCH)])
    out["assign_faiss_s"] = time.perf_counter() - t0
    out["assign_agreement"] = float((ours == base).mean())

    # map: PCA over everything; UMAP transform on umap_rows rows; UMAP fit on everything as the baseline
    fit_rows = table.slice(0, min(n, 10_000))
    pca = Map(MapParams(method="pca", sample_rows=10_000))
    pca.fit_signed(TableFitData(fit_rows, f"{tmp}/pca"))
    pca.artifacts_dir = f"{tmp}/pca"
    pca.ensure_setup()
    t0 = time.perf_counter()
    for b in _batches(table):
        pca.process(b)
    out["pca_apply_s"] = time.perf_counter() - t0

    if n > umap_max_n:
        out["peak_rss_gb"] = _rss_gb()
        return out
    # numba compiles UMAP's code on first use in a process: time that apart (a tiny fit + transform)
    t0 = time.perf_counter()
    # (above 4,096 rows UMAP switches to NN-descent: the warm-up fit is that large so both paths are compiled)
    warm_rows = min(n, 5000)
    warm = Map(MapParams(method="umap", sample_rows=warm_rows, n_epochs=5))
    warm.fit_signed(TableFitData(table.slice(0, warm_rows), f"{tmp}/warm"))
    warm.artifacts_dir = f"{tmp}/warm"
    warm.ensure_setup()
    warm.process(table.slice(0, 64))
    out["umap_compile_s"] = time.perf_counter() - t0
    um = Map(MapParams(method="umap", sample_rows=10_000))
    t0 = time.perf_counter()
    um.fit_signed(TableFitData(fit_rows, f"{tmp}/umap"))
    out["umap_fit_s"] = time.perf_counter() - t0
    um.artifacts_dir = f"{tmp}/umap"
    um.ensure_setup()
    sub = table.slice(0, min(n, umap_rows))
    t0 = time.perf_counter()
    for b in _batches(sub):
        um.process(b)
    out["umap_apply_s"], out["umap_apply_rows"] = time.perf_counter() - t0, sub.num_rows
    if n <= umap_full_max:
        import umap

        t0 = time.perf_counter()
        umap.UMAP(n_components=2, metric="cosine", random_state=0, n_jobs=1).fit_transform(x)
        out["umap_full_fit_s"] = time.perf_counter() - t0
    out["peak_rss_gb"] = _rss_gb()
    return out


def _row(r: dict) -> list[str]:
    n = r["n"]
    full = f"{r['umap_full_fit_s']:.1f} s" if "umap_full_fit_s" in r else "not run"
    return [
        f"{n:,}",
        f"{r['n_topics']} / {r['fit_sample']:,}",
        f"{r['topics_fit_s']:.1f}",
        f"{n / r['assign_s']:,.0f}",
        f"{n / r['assign_faiss_s']:,.0f}",
        f"{r['assign_faiss_s'] / r['assign_s']:.2f}",
        f"{r['assign_agreement']:.4f}",
        f"{n / r['pca_apply_s']:,.0f}",
        f"{r['umap_fit_s']:.1f}" if "umap_fit_s" in r else "not run",
        f"{r['umap_apply_rows'] / r['umap_apply_s']:,.0f}" if "umap_apply_s" in r else "not run",
        full,
        f"{r['peak_rss_gb']:.2f} ({r['vectors_gb']:.2f})",
    ]


def write_table(results: list[dict], args: argparse.Namespace) -> None:
    header = [
        "documents",
        "topics / fit sample",
        "topics fit s",
        "assign docs/s (ours)",
        "assign docs/s (FAISS flat)",
        "ratio FAISS time / ours",
        "same topic",
        "PCA map docs/s",
        "UMAP fit s (10k sample)",
        "UMAP transform docs/s",
        "baseline: UMAP fit on all N",
        "peak RSS GB (vectors)",
    ]
    versions = {p: metadata.version(p) for p in ("faiss-cpu", "umap-learn", "numpy", "numba")}
    lines = [
        "# topics and map: scaling",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} with {os.cpu_count()} cores "
        f"(shared with other jobs), one BLAS/numba thread per process; {versions}.",
        "",
        "Command: `" + " ".join(shlex.quote(a) for a in sys.argv) + "`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(_row(r)) + " |" for r in results],
        "",
        "- **assign**: `Topics.process` (nearest of the fine centroids by a chunked numpy matmul) against FAISS "
        "`IndexFlatIP.search(k=1)` over the same centroids; *same topic* is the share of identical answers.",
        "- **UMAP transform** is timed on the first "
        f"{args.umap_rows:,} rows; numba's compilation (a tiny fit + transform first, once per process: "
        + ", ".join(f"{r['umap_compile_s']:.1f} s" for r in results if "umap_compile_s" in r)
        + ") is not in the UMAP columns. Its per-document cost depends on the model fitted on the 10k sample, "
        "not on N. At N = 10k the sample is the whole corpus, so the fit-on-all baseline is the same work.",
        "- The baseline fits UMAP on every vector (no sample, no transform); it is run up to "
        f"{args.umap_full_max:,} rows; the UMAP columns are measured up to {args.umap_max_n:,} documents.",
        f"- The k-means fit sample is capped at {args.max_sample:,} rows (the stage's default cap is 1M).",
        "",
    ]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--umap-rows", type=int, default=20_000)
    ap.add_argument("--umap-full-max", type=int, default=10_000)
    ap.add_argument("--max-sample", type=int, default=100_000)
    ap.add_argument("--umap-max-n", type=int, default=100_000, help="run the UMAP rows only up to this size")
    ap.add_argument("--out", default="benchmarks/results/topics_map_scaling.md")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.umap_rows, args.umap_full_max, args.max_sample, args.umap_max_n)))
        return
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}}
    results = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--umap-rows",
            str(args.umap_rows),
            "--umap-full-max",
            str(args.umap_full_max),
            "--max-sample",
            str(args.max_sample),
            "--umap-max-n",
            str(args.umap_max_n),
        ]
        print(f"measuring {n:,} ...", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  done in {time.time() - t0:.0f} s: {results[-1]}", flush=True)
        write_table(results, args)  # after every size, so a partial run leaves its table


if __name__ == "__main__":
    main()
