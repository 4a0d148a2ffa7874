"""The prepare step for maps beyond memory: spatial tiles and a multi-resolution pyramid (a Ray Data job).

``dq-ray dashboard-prepare RUN`` (:func:`prepare`) writes ``RUN/dashboard/``::

    prepared.json             extent, levels, tile level, signals, row counts, projection
    points/tile=<z>/*.parquet every document's map coordinates and the signals the map shows, partitioned by
                              the Z-order key of a coarse grid tile and sorted by a fine Z-order key inside it
    pyramid/level=<k>.parquet one row per non-empty cell of a 2^k x 2^k grid over the extent: ``count``, and
                              for each numeric signal ``<signal>__sum`` and ``<signal>__n`` (its non-null count),
                              so a cell's mean is ``sum / n``; k = 0 .. base level
    sample.parquet            a uniform random sample (filters, histograms and counts on the sample)

The job reads only the columns it needs from ``RUN/docs/``: a first pass finds the extent, a second computes
per-batch partial cell aggregates at the base level (Ray tasks; the driver only adds small per-batch tables
into one grid, then sums 2x2 blocks for each coarser level), a third hash-partitions the rows by tile, sorts each
tile by its fine key and writes it. :class:`PreparedMap` reads the result: zoomed-out frames from the coarsest
pyramid level that still has a cell per screen pixel, zoomed-in frames from the points of the tiles in view.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PREPARED_DIR = "dashboard"
#: Rows per tile the tile level aims for.
ROWS_PER_TILE = 250_000
DEFAULT_BASE_LEVEL = 10  # a 1024 x 1024 base grid
DEFAULT_SAMPLE_ROWS = 1_000_000


def spread_bits(v: np.ndarray) -> np.ndarray:
    """Spread the low 16 bits of ``v`` to the even bits of a uint64 (one half of a Morton code)."""
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x00FF00FF)
    v = (v | (v << np.uint64(4))) & np.uint64(0x0F0F0F0F)
    v = (v | (v << np.uint64(2))) & np.uint64(0x33333333)
    v = (v | (v << np.uint64(1))) & np.uint64(0x55555555)
    return v


def zorder(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """The Morton (Z-order) key of grid cells: nearby cells get nearby keys."""
    return spread_bits(ix) | (spread_bits(iy) << np.uint64(1))


def grid_index(v: np.ndarray, lo: float, hi: float, level: int) -> np.ndarray:
    """The cell index (0 .. 2^level - 1) of coordinates ``v`` on a grid over ``[lo, hi]``."""
    n = 1 << level
    i = np.floor((np.asarray(v, np.float64) - lo) / (hi - lo) * n)
    return np.clip(np.nan_to_num(i, nan=0), 0, n - 1).astype(np.int64)


def tile_level_for(rows: int, rows_per_tile: int = ROWS_PER_TILE) -> int:
    """The coarse tile level: about ``rows_per_tile`` rows per tile, at most 4^8 tiles."""
    return int(min(8, max(0, math.ceil(math.log(max(rows, 1) / rows_per_tile, 4)))))


# -- the Ray job -------------------------------------------------------------------------------------------


def prepare(
    run_dir: str,
    base_level: int = DEFAULT_BASE_LEVEL,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    tile_level: int | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write ``RUN/dashboard/`` for ``run_dir`` with Ray Data (Ray must already be initialised)."""
    import ray

    from dashboards.data_store import RunStore, discover_columns

    started = time.perf_counter()
    root = os.path.realpath(run_dir)
    out = os.path.join(root, PREPARED_DIR)
    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists")
        shutil.rmtree(out)
    docs = os.path.join(root, "docs")
    schema = pads.dataset(docs, format="parquet").schema
    cols = discover_columns(schema)
    keep = ["id", "source_file", "source_index", *cols.numeric, *cols.flags, *cols.categorical]
    keep = [c for c in keep if c in schema.names]
    projection = "map_x / map_y"
    read_cols = keep + ["map_x", "map_y"]
    proj: dict[str, Any] | None = None
    if not cols.has_map:
        if not cols.has_embedding:
            raise ValueError(f"{run_dir}: no map_x / map_y and no embedding to project; run the map stage")
        proj = _fit_pca(docs)
        projection = "PCA of embedding (no map_x / map_y in this run)"
        read_cols = keep + ["embedding"]
    ds = ray.data.read_parquet(docs, columns=read_cols)
    num_rows = pads.dataset(docs, format="parquet").count_rows()  # from the Parquet footers
    if proj is not None:
        ds = ds.map_batches(_project, fn_kwargs={"proj": proj}, batch_format="pyarrow")
    extent = _extent_from_statistics(docs) if proj is None else None
    if extent is None:  # projected coordinates, or files without statistics: one pass
        parts = ds.map_batches(_batch_extent, batch_format="pyarrow").take_all()
        extent = (
            (min(r["x_min"] for r in parts), max(r["x_max"] for r in parts)),
            (min(r["y_min"] for r in parts), max(r["y_max"] for r in parts)),
        )
    x_range, y_range = _pad(*extent[0]), _pad(*extent[1])
    if tile_level is None:
        tile_level = tile_level_for(num_rows)
    tile_level = min(tile_level, base_level)
    extent = {"x_range": x_range, "y_range": y_range}

    # pyramid: partial aggregates per batch (Ray tasks), added into one base grid on the driver
    signals = list(cols.numeric)
    size = 1 << base_level
    count = np.zeros(size * size, np.int64)
    sums = {s: np.zeros(size * size, np.float64) for s in signals}
    ns = {s: np.zeros(size * size, np.int64) for s in signals}
    partial = ds.map_batches(
        _partial_cells,
        fn_kwargs={"extent": extent, "level": base_level, "signals": signals},
        batch_format="pyarrow",
    )
    for batch in partial.iter_batches(batch_format="pyarrow", batch_size=None):
        cell = batch.column("cell").to_numpy()
        count[cell] += batch.column("count").to_numpy()
        for s in signals:
            sums[s][cell] += batch.column(f"{s}__sum").to_numpy()
            ns[s][cell] += batch.column(f"{s}__n").to_numpy()
    os.makedirs(os.path.join(out, "pyramid"))
    grids = {"count": count.reshape(size, size)}
    for s in signals:
        grids[f"{s}__sum"] = sums[s].reshape(size, size)
        grids[f"{s}__n"] = ns[s].reshape(size, size)
    for level in range(base_level, -1, -1):
        _write_level(os.path.join(out, "pyramid", f"level={level}.parquet"), grids)
        if level:
            grids = {k: _halve(g) for k, g in grids.items()}

    # points: hash-partitioned by tile, sorted by the fine key inside each tile
    n_tiles = 4**tile_level
    blocks = max(1, min(n_tiles, max(ray.cluster_resources().get("CPU", 1) * 2, num_rows // 2_000_000)))
    keyed = ds.map_batches(
        _add_keys,
        fn_kwargs={"extent": extent, "tile_level": tile_level, "base_level": base_level},
        batch_format="pyarrow",
    )
    if n_tiles > 1:
        keyed = keyed.repartition(int(blocks), keys=["tile"])
    keyed = keyed.map_batches(_sort_block, batch_format="pyarrow", batch_size=None)
    keyed.write_parquet(os.path.join(out, "points"), partition_cols=["tile"])

    # a uniform sample for filters, histograms and counts
    fraction = min(1.0, sample_rows / max(num_rows, 1))
    sample_cols = [*cols.numeric, *cols.flags, *cols.categorical, "map_x", "map_y"]
    sampled = ds.map_batches(
        _sample_rows, fn_kwargs={"fraction": fraction, "columns": sample_cols}, batch_format="pyarrow"
    )
    sample = pa.concat_tables(list(sampled.iter_batches(batch_format="pyarrow", batch_size=None)))
    pq.write_table(sample, os.path.join(out, "sample.parquet"))

    info = {
        "num_rows": int(num_rows),
        "sample_rows": int(sample.num_rows),
        "x_range": list(x_range),
        "y_range": list(y_range),
        "base_level": base_level,
        "tile_level": tile_level,
        "signals": signals,
        "flags": list(cols.flags),
        "categorical": list(cols.categorical),
        "projection": projection,
        "run_started_at": _run_started_at(root),
        "wall_s": round(time.perf_counter() - started, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(os.path.join(out, "prepared.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    RunStore(root)  # the prepared layout opens
    log.info("prepared %s: %d rows, %d tiles, pyramid 0..%d", out, num_rows, n_tiles, base_level)
    return info


def _run_started_at(root: str) -> str | None:
    """The run's ``started_at`` (from its manifest): ties the prepared data to the run it was made from."""
    try:
        with open(os.path.join(root, "manifest.json")) as fh:
            return json.load(fh).get("started_at")
    except (OSError, ValueError):
        return None


def is_current(run_root: str) -> bool:
    """Whether ``RUN/dashboard/`` was prepared from the run now in ``run_root`` (not from an overwritten one)."""
    try:
        with open(os.path.join(run_root, PREPARED_DIR, "prepared.json")) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return False
    return info.get("run_started_at") == _run_started_at(run_root)


def _pad(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    pad = (hi - lo) * 0.02 or 0.5
    return (lo - pad, hi + pad)


def _extent_from_statistics(docs: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The min/max of map_x and map_y from the Parquet row-group statistics (no pass over the data)."""
    lo = {"map_x": math.inf, "map_y": math.inf}
    hi = {"map_x": -math.inf, "map_y": -math.inf}
    for frag in pads.dataset(docs, format="parquet").get_fragments():
        meta = frag.metadata
        names = meta.schema.to_arrow_schema().names
        for rg in range(meta.num_row_groups):
            for name in lo:
                stats = meta.row_group(rg).column(names.index(name)).statistics
                if stats is None or not stats.has_min_max:
                    return None
                lo[name], hi[name] = min(lo[name], stats.min), max(hi[name], stats.max)
    if not all(math.isfinite(v) for v in (*lo.values(), *hi.values())):
        return None
    return (lo["map_x"], hi["map_x"]), (lo["map_y"], hi["map_y"])


def _batch_extent(batch: pa.Table) -> pa.Table:
    x, y = _floats(batch.column("map_x")), _floats(batch.column("map_y"))
    return pa.table(
        {"x_min": [np.nanmin(x)], "x_max": [np.nanmax(x)], "y_min": [np.nanmin(y)], "y_max": [np.nanmax(y)]}
    )


def _mix64(v: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of 64-bit integers, vectorised."""
    with np.errstate(over="ignore"):
        v = v.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return v ^ (v >> np.uint64(31))


def _sample_rows(batch: pa.Table, fraction: float, columns: list[str]) -> pa.Table:
    """A uniform sample, the same on every run: rows whose hash of (source_file, source_index) is below ``fraction``."""
    import xxhash

    if fraction >= 1.0:
        return batch.select(columns)
    key = np.zeros(batch.num_rows, np.uint64)
    if "source_index" in batch.column_names:
        key = batch.column("source_index").to_numpy(zero_copy_only=False).astype(np.uint64)
    if "source_file" in batch.column_names:
        enc = pc.dictionary_encode(batch.column("source_file")).combine_chunks()
        file_hash = np.array([xxhash.xxh3_64_intdigest(str(f).encode()) for f in enc.dictionary.to_pylist()], np.uint64)
        key = key ^ file_hash[pc.fill_null(enc.indices, 0).to_numpy()]
    keep = _mix64(key) < np.uint64(int(fraction * (2**64 - 1)))
    return batch.filter(pa.array(keep)).select(columns)


def _fit_pca(docs: str) -> dict[str, Any]:
    from dashboards.data_store import PCA_FIT_ROWS, _embedding_matrix

    sample, got = [], 0
    for batch in pads.dataset(docs, format="parquet").to_batches(columns=["embedding"]):
        sample.append(_embedding_matrix(batch.column(0)))
        got += batch.num_rows
        if got >= PCA_FIT_ROWS:
            break
    fit = np.concatenate(sample)[:PCA_FIT_ROWS].astype(np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return {"mean": mean, "components": vt[:2].T}


def _project(batch: pa.Table, proj: dict[str, Any]) -> pa.Table:
    from dashboards.data_store import _embedding_matrix

    xy = (_embedding_matrix(batch.column("embedding")) - proj["mean"]) @ proj["components"]
    batch = batch.drop_columns(["embedding"])
    batch = batch.append_column("map_x", pa.array(xy[:, 0].astype(np.float32)))
    return batch.append_column("map_y", pa.array(xy[:, 1].astype(np.float32)))


def _floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.cast(col, pa.float64()), float("nan")).to_numpy(), np.float64)


def _partial_cells(batch: pa.Table, extent: dict, level: int, signals: list[str]) -> pa.Table:
    """Counts and per-signal sums of one batch, one row per non-empty base cell."""
    size = 1 << level
    ix = grid_index(_floats(batch.column("map_x")), *extent["x_range"], level)
    iy = grid_index(_floats(batch.column("map_y")), *extent["y_range"], level)
    cell = iy * size + ix
    uniq, inv = np.unique(cell, return_inverse=True)
    out = {"cell": pa.array(uniq, pa.int64()), "count": pa.array(np.bincount(inv, minlength=len(uniq)))}
    for s in signals:
        v = _floats(batch.column(s))
        ok = np.isfinite(v)
        out[f"{s}__sum"] = pa.array(np.bincount(inv[ok], weights=v[ok], minlength=len(uniq)))
        out[f"{s}__n"] = pa.array(np.bincount(inv[ok], minlength=len(uniq)).astype(np.int64))
    return pa.table(out)


def _add_keys(batch: pa.Table, extent: dict, tile_level: int, base_level: int) -> pa.Table:
    x, y = _floats(batch.column("map_x")), _floats(batch.column("map_y"))
    fx, fy = grid_index(x, *extent["x_range"], base_level), grid_index(y, *extent["y_range"], base_level)
    shift = base_level - tile_level
    tile = zorder(fx >> shift, fy >> shift).astype(np.int64)
    fine = zorder(fx, fy).astype(np.int64)
    return batch.append_column("tile", pa.array(tile)).append_column("zkey", pa.array(fine))


def _sort_block(batch: pa.Table) -> pa.Table:
    return batch.sort_by([("tile", "ascending"), ("zkey", "ascending")])


def _halve(grid: np.ndarray) -> np.ndarray:
    n = grid.shape[0] // 2
    return grid.reshape(n, 2, n, 2).sum(axis=(1, 3))


def _write_level(path: str, grids: dict[str, np.ndarray]) -> None:
    count = grids["count"]
    iy, ix = np.nonzero(count)
    cols = {"ix": pa.array(ix.astype(np.int32)), "iy": pa.array(iy.astype(np.int32))}
    for name, g in grids.items():
        vals = g[iy, ix]
        cols[name] = pa.array(vals.astype(np.int64) if name == "count" or name.endswith("__n") else vals)
    pq.write_table(pa.table(cols), path)


# -- reading -----------------------------------------------------------------------------------------------


class PreparedMap:
    """``RUN/dashboard/`` as written by :func:`prepare`: pyramid images, tiles in view, the sample."""

    def __init__(self, path: str) -> None:
        self.root = os.path.realpath(path)
        with open(os.path.join(self.root, "prepared.json")) as fh:
            self.info = json.load(fh)
        self.num_rows = int(self.info["num_rows"])
        self.sample_rows = int(self.info["sample_rows"])
        self.x_range = tuple(self.info["x_range"])
        self.y_range = tuple(self.info["y_range"])
        self.base_level = int(self.info["base_level"])
        self.tile_level = int(self.info["tile_level"])
        self._levels: dict[tuple[int, str], np.ndarray] = {}

    def sample(self, columns: list[str]) -> pa.Table:
        return pq.read_table(os.path.join(self.root, "sample.parquet"), columns=columns)

    def points_dataset(self, files: list[str] | None = None) -> pads.Dataset:
        part = pads.partitioning(pa.schema([("tile", pa.int64())]), flavor="hive")
        src = files if files is not None else os.path.join(self.root, "points")
        return pads.dataset(src, format="parquet", partitioning=part, partition_base_dir=self._points)

    @property
    def _points(self) -> str:
        return os.path.join(self.root, "points")

    # -- pyramid -----------------------------------------------------------------------------------------

    def grid(self, level: int, name: str) -> np.ndarray:
        """A dense 2^level square grid (rows = y) of one pyramid column (``count``, ``<s>__sum``, ``<s>__n``)."""
        key = (level, name)
        if key not in self._levels:
            t = pq.read_table(os.path.join(self.root, "pyramid", f"level={level}.parquet"), columns=["ix", "iy", name])
            n = 1 << level
            g = np.zeros((n, n), np.float64)
            g[t.column("iy").to_numpy(), t.column("ix").to_numpy()] = t.column(name).to_numpy()
            self._levels[key] = g
        return self._levels[key]

    def level_for(self, x_range, y_range, width: int, height: int) -> int | None:
        """The coarsest level with about a cell per pixel in view; None when even the base is too coarse."""
        frac = max((x_range[1] - x_range[0]) / (self.x_range[1] - self.x_range[0]), 1e-12)
        frac_y = max((y_range[1] - y_range[0]) / (self.y_range[1] - self.y_range[0]), 1e-12)
        need = max(width / frac, height / frac_y)
        level = max(0, math.ceil(math.log2(max(need, 1))))
        if level > self.base_level:
            if (1 << self.base_level) * 4 < need:
                return None  # cells would be more than 4 pixels wide: read the points
            level = self.base_level
        return level

    def window(self, level: int, x_range, y_range) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """The cells of ``level`` covering the view, and their centre coordinates."""
        n = 1 << level
        (X0, X1), (Y0, Y1) = self.x_range, self.y_range
        cx, cy = (X1 - X0) / n, (Y1 - Y0) / n
        ix0 = int(np.clip(math.floor((x_range[0] - X0) / cx), 0, n - 1))
        ix1 = int(np.clip(math.ceil((x_range[1] - X0) / cx), ix0 + 1, n))
        iy0 = int(np.clip(math.floor((y_range[0] - Y0) / cy), 0, n - 1))
        iy1 = int(np.clip(math.ceil((y_range[1] - Y0) / cy), iy0 + 1, n))
        xs = X0 + (np.arange(ix0, ix1) + 0.5) * cx
        ys = Y0 + (np.arange(iy0, iy1) + 0.5) * cy
        return slice(iy0, iy1), slice(ix0, ix1), xs, ys

    def rows_in_view(self, x_range, y_range) -> int:
        """Documents in the view, from the pyramid (exact up to a base cell at the edges)."""
        level = self.base_level
        sy, sx, _, _ = self.window(level, x_range, y_range)
        return int(self.grid(level, "count")[sy, sx].sum())

    # -- tiles -------------------------------------------------------------------------------------------

    def tiles_in_view(self, x_range, y_range) -> list[int]:
        n = 1 << self.tile_level
        (X0, X1), (Y0, Y1) = self.x_range, self.y_range
        ix0 = int(np.clip(math.floor((x_range[0] - X0) / (X1 - X0) * n), 0, n - 1))
        ix1 = int(np.clip(math.floor((x_range[1] - X0) / (X1 - X0) * n), 0, n - 1))
        iy0 = int(np.clip(math.floor((y_range[0] - Y0) / (Y1 - Y0) * n), 0, n - 1))
        iy1 = int(np.clip(math.floor((y_range[1] - Y0) / (Y1 - Y0) * n), 0, n - 1))
        gx, gy = np.meshgrid(np.arange(ix0, ix1 + 1), np.arange(iy0, iy1 + 1))
        return sorted(int(k) for k in zorder(gx.ravel(), gy.ravel()))

    def points_in_view(self, x_range, y_range, columns: list[str], expr: pc.Expression | None = None) -> pa.Table:
        """The rows of the tiles overlapping the view (only those files are opened), clipped to the view."""
        files = []
        for key in self.tiles_in_view(x_range, y_range):
            d = os.path.join(self._points, f"tile={key}")
            if os.path.isdir(d):
                files += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".parquet")]
        cols = list(dict.fromkeys(["map_x", "map_y", *columns]))
        if not files:
            return pa.table({c: pa.array([], pa.float32()) for c in cols})
        box = (
            (pc.field("map_x") >= x_range[0])
            & (pc.field("map_x") <= x_range[1])
            & (pc.field("map_y") >= y_range[0])
            & (pc.field("map_y") <= y_range[1])
        )
        if expr is not None:
            box = box & expr
        return self.points_dataset(files).to_table(columns=cols, filter=box)

    def select(self, store, filters, bounds, polygon, limit: int) -> tuple[int, pa.Table]:
        from dashboards.data_store import _geometry_mask

        if polygon is not None:
            poly = np.asarray(list(polygon), np.float64)
            bounds = (*poly.min(axis=0), *poly.max(axis=0))
        if bounds is None:
            bounds = (self.x_range[0], self.y_range[0], self.x_range[1], self.y_range[1])
        x0, y0, x1, y1 = bounds
        xr, yr = (min(x0, x1), max(x0, x1)), (min(y0, y1), max(y0, y1))
        keys = store.key_columns()
        t = self.points_in_view(xr, yr, ["id", "source_file", "source_index", *keys], filters_expression(filters))
        if polygon is not None and t.num_rows:
            inside = _geometry_mask(
                t.column("map_x").to_numpy(), t.column("map_y").to_numpy(), polygon=np.asarray(list(polygon))
            )
            t = t.filter(pa.array(inside))
        cols = ["id", "source_file", "source_index", *keys, "map_x", "map_y"]
        return t.num_rows, t.slice(0, limit).select([c for c in cols if c in t.column_names])


def filters_expression(filters) -> pc.Expression | None:
    """The Arrow filter of :class:`~dashboards.data_store.Filters` (to push down into a Parquet scan)."""
    if filters is None or not filters.active():
        return None
    expr = None
    parts = []
    for name, (lo, hi) in filters.ranges.items():
        parts.append((pc.field(name) >= lo) & (pc.field(name) <= hi))
    for name, want in filters.flags.items():
        parts.append(pc.field(name) == bool(want))
    for name, labels in filters.categories.items():
        parts.append(pc.field(name).cast(pa.string()).isin(list(labels)))
    for p in parts:
        expr = p if expr is None else expr & p
    return expr
