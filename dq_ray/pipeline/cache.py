"""The content-hash cache of an incremental run (``dq-ray run --baseline``), on the worker side.

Before the run, the driver writes one cache file per cacheable stage (:func:`write_cache`): the baseline's
per-document outputs of that stage keyed by the document's normalised-text hash (the baseline's
``exact_dup_group``, the hash :func:`dq_ray.stages.exact_dedup.text_hash` computes). Every new document gets the
same hash as a column (:data:`TEXT_HASH`, added after the read, dropped before ``docs/`` is committed), and a
stage's map hands the stage only the documents whose hash is not in its cache (:func:`split_cached`): the others
get the baseline's values, unchanged. The cache is an Arrow IPC file, memory-mapped on a local disk.
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from dq_ray.stage import append_columns
from dq_ray.stages.exact_dedup import text_hash

log = logging.getLogger(__name__)

#: The column holding every new document's normalised-text hash while an incremental run runs.
TEXT_HASH = "_dq_text_hash"

#: per worker process: cache path -> (table of outputs, {hash: row})
_LOADED: dict[str, tuple[pa.Table, dict[str, int]]] = {}


def add_text_hash(batch: pa.Table) -> pa.Table:
    """Append :data:`TEXT_HASH` (the exact-duplicate hash of the text) to a batch of documents."""
    hashes = [text_hash(t or "") for t in batch.column("text").to_pylist()]
    return append_columns(batch, {TEXT_HASH: pa.array(hashes, pa.string())})


def drop_text_hash(batch: pa.Table) -> pa.Table:
    """The batch without :data:`TEXT_HASH` (what ``docs/`` stores)."""
    return batch.drop_columns([TEXT_HASH]) if TEXT_HASH in batch.column_names else batch


def write_cache(path: str, table: pa.Table) -> None:
    """Write a cache (``TEXT_HASH`` plus a stage's outputs, one row per hash) as an Arrow IPC file at ``path``."""
    fs, root = fsspec.core.url_to_fs(path)
    fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(root, "wb") as fh, pa.ipc.new_file(fh, table.schema) as writer:
        writer.write_table(table)


def load_cache(path: str) -> tuple[pa.Table, dict[str, int]]:
    """The cache at ``path`` and its hash -> row map, loaded once per worker process."""
    if path not in _LOADED:
        fs, root = fsspec.core.url_to_fs(path)
        if isinstance(fs, LocalFileSystem):
            table = pa.ipc.open_file(pa.memory_map(root)).read_all()
        else:
            with fs.open(root, "rb") as fh:
                table = pa.ipc.open_file(pa.BufferReader(fh.read())).read_all()
        rows = {h: i for i, h in enumerate(table.column(TEXT_HASH).to_pylist())}
        _LOADED[path] = (table, rows)
    return _LOADED[path]


def split_cached(batch: pa.Table, path: str) -> tuple[pa.Table, pa.Table | None]:
    """Split ``batch`` into the documents still to process and those the cache answers (their rows with the
    cached columns appended; None when there are none)."""
    if TEXT_HASH not in batch.column_names or not batch.num_rows:
        return batch, None
    table, rows = load_cache(path)
    where = [rows.get(h, -1) for h in batch.column(TEXT_HASH).to_pylist()]
    idx = np.asarray(where, dtype=np.int64)
    hit = idx >= 0
    if not hit.any():
        return batch, None
    cached = table.take(pa.array(idx[hit]))
    hits = batch.filter(pa.array(hit))
    hits = append_columns(hits, {c: cached.column(c) for c in table.column_names if c != TEXT_HASH})
    return batch.filter(pc.invert(pa.array(hit))), hits


def cached_rows(stats: dict[str, Any], stage: str) -> int:
    """Rows of ``stage`` the cache answered, from the statistics actor's summary (``<stage>.cached``)."""
    return int((stats.get(f"{stage}.cached") or {}).get("rows", 0))
