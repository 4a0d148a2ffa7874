"""Map frame render time: the in-memory store (baseline) against the prepared pyramid + tiles.

For each size (synthetic clustered points with two numeric signals and one category, written as a run's
``docs/`` by Ray tasks, 5M rows per file, never all in memory):

- baseline: ``RunStore`` over ``docs/`` with everything in memory; ``render`` = HoloViews ``rasterize`` over
  Datashader of every point;
- prepared: ``dq-ray dashboard-prepare`` (the Ray Data job, embedded Ray), then ``render`` from the pyramid
  (zoomed out) or the tiles in view (zoomed in).

Frames: 800 x 600 over the full extent, a zoom to 1% of the area (a tenth of each side), 0.1% and 0.01% (a
hundredth of each side), all centred in the cloud of clusters: counts, the mean of a signal, and the category.
Each timing is the median of ``--repeat`` warm renders; the first (cold) render, which reads the columns, is
reported separately. Memory: the store's column cache and the process RSS; while preparing, the peak RSS of this
process and of Ray's workers, and the disk used at the peak (the run's files plus anything Ray spilled).

    .venv/bin/python benchmarks/dashboard_render.py --sizes 1e6 1e7 1e8 --out benchmarks/results/dashboard_render.md
    .venv/bin/python benchmarks/dashboard_render.py --sizes 1e9 --skip-memory-above 0 --workdir /big/dir --keep
    .venv/bin/python benchmarks/dashboard_render.py --sizes 1e9 --skip-memory-above 0 --workdir /big/dir --reuse
        # frames only, from the kept run (e.g. later, on a quiet machine)
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
import threading
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


SOURCES = np.array(["web", "news", "code", "books", "forum", "wiki", "papers", "social"])


def _write_chunk(path: str, start: int, m: int, seed: int) -> int:
    """One file of ``m`` points (rows ``start`` ..): 40 Gaussian clusters, two signals, a source per cluster."""
    layout = np.random.default_rng(0)  # the same clusters in every chunk
    centres = layout.uniform(-10, 10, size=(40, 2))
    spread = layout.uniform(0.2, 1.5, size=40)
    rng = np.random.default_rng([seed, start])
    pick = rng.integers(0, 40, m)
    xy = centres[pick] + rng.normal(0, 1, size=(m, 2)) * spread[pick, None]
    source = np.where(rng.random(m) < 0.8, pick % len(SOURCES), rng.integers(0, len(SOURCES), m))
    t = pa.table(
        {
            "source_index": pa.array(np.arange(start, start + m, dtype=np.int64)),
            "score": pa.array((xy[:, 0] * 0.1 + rng.normal(0, 0.2, m)).astype(np.float32)),
            "quality": pa.array((1 / (1 + np.exp(-xy[:, 1] * 0.3)) + rng.normal(0, 0.05, m)).astype(np.float32)),
            "source": pa.DictionaryArray.from_arrays(pa.array(source.astype(np.int8)), pa.array(SOURCES)),
            "map_x": pa.array(xy[:, 0].astype(np.float32)),
            "map_y": pa.array(xy[:, 1].astype(np.float32)),
        }
    )
    pq.write_table(t, path, row_group_size=1_000_000)
    return m


def write_points(root: str, n: int, seed: int = 0) -> None:
    """A run directory with ``n`` points in 5M-row files, each written by a Ray task (nothing held at once)."""
    import ray

    os.makedirs(os.path.join(root, "docs"))
    task = ray.remote(num_cpus=1)(_write_chunk)
    refs = [
        task.remote(os.path.join(root, "docs", f"part-{k:05d}.parquet"), start, min(CHUNK, n - start), seed)
        for k, start in enumerate(range(0, n, CHUNK))
    ]
    assert sum(ray.get(refs)) == n
    with open(os.path.join(root, "manifest.json"), "w") as fh:
        json.dump({"status": "succeeded", "run_dir": root, "counts": {"input": n}}, fh)


class Peaks:
    """Samples, every 0.5 s while running, this process's RSS, the RSS of Ray's worker processes (any one and
    their sum) and the disk in use on the work folder's file system (Ray spills to the same disk here)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.disk0 = shutil.disk_usage(workdir).used
        self.driver = self.worker = self.workers = self.disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.5):
            try:
                self.driver = max(self.driver, me.memory_info().rss)
                rss = []
                for p in psutil.process_iter(["cmdline", "memory_info"]):
                    cmd = " ".join(p.info["cmdline"] or [])
                    if "ray::" in cmd or "default_worker.py" in cmd:
                        rss.append(p.info["memory_info"].rss)
                self.worker = max(self.worker, max(rss, default=0))
                self.workers = max(self.workers, sum(rss))
                self.disk = max(self.disk, shutil.disk_usage(self.workdir).used - self.disk0)
            except (psutil.Error, OSError):
                continue


def zoom_window(store: RunStore, side: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """``side`` of each side of the extent (0.1: 1% of the area), centred inside the cloud of clusters."""
    (x0, x1), (y0, y1) = store.bounds()
    w, h = (x1 - x0) * side, (y1 - y0) * side
    cx, cy = -10 + 20 * 0.55, -10 + 20 * 0.45  # inside the cloud of cluster centres
    return (cx - w / 2, cx + w / 2), (cy - h / 2, cy + h / 2)


#: frame name -> (side of the view as a share of the extent's side, colour by)
FRAMES = {
    "full": (1.0, None),
    "full_mean": (1.0, "score"),
    "full_category": (1.0, "source"),
    "zoom": (0.1, None),
    "zoom_mean": (0.1, "score"),
    "zoom_category": (0.1, "source"),
    "zoom_0.1%": (0.1**1.5, None),
    "zoom_0.01%": (0.01, None),
    "zoom_0.01%_mean": (0.01, "score"),
    "zoom_0.01%_category": (0.01, "source"),
}


def time_frames(store: RunStore, repeat: int) -> dict[str, float]:
    out = {}
    for name, (side, colour) in FRAMES.items():
        kwargs = {"colour_by": colour}
        if side < 1:
            kwargs["x_range"], kwargs["y_range"] = zoom_window(store, side)
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


def bench_size(
    n: int, repeat: int, workdir: str, skip_memory_above: int, prepare_up_to: int, keep: bool, reuse: bool
) -> dict:
    root = os.path.join(workdir, f"run{n}")
    row: dict = {"n": n}
    if not (reuse and os.path.isdir(os.path.join(root, "docs"))):
        t0 = time.perf_counter()
        write_points(root, n)
        row["write_s"] = time.perf_counter() - t0
    row["disk_docs_bytes"] = _du(os.path.join(root, "docs"))
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
        if not keep:
            shutil.rmtree(root)
        return row
    from dashboards.prepare import prepare

    done = os.path.join(root, "dashboard", "prepared.json")
    if reuse and os.path.exists(done):
        with open(done) as fh:
            info = json.load(fh)
        row["prepare_s"] = info["wall_s"]
    else:
        with Peaks(workdir) as peaks:
            t0 = time.perf_counter()
            info = prepare(root, sample_rows=1_000_000)
            row["prepare_s"] = time.perf_counter() - t0
        row.update(
            prep_driver_peak=peaks.driver,
            prep_worker_peak=peaks.worker,
            prep_workers_peak=peaks.workers,
            prep_disk_peak=peaks.disk,
        )
    row.update(tile_level=info["tile_level"], base_level=info["base_level"], tile_passes=info.get("tile_passes"))
    gc.collect()
    before = rss()
    store = RunStore(root)
    row.update({f"pyr_{k}": v for k, v in time_frames(store, repeat).items()})
    row["pyr_cache_bytes"] = store.cache_bytes + sum(g.nbytes for g in store.prepared._levels.values())
    row["pyr_rss_delta"] = rss() - before
    row["disk_prepared_bytes"] = _du(os.path.join(root, "dashboard"))
    del store
    if not keep:
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
        for frame in FRAMES:
            m, p = r.get(f"mem_{frame}_s"), r.get(f"pyr_{frame}_s")
            if m is None and p is None:
                continue
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
    lines += [
        "",
        "| points | write docs/ s | base level | tile passes | prepare peak RSS GiB (driver / one worker / all workers)"
        " | disk at the peak GiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r.get('write_s', float('nan')):.1f} | {r.get('base_level', '—')} | "
            f"{r.get('tile_passes', '—')} | {_gib(r.get('prep_driver_peak'))} / {_gib(r.get('prep_worker_peak'))} / "
            f"{_gib(r.get('prep_workers_peak'))} | {_gib(r.get('prep_disk_peak'))} |"
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
    ap.add_argument("--keep", action="store_true", help="Keep the runs (and the work folder).")
    ap.add_argument("--reuse", action="store_true", help="Reuse docs/ and dashboard/ left by --keep.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray

    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    workdir = args.workdir or tempfile.mkdtemp(prefix="dq-dash-bench-")
    rows = []
    try:
        for n in args.sizes:
            row = bench_size(
                int(n),
                args.repeat,
                workdir,
                int(args.skip_memory_above),
                int(args.prepare_up_to),
                args.keep or args.reuse,
                args.reuse,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(table(rows), flush=True)
    finally:
        ray.shutdown()
        if not (args.keep or args.reuse):
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
