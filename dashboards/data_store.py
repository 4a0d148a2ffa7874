"""The dashboard's data store: a run's Parquet, loaded once per process, one column at a time.

:func:`get_store` keeps one :class:`RunStore` per run directory for the whole server process, shared by every
browser session. The store reads a column from ``RUN/docs/`` only when a view first asks for it (the map
coordinates, the colour-by signal, a filtered signal), keeps it as a compact NumPy array (float32 signals, int8
flags, int32 category codes), and evicts the least recently used columns when the cache passes its memory
budget. Text and embeddings are never cached; a document's text is read on demand for the drill-down table, from
``docs/`` when the run kept it, else from the original input file (only files that the run itself read, as
listed by its per-input receipts).

Columns are discovered from the Parquet schema (:func:`discover_columns`): numbers are signals, booleans are
flags (``*_pass``, ``*_keep``...), and a few names are categories (``source``, ``topic_id``,
``topic_coarse_id``, ``*_cluster``, ``*_reason``, ``*_label``); booleans can also colour the map.

Map coordinates: ``map_x`` / ``map_y`` from the ``map`` stage. A run without them still gets a map: the store
projects the ``embedding`` column onto its first two principal components (fitted on up to
:data:`PCA_FIT_ROWS` rows), or, without embeddings, plots the first two numeric signals against each other.
``RunStore.projection`` says which one is shown.

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
import pyarrow.dataset as pads
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

#: Rows used to fit the fallback PCA projection of ``embedding``.
PCA_FIT_ROWS = 50_000
#: Default memory budget of one store's column cache.
DEFAULT_MEMORY_BUDGET = 4 << 30
#: Categories beyond this many (by size) are merged into ``other`` when colouring the map.
MAX_CATEGORIES = 20
#: Longest text snippet shown in the drill-down table.
SNIPPET_CHARS = 300

NONE_LABEL = "(none)"
OTHER_LABEL = "other"

_CATEGORY_NAMES = ("source", "topic_id", "topic_coarse_id")
_CATEGORY_SUFFIXES = ("_cluster", "_reason", "_label")
_NOT_SIGNALS = {"id", "source_file", "source_index", "text", "map_x", "map_y", "embedding"}


class RunPathError(ValueError):
    """A path outside the run directory (or an input the run never read) was asked for."""


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

    ``ranges``: column -> (low, high), inclusive; a null value fails an active range.
    ``flags``: column -> the value required (True or False); nulls fail.
    ``categories``: column -> the category labels kept (as shown in the legend).
    """

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
        self.dataset = pads.dataset(docs, format="parquet")
        self.columns = discover_columns(self.dataset.schema)
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
        self.num_rows = self.prepared.num_rows if self.prepared else self.dataset.count_rows()
        self.projection = "map_x / map_y"
        if not self.columns.has_map:
            if self.prepared:
                self.projection = self.prepared.info.get("projection", "prepared")
            elif self.columns.has_embedding:
                self.projection = "PCA of embedding (no map_x / map_y in this run)"
            elif len(self.columns.numeric) >= 2:
                a, b = self.columns.numeric[:2]
                self.projection = f"{a} against {b} (no map_x / map_y or embedding in this run)"
            else:
                raise ValueError(f"{run_dir}: no map columns, no embedding and fewer than two numeric signals")
        self._allowed_inputs: set[str] | None = None

    # -- paths ----------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The real path of ``parts`` under the run directory; :class:`RunPathError` if it leaves it."""
        for p in parts:
            if not isinstance(p, str) or "\x00" in p or os.path.isabs(p):
                raise RunPathError(f"not a relative path inside the run: {p!r}")
        full = os.path.realpath(os.path.join(self.root, *parts))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise RunPathError(f"{os.path.join(*parts)!r} is outside the run directory")
        return full

    def _read_bytes(self, *parts: str) -> bytes:
        with open(self.path(*parts), "rb") as fh:
            return fh.read()

    def allowed_inputs(self) -> set[str]:
        """The input files this run read (its receipts in ``_shards/``): the only files snippets may open."""
        if self._allowed_inputs is None:
            allowed: set[str] = set()
            shards = self.path("_shards")
            if os.path.isdir(shards):
                for name in sorted(os.listdir(shards)):
                    if name.endswith(".json"):
                        receipt = json.loads(self._read_bytes("_shards", name))
                        if isinstance(receipt.get("path"), str):
                            allowed.add(_norm_input(receipt["path"]))
            for p in (self.manifest.get("inputs") or {}).get("paths") or []:
                if isinstance(p, str):
                    allowed.add(_norm_input(p))
            self._allowed_inputs = allowed
        return self._allowed_inputs

    def check_input(self, source_file: str) -> str:
        """``source_file`` if the run read it, else :class:`RunPathError`."""
        if not isinstance(source_file, str) or "\x00" in source_file:
            raise RunPathError(f"not an input of this run: {source_file!r}")
        norm = _norm_input(source_file)
        if norm not in self.allowed_inputs():
            raise RunPathError(f"not an input of this run: {source_file!r}")
        return norm

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
            mask &= (v >= lo) & (v <= hi)  # NaN compares false
        for name, want in filters.flags.items():
            mask &= self.values(name) == (1 if want else 0)
        for name, keep in filters.categories.items():
            cat = self.category(name)
            keep_codes = [i for i, label in enumerate(cat.labels) if label in set(keep)]
            if NONE_LABEL in keep:
                keep_codes.append(-1)
            mask &= np.isin(cat.codes, keep_codes)
        return mask

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
        inside = _geometry_mask(x, y, bounds, polygon)
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

    def nearest(self, px: float, py: float, radius: float, filters: Filters | None = None) -> tuple[int, pa.Table]:
        """The documents within ``radius`` map units of a clicked point (the tap tool)."""
        return self.select(filters, bounds=(px - radius, py - radius, px + radius, py + radius), limit=50)

    def key_columns(self) -> list[str]:
        """The signals shown in the drill-down table (the most telling ones present)."""
        prefer = [
            "source",
            "topic_id",
            "askllm_score",
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
        """The first ``chars`` characters of the text of each row of ``rows`` (from :meth:`select`)."""
        ids = rows.column("id").to_pylist()
        if self.columns.has_text and not self.prepared:
            found = self.dataset.to_table(columns=["id", "text"], filter=pc.field("id").isin(ids))
            by_id = dict(zip(found.column("id").to_pylist(), found.column("text").to_pylist()))
            return [_clip(by_id.get(i), chars) for i in ids]
        files = rows.column("source_file").to_pylist()
        indices = rows.column("source_index").to_pylist()
        text_field = ((self.manifest.get("config") or {}).get("input") or {}).get("text_field", "text")
        out: list[str | None] = [None] * len(ids)
        wanted: dict[str, dict[int, list[int]]] = {}
        for pos, (f, i) in enumerate(zip(files, indices)):
            path = self.check_input(f)  # RunPathError for anything the run did not read
            wanted.setdefault(path, {}).setdefault(int(i), []).append(pos)
        for path, where in wanted.items():
            for index, text in read_records(path, sorted(where), text_field).items():
                for pos in where[index]:
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
        return self.snippets(table.slice(0, 1), chars)[0]

    # -- run-level tables -----------------------------------------------------------------------------------

    def topics(self) -> pa.Table | None:
        """``RUN/artifacts/topics.parquet`` when the run has topics."""
        p = self.path("artifacts", "topics.parquet")
        return pq.read_table(p) if os.path.isfile(p) else None

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


def _norm_input(path: str) -> str:
    return path if "://" in path else os.path.realpath(path)


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


def _geometry_mask(x: np.ndarray, y: np.ndarray, bounds=None, polygon=None) -> np.ndarray:
    if polygon is not None:
        poly = np.asarray(list(polygon), dtype=np.float64)
        if poly.ndim != 2 or poly.shape[0] < 3:
            return np.zeros(len(x), dtype=bool)
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        box = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        idx = np.flatnonzero(box)
        box[idx] = points_in_polygon(x[idx], y[idx], poly)
        return box
    if bounds is not None:
        x0, y0, x1, y1 = bounds
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return np.isfinite(x) & np.isfinite(y)


def points_in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    inside = np.zeros(len(x), dtype=bool)
    px, py = poly[:, 0], poly[:, 1]
    j = len(poly) - 1
    for i in range(len(poly)):
        crosses = (py[i] > y) != (py[j] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i]
        inside ^= crosses & (x < xcross)
        j = i
    return inside


def pca_projection(dataset: pads.Dataset, fit_rows: int = PCA_FIT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Project ``embedding`` onto its first two principal components (fitted on the first ``fit_rows`` rows).

    The fallback map of a run without ``map_x`` / ``map_y``; streamed batch by batch, so only the two output
    columns are held for every row.
    """
    sample = []
    got = 0
    for batch in dataset.to_batches(columns=["embedding"]):
        sample.append(_embedding_matrix(batch.column(0)))
        got += batch.num_rows
        if got >= fit_rows:
            break
    fit = np.concatenate(sample)[:fit_rows].astype(np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:2].T
    xs, ys = [], []
    for batch in dataset.to_batches(columns=["embedding"]):
        xy = (_embedding_matrix(batch.column(0)) - mean) @ comps
        xs.append(xy[:, 0].astype(np.float32))
        ys.append(xy[:, 1].astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


def _embedding_matrix(col: pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
    if dim is None:
        return np.asarray(col.to_pylist(), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def read_records(path: str, indices: list[int], text_field: str = "text") -> dict[int, str | None]:
    """The text of the records at ``indices`` (1-based lines for JSONL, 0-based rows for Parquet) of one input.

    ``path`` must already be checked (:meth:`RunStore.check_input`). Reads only what it needs: a JSONL file up
    to the last wanted line, a Parquet file only the row groups holding the wanted rows.
    """
    from dq_ray.io.readers import format_of, open_lines

    want = set(indices)
    out: dict[int, str | None] = {}
    fmt = format_of(path)
    if fmt == "parquet":
        import fsspec

        with fsspec.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            start = 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                hits = [i for i in want if start <= i < start + n]
                if hits:
                    col = pf.read_row_group(rg, columns=[text_field]).column(0)
                    for i in hits:
                        out[i] = _as_text(col[i - start].as_py())
                start += n
        return out
    last = max(want) if want else 0
    with open_lines(path) as lines:
        for lineno, line in enumerate(lines, start=1):
            if lineno in want:
                try:
                    out[lineno] = _as_text(json.loads(line).get(text_field))
                except (ValueError, AttributeError):
                    out[lineno] = None
            if lineno >= last:
                break
    return out


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)
