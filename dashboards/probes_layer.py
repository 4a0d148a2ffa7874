"""The map's probes layer: the probes of a ``dq-ray gaps`` report drawn over the map, with their nearest documents.

``dq-ray gaps RUN --probes FILE`` writes ``RUN/gaps-<stem>/probes.parquet``: one row per probe (thinnest first)
with its density percentile, its map coordinates (the run's fitted projection, when the run has a ``map`` stage)
and the ids and cosines of its nearest corpus documents. One :class:`ProbeLayer` per browser session offers those
folders in a selector ("off" by default). A chosen report draws its probes as teal triangles (hover: id and density
percentile) and lists them; clicking a probe on the map, or its row, lists its nearest documents with their cosine,
their own coverage (the percentile of their ``density_score`` among the documents on the map) and a snippet, and
marks them on the map (purple squares). The browser receives the probes and the listed rows only.

Only folders named ``gaps-*`` directly inside the run are offered (a report written elsewhere with ``--output`` is
not); their files are read through the store's confined paths.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dashboards.data_store import RunPathError, RunStore
from dashboards.tabs import document_table
from dq_ray.gaps.coverage import percentiles

log = logging.getLogger(__name__)

OFF = "off"
GAPS_PREFIX = "gaps-"
PROBES_FILE = "probes.parquet"
PROBE_COLOUR = "#17becf"
NEIGHBOUR_COLOUR = "#9467bd"
#: The columns of ``probes.parquet`` the layer reads (older reports may lack some).
PROBE_COLUMNS = (
    "rank",
    "probe_id",
    "text",
    "density_percentile",
    "topic_label",
    "nearest_id",
    "neighbour_ids",
    "neighbour_cosines",
    "map_x",
    "map_y",
)
#: Characters of a probe's text shown in the probe table.
PROBE_TEXT_CHARS = 120
COVERAGE = "coverage_percentile"


class _Marks(param.Parameterized):
    version = param.Integer(default=0)


def gaps_folders(store: RunStore) -> list[str]:
    """The ``gaps-*`` folders of the run that hold a ``probes.parquet`` (sorted by name)."""
    out = []
    for name in sorted(os.listdir(store.root)):
        if not name.startswith(GAPS_PREFIX):
            continue
        try:
            if os.path.isfile(store.path(name, PROBES_FILE)):
                out.append(name)
        except RunPathError as exc:  # a link out of the run
            log.warning("probes layer: %s ignored (%s)", name, exc)
    return out


def read_probe_table(store: RunStore, folder: str) -> pa.Table:
    """``probes.parquet`` of ``folder`` (a :func:`gaps_folders` name), the columns of :data:`PROBE_COLUMNS` it has."""
    if folder not in gaps_folders(store):
        raise RunPathError(f"{folder!r} is not a gaps report of this run")
    path = store.path(folder, PROBES_FILE)
    names = pq.read_schema(path).names
    return pq.read_table(path, columns=[c for c in PROBE_COLUMNS if c in names])


def probe_neighbours(store: RunStore, probe: dict[str, Any], reference: np.ndarray | None = None) -> pa.Table:
    """The nearest documents of ``probe`` (a row of :func:`read_probe_table`), in its order: ``rank``, ``id``,
    ``cosine``, :data:`COVERAGE` (the percentile of their ``density_score`` among ``reference``, the documents on
    the map by default), the store's key signals, ``run`` (for an update), ``source_file``, ``source_index`` and
    ``map_x`` / ``map_y`` when the run has them. A neighbour no longer in ``docs/`` is left out."""
    ids = [i for i in probe.get("neighbour_ids") or [] if isinstance(i, str)]
    cosines = dict(zip(ids, probe.get("neighbour_cosines") or []))
    names = store.dataset.schema.names
    wanted = ["id", "source_file", "source_index", *store.key_columns(), "density_score", "run", "map_x", "map_y"]
    cols = [c for c in dict.fromkeys(wanted) if c in names]
    found = store.dataset.to_table(columns=cols, filter=pc.field("id").isin(pa.array(ids, pa.string())))
    first: dict[str, int] = {}
    for pos, i in enumerate(found.column("id").to_pylist()):
        first.setdefault(i, pos)  # an id in the run and a baseline: the run's own (its files come first)
    table = found.take(pa.array([first[i] for i in ids if i in first], pa.int64()))
    kept = table.column("id").to_pylist()
    table = table.add_column(0, "rank", pa.array(range(1, len(kept) + 1), pa.int32()))
    table = table.add_column(2, "cosine", pa.array([cosines.get(i) for i in kept], pa.float32()))
    if "density_score" in table.column_names and "density_score" in store.columns.numeric:
        if reference is None:
            v = store.values("density_score")
            reference = v[np.isfinite(v)]
        dens = table.column("density_score").to_numpy(zero_copy_only=False).astype(np.float64)
        pct = percentiles(dens, reference)
        table = table.add_column(3, COVERAGE, pa.array(np.round(pct, 1), pa.float64(), mask=~np.isfinite(pct)))
    return table


class ProbeLayer:
    """The probes of one gaps report over one session's map (see the module docstring)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.folders = gaps_folders(store)
        self.marks = _Marks()
        self.probes: pa.Table | None = None
        self.current: int | None = None
        self.neighbours: pa.Table | None = None
        self._reference: np.ndarray | None = None
        self.select = pn.widgets.Select(
            label="Probes (dq-ray gaps)",
            options=[OFF, *self.folders],
            value=OFF,
            width=260,
            visible=bool(self.folders),
            css_classes=["dq-probes"],
        )
        self.select.param.watch(lambda e: self.load(e.new), "value")
        self.status = pn.pane.Markdown("", width=260, css_classes=["dq-probes-status"], styles={"font-size": "12px"})
        fit = dict(disabled=True, show_index=False, layout="fit_columns", sizing_mode="stretch_width")
        self.probe_table = pn.widgets.Tabulator(
            pd.DataFrame(), page_size=10, pagination="local", css_classes=["dq-probe-table"], **fit
        )
        self.probe_table.on_click(lambda e: self.show_probe(e.row) if e.row is not None else None)
        self.title = pn.pane.Markdown("", css_classes=["dq-probe-title"])
        self.neighbours_table = document_table("dq-probe-neighbours", snippet_width="35%")
        self.main = pn.Column(
            self.title, self.probe_table, self.neighbours_table, sizing_mode="stretch_width", visible=False
        )

    # -- state ---------------------------------------------------------------------------------------------

    def load(self, folder: str) -> None:
        """Show the probes of ``folder`` (a :func:`gaps_folders` name), or none for :data:`OFF`."""
        self.probes = self.neighbours = None
        self.current = None
        self.neighbours_table.value = pd.DataFrame()
        if folder == OFF:
            self.status.object = ""
            self.main.visible = False
            self._bump()
            return
        try:
            self.probes = read_probe_table(self.store, folder)
        except (OSError, ValueError) as exc:  # a damaged report: say so, keep the page alive
            log.warning("probes layer: %s: %s", folder, exc)
            self.status.object = f"cannot read {html.escape(folder)}: {html.escape(str(exc))}"
            self.main.visible = False
            self._bump()
            return
        x, _ = self.xy()
        placed = int(x.size)
        where = "" if placed == self.probes.num_rows else " (the run has no map stage: the probes are not placed)"
        self.status.object = f"**{self.probes.num_rows:,}** probes, {placed:,} on the map{where}"
        self.probe_table.value = self._probe_frame()
        self.title.object = (
            f"**Probes** of `{html.escape(folder)}`, thinnest first: click a probe (here or on the map) for its "
            "nearest documents."
        )
        self.main.visible = True
        self._bump()

    def _probe_frame(self) -> pd.DataFrame:
        cols = [
            c
            for c in ("rank", "probe_id", "density_percentile", "topic_label", "text")
            if c in self.probes.column_names
        ]
        df = self.probes.select(cols).to_pandas()
        if "text" in df:
            df["text"] = [" ".join(str(t or "").split())[:PROBE_TEXT_CHARS] for t in df["text"]]
        if "density_percentile" in df:
            df["density_percentile"] = df["density_percentile"].round(1)
        return df

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """The map coordinates of the placed probes (those with finite ``map_x`` / ``map_y``)."""
        return _xy(self.probes)

    def pick(self, x: float, y: float, radius: float) -> int | None:
        """The probe (its row in the probe table) nearest to ``(x, y)`` within ``radius`` map units, if any."""
        if self.probes is None or "map_x" not in self.probes.column_names:
            return None
        px = self.probes.column("map_x").to_numpy(zero_copy_only=False).astype(np.float64)
        py = self.probes.column("map_y").to_numpy(zero_copy_only=False).astype(np.float64)
        d = np.hypot(px - x, py - y)
        d[~np.isfinite(d)] = np.inf
        if d.size == 0 or d.min() > radius:
            return None
        return int(np.argmin(d))

    def show_probe(self, row: int) -> pa.Table | None:
        """List and mark the nearest documents of the probe at ``row`` of the probe table; returns them."""
        if self.probes is None or not 0 <= row < self.probes.num_rows:
            return None
        probe = self.probes.slice(row, 1).to_pylist()[0]
        if self._reference is None and "density_score" in self.store.columns.numeric:
            v = self.store.values("density_score")
            self._reference = v[np.isfinite(v)]
        near = probe_neighbours(self.store, probe, self._reference)
        self.current, self.neighbours = row, near
        df = near.drop_columns([c for c in ("source_file", "map_x", "map_y") if c in near.column_names]).to_pandas()
        df.insert(min(2, len(df.columns)), "snippet", _snippets(self.store, near))
        self.neighbours_table.value = df
        pct = probe.get("density_percentile")
        self.title.object = (
            f"**Probe** `{html.escape(str(probe.get('probe_id')))}` (density percentile "
            f"{'-' if pct is None else f'{pct:.1f}'}): its {near.num_rows} nearest documents by embedding; "
            f"`{COVERAGE}` is each one's density percentile among the documents on the map."
        )
        self._bump()
        return near

    def _bump(self) -> None:
        self.marks.version += 1

    # -- the overlay -------------------------------------------------------------------------------------

    def overlay(self) -> hv.DynamicMap:
        """The probes (teal triangles), the chosen one (ringed in black) and its neighbours (purple squares)."""

        def draw(version=0):
            common = dict(muted_alpha=0, show_legend=False)
            x, y = self.xy()
            ids, pct = self._placed_labels()
            probes = hv.Points(
                {"x": x, "y": y, "probe": ids, "density percentile": pct},
                kdims=["x", "y"],
                vdims=["probe", "density percentile"],
                label="probes",
            ).opts(marker="triangle", size=11, color=PROBE_COLOUR, line_color="black", tools=["hover"], **common)
            cur = self.probes.slice(self.current, 1) if self.current is not None and self.probes is not None else None
            chosen = hv.Points(_xy(cur), kdims=["x", "y"], label="probe").opts(
                marker="triangle", size=18, fill_alpha=0, line_color="black", line_width=2, tools=[], **common
            )
            near = hv.Points(_xy(self.neighbours), kdims=["x", "y"], label="probe neighbours").opts(
                marker="square", size=8, color=NEIGHBOUR_COLOUR, line_color="white", tools=[], **common
            )
            return hv.Overlay([near, probes, chosen])

        return hv.DynamicMap(draw, streams=[hv.streams.Params(self.marks, ["version"])])

    def _placed_labels(self) -> tuple[list[str], np.ndarray]:
        if self.probes is None or "map_x" not in self.probes.column_names:
            return [], np.zeros(0)
        ok = _finite(self.probes)
        ids = [str(i) for i, keep in zip(self.probes.column("probe_id").to_pylist(), ok) if keep]
        pct = self.probes.column("density_percentile").to_numpy(zero_copy_only=False).astype(np.float64)[ok]
        return ids, np.round(pct, 1)

    def sidebar(self) -> pn.viewable.Viewable:
        return pn.Column(self.select, self.status, visible=bool(self.folders), css_classes=["dq-probes-box"])


def _finite(table: pa.Table) -> np.ndarray:
    x = table.column("map_x").to_numpy(zero_copy_only=False).astype(np.float64)
    y = table.column("map_y").to_numpy(zero_copy_only=False).astype(np.float64)
    return np.isfinite(x) & np.isfinite(y)


def _xy(table: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    if table is None or table.num_rows == 0 or "map_x" not in table.column_names:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    ok = _finite(table)
    x = table.column("map_x").to_numpy(zero_copy_only=False).astype(np.float32)
    y = table.column("map_y").to_numpy(zero_copy_only=False).astype(np.float32)
    return x[ok], y[ok]


def _snippets(store: RunStore, table: pa.Table) -> list[str | None]:
    try:
        return store.snippets(table)
    except Exception as exc:  # an input that moved: the table without text
        log.warning("snippets unavailable: %s", exc)
        return [None] * table.num_rows
