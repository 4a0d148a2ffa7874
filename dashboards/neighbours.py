"""A document's nearest neighbours by embedding, on the server: what the map shows when a document is clicked.

The index holds the run's ``embedding`` column (unit vectors: inner product is cosine similarity) with the
document's position in ``docs/`` as its label, built with the density stage's FAISS helpers (exact
``IndexFlatIP`` for small corpora, IVF-Flat, then IVF-PQ for large ones, the same thresholds):

- ``dq-ray dashboard-prepare`` writes it into ``RUN/dashboard/neighbours/`` and signs that folder like every
  artifact folder (:mod:`dq_ray.artifacts`); the app loads it only when the signature holds;
- without it, a run of at most :data:`MEMORY_INDEX_MAX_ROWS` documents gets an exact index built in memory on
  the first click (one pass over ``embedding``).

The density stage's own index (``RUN/artifacts/density/``) is not reused: its labels are the order in which Ray
Data happened to read the documents, tied to them by a private key hash, while the map needs ``docs/``
positions. The query vector is the clicked document's own embedding, read from ``docs/`` by its location.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from dashboards.data_store import RunStore
from dashboards.pyramid import PREPARED_DIR, run_started_at
from dq_ray.vectors import embedding_matrix

log = logging.getLogger(__name__)

#: The index's folder under ``RUN/dashboard/``.
NEIGHBOURS_DIR = "neighbours"
#: Without a prepared index, runs of at most this many documents get an exact index in memory.
MEMORY_INDEX_MAX_ROWS = 1_000_000
#: Neighbours shown for a clicked document.
DEFAULT_K = 10
_BATCH = 65_536


class NeighbourIndex:
    """The k nearest documents of one run (thread-safe; loaded or built on first use)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.folder = store.path(PREPARED_DIR, NEIGHBOURS_DIR)
        self._lock = threading.Lock()
        self._index = None
        self.source = ""

    def available(self) -> str | None:
        """None when neighbours can be shown, else why not."""
        if not self.store.columns.has_embedding:
            return "no neighbours: this run has no embeddings (add the embed stage)"
        if self._prepared_info() is None and self.store.dataset.count_rows() > MEMORY_INDEX_MAX_ROWS:
            return f"neighbours of runs over {MEMORY_INDEX_MAX_ROWS:,} documents need `dq-ray dashboard-prepare RUN`"
        return None

    def _prepared_info(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.folder, "neighbours.json")) as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            return None
        return info if info.get("run_started_at") == run_started_at(self.store.root) else None

    def index(self):
        """The FAISS index (loaded from the prepared folder, or built in memory)."""
        with self._lock:
            if self._index is None:
                self._index = self._load()
            return self._index

    def _load(self):
        import faiss

        from dq_ray.artifacts import UntrustedArtifactError, read_trusted, verify_artifacts
        from dq_ray.stages.density import set_nprobe

        info = self._prepared_info()
        if info is not None:
            try:
                digests = verify_artifacts(self.folder)
                raw = read_trusted(self.folder, "index.faiss", digests)
                index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
                set_nprobe(index, int(info.get("nprobe") or 16))
                self.source = f"prepared {info.get('index')} index"
                return index
            except (UntrustedArtifactError, OSError) as exc:
                log.warning("neighbour index of %s not loaded: %s", self.store.root, exc)
        if self.store.dataset.count_rows() > MEMORY_INDEX_MAX_ROWS:
            raise RuntimeError(self.available() or "no neighbour index")
        started = time.perf_counter()
        index = None
        for batch in self.store.dataset.to_batches(columns=["embedding"], batch_size=_BATCH):
            x = embedding_matrix(batch.column(0))
            if index is None:
                index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
        self.source = "exact index in memory"
        log.info("neighbours: %d embeddings indexed in %.2f s", index.ntotal, time.perf_counter() - started)
        return index

    def embedding_of(self, source_file: str, source_index: int) -> np.ndarray | None:
        """The unit embedding of the document at ``(source_file, source_index)``; None if no such document."""
        expr = (pc.field("source_file") == source_file) & (pc.field("source_index") == int(source_index))
        t = self.store.dataset.to_table(columns=["embedding"], filter=expr)
        return embedding_matrix(t.column(0))[:1] if t.num_rows else None

    def neighbours(self, source_file: str, source_index: int, k: int = DEFAULT_K) -> pa.Table | None:
        """The ``k`` documents most similar to the one at ``(source_file, source_index)``, most similar first:
        :meth:`RunStore.take_rows` columns plus ``similarity`` (cosine). None when the document has no embedding."""
        x = self.embedding_of(source_file, source_index)
        if x is None:
            return None
        index = self.index()
        sims, labels = index.search(x, min(k + 1, index.ntotal))
        keep = labels[0] >= 0
        rows, sims = labels[0][keep], sims[0][keep]
        table = self.store.take_rows(rows)
        own = np.array(
            [
                f == source_file and i == source_index
                for f, i in zip(table.column("source_file").to_pylist(), table.column("source_index").to_pylist())
            ],
            bool,
        )
        table = table.filter(pa.array(~own)).slice(0, k)
        return table.append_column("similarity", pa.array(sims[~own][:k].astype(np.float32)))


_INDEXES: dict[str, NeighbourIndex] = {}
_INDEXES_LOCK = threading.Lock()


def get_neighbour_index(store: RunStore) -> NeighbourIndex:
    """The process-wide :class:`NeighbourIndex` of ``store``'s run (shared by every session)."""
    with _INDEXES_LOCK:
        found = _INDEXES.get(store.root)
        if found is None or found.store is not store:
            found = _INDEXES[store.root] = NeighbourIndex(store)
        return found


# -- building the index (dq-ray dashboard-prepare) -----------------------------------------------------------


def build_index(run_dir: str, out_dir: str) -> dict[str, Any] | None:
    """Write the signed neighbour index of ``run_dir`` into ``out_dir`` (None for a run without embeddings).

    One streamed pass over ``docs/``'s ``embedding`` in row order; an IVF index is first trained on the first
    ``train_size`` vectors (the density stage's settings).
    """
    import faiss

    from dq_ray.artifacts import sign_artifacts
    from dq_ray.stages.density import DensityParams, auto_index, default_nlist, new_index

    started = time.perf_counter()
    root = os.path.realpath(run_dir)
    dataset = pads.dataset(os.path.join(root, "docs"), format="parquet")
    if "embedding" not in dataset.schema.names:
        log.info("no neighbour index for %s: no embedding column", root)
        return None
    n = dataset.count_rows()
    p = DensityParams()
    kind = auto_index(n, p.flat_max_rows, p.ivf_pq_min_rows)
    index = None
    if kind != "flat":
        train, got = [], 0
        for batch in dataset.to_batches(columns=["embedding"], batch_size=_BATCH):
            train.append(embedding_matrix(batch.column(0)))
            got += batch.num_rows
            if got >= p.train_size:
                break
        x = np.concatenate(train)[: p.train_size]
        if kind == "ivf_pq" and x.shape[1] % p.pq_m:
            kind = "ivf_flat"
        index = new_index(kind, x.shape[1], default_nlist(n), p.pq_m)
        index.train(x)
    for batch in dataset.to_batches(columns=["embedding"], batch_size=_BATCH):
        x = embedding_matrix(batch.column(0))
        if index is None:
            index = new_index(kind, x.shape[1])
        index.add(x)
    os.makedirs(out_dir, exist_ok=True)
    faiss.write_index(index, os.path.join(out_dir, "index.faiss"))
    info = {
        "documents": int(index.ntotal),
        "index": kind,
        "nprobe": p.nprobe if kind != "flat" else None,
        "run_started_at": run_started_at(root),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    with open(os.path.join(out_dir, "neighbours.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    sign_artifacts(out_dir)
    log.info("neighbour index of %s: %d vectors (%s)", root, index.ntotal, kind)
    return info
