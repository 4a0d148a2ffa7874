"""Map frame render time: the in-memory store (baseline) against the prepared pyramid + tiles.

For each size (synthetic clustered points with one numeric signal, written as a run's ``docs/``):

- baseline: ``RunStore`` over ``docs/`` with everything in memory; ``render`` = HoloViews ``rasterize`` over
  Datashader of every point;
- prepared: ``dq-ray dashboard-prepare`` (the Ray Data job, embedded Ray), then ``render`` from the pyramid
  (zoomed out) or the tiles in view (zoomed in).

Frames: 800 x 600, the full extent and a zoom to 1% of the area (a tenth of each side, on a dense cluster),
counts and the mean of the signal. Each timing is the median of ``--repeat`` warm renders; the first (cold)
render, which reads the columns, is reported separately. Memory: the store's column cache and the process RSS.

    .venv/bin/python benchmarks/dashboard_render.py --sizes 1e6 1e7 1e8 --out benchmarks/results/dashboard_render.md
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dashboards.data_store import RunStore  # noqa: E402
from dashboards.render import render  # noqa: E402

W, H = 800, 600
CHUNK = 5_000_000


def write_points(root: str, n: int, seed: int = 0) -> None:
    """A run directory with ``n`` clustered points, ``score`` and ``source_index``, in 5M-row files."""
    os.makedirs(os.path.join(root, "docs"))
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(40, 2))
    spread = rng.uniform(0.2, 1.5, size=40)
    for k, start in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        pick = rng.integers(0, 40, m)
        xy = centres[pick] + rng.normal(0, 1, size=(m, 2)) * spread[pick, None]
        t = pa.table(
            {
                "source_index": pa.array(np.arange(start, start + m, dtype=np.int64)),
                "score": pa.array((xy[:, 0] * 0.1 + rng.normal(0, 0.2, m)).astype(np.float32)),
                "map_x": pa.array(xy[:, 0].astype(np.float32)),
                "map_y": pa.array(xy[:, 1].astype(np.float32)),
            }
        )
        pq.write_table(t, os.path.join(root, "docs", f"part-{k:04d}.parquet"), row_group_size=1_000_000)
    with open(os.path.join(root, "manifest.json"), "w") as fh:
        json.dump({"status": "succeeded", "run_dir": root, "counts": {"input": n}}, fh)


def zoom_window(store: RunStore) -> tuple[tuple[float, float], tuple[float, float]]:
    """A tenth of each side of the extent (1% of the area), centred on the densest base cell."""
    (x0, x1), (y0, y1) = store.bounds()
    w, h = (x1 - x0) / 10, (y1 - y0) / 10
    cx, cy = -10 + 20 * 0.55, -10 + 20 * 0.45  # inside the cloud of cluster centres
    return (cx - w / 2, cx + w / 2), (cy - h / 2, cy + h / 2)


def time_frames(store: RunStore, repeat: int) -> dict[str, float]:
    out = {}
    zx, zy = zoom_window(store)
    for name, kwargs in (
        ("full", {}),
        ("full_mean", {"colour_by": "score"}),
        ("zoom", {"x_range": zx, "y_range": zy}),
        ("zoom_mean", {"x_range": zx, "y_range": zy, "colour_by": "score"}),
    ):
        t0 = time.perf_counter()
        frame = render(store, width=W, height=H, **kwargs)
        out[f"{name}_cold_s"] = time.perf_counter() - t0
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            frame = render(store, width=W, height=H, **kwargs)
            times.append(time.perf_counter() - t0)
        out[f"{name}_s"] = statistics.median(times)
        out[f"{name}_source"] = frame.source
        out[f"{name}_docs"] = frame.documents
    return out


def rss() -> int:
    return psutil.Process().memory_info().rss


def bench_size(n: int, repeat: int, workdir: str, skip_memory_above: int, prepare_up_to: int) -> dict:
    root = os.path.join(workdir, f"run{n}")
    t0 = time.perf_counter()
    write_points(root, n)
    row = {"n": n, "write_s": time.perf_counter() - t0, "disk_docs_bytes": _du(os.path.join(root, "docs"))}
    if n <= skip_memory_above:
        gc.collect()
        before = rss()
        store = RunStore(root, memory_budget=64 << 30)
        row.update({f"mem_{k}": v for k, v in time_frames(store, repeat).items()})
        row["mem_cache_bytes"] = store.cache_bytes
        row["mem_rss_delta"] = rss() - before
        del store
        gc.collect()
    if n > prepare_up_to:
        shutil.rmtree(root)
        return row
    from dashboards.prepare import prepare

    t0 = time.perf_counter()
    info = prepare(root, sample_rows=1_000_000)
    row["prepare_s"] = time.perf_counter() - t0
    row["tile_level"] = info["tile_level"]
    gc.collect()
    before = rss()
    store = RunStore(root)
    row.update({f"pyr_{k}": v for k, v in time_frames(store, repeat).items()})
    row["pyr_cache_bytes"] = store.cache_bytes + sum(g.nbytes for g in store.prepared._levels.values())
    row["pyr_rss_delta"] = rss() - before
    row["disk_prepared_bytes"] = _du(os.path.join(root, "dashboard"))
    del store
    shutil.rmtree(root)
    return row


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _ms(v) -> str:
    return "—" if v is None else f"{v * 1000:,.0f}"


def _gib(v) -> str:
    return "—" if v is None else f"{v / 2**30:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| points | frame | in memory (baseline) ms | prepared ms | source (prepared) | speed-up |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        for frame in ("full", "full_mean", "zoom", "zoom_mean"):
            m, p = r.get(f"mem_{frame}_s"), r.get(f"pyr_{frame}_s")
            ratio = f"{m / p:,.1f}x" if m and p else "—"
            lines.append(f"| {r['n']:,} | {frame} | {_ms(m)} | {_ms(p)} | {r.get(f'pyr_{frame}_source')} | {ratio} |")
    lines += [
        "",
        "| points | prepare s | tile level | cold full ms (mem / prepared) | column cache GiB (mem / prepared)"
        " | RSS growth GiB (mem / prepared) | docs/ GiB | dashboard/ GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r.get('prepare_s', float('nan')):.1f} | {r.get('tile_level', '—')} | "
            f"{_ms(r.get('mem_full_cold_s'))} / "
            f"{_ms(r.get('pyr_full_cold_s'))} | {_gib(r.get('mem_cache_bytes'))} / {_gib(r.get('pyr_cache_bytes'))} | "
            f"{_gib(r.get('mem_rss_delta'))} / {_gib(r.get('pyr_rss_delta'))} | {_gib(r['disk_docs_bytes'])} | "
            f"{_gib(r.get('disk_prepared_bytes'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-memory-above", type=float, default=1e8, help="Skip the in-memory baseline above N.")
    ap.add_argument("--prepare-up-to", type=float, default=1e8, help="Skip the prepared variant above N.")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray

    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    workdir = args.workdir or tempfile.mkdtemp(prefix="dq-dash-bench-")
    rows = []
    try:
        for n in args.sizes:
            row = bench_size(int(n), args.repeat, workdir, int(args.skip_memory_above), int(args.prepare_up_to))
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(table(rows), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(
                f"# Map frame render time: in memory vs prepared pyramid + tiles\n\n```\n{' '.join(sys.argv)}\n```\n\n"
            )
            fh.write(
                f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; frames {W}x{H}\n\n"
            )
            fh.write(table(rows) + "\n")


if __name__ == "__main__":
    main()
