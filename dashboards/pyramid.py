"""Reading a prepared map (spatial tiles and a multi-resolution pyramid) and the grid maths both sides share.

``dq-ray dashboard-prepare RUN`` (:func:`dashboards.prepare.prepare`) writes ``RUN/dashboard/``::

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dashboards.geometry import geometry_mask

log = logging.getLogger(__name__)

PREPARED_DIR = "dashboard"
#: Rows per tile the tile level aims for.
ROWS_PER_TILE = 250_000
DEFAULT_BASE_LEVEL = 10  # a 1024 x 1024 base grid
#: The deepest base level chosen by default (a 4096 x 4096 grid: 134 MB per dense column read by the map).
MAX_AUTO_BASE_LEVEL = 12
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


def base_level_for(rows: int) -> int:
    """The default base level: 10 up to 25M documents, 11 up to 100M, 12 above.

    Past ~25M documents a zoom to 1% of the area (a tenth of each side) can hold more points than the tiles
    rasterize in a second; level 11 still has a cell per 4 pixels of an 800-pixel frame of it, level 12 one per 2.
    """
    extra = math.ceil(math.log(max(rows, 1) / 25_000_000, 4)) if rows > 25_000_000 else 0
    return DEFAULT_BASE_LEVEL + min(extra, MAX_AUTO_BASE_LEVEL - DEFAULT_BASE_LEVEL)


def run_started_at(root: str) -> str | None:
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
    return info.get("run_started_at") == run_started_at(run_root)


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

    def level_for(self, x_range, y_range, width: int, height: int, max_cell_px: float = 4) -> int | None:
        """The coarsest level with about a cell per pixel in view; None when even the base level's cells would be
        more than ``max_cell_px`` pixels wide."""
        frac = max((x_range[1] - x_range[0]) / (self.x_range[1] - self.x_range[0]), 1e-12)
        frac_y = max((y_range[1] - y_range[0]) / (self.y_range[1] - self.y_range[0]), 1e-12)
        need = max(width / frac, height / frac_y)
        level = max(0, math.ceil(math.log2(max(need, 1))))
        if level > self.base_level:
            if (1 << self.base_level) * max_cell_px < need:
                return None  # cells would be too coarse: read the points
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
            inside = geometry_mask(
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
        inside = (pc.field(name) >= lo) & (pc.field(name) <= hi)
        parts.append(inside | pc.field(name).is_null(nan_is_null=True) if filters.keep_null else inside)
    for name, want in filters.flags.items():
        parts.append(pc.field(name) == bool(want))
    for name, labels in filters.categories.items():
        parts.append(pc.field(name).cast(pa.string()).isin(list(labels)))
    for p in parts:
        expr = p if expr is None else expr & p
    return expr
