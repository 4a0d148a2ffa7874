"""The dashboard's data store: a run's Parquet, loaded once per process, one column at a time.

:func:`get_store` keeps one :class:`RunStore` per run directory for the whole server process, shared by every
browser session. The store reads a column from ``RUN/docs/`` only when a view first asks for it (the map
coordinates, the colour-by signal, a filtered signal), keeps it as a compact NumPy array (float32 signals, int8
flags, int32 category codes), and evicts the least recently used columns when the cache passes its memory
budget. Text and embeddings are never cached; a document's text is read on demand for the drill-down table, from
``docs/`` when the run kept it, else from the original input file.

What the map serves from input files: a snippet is read from an input only when that file is named by one of the
run's receipts (``RUN/_shards/*.json``), is a regular file (no FIFO, device or directory), still has the
receipt's size and its bytes still hash to the receipt's SHA-256 (see :mod:`dq_ray.io.digest`). It is read in the
receipt's format only (the text field of one JSON line, or the text column of a Parquet row), never as raw bytes.
A receipt without a digest (a run from an older dq-ray), a changed file or any other mismatch means no snippet
for that file (one warning in the server log), never an error page. Digests are computed once per file version
per process.

Columns are discovered from the Parquet schema (:func:`discover_columns`): numbers are signals, booleans are
flags (``*_pass``, ``*_keep``...), and a few names are categories (``source``, ``topic_id``,
``topic_coarse_id``, ``*_cluster``, ``*_reason``, ``*_label``); booleans can also colour the map.

Map coordinates: ``map_x`` / ``map_y`` from the ``map`` stage. A run without them still gets a map: the store
projects the ``embedding`` column onto its first two principal components (fitted on up to
:data:`PCA_FIT_ROWS` rows), or, without embeddings, plots the first two numeric signals against each other.
``RunStore.projection`` says which one is shown.

An update (a run made with ``--baseline``) is shown with its baselines' documents as one corpus, a categorical
``run`` column naming the run of each (:mod:`dashboards.runs_view`; in memory only, not on a prepared map).

For corpora beyond memory, ``dq-ray dashboard-prepare RUN`` writes ``RUN/dashboard/`` (see
:mod:`dashboards.pyramid`); the store then renders zoomed-out views from the pyramid and zoomed-in views from
the tiles in view, and computes filters, histograms and counts on the prepared uniform sample.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dashboards.geometry import geometry_mask, pca_projection, points_in_polygon  # noqa: F401 (re-exported)
from dashboards.inputs import InputReceipt, RunInputs, RunPathError, read_records  # noqa: F401 (re-exported)
from dashboards.runs_view import open_view, read_receipts, read_run_file, run_path

log = logging.getLogger(__name__)

#: Rows used to fit the fallback PCA projection of ``embedding``.
#: Default memory budget of one store's column cache.
DEFAULT_MEMORY_BUDGET = 4 << 30
#: Categories beyond this many (by size) are merged into ``other`` when colouring the map.
MAX_CATEGORIES = 20
#: Longest text snippet shown in the drill-down table.
SNIPPET_CHARS = 300

NONE_LABEL = "(none)"
OTHER_LABEL = "other"

_CATEGORY_NAMES = ("source", "topic_id", "topic_coarse_id", "lang", "pii_kinds", "run")
_CATEGORY_SUFFIXES = ("_cluster", "_reason", "_label")
_NOT_SIGNALS = {"id", "source_file", "source_index", "text", "map_x", "map_y", "embedding"}


# -- schema discovery ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """What the map can show, discovered from the ``docs/`` Parquet schema."""

    numeric: tuple[str, ...]
    flags: tuple[str, ...]
    categorical: tuple[str, ...]
    has_map: bool
    has_embedding: bool
    has_text: bool

    @property
    def colour_choices(self) -> tuple[str, ...]:
        """Every column the map can be coloured by (numbers as means, the rest as categories)."""
        return self.numeric + self.categorical + self.flags

    def kind(self, name: str) -> str:
        if name in self.numeric:
            return "numeric"
        if name in self.flags:
            return "flag"
        if name in self.categorical:
            return "categorical"
        raise KeyError(f"unknown column {name!r}; choose from {', '.join(self.colour_choices)}")


def discover_columns(schema: pa.Schema) -> Columns:
    """Sort a ``docs/`` schema into numeric signals, boolean flags and categories."""
    numeric, flags, cats = [], [], []
    for f in schema:
        name, t = f.name, f.type
        if name in _NOT_SIGNALS or name.endswith("_group"):
            continue  # ids, locations, hashes, vectors
        is_cat_name = name in _CATEGORY_NAMES or name.endswith(_CATEGORY_SUFFIXES)
        if pa.types.is_boolean(t):
            flags.append(name)
        elif is_cat_name and (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_dictionary(t)):
            cats.append(name)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            numeric.append(name)
    names = set(schema.names)
    return Columns(
        numeric=tuple(numeric),
        flags=tuple(flags),
        categorical=tuple(cats),
        has_map={"map_x", "map_y"} <= names,
        has_embedding="embedding" in names,
        has_text="text" in names,
    )


# -- filters -------------------------------------------------------------------------------------------------


@dataclass
class Filters:
    """The linked filters: a document is shown when it passes every one.

    ``ranges``: column -> (low, high), inclusive; a null (or NaN) value fails an active range unless
    ``keep_null``, when documents without a value pass every range filter (the map's toggle "keep documents
    without a value", on by default: a range over a sparse score such as ``askllm_score``, filled only for the
    LLM-scored sample, must not silently drop every document that was not scored).
    ``flags``: column -> the value required (True or False); nulls fail.
    ``categories``: column -> the category labels kept (as shown in the legend).
    """

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keep_null: bool = False

    def active(self) -> bool:
        return bool(self.ranges or self.flags or self.categories)

    def columns(self) -> list[str]:
        return list(dict.fromkeys([*self.ranges, *self.flags, *self.categories]))


# -- the store -----------------------------------------------------------------------------------------------


@dataclass
class Category:
    codes: np.ndarray  # int32, -1 for null
    labels: list[str]


class RunStore:
    """One run directory, read lazily and cached column by column (thread-safe).

    Use :func:`get_store` to share one per process.
    """

    def __init__(self, run_dir: str | os.PathLike, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.root = os.path.realpath(os.fspath(run_dir))
        if not os.path.isfile(os.path.join(self.root, "manifest.json")):
            raise FileNotFoundError(f"{run_dir} is not a dq-ray run directory (no manifest.json)")
        self.memory_budget = int(memory_budget)
        self.manifest: dict[str, Any] = json.loads(self._read_bytes("manifest.json"))
        docs = self.path("docs")
        if not os.path.isdir(docs):
            raise FileNotFoundError(f"{run_dir} has no docs/ (status: {self.manifest.get('status')})")
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_bytes = 0
        self.prepared = None
        if os.path.isfile(self.path("dashboard", "prepared.json")):
            from dashboards.pyramid import PreparedMap, is_current

            if is_current(self.root):
                self.prepared = PreparedMap(self.path("dashboard"))
            else:
                log.warning(
                    "%s was prepared from an earlier run; ignored (run dq-ray dashboard-prepare again)", run_dir
                )
        #: the run's docs/, with its baselines' (and a ``run`` column) for an update shown in memory
        self.view = open_view(self.root, self.manifest, own_only=self.prepared is not None)
        self.dataset = self.view.dataset
        self.columns = discover_columns(self.dataset.schema)
        self.num_rows = self.prepared.num_rows if self.prepared else self.dataset.count_rows()
        self.projection = "map_x / map_y"
        #: the map's axis labels: the columns (or components) plotted
        self.axes: tuple[str, str] = ("map_x", "map_y")
        if not self.columns.has_map:
            if self.prepared:
                self.projection = self.prepared.info.get("projection", "prepared")
                self.axes = _prepared_axes(self.projection)
            elif self.columns.has_embedding:
                self.projection = "PCA of embedding (no map_x / map_y in this run)"
                self.axes = ("embedding PC 1", "embedding PC 2")
            elif len(self.columns.numeric) >= 2:
                a, b = self.columns.numeric[:2]
                self.projection = f"{a} against {b} (no map_x / map_y or embedding in this run)"
                self.axes = (a, b)
            else:
                raise ValueError(f"{run_dir}: no map columns, no embedding and fewer than two numeric signals")
        self._inputs: RunInputs | None = None

    # -- paths ----------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The real path of ``parts`` under the run directory; :class:`RunPathError` if it leaves it."""
        return run_path(self.root, *parts)

    def _read_bytes(self, *parts: str) -> bytes:
        """The bytes of a regular file inside the run (:class:`RunPathError` for a FIFO, device or directory)."""
        return read_run_file(self.root, *parts)

    def inputs(self) -> RunInputs:
        """The input files the run (and, for an update, its baselines) read, from the receipts in ``_shards/``
        (read once; see :class:`RunInputs`)."""
        if self._inputs is None:
            self._inputs = RunInputs([r for root in self.view.roots for r in read_receipts(root)])
        return self._inputs

    def allowed_inputs(self) -> set[str]:
        """The input files this run read (named by its receipts): the only files snippets may open.

        Being listed is necessary, not sufficient: each file is also checked against its receipt
        (:meth:`verified_input`).
        """
        return set(self.inputs().receipts)

    def check_input(self, source_file: str) -> str:
        """``source_file`` (normalised) if a receipt of the run names it, else :class:`RunPathError`."""
        return self.inputs().check(source_file)

    def verified_input(self, path: str) -> str | None:
        """The format to read ``path`` (a :meth:`check_input` result) in, or None when it must not be opened."""
        verified = self.inputs().verify(path)
        return verified[0] if verified else None

    # -- the column cache -----------------------------------------------------------------------------------

    def _cached(self, key: str, load) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = load()
        size = _nbytes(value)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = value
                self._cache_bytes += size
                self._evict()
            return self._cache[key]

    def _evict(self) -> None:
        while self._cache_bytes > self.memory_budget and len(self._cache) > 1:
            key, value = next(iter(self._cache.items()))
            if key == "__xy__" and len(self._cache) > 1:
                self._cache.move_to_end(key)  # the coordinates are needed by every view
                key, value = next(iter(self._cache.items()))
            del self._cache[key]
            self._cache_bytes -= _nbytes(value)
            log.info("dashboard cache: evicted %s (budget %d bytes)", key, self.memory_budget)

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    def cached_columns(self) -> list[str]:
        return list(self._cache)

    def _source_table(self, columns: list[str]) -> pa.Table:
        """Columns of every row in memory: ``docs/``, or the prepared sample for a prepared run."""
        if self.prepared:
            return self.prepared.sample(columns)
        return self.dataset.to_table(columns=columns)

    @property
    def rows_in_memory(self) -> int:
        """Rows behind filters, histograms and counts (all rows, or the prepared sample)."""
        return self.prepared.sample_rows if self.prepared else self.num_rows

    @property
    def scale(self) -> float:
        """Multiply in-memory counts by this to estimate corpus counts (1 unless sampled)."""
        return self.num_rows / max(self.rows_in_memory, 1)

    def values(self, name: str) -> np.ndarray:
        """A numeric signal as float32 (NaN for null), or a flag as int8 (1 true, 0 false, -1 null)."""
        kind = self.columns.kind(name)
        if kind == "categorical":
            raise TypeError(f"{name} is categorical; use category()")

        def load():
            col = self._source_table([name]).column(name)
            if kind == "flag":
                arr = pc.fill_null(pc.cast(col, pa.int8()), -1)
                return np.asarray(arr.to_numpy(), dtype=np.int8)
            arr = pc.fill_null(pc.cast(col, pa.float32()), float("nan"))
            return np.asarray(arr.to_numpy(), dtype=np.float32)

        return self._cached(name, load)

    def category(self, name: str) -> Category:
        """A categorical column (or a flag) as integer codes and labels; -1 is null."""
        kind = self.columns.kind(name)
        if kind == "flag":
            v = self.values(name)
            return Category(np.where(v < 0, -1, 1 - v).astype(np.int32), ["true", "false"])
        if kind != "categorical":
            raise TypeError(f"{name} is numeric; use values()")

        def load():
            col = self._source_table([name]).column(name)
            if pa.types.is_dictionary(col.type):
                col = pc.cast(col, col.type.value_type)
            enc = pc.dictionary_encode(col).combine_chunks()
            codes = pc.fill_null(enc.indices, -1).to_numpy().astype(np.int32)
            labels = [str(v) for v in enc.dictionary.to_pylist()]
            return Category(codes, labels)

        return self._cached(name, load)

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """The map coordinates of every in-memory row (float32)."""
        return self._cached("__xy__", self._load_xy)

    def _load_xy(self) -> tuple[np.ndarray, np.ndarray]:
        if self.columns.has_map or self.prepared:
            t = self._source_table(["map_x", "map_y"])
            x = pc.fill_null(pc.cast(t.column("map_x"), pa.float32()), float("nan")).to_numpy()
            y = pc.fill_null(pc.cast(t.column("map_y"), pa.float32()), float("nan")).to_numpy()
            return np.asarray(x, np.float32), np.asarray(y, np.float32)
        if self.columns.has_embedding:
            return pca_projection(self.dataset)
        a, b = self.columns.numeric[:2]
        return self.values(a).copy(), self.values(b).copy()

    def bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The full extent of the map, padded by 2%."""
        if self.prepared:
            return self.prepared.x_range, self.prepared.y_range
        x, y = self.xy()
        return _padded(x), _padded(y)

    # -- filters and selections -----------------------------------------------------------------------------

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """The rows passing ``filters`` (None when no filter is active: every row)."""
        if filters is None or not filters.active():
            return None
        x, _ = self.xy()
        mask = np.ones(len(x), dtype=bool)
        for name, (lo, hi) in filters.ranges.items():
            v = self.values(name)
            inside = (v >= lo) & (v <= hi)  # NaN compares false
            mask &= (inside | np.isnan(v)) if filters.keep_null else inside
        for name, want in filters.flags.items():
            mask &= self.values(name) == (1 if want else 0)
        for name, keep in filters.categories.items():
            cat = self.category(name)
            keep_codes = [i for i, label in enumerate(cat.labels) if label in set(keep)]
            if NONE_LABEL in keep:
                keep_codes.append(-1)
            mask &= np.isin(cat.codes, keep_codes)
        return mask

    def filled(self, name: str) -> float:
        """The share of in-memory rows with a value in ``name`` (not null, not NaN); 0.0 for an empty run."""
        kind = self.columns.kind(name)
        if kind == "categorical":
            codes = self.category(name).codes
            return float(np.count_nonzero(codes >= 0)) / max(codes.size, 1)
        v = self.values(name)
        has = v >= 0 if kind == "flag" else ~np.isnan(v)
        return float(np.count_nonzero(has)) / max(v.size, 1)

    def missing(self, name: str) -> int:
        """How many documents have no value in the numeric signal ``name`` (estimated on a prepared run)."""
        v = self.values(name)
        return int(round(np.count_nonzero(np.isnan(v)) * self.scale))

    def count(self, filters: Filters | None) -> int:
        """How many documents pass ``filters`` (estimated from the sample on a prepared run)."""
        m = self.mask(filters)
        n = self.rows_in_memory if m is None else int(m.sum())
        return int(round(n * self.scale))

    def select(
        self,
        filters: Filters | None = None,
        bounds: tuple[float, float, float, float] | None = None,
        polygon: Iterable[tuple[float, float]] | None = None,
        limit: int = 200,
    ) -> tuple[int, pa.Table]:
        """Documents passing ``filters`` inside a box ``(x0, y0, x1, y1)`` or a lasso ``polygon``.

        Returns the number that match and up to ``limit`` of them as a table of ``id``, ``source_file``,
        ``source_index`` and the key signals (:meth:`key_columns`) plus ``map_x`` / ``map_y``.
        """
        if self.prepared:
            return self.prepared.select(self, filters, bounds, polygon, limit)
        x, y = self.xy()
        inside = geometry_mask(x, y, bounds, polygon)
        m = self.mask(filters)
        if m is not None:
            inside &= m
        idx = np.flatnonzero(inside)
        total = int(idx.size)
        idx = idx[:limit]
        cols = ["id", "source_file", "source_index", *self.key_columns()]
        table = self.dataset.take(
            pa.array(idx, pa.int64()), columns=[c for c in cols if c in self.dataset.schema.names]
        )
        table = table.append_column("map_x", pa.array(x[idx])).append_column("map_y", pa.array(y[idx]))
        return total, table

    def keys_of(self, filters: Filters | None = None, bounds=None, polygon=None) -> pa.Table:
        """``source_file`` and ``source_index`` of every document passing ``filters`` (inside a box or a lasso when
        one is given): what the map's Export writes. Exact only in memory: a prepared run's filters run on its
        sample, so it raises ``ValueError`` there (``dq-ray export --where`` exports any subset of any run)."""
        if self.prepared:
            raise ValueError("this run is prepared: the map filters are estimated from a sample; use dq-ray export")
        x, y = self.xy()
        keep = geometry_mask(x, y, bounds, polygon) if bounds or polygon is not None else np.ones(len(x), bool)
        m = self.mask(filters)
        if m is not None:
            keep &= m
        return self.dataset.take(pa.array(np.flatnonzero(keep), pa.int64()), columns=["source_file", "source_index"])

    def nearest(self, px: float, py: float, radius: float, filters: Filters | None = None) -> tuple[int, pa.Table]:
        """The documents within ``radius`` map units of a clicked point (the tap tool)."""
        return self.select(filters, bounds=(px - radius, py - radius, px + radius, py + radius), limit=50)

    def take_rows(self, rows: Iterable[int]) -> pa.Table:
        """The documents at ``rows`` (positions in ``docs/``, the numbering of the search and neighbour indexes),
        in that order: ``row``, ``id``, ``source_file``, ``source_index``, the key signals and ``map_x`` /
        ``map_y`` (null where a prepared run's tiles do not hold the document)."""
        rows = np.asarray(list(rows), np.int64)
        names = self.dataset.schema.names
        cols = [c for c in ["id", "source_file", "source_index", *self.key_columns()] if c in names]
        docs_xy = self.prepared is not None and self.columns.has_map
        table = self.dataset.take(pa.array(rows), columns=cols + (["map_x", "map_y"] if docs_xy else []))
        if self.prepared is None:
            x, y = self.xy()
            table = table.append_column("map_x", pa.array(x[rows])).append_column("map_y", pa.array(y[rows]))
        elif not docs_xy:  # projected at prepare time: the coordinates are in the tiles
            table = self._xy_from_tiles(table)
        return table.add_column(0, "row", pa.array(rows))

    def _xy_from_tiles(self, table: pa.Table) -> pa.Table:
        found = self.prepared.points_dataset().to_table(
            columns=["source_file", "source_index", "map_x", "map_y"], filter=pc.field("id").isin(table.column("id"))
        )
        files, index = found.column("source_file").to_pylist(), found.column("source_index").to_pylist()
        where = dict(zip(zip(files, index), zip(found.column("map_x").to_pylist(), found.column("map_y").to_pylist())))
        keys = zip(table.column("source_file").to_pylist(), table.column("source_index").to_pylist())
        xy = [where.get(k, (None, None)) for k in keys]
        table = table.append_column("map_x", pa.array([p[0] for p in xy], pa.float32()))
        return table.append_column("map_y", pa.array([p[1] for p in xy], pa.float32()))

    def key_columns(self) -> list[str]:
        """The signals shown in the drill-down table (the most telling ones present)."""
        prefer = [
            "source",
            "topic_id",
            "askllm_score",
            "askllm_pred",
            "density_score",
            "density_weight",
            "heur_n_words",
            "exact_dup_keep",
            "minhash_keep",
            "semdedup_keep",
            "heur_gopher_quality_pass",
            "heur_fineweb_pass",
        ]
        present = set(self.columns.numeric + self.columns.flags + self.columns.categorical)
        return [c for c in prefer if c in present]

    # -- text, on demand ------------------------------------------------------------------------------------

    def snippets(self, rows: pa.Table, chars: int = SNIPPET_CHARS) -> list[str | None]:
        """The first ``chars`` characters of the text of each row of ``rows`` (from :meth:`select`).

        From ``docs/`` when the run kept the text; else from the input files, each checked against its receipt
        (:meth:`verified_input`): None for the rows of a file that fails the check. :class:`RunPathError` when a
        row names a file that no receipt of the run names.
        """
        ids = rows.column("id").to_pylist()
        if self.columns.has_text and not self.prepared:
            found = self.dataset.to_table(columns=["id", "text"], filter=pc.field("id").isin(ids))
            by_id = dict(zip(found.column("id").to_pylist(), found.column("text").to_pylist()))
            return [_clip(by_id.get(i), chars) for i in ids]
        files = rows.column("source_file").to_pylist()
        indices = rows.column("source_index").to_pylist()
        text_field = ((self.manifest.get("config") or {}).get("input") or {}).get("text_field", "text")
        if not isinstance(text_field, str) or not text_field:
            text_field = "text"
        out: list[str | None] = [None] * len(ids)
        wanted: dict[str, dict[int, list[int]]] = {}
        for pos, (f, i) in enumerate(zip(files, indices)):
            if f is None or not isinstance(i, int) or isinstance(i, bool):
                continue  # no location, no text
            path = self.check_input(f)  # RunPathError for anything no receipt names
            wanted.setdefault(path, {}).setdefault(i, []).append(pos)
        for path, where in wanted.items():
            for index, text in self.inputs().read(path, sorted(where), text_field).items():
                for pos in where.get(index, ()):
                    out[pos] = _clip(text, chars)
        return out

    def document_text(self, doc_id: str, chars: int = 4000) -> str | None:
        """The text of one document by id (None if no such id). The id is only ever compared, never a path."""
        if not isinstance(doc_id, str):
            return None
        cols = ["id", "source_file", "source_index"]
        if self.prepared:
            table = self.prepared.points_dataset().to_table(columns=cols, filter=pc.field("id") == doc_id)
        else:
            table = self.dataset.to_table(columns=cols, filter=pc.field("id") == doc_id)
        if table.num_rows == 0:
            return None
        try:
            return self.snippets(table.slice(0, 1), chars)[0]
        except RunPathError as exc:  # a docs row naming a file no receipt names: a forged or damaged run
            log.warning("document %r: %s", doc_id, exc)
            return None

    # -- run-level tables -----------------------------------------------------------------------------------

    def topics(self) -> pa.Table | None:
        """``RUN/artifacts/topics.parquet`` when the run has topics."""
        p = self.path("artifacts", "topics.parquet")
        return pq.read_table(p) if os.path.isfile(p) else None

    def topic_names(self, column: str) -> dict[str, str]:
        """Display names of the values of ``topic_id`` (fine topics) or ``topic_coarse_id`` (coarse ones):
        ``{"3": "3: harbour · tides"}`` from the topic table's ``topic_label``; empty for other columns or runs
        without labelled topics."""
        from dq_ray.stages.topics import topic_labels

        level = {"topic_id": "fine", "topic_coarse_id": "coarse"}.get(column)
        table = self.topics() if level else None
        if table is None:
            return {}
        return {t: f"{t}: {label}" for t, label in topic_labels(table, level).items()}

    def has_pairs(self) -> bool:
        """Whether the run holds preference-pair signals (``pair_*`` columns)."""
        return any(n.startswith("pair_") for n in self.dataset.schema.names)


@functools.lru_cache(maxsize=8)
def _store(root: str, memory_budget: int) -> RunStore:
    return RunStore(root, memory_budget)


def get_store(run_dir: str | os.PathLike, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> RunStore:
    """The process-wide store of ``run_dir`` (created on first use, then shared by every session)."""
    return _store(os.path.realpath(os.fspath(run_dir)), int(memory_budget))


# -- helpers ---------------------------------------------------------------------------------------------


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Category):
        return value.codes.nbytes + sum(len(s) for s in value.labels)
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.nbytes
    return 0


def _prepared_axes(projection: str) -> tuple[str, str]:
    """The axis labels of a prepared map from its ``projection`` text (as :class:`RunStore` words it)."""
    if projection.startswith("PCA of embedding"):
        return ("embedding PC 1", "embedding PC 2")
    if " against " in projection:
        a, rest = projection.split(" against ", 1)
        return (a, rest.split(" (", 1)[0])
    return ("map_x", "map_y")


def _padded(v: np.ndarray) -> tuple[float, float]:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    pad = (hi - lo) * 0.02 or 0.5
    return (lo - pad, hi + pad)


def _clip(text: str | None, chars: int) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"
