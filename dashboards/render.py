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
import pyarrow as pa
from holoviews.operation.datashader import rasterize

from dashboards import hover as hv_hover
from dashboards.data_store import MAX_CATEGORIES, NONE_LABEL, OTHER_LABEL, Filters, RunStore

#: Above this many documents in view, a prepared run renders filtered/categorical views from its sample.
#: At most this many documents in view are rasterized from the tiles (about a second here). Above it an unfiltered
#: count or mean frame takes the base pyramid level even with cells up to COARSE_CELL_PX pixels wide, and a
#: filtered or categorical frame comes from the uniform sample, counts scaled to the corpus.
MAX_TILE_POINTS = 1_000_000
COARSE_CELL_PX = 16

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
    legend: dict[str, str] | None = None  # category -> colour of every layer, for categorical colouring
    shown: dict[str, int] | None = None  # category -> documents passing the filters in view (only those > 0)


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


def _legend_map(codes: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Keep the MAX_CATEGORIES largest categories; merge the rest into ``other`` and nulls into ``(none)``.

    Returns the remapping (old code -> legend index; the last slot is null, code -1) and the legend labels.
    """
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
    return remap, names + extra


@dataclass
class Legend:
    """The categories of colouring by one column over every row: the same layers whatever the filters.

    A filter that leaves one category (or none) must not change the number of layers of the ``ImageStack``: Bokeh
    keeps the first frame's palette, so a frame with fewer layers fails in the browser ("Expected 2 not 1 colors
    in palette") and the previous image stays on the map. ``remap`` turns a category code of
    :meth:`RunStore.category` (last slot: null) into a layer index.
    """

    labels: list[str]
    colours: dict[str, str]
    remap: np.ndarray

    def layer_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.remap[np.where(codes < 0, len(self.remap) - 1, codes)]


def column_legend(store: RunStore, colour_by: str) -> Legend:
    """The :class:`Legend` of ``colour_by`` over all in-memory rows (cached in the store).

    On a prepared run the rows in memory are a sample: ``other`` and ``(none)`` are always layers there, for the
    categories and nulls that only the tiles hold.
    """

    def load() -> Legend:
        cat = store.category(colour_by)
        remap, labels = _legend_map(cat.codes, cat.labels)
        if store.prepared is not None:
            for extra in (OTHER_LABEL, NONE_LABEL):
                if extra not in labels:
                    labels.append(extra)
            if remap[-1] < 0:
                remap[-1] = labels.index(NONE_LABEL)
        return Legend(labels, category_colours(labels), remap)

    return store._cached(f"legend:{colour_by}", load)


def _aggregate(
    df: pd.DataFrame, colour_by: str | None, kind: str, x_range, y_range, width, height, scale=1.0, selector=False
):
    """``rasterize`` a frame of x, y (and the colour column) to one element; with ``selector``, also each pixel's
    first document (the frame's :data:`~dashboards.hover.ROW` column per pixel, for the tooltip)."""
    if colour_by is None:
        agg, vdims = ds.count(), []
    elif kind == "numeric":
        agg, vdims = ds.mean(colour_by), [colour_by]
    else:
        agg, vdims = ds.count_cat(colour_by), [colour_by]
        if len(df) == 0 and len(df[colour_by].cat.categories):
            # rasterize turns no points into a plain Image; one point outside the view keeps the ImageStack and
            # its layers (all zero), so the map's plot can show the frame
            outside = x_range[1] + (x_range[1] - x_range[0]) + 1.0
            cats = df[colour_by].cat.categories
            df = pd.DataFrame(
                {"x": [outside], "y": [y_range[0]], colour_by: pd.Categorical.from_codes([0], categories=cats)}
            )
            if selector:
                df[hv_hover.ROW] = np.array([-1], np.int64)
    points = hv.Points(df, kdims=["x", "y"], vdims=vdims)
    img = rasterize(
        points,
        aggregator=agg,
        x_range=tuple(x_range),
        y_range=tuple(y_range),
        width=int(width),
        height=int(height),
        dynamic=False,
        **({"selector": ds.first()} if selector else {}),
    )
    if not isinstance(img, hv.ImageStack):  # name the value after what it is: "documents" or the signal
        if selector and colour_by in img.data and colour_by != img.vdims[0].name:  # the selected document's value
            data = img.data.drop_vars(colour_by)
            data.attrs["selector_columns"] = [c for c in data.attrs["selector_columns"] if c != colour_by]
            img = img.clone(data)
        img = img.redim(**{img.vdims[0].name: "documents" if colour_by is None else colour_by})
    if colour_by is None:
        data = img.data.copy()
        count = data["documents"]
        count = count.where(count > 0)  # no documents: transparent, not the lowest colour
        data["documents"] = count * scale if scale != 1.0 else count
        img = img.clone(data)
    return img


def render(
    store: RunStore,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 800,
    height: int = 600,
    colour_by: str | None = None,
    filters: Filters | None = None,
    hover: bool = False,
) -> Frame:
    """Render one frame of the map for a view (defaults: the full extent).

    With ``hover``, the frame carries the document under each pixel for the map's tooltip (:mod:`dashboards.hover`).
    """
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
                if hover:
                    columns = hv_hover.hover_columns(store.key_columns(), colour_by, kind)
                    frame.element = hv_hover.empty_hover(frame.element, columns)
                return frame
        if prepared.rows_in_view(x_range, y_range) <= MAX_TILE_POINTS:
            return _from_tiles(store, x_range, y_range, width, height, colour_by, kind, filters, hover)
        return _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, "sample", hover)
    return _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, "memory", hover)


def _from_memory(store, x_range, y_range, width, height, colour_by, kind, filters, source, hover=False) -> Frame:
    x, y = store.xy()
    mask = store.mask(filters)
    if mask is not None:
        x, y = x[mask], y[mask]
    cols = {"x": x, "y": y}
    legend = None
    if kind == "numeric":
        v = store.values(colour_by)
        cols[colour_by] = v if mask is None else v[mask]
    scale = store.scale if source == "sample" else 1.0
    in_view = (x >= x_range[0]) & (x <= x_range[1]) & (y >= y_range[0]) & (y <= y_range[1])
    shown = None
    if kind in ("categorical", "flag"):
        lg = column_legend(store, colour_by)
        cat = store.category(colour_by)
        codes = lg.layer_codes(cat.codes if mask is None else cat.codes[mask])
        cols[colour_by] = pd.Categorical.from_codes(codes, categories=lg.labels)
        legend = lg.colours
        shown = _shown(codes[in_view], lg.labels, scale)
    in_frame = int(np.count_nonzero(in_view))
    # zoomed in on few documents of the store (not of a prepared run's sample): the tooltip names them
    with_docs = hover and source == "memory" and in_frame <= hv_hover.HOVER_DOCS
    if with_docs:
        cols[hv_hover.ROW] = np.flatnonzero(mask) if mask is not None else np.arange(len(x), dtype=np.int64)
    df = pd.DataFrame(cols, copy=False)
    if with_docs:
        df = df[in_view]  # the selector's cost follows the documents in view, not the corpus
    img = _aggregate(df, colour_by, kind, x_range, y_range, width, height, scale, selector=with_docs)
    if hover:
        fetch = hv_hover.store_fetch(store) if with_docs else None
        img = hv_hover.annotate(img, fetch, hv_hover.hover_columns(store.key_columns(), colour_by, kind))
    return Frame(img, source, int(round(in_frame * scale)), legend, shown)


def _shown(layer_codes: np.ndarray, labels: list[str], scale: float = 1.0) -> dict[str, int]:
    """Documents per legend label (those with any), in legend order."""
    counts = np.bincount(layer_codes, minlength=len(labels))
    return {label: int(round(n * scale)) for label, n in zip(labels, counts) if n > 0}


def _from_tiles(store, x_range, y_range, width, height, colour_by, kind, filters, hover=False) -> Frame:
    from dashboards.pyramid import filters_expression

    prepared = store.prepared
    cols = [colour_by] if colour_by else []
    columns = hv_hover.hover_columns(store.key_columns(), colour_by, kind)
    with_docs = hover and prepared.rows_in_view(x_range, y_range) <= hv_hover.HOVER_DOCS
    if with_docs:  # zoomed in: read what the tooltip shows with the points
        names = store.dataset.schema.names
        cols = list(dict.fromkeys([*cols, "id", "source_file", "source_index", *(c for c in columns if c in names)]))
    t = prepared.points_in_view(x_range, y_range, cols, filters_expression(filters))
    with_docs = with_docs and t.num_rows <= hv_hover.HOVER_DOCS
    data = {"x": t.column("map_x").to_numpy(), "y": t.column("map_y").to_numpy()}
    if with_docs:
        data[hv_hover.ROW] = np.arange(t.num_rows, dtype=np.int64)
    legend = None
    if kind == "numeric":
        data[colour_by] = t.column(colour_by).to_pandas().astype("float32").to_numpy()
    shown = None
    if kind in ("categorical", "flag"):
        # the layers of the whole column (see Legend): a tile's category outside them is "other", a null "(none)"
        lg = column_legend(store, colour_by)
        col = t.column(colour_by).to_pandas()
        col = col.map({True: "true", False: "false"}) if kind == "flag" else col.astype("string")
        index = {label: i for i, label in enumerate(lg.labels) if label not in (OTHER_LABEL, NONE_LABEL)}
        codes = col.map(index)
        codes = codes.where(col.notna(), lg.labels.index(NONE_LABEL))
        codes = codes.fillna(lg.labels.index(OTHER_LABEL)).to_numpy().astype(np.int32)
        data[colour_by] = pd.Categorical.from_codes(codes, categories=lg.labels)
        legend = lg.colours
        shown = _shown(codes, lg.labels)
    df = pd.DataFrame(data, copy=False)
    img = _aggregate(df, colour_by, kind, x_range, y_range, width, height, selector=with_docs)
    if hover:
        fetch = (lambda rows: hv_hover.with_snippets(store, t.take(pa.array(rows)))) if with_docs else None
        img = hv_hover.annotate(img, fetch, columns)
    return Frame(img, "tiles", t.num_rows, legend, shown)


def _from_pyramid(store, x_range, y_range, width, height, colour_by) -> Frame | None:
    prepared = store.prepared
    level = prepared.level_for(x_range, y_range, width, height)
    if level is None and prepared.rows_in_view(x_range, y_range) > MAX_TILE_POINTS:
        level = prepared.level_for(x_range, y_range, width, height, max_cell_px=COARSE_CELL_PX)
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
