"""``dq-ray dashboard-prepare RUN``: the Ray Data job that writes ``RUN/dashboard/`` (tiles, pyramid, sample) so
the map scales beyond memory. :mod:`dashboards.pyramid` describes the layout and reads it."""

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
import xxhash

from dashboards.data_store import RunStore, discover_columns
from dashboards.geometry import fit_pca
from dashboards.neighbours import NEIGHBOURS_DIR
from dashboards.neighbours import build_index as build_neighbour_index
from dashboards.pyramid import (
    DEFAULT_SAMPLE_ROWS,
    PREPARED_DIR,
    base_level_for,
    grid_index,
    run_started_at,
    tile_level_for,
    zorder,
)
from dashboards.search import SEARCH_DIR
from dashboards.search import build_index as build_search_index
from dq_ray.vectors import to_matrix

log = logging.getLogger(__name__)

#: Rows per pass of the tile shuffle: above it the tiles are written in several passes, each over a contiguous
#: range of tiles, so the shuffle's footprint (object store, spilled to disk) stays about this many rows.
PASS_ROWS = 100_000_000


def prepare(
    run_dir: str,
    base_level: int | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    tile_level: int | None = None,
    overwrite: bool = True,
    search: bool = True,
    neighbours: bool = True,
    pass_rows: int = PASS_ROWS,
) -> dict[str, Any]:
    """Write ``RUN/dashboard/`` for ``run_dir`` with Ray Data (Ray must already be initialised).

    ``base_level`` defaults to :func:`~dashboards.pyramid.base_level_for` the row count; the tiles are shuffled
    in passes of about ``pass_rows`` rows (:func:`tile_passes`), so disk and memory stay bounded at any size.

    With ``search``, also the full-text index of the map's search box (:mod:`dashboards.search`); with
    ``neighbours``, the signed FAISS index of a clicked document's neighbours (:mod:`dashboards.neighbours`).
    """
    import ray

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
        proj = fit_pca_of(docs)
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
    if base_level is None:
        base_level = base_level_for(num_rows)
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

    # points: hash-partitioned by tile, sorted by the fine key inside each tile; in passes over tile ranges
    n_tiles = 4**tile_level
    passes = tile_passes(tile_counts(count, base_level, tile_level), pass_rows)
    cpus = ray.cluster_resources().get("CPU", 1)
    for lo, hi, rows in passes:
        keyed = ds.map_batches(
            _add_keys,
            fn_kwargs={
                "extent": extent,
                "tile_level": tile_level,
                "base_level": base_level,
                "tiles": None if len(passes) == 1 else (lo, hi),
            },
            batch_format="pyarrow",
        )
        if n_tiles > 1:
            blocks = max(1, min(hi - lo + 1, max(cpus * 2, rows // 2_000_000)))
            keyed = keyed.repartition(int(blocks), keys=["tile"])
        keyed = keyed.map_batches(_sort_block, batch_format="pyarrow", batch_size=None)
        keyed.write_parquet(os.path.join(out, "points"), partition_cols=["tile"])
        if len(passes) > 1:
            log.info("tiles %d..%d written (%d rows)", lo, hi, rows)

    # a uniform sample for filters, histograms and counts
    fraction = min(1.0, sample_rows / max(num_rows, 1))
    sample_cols = [*cols.numeric, *cols.flags, *cols.categorical, "map_x", "map_y"]
    sampled = ds.map_batches(
        _sample_rows, fn_kwargs={"fraction": fraction, "columns": sample_cols}, batch_format="pyarrow"
    )
    sample = pa.concat_tables(list(sampled.iter_batches(batch_format="pyarrow", batch_size=None)))
    pq.write_table(sample, os.path.join(out, "sample.parquet"))

    search_info = build_search_index(root, os.path.join(out, SEARCH_DIR)) if search else None
    neighbour_info = build_neighbour_index(root, os.path.join(out, NEIGHBOURS_DIR)) if neighbours else None
    info = {
        "num_rows": int(num_rows),
        "sample_rows": int(sample.num_rows),
        "x_range": list(x_range),
        "y_range": list(y_range),
        "base_level": base_level,
        "tile_level": tile_level,
        "tile_passes": len(passes),
        "signals": signals,
        "flags": list(cols.flags),
        "categorical": list(cols.categorical),
        "projection": projection,
        "search": search_info,
        "neighbours": neighbour_info,
        "run_started_at": run_started_at(root),
        "wall_s": round(time.perf_counter() - started, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(os.path.join(out, "prepared.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    RunStore(root)  # the prepared layout opens
    log.info("prepared %s: %d rows, %d tiles, pyramid 0..%d", out, num_rows, n_tiles, base_level)
    return info


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


def fit_pca_of(docs: str) -> dict[str, Any]:
    """The PCA fallback projection of a run without map coordinates (the data store's, fitted once here)."""
    mean, components = fit_pca(pads.dataset(docs, format="parquet"))
    return {"mean": mean, "components": components}


def _project(batch: pa.Table, proj: dict[str, Any]) -> pa.Table:
    xy = (to_matrix(batch.column("embedding")) - proj["mean"]) @ proj["components"]
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


def tile_counts(count: np.ndarray, base_level: int, tile_level: int) -> np.ndarray:
    """Rows per tile (indexed by the tile's Z-order key) from the flat base-level count grid."""
    size = 1 << base_level
    shift = base_level - tile_level
    iy, ix = np.divmod(np.arange(size * size), size)
    keys = zorder(ix >> shift, iy >> shift).astype(np.int64)
    return np.bincount(keys, weights=count, minlength=4**tile_level).astype(np.int64)


def tile_passes(per_tile: np.ndarray, pass_rows: int) -> list[tuple[int, int, int]]:
    """Contiguous tile-key ranges ``(first, last, rows)`` of at most ``pass_rows`` rows each (a tile is never
    split, so one larger tile makes a pass of its own). Nearby tiles have nearby keys, so a pass is a region."""
    passes: list[tuple[int, int, int]] = []
    lo, rows = 0, 0
    for key, n in enumerate(per_tile.tolist()):
        if rows and rows + n > pass_rows:
            passes.append((lo, key - 1, rows))
            lo, rows = key, 0
        rows += n
    passes.append((lo, len(per_tile) - 1, rows))
    return passes


def _add_keys(
    batch: pa.Table, extent: dict, tile_level: int, base_level: int, tiles: tuple[int, int] | None = None
) -> pa.Table:
    """The tile and fine Z-order keys of each row; with ``tiles`` (first, last), only the rows of those tiles."""
    x, y = _floats(batch.column("map_x")), _floats(batch.column("map_y"))
    fx, fy = grid_index(x, *extent["x_range"], base_level), grid_index(y, *extent["y_range"], base_level)
    shift = base_level - tile_level
    tile = zorder(fx >> shift, fy >> shift).astype(np.int64)
    fine = zorder(fx, fy).astype(np.int64)
    if tiles is not None:
        keep = (tile >= tiles[0]) & (tile <= tiles[1])
        batch, tile, fine = batch.filter(pa.array(keep)), tile[keep], fine[keep]
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
