"""The map's search box and nearest-neighbour view: widgets, the overlay of marked points, the neighbours table.

One :class:`FindPanel` per browser session. A search (:mod:`dashboards.search`, answered on the server) marks up
to :data:`~dashboards.search.MAX_HITS` matching documents on the map (orange rings) and lists the first ones in
the selection table; clicking a document on the map, or a row of the selection or neighbours table, marks it
(a black star) and its :data:`~dashboards.neighbours.DEFAULT_K` nearest documents by embedding (red dots,
:mod:`dashboards.neighbours`) and lists those in the neighbours table. The browser receives the few marked
points and the listed rows, never the corpus.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import pyarrow as pa

from dashboards.data_store import RunStore
from dashboards.neighbours import DEFAULT_K, get_neighbour_index
from dashboards.search import MAX_TEXT_CHARS, Searcher, keyword_snippet
from dashboards.tabs import document_table

log = logging.getLogger(__name__)

HIT_COLOUR = "#ff7f0e"
NEIGHBOUR_COLOUR = "#d62728"
#: Rows listed for a search (the map marks more: up to MAX_HITS).
LISTED = 50

#: ``show(total, rows, title, snippets)``: list documents (a :meth:`RunStore.take_rows` table) with their snippets
#: in the selection table.
ShowRows = Callable[[int, pa.Table, str, list], None]


class _Marks(param.Parameterized):
    version = param.Integer(default=0)


class FindPanel:
    """Search and neighbours for one session of the map (see the module docstring)."""

    def __init__(self, store: RunStore, show_rows: ShowRows) -> None:
        self.store = store
        self.show_rows = show_rows
        self.searcher = Searcher(store)
        self.neighbour_index = get_neighbour_index(store)
        self.marks = _Marks()
        self.hits = (np.zeros(0, np.float32), np.zeros(0, np.float32))
        self.near = (np.zeros(0, np.float32), np.zeros(0, np.float32))
        self.focus = (np.zeros(0, np.float32), np.zeros(0, np.float32))
        why = self.searcher.available()
        self.box = pn.widgets.TextInput(
            label="Search the text",
            placeholder='words, or "a phrase"; Enter',
            width=260,
            disabled=why is not None,
            css_classes=["dq-search"],
        )
        self.box.param.watch(lambda e: self.search(e.new), "value")
        self.clear = pn.widgets.Button(label="Clear marks", width=120, css_classes=["dq-search-clear"])
        self.clear.on_click(lambda _: self.reset())
        self.status = pn.pane.Markdown(why or "", width=260, css_classes=["dq-search-status"])
        self.neighbours_title = pn.pane.Markdown(
            "**Neighbours**: click a document on the map, or a row of a table, to see its nearest documents."
            if self.neighbour_index.available() is None
            else f"**Neighbours**: {self.neighbour_index.available()}",
            css_classes=["dq-neighbours-title"],
        )
        self.neighbours_table = document_table("dq-neighbours")
        self._near_rows: pa.Table | None = None
        self.neighbours_table.on_click(self._on_neighbour_click)

    # -- search ------------------------------------------------------------------------------------------

    def search(self, text: str) -> None:
        """Mark and list the documents matching ``text`` (empty: clear the search marks)."""
        if not (text or "").strip():
            self.hits = (np.zeros(0, np.float32), np.zeros(0, np.float32))
            self.status.object = ""
            self._bump()
            return
        result = self.searcher.search(text)
        if result.message:
            self.status.object = html.escape(result.message)
            return
        table = self.store.take_rows(result.rows) if result.rows.size else None
        self.hits = _xy(table)
        marked = "" if result.total <= result.rows.size else f" ({result.rows.size:,} marked on the map)"
        self.status.object = f"**{result.total:,}** documents match{marked}, by {result.method}"
        self._bump()
        if table is not None:  # the listed ones with the text around their match
            listed = table.slice(0, LISTED)
            texts = _snippets(self.store, listed, MAX_TEXT_CHARS)
            snippets = [keyword_snippet(t, result.query) for t in texts]
            self.show_rows(result.total, listed, f'Search "{html.escape(text.strip())}"', snippets)

    def reset(self) -> None:
        """Clear the search box and every mark."""
        empty = (np.zeros(0, np.float32), np.zeros(0, np.float32))
        self.hits = self.near = self.focus = empty
        self.box.value = ""
        self.status.object = ""
        self._bump()

    # -- neighbours --------------------------------------------------------------------------------------

    def show_neighbours(self, doc: dict[str, Any]) -> None:
        """Mark ``doc`` (a row with ``id``, ``source_file``, ``source_index``, ``map_x``, ``map_y``) and its
        nearest documents, and list them."""
        why = self.neighbour_index.available()
        if why is not None:
            self.neighbours_title.object = f"**Neighbours**: {html.escape(why)}"
            return
        try:
            near = self.neighbour_index.neighbours(doc["source_file"], doc["source_index"], DEFAULT_K)
        except Exception as exc:  # an index that cannot be loaded: say so, keep the page alive
            log.warning("neighbours of %r: %s", doc.get("id"), exc)
            self.neighbours_title.object = f"**Neighbours**: unavailable ({html.escape(str(exc))})"
            return
        name = html.escape(str(doc.get("id")))
        if near is None:
            self.neighbours_title.object = f"**Neighbours** of `{name}`: it has no embedding."
            return
        self.focus = (np.array([doc.get("map_x")], np.float32), np.array([doc.get("map_y")], np.float32))
        self.near = _xy(near)
        self._near_rows = near
        df = near.drop_columns([c for c in ("row", "source_file", "map_x", "map_y") if c in near.column_names])
        df = df.to_pandas()
        df.insert(min(1, len(df.columns)), "snippet", _snippets(self.store, near))
        self.neighbours_table.value = df
        self.neighbours_title.object = (
            f"**Neighbours** of `{name}`: the {near.num_rows} most similar documents by embedding "
            f"({self.neighbour_index.source})"
        )
        self._bump()

    def _on_neighbour_click(self, event) -> None:
        if self._near_rows is not None and event.row is not None and 0 <= event.row < self._near_rows.num_rows:
            self.show_neighbours(self._near_rows.slice(event.row, 1).to_pylist()[0])

    # -- the overlay -------------------------------------------------------------------------------------

    def _bump(self) -> None:
        self.marks.version += 1

    def overlay(self) -> hv.DynamicMap:
        """The marked points, redrawn whenever the marks change (a handful of points, drawn by the browser)."""

        def draw(version=0):
            common = dict(tools=[], muted_alpha=0, show_legend=False)
            return hv.Overlay(
                [
                    hv.Points(self.hits, kdims=["x", "y"], label="search").opts(
                        marker="circle", size=9, fill_alpha=0, line_color=HIT_COLOUR, line_width=2, **common
                    ),
                    hv.Points(self.near, kdims=["x", "y"], label="neighbours").opts(
                        marker="circle", size=8, color=NEIGHBOUR_COLOUR, line_color="white", **common
                    ),
                    hv.Points(self.focus, kdims=["x", "y"], label="document").opts(
                        marker="star", size=16, color="black", line_color="white", **common
                    ),
                ]
            )

        return hv.DynamicMap(draw, streams=[hv.streams.Params(self.marks, ["version"])])

    def marked(self) -> dict[str, int]:
        """How many points each layer marks (for tests and the status line)."""
        return {"search": len(self.hits[0]), "neighbours": len(self.near[0]), "document": len(self.focus[0])}

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(self.box, self.status, self.clear, css_classes=["dq-find"])


def _xy(table: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    if table is None or table.num_rows == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    x = table.column("map_x").to_numpy(zero_copy_only=False).astype(np.float32)
    y = table.column("map_y").to_numpy(zero_copy_only=False).astype(np.float32)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _snippets(store: RunStore, table: pa.Table, chars: int | None = None) -> list[str | None]:
    try:
        return store.snippets(table) if chars is None else store.snippets(table, chars)
    except Exception as exc:  # an input that moved: the table without text
        log.warning("snippets unavailable: %s", exc)
        return [None] * table.num_rows
