"""How the density stage scales: fit + apply time and peak memory on 10k, 100k and 1M vectors.

The vectors are synthetic but shaped like a corpus: 384-dimensional, L2-normalised, drawn around 2,000 topic
centres whose sizes follow a Zipf law (a few huge topics, a long tail), so densities span orders of magnitude.
Each size runs in its own process (fresh memory counters, fresh local Ray; Ray start not timed):

* ``knn``: the stage with ``index: auto`` (exact flat below 100k rows, IVF-Flat from 100k), fit through
  ``TableFitData`` and ``process`` over every row in 2048-row batches in that process;
* ``sketch``: the same with ``method: sketch``;
* **baseline, exact brute force**: the Gaussian kernel sum of a sample of ``--queries`` documents against all N
  (numpy/BLAS, the same bandwidth), timed and scaled to all N documents (N / queries times: brute force is
  quadratic), and the Spearman correlation of each method's scores with the exact sums on that sample.

Memory is the process's peak resident set (``VmHWM``, reset between phases via ``/proc/self/clear_refs``), on
top of the input table and Ray's copy of it in the object store (``--rows`` x 1.5 KiB each, reported).

    .venv/bin/python benchmarks/density_scaling.py [--sizes 10000 100000 1000000] [--queries 2000]
        [--out benchmarks/results/density_scaling.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import log, mib, report_header, save_report, spearman

DIM = 384
TOPICS = 2000
PACKAGES = ("dq-ray", "ray", "faiss-cpu", "numpy", "pyarrow")


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around Zipf-sized topic centres (float32, generated in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, TOPICS + 1) ** 1.1
    topic = rng.choice(TOPICS, size=n, p=weights / weights.sum())
    spread = rng.uniform(0.6, 1.4, TOPICS).astype(np.float32)  # some topics tight, some loose
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        t = topic[s : s + 100_000]
        noise = rng.standard_normal((len(t), DIM), dtype=np.float32) * (spread[t, None] / np.sqrt(DIM))
        v = centres[t] + noise
        out[s : s + 100_000] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def one(n: int, method: str, queries: int, bandwidth: float | None) -> dict:
    """Measure one size and method in this process; return the row as a dict."""
    import pyarrow as pa
    import ray

    from dq_ray.stage import TableFitData
    from dq_ray.stages.density import Density, DensityParams
    from dq_ray.stages.embed import to_fixed_size_list

    x = synthetic(n)
    table = pa.table({"source_file": ["corpus"] * n, "source_index": np.arange(n), "embedding": to_fixed_size_list(x)})
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    params = DensityParams(method=method)
    row: dict = {"n": n, "method": method, "input_bytes": table.nbytes}
    try:
        with tempfile.TemporaryDirectory(prefix="dq-density-scale-") as tmp:
            row["rss_before"] = _status("VmRSS")
            reset_peak()
            t0 = time.perf_counter()
            info = Density(params).fit_signed(TableFitData(table, tmp))
            row["fit_s"] = time.perf_counter() - t0
            row["fit_peak"] = _status("VmHWM")
            stage = Density(params)
            stage.artifacts_dir = tmp
            reset_peak()
            t0 = time.perf_counter()
            stage.ensure_setup()
            scores = np.concatenate(
                [stage.process(table.slice(s, 2048)).column("density_score").to_numpy() for s in range(0, n, 2048)]
            )
            row["apply_s"] = time.perf_counter() - t0
            row["apply_peak"] = _status("VmHWM")
            row["artifact_bytes"] = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
            row["index"] = info.get("index", "sketch")
            row["bandwidth"] = info.get("bandwidth")
    finally:
        ray.shutdown()
    # baseline: the exact kernel sum of a query sample against all n, timed and scaled to n queries
    h = row["bandwidth"] or bandwidth or 0.3  # the sketch has no bandwidth: compare on the knn run's kernel
    q = np.sort(np.random.default_rng(1).choice(n, size=min(queries, n), replace=False))
    t0 = time.perf_counter()
    exact = np.empty(len(q))
    for s in range(0, len(q), 256):
        sims = x[q[s : s + 256]] @ x.T
        k = np.exp(-np.maximum(2.0 - 2.0 * sims, 0.0) / (2.0 * h * h))
        exact[s : s + 256] = k.sum(axis=1) - 1.0  # minus the document itself
    row["brute_sample_s"] = time.perf_counter() - t0
    row["brute_s"] = row["brute_sample_s"] * n / len(q)
    row["brute_h"] = h
    row["spearman"] = spearman(scores[q], exact)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["knn", "sketch"])
    parser.add_argument("--queries", type=int, default=2000, help="documents in the brute-force sample")
    parser.add_argument("--out", default="benchmarks/results/density_scaling.md", help="markdown report")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    parser.add_argument("--method", default="knn", help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.one:
        row = one(args.one, args.method, args.queries, args.bandwidth)
        print("RESULT " + json.dumps(row))
        return 0

    rows = []
    bandwidths: dict[int, float] = {}
    for n in args.sizes:
        for method in args.methods:
            log.info("n=%d method=%s ...", n, method)
            cmd = [sys.executable, __file__, "--one", str(n), "--method", method, "--queries", str(args.queries)]
            if n in bandwidths:
                cmd += ["--bandwidth", str(bandwidths[n])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not result:
                sys.stderr.write(proc.stderr[-5000:])
                raise RuntimeError(f"n={n} method={method} failed ({proc.returncode})")
            rows.append(json.loads(result[0][len("RESULT ") :]))
            if rows[-1]["bandwidth"]:
                bandwidths[n] = rows[-1]["bandwidth"]
            log.info("%s", rows[-1])

    lines = [
        "| vectors | method | index | fit s | apply s | total s | apply docs/s | peak RSS fit MiB | peak RSS apply "
        "MiB | artifact MiB | brute force s (scaled) | speed vs brute force | Spearman vs exact (sample) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        total = r["fit_s"] + r["apply_s"]
        lines.append(
            f"| {r['n']:,} | {r['method']} | {r['index']} | {r['fit_s']:.1f} | {r['apply_s']:.1f} | {total:.1f} | "
            f"{r['n'] / r['apply_s']:,.0f} | {mib(r['fit_peak'])} | {mib(r['apply_peak'])} | "
            f"{mib(r['artifact_bytes'])} | {r['brute_s']:,.0f} | {r['brute_s'] / total:,.1f}x | {r['spearman']:.3f} |"
        )
    table = "\n".join(lines)
    notes = [
        f"{r['n']:,} {r['method']}: input table {mib(r['input_bytes'])} MiB (held by the process before the fit: "
        f"{mib(r['rss_before'])} MiB RSS, plus Ray's copy in the object store); brute force timed on "
        f"{min(args.queries, r['n'])} queries x {r['n']:,} ({r['brute_sample_s']:.1f} s), Gaussian h={r['brute_h']:.4f}"
        for r in rows
    ]
    print()
    print(table)
    for line in notes:
        print(f"- {line}")
    report = [
        *report_header("density: scaling to a million vectors", PACKAGES),
        f"- data: synthetic unit vectors, {DIM} dimensions, {TOPICS} Zipf-sized topics (seed 0)",
        "",
        table,
        "",
        "fit: the stage's `fit` (TableFitData on a local Ray with every CPU; Ray start not timed). apply: `setup` + "
        "`process` over every row in 2048-row batches in one process (what one worker does). Peak RSS is the "
        "process's high-water mark during that phase, input table included. Brute force: the exact Gaussian "
        "kernel sum, timed on a sample of queries against all vectors and scaled to every vector (it is quadratic).",
        "",
        *(f"- {line}" for line in notes),
    ]
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
