"""One map frame: HoloViews ``rasterize`` over Datashader, or the prepared pyramid, as an Image element.

:func:`render` is what the map's ``DynamicMap`` calls on every pan, zoom, resize, filter or colour change, and
what ``benchmarks/dashboard_render.py`` times. It returns the element ``rasterize`` returns (an ``hv.Image`` of
counts or per-pixel means, an ``hv.ImageStack`` of per-category counts), never ``datashade``'s RGB, so Bokeh
keeps the colour bar and the hover values. Where the data comes from:

- ``memory``: the store's in-memory columns, aggregated by ``rasterize`` (``ds.count``, ``ds.mean(signal)``,
  ``ds.count_cat(category)``);
- ``pyramid``: on a prepared run, an unfiltered count or mean view read from the coarsest pyramid level with
  about one cell per pixel (a cell's mean is its sum over its non-null count);
- ``tiles``: on a prepared run, zoomed in (or filtered, or coloured by category) with few enough documents in
  view: only the tiles in view are read, with the filters pushed into the Parquet scan, then ``rasterize``;
- ``sample``: on a prepared run, a filtered or categorical view of too many documents: ``rasterize`` over the
  prepared uniform sample, counts scaled to the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
from holoviews.operation.datashader import rasterize

from dashboards.data_store import MAX_CATEGORIES, NONE_LABEL, OTHER_LABEL, Filters, RunStore

#: Above this many documents in view, a prepared run renders filtered/categorical views from its sample.
MAX_TILE_POINTS = 20_000_000

#: Category colours (Tableau 20 reordered for contrast); "other" and "(none)" are grey.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d",
    "#393b79", "#637939",
]  # fmt: skip
GREY = "#9e9e9e"


@dataclass
class Frame:
    """A rendered frame: the element, where it came from, and how many documents are in view."""

    element: hv.Element
    source: str
    documents: int
    legend: dict[str, str] | None = None  # category -> colour, for categorical colouring


def category_colours(labels: list[str]) -> dict[str, str]:
    """A stable colour per legend label."""
    out, i = {}, 0
    for label in labels:
        if label in (OTHER_LABEL, NONE_LABEL):
            out[label] = GREY
        else:
            out[label] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _legend_labels(codes: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Keep the MAX_CATEGORIES largest categories; merge the rest into ``other`` and nulls into ``(none)``."""
    counts = np.bincount(codes[codes >= 0], minlength=len(labels)) if len(labels) else np.zeros(0, int)
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    top = order[:MAX_CATEGORIES]
    names = [labels[i] for i in top]
    remap = np.full(len(labels) + 1, -1, np.int32)  # last slot: null
    for new, old in enumerate(top):
        remap[old] = new
    extra = []
    if len(order) > len(top):
        extra.append(OTHER_LABEL)
        for old in order[len(top) :]:
            remap[old] = len(names)
    if (codes < 0).any():
        remap[-1] = len(names) + len(extra)
        extra.append(NONE_LABEL)
    return remap[np.where(codes < 0, len(labels), codes)], names + extra


def _aggregate(df: pd.DataFrame, colour_by: str | None, kind: str, x_range, y_range, width, height, scale=1.0):
    """``rasterize`` a frame of x, y (and the colour column) to one element."""
    if colour_by is None:
        agg, vdims = ds.count(), []
    elif kind == "numeric":
        agg, vdims = ds.mean(colour_by), [colour_by]
    else:
        agg, vdims = ds.count_cat(colour_by), [colour_by]
    points = hv.Points(df, kdims=["x", "y"], vdims=vdims)
    img = rasterize(
        points,
        aggregator=agg,
        x_range=tuple(x_range),
        y_range=tuple(y_range),
        width=int(width),
        height=int(height),
        dynamic=False,
    )
    if not isinstance(img, hv.ImageStack):  # name the value after what it is: "documents" or the signal
        img = img.redim(**{img.vdims[0].name: "documents" if colour_by is None else colour_by})
    if colour_by is None:
        data = img.data.where(img.data > 0)  # no documents: transparent, not the lowest colour
        img = img.clone(data * scale if scale != 1.0 else data)
    return img


def render(
    store: RunStore,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 800,
    height: int = 600,
    colour_by: str | None = None,
    filters: Filters | None = None,
) -> Frame:
    """Render one frame of the map for a view (defaults: the full extent)."""
    full_x, full_y = store.bounds()
    x_range = tuple(x_range or full_x)
    y_range = tuple(y_range or full_y)
    kind = "count" if colour_by is None else store.columns.kind(colour_by)
    filtered = filters is not None and filters.active()
    prepared = store.prepared
    if prepared is not None:
        if not filtered and kind in ("count", "numeric"):
            frame = _from_pyramid(store, x_range, y_range, width, height, colour_by)
            if frame is not None:
                return frame
        if prepared.rows_in_view(x_range, y_range) <= MAX_TILE_POINTS:
            return _from_tiles(store, x_range, y_range, width, height, colour_by, kind, filters)
        return _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, source="sample")
    return _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, source="memory")


def _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, source) -> Frame:
    x, y = store.xy()
    mask = store.mask(filters)
    if mask is not None:
        x, y = x[mask], y[mask]
    cols = {"x": x, "y": y}
    legend = None
    if kind == "numeric":
        v = store.values(colour_by)
        cols[colour_by] = v if mask is None else v[mask]
    elif kind in ("categorical", "flag"):
        cat = store.category(colour_by)
        codes = cat.codes if mask is None else cat.codes[mask]
        codes, labels = _legend_labels(codes, cat.labels)
        cols[colour_by] = pd.Categorical.from_codes(codes, categories=labels)
        legend = category_colours(labels)
    df = pd.DataFrame(cols, copy=False)
    scale = store.scale if source == "sample" else 1.0
    img = _aggregate(df, colour_by, kind, x_range, y_range, width, height, scale)
    in_view = np.count_nonzero((x >= x_range[0]) & (x <= x_range[1]) & (y >= y_range[0]) & (y <= y_range[1]))
    return Frame(img, source, int(round(in_view * scale)), legend)


def _from_tiles(store, x_range, y_range, width, height, colour_by, kind, filters) -> Frame:
    from dashboards.pyramid import filters_expression

    prepared = store.prepared
    cols = [colour_by] if colour_by else []
    t = prepared.points_in_view(x_range, y_range, cols, filters_expression(filters))
    data = {"x": t.column("map_x").to_numpy(), "y": t.column("map_y").to_numpy()}
    legend = None
    if kind == "numeric":
        data[colour_by] = t.column(colour_by).to_pandas().astype("float32").to_numpy()
    elif kind in ("categorical", "flag"):
        col = t.column(colour_by).to_pandas()
        col = col.map({True: "true", False: "false"}) if kind == "flag" else col.astype("string")
        labels = sorted(col.dropna().unique().tolist())
        codes = np.array(pd.Categorical(col, categories=labels).codes, np.int32)
        codes, labels = _legend_labels(codes, labels)
        data[colour_by] = pd.Categorical.from_codes(codes, categories=labels)
        legend = category_colours(labels)
    img = _aggregate(pd.DataFrame(data, copy=False), colour_by, kind, x_range, y_range, width, height)
    return Frame(img, "tiles", t.num_rows, legend)


def _from_pyramid(store, x_range, y_range, width, height, colour_by) -> Frame | None:
    prepared = store.prepared
    level = prepared.level_for(x_range, y_range, width, height)
    if level is None:
        return None
    sy, sx, xs, ys = prepared.window(level, x_range, y_range)
    count = prepared.grid(level, "count")[sy, sx]
    if colour_by is None:
        values, vdim = np.where(count > 0, count, np.nan), "documents"
    else:
        s = prepared.grid(level, f"{colour_by}__sum")[sy, sx]
        n = prepared.grid(level, f"{colour_by}__n")[sy, sx]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(n > 0, s / n, np.nan)
        vdim = colour_by
    img = hv.Image((xs, ys, values.astype(np.float32)), kdims=["x", "y"], vdims=[vdim])
    return Frame(img, f"pyramid level {level}", int(count.sum()))
