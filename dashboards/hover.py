"""Text on hover: the document under the cursor, for the rasterized map (HoloViews' ``selector``, Bokeh >= 3.7).

``rasterize(..., selector=ds.first())`` keeps, for every pixel, the row of one document in it (the first one
drawn) next to the aggregate. HoloViews holds that per-pixel table on the server; as the cursor moves, the
browser sends its position and the server answers with the one pixel's values, so no points and no bulk text
go to the browser. :func:`annotate` turns a pixel's row into what the tooltip shows (:data:`FIELDS` and the key
signals of the run): when the frame holds at most :data:`HOVER_DOCS` distinct documents (a zoomed-in view),
their ids, signals and text snippets are read then; above that, the tooltip shows the pixel's count or mean and
says to zoom in. A pyramid frame of a prepared run (zoomed far out) carries the same columns, empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import holoviews as hv
import numpy as np
import pyarrow as pa
import xarray as xr

from dashboards.data_store import RunStore

log = logging.getLogger(__name__)

#: A frame with at most this many distinct documents under its pixels shows them on hover (text read then).
HOVER_DOCS = 2_000
#: Characters of text shown on hover.
HOVER_CHARS = 160
#: The per-pixel row column of the frame's points (a position in the store, or in the tiles read).
ROW = "row"
#: Hover columns every frame carries, before the key signals.
FIELDS = ("id", "snippet")
#: Key signals shown on hover (the first of :meth:`RunStore.key_columns`).
MAX_SIGNALS = 5
TOOLTIP_WIDTH = "360px"
ZOOM_IN = "(zoom in to see documents)"
EMPTY = "-"

#: ``fetch(rows)`` -> the documents at ``rows`` (same order): ``id``, the signals, and ``snippet`` when asked.
Fetch = Callable[[np.ndarray], pa.Table]


def store_fetch(store: RunStore) -> Fetch:
    """:data:`Fetch` over the rows of ``store`` (its ``docs/`` positions)."""
    return lambda rows: with_snippets(store, store.take_rows(rows))


def with_snippets(store: RunStore, table: pa.Table) -> pa.Table:
    """``table`` (``id``, ``source_file``, ``source_index``...) with a ``snippet`` column of their text."""
    try:
        snippets = store.snippets(table, HOVER_CHARS)
    except Exception as exc:  # an input that moved or that no receipt names: the tooltip without text
        log.warning("hover: no snippets: %s", exc)
        snippets = [None] * table.num_rows
    return table.append_column("snippet", pa.array(snippets, pa.string()))


def hover_signals(key_columns: list[str]) -> list[str]:
    """The key signals the tooltip shows (the first :data:`MAX_SIGNALS` of :meth:`RunStore.key_columns`)."""
    return key_columns[:MAX_SIGNALS]


def hover_columns(key_columns: list[str], colour_by: str | None = None, kind: str | None = None) -> list[str]:
    """Every per-pixel column a frame carries for the tooltip (besides the pixel's value): :data:`FIELDS`, the key
    signals and, coloured by a category, the document's category."""
    extra = [colour_by] if kind in ("categorical", "flag") else []
    return list(dict.fromkeys([*FIELDS, *hover_signals(key_columns), *extra]))


def tooltips(value: str, signals: list[str]) -> list[tuple[str, str]]:
    """The tooltip rows (label, column): the pixel's value, the document's id, signals and snippet."""
    return [(value, value), ("id", "id"), *((s, s) for s in signals), ("text", "snippet")]


def wrap_tooltip(plot, element) -> None:
    """A HoloViews plot hook: keep the selector tooltip narrow (the snippet wraps) so it stays beside the cursor."""
    from bokeh.models import HoverTool
    from bokeh.models.dom import Div

    for tool in plot.state.tools:
        if isinstance(tool, HoverTool) and isinstance(tool.tooltips, Div) and tool.tooltips.style is not None:
            style = tool.tooltips.style
            style.max_width, style.white_space, style.overflow_wrap = TOOLTIP_WIDTH, "normal", "anywhere"


def annotate(img: hv.Element, fetch: Fetch | None, columns: list[str]) -> hv.Element:
    """Add the tooltip's ``columns`` (:func:`hover_columns`) to a rasterized frame.

    A frame made with a selector holds each pixel's :data:`ROW`: ``fetch`` reads those documents (when at most
    :data:`HOVER_DOCS`). A frame without (zoomed out) gets the same columns as placeholders, ``id`` saying to zoom
    in where the pixel has documents, so the tooltip keeps one layout at every zoom level.
    """
    data = img.data
    if isinstance(data, xr.DataArray):  # an ImageStack without a selector: one variable per category layer
        data = data.to_dataset(dim=next(d for d in data.dims if d not in ("x", "y")))
    values = [d.name for d in img.vdims]  # the pixel's own value (a count, a mean, category layers) stays
    shape = _shape(data)
    if ROW in data:
        row = np.asarray(data[ROW].values, np.float64)
        ok = np.isfinite(row) & (row >= 0)
        uniq, inv = np.unique(row[ok].astype(np.int64), return_inverse=True)
    else:
        ok = _has_documents(data, values)
        uniq, inv = np.zeros(0, np.int64), np.zeros(0, np.int64)
    docs = fetch(uniq) if fetch is not None and 0 < uniq.size <= HOVER_DOCS else None
    dims = _dims(data)
    out = data.copy()
    if "__index__" not in out:  # Bokeh shows the tooltip where this is not -1: every pixel with documents
        out["__index__"] = (dims, np.where(ok, 0, -1).astype(np.int64))
    names = [c for c in columns if c not in values]
    for name in names:
        if docs is not None and name in docs.column_names:
            arr = np.full(shape, EMPTY, dtype=object)
            shown = np.asarray([_show(v) for v in docs.column(name).to_pylist()], dtype=object)
            arr[ok] = shown[inv]
        elif name in data and ROW in data:
            continue  # the selector's own per-pixel value (the document's category)
        else:
            arr = np.full(shape, EMPTY, dtype=object)
            if name == "id" and docs is None:
                arr[ok] = ZOOM_IN
        # an object array as it is: xarray would otherwise convert every string (0.1 s per column and frame)
        out[name] = xr.Variable(dims, arr, fastpath=True)
    out.attrs["selector_columns"] = list(dict.fromkeys([*data.attrs.get("selector_columns", ["__index__"]), *names]))
    return img.clone(data=out)


def empty_hover(img: hv.Image, columns: list[str]) -> hv.Image:
    """A pyramid frame (no document rows) as an xarray image carrying the tooltip's columns as placeholders."""
    xs, ys = img.dimension_values(0, expanded=False), img.dimension_values(1, expanded=False)
    vdim = img.vdims[0].name
    values = img.dimension_values(2, flat=False)
    ds = xr.Dataset({vdim: (("y", "x"), values)}, coords={"x": xs, "y": ys})
    return annotate(hv.Image(ds, kdims=["x", "y"], vdims=[vdim]), None, columns)


def _has_documents(data: xr.Dataset, values: list[str]) -> np.ndarray:
    """Pixels holding documents: a finite count or mean, or any category layer above zero."""
    if len(values) == 1:
        return np.isfinite(np.asarray(data[values[0]].values, np.float64))
    total = sum(np.nan_to_num(np.asarray(data[v].values, np.float64)) for v in values)
    return total > 0


def _dims(data: xr.Dataset) -> tuple[str, str]:
    var = next(iter(data.data_vars.values()))
    return tuple(var.dims[-2:])


def _shape(data: xr.Dataset) -> tuple[int, int]:
    var = next(iter(data.data_vars.values()))
    return tuple(var.shape[-2:])


def _show(v) -> str:
    if v is None:
        return EMPTY
    if isinstance(v, float):
        return f"{v:.4g}" if np.isfinite(v) else EMPTY
    return str(v)
