"""Semantic duplicates, SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through
semantic deduplication"): k-means over the embeddings, then near-identical pairs inside each cluster.

**Fit.** Spherical k-means (FAISS) on a deterministic sample of the ``embedding`` column; the centroids
(L2-normalised, float32) go to ``RUN/artifacts/semdedup/centroids.npy``. ``n_clusters`` null picks about
``sqrt(rows)`` clusters (at most 50,000), so a cluster holds about ``sqrt(rows)`` documents on average.

**Apply.** ``process`` assigns every document its nearest centroid (highest cosine similarity),
``semdedup_cluster``. The pipeline then shuffles rows by cluster (``group_key``), and ``process_groups``
compares the members of each cluster pairwise (cosine similarity of the normalised embeddings), tile by tile so
memory stays bounded however large a cluster is (``tile_rows`` squared similarities at a time). Pairs at or
above ``threshold`` are joined into duplicate groups, the connected components of those pairs (A~B and B~C make
one group), and ``semdedup_max_sim`` records each document's highest similarity to any other member of its
cluster (null in a cluster of one), so a stricter threshold can be applied later without recomputing anything.

**Keep rule** (``keep``): exactly one member per group has ``semdedup_keep = true``. ``first`` (the default)
keeps the first in input order, the smallest ``(source_file, source_index)``, like ``exact_dedup`` and
``minhash``: the stages then agree on which copy stays, and combining their keep flags never drops every copy.
``hard`` keeps the member farthest from its cluster centroid (the paper's and NeMo Curator's default: it
favours unusual examples), ``easy`` the closest; ties go to input order. ``semdedup_group`` names the group by
the document key (:func:`dq_ray.stages._keys.doc_key_hex`) of the member kept; a document without semantic
duplicates is its own group.

**Across runs.** In an update (``dq-ray run --baseline``) the centroids are the baseline's, so old and new
documents share clusters; after the run, :func:`nearest_in_clusters` compares each new document with the
baseline's documents of its cluster (:func:`dq_ray.pipeline.baseline.mark_cross_run_semantic_duplicates`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dq_ray import vectors
from dq_ray.artifacts import load_npy_trusted, trusted_digests
from dq_ray.stage import KEY_COLUMNS, FitData, Resources, Stage, append_columns, register
from dq_ray.stages._fit import embedding_sample, kmeans_sample_rows, rows_to_fit, save_npy
from dq_ray.stages._groups import UnionFind, component_sizes
from dq_ray.stages._keys import doc_key_hex
from dq_ray.vectors import nearest_centroid

log = logging.getLogger(__name__)

CENTROIDS = "centroids.npy"
KEEP_RULES = ("first", "hard", "easy")
MAX_DEFAULT_CLUSTERS = 50_000


@dataclass(frozen=True)
class SemDedupParams:
    """Settings of the ``semdedup`` stage.

    Attributes:
        threshold: cosine similarity at or above which two documents of a cluster are semantic duplicates
            (SemDeDup's ``1 - eps``). Measured with all-MiniLM-L6-v2 on the demo texts: exact copies, copies
            with a few words edited and copies with a header or footer line added score >= 0.957 against their
            original, unrelated documents at most 0.88; reordered paragraphs or a removed first line reach
            0.95 about half the time (median 0.93 and 0.955). NeMo Curator's conservative end is 0.99 (eps 0.01).
        n_clusters: k of k-means; null: about ``sqrt(rows)``, at most 50,000 (never more than the sample).
        sample_rows: rows the k-means is fitted on (a seeded uniform sample, held in the driver's memory);
            null: ``256 * n_clusters`` (FAISS uses at most 256 points per centroid), at most 1,000,000 (1.5 GB
            at dimension 384), all rows when the corpus is smaller.
        niter: k-means iterations.
        seed: seed of the sample and of the k-means initialisation.
        keep: which member of a duplicate group is kept: ``first`` (input order), ``hard`` (farthest from the
            centroid) or ``easy`` (closest to the centroid).
        tile_rows: rows per side of the similarity tiles inside a cluster (memory: ``tile_rows**2`` floats).
    """

    threshold: float = 0.95
    n_clusters: int | None = None
    sample_rows: int | None = None
    niter: int = 20
    seed: int = 0
    keep: str = "first"
    tile_rows: int = 2048

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be a cosine similarity in [-1, 1]")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError("n_clusters must be >= 1 or null")
        if self.sample_rows is not None and self.sample_rows < 1:
            raise ValueError("sample_rows must be >= 1 or null")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}")
        if self.niter < 1 or self.tile_rows < 1:
            raise ValueError("niter and tile_rows must be >= 1")


def default_clusters(num_rows: int) -> int:
    """About ``sqrt(num_rows)`` clusters, at least 1, at most :data:`MAX_DEFAULT_CLUSTERS`."""
    return max(1, min(MAX_DEFAULT_CLUSTERS, round(math.sqrt(num_rows))))


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """:func:`dq_ray.vectors.embedding_matrix` (unit vectors, ``float32``), with the stage's own message for rows
    that have no embedding."""
    nulls = getattr(column, "null_count", 0)
    if nulls:
        raise ValueError(f"semdedup: {nulls} row(s) have a null embedding")
    return vectors.embedding_matrix(column)


def cluster_pairs(x: np.ndarray, threshold: float, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate groups and max similarities within one cluster (rows of ``x`` in keep order).

    Returns ``(roots, max_sim)``: each row's group root (the smallest row index of its group: the one kept)
    and its highest cosine similarity to any other row. Memory is O(tile**2) beyond ``x`` itself.
    """
    m = len(x)
    uf = UnionFind(m)
    max_sim = np.full(m, -np.inf, dtype=np.float32)
    for i0 in range(0, m, tile):
        xi = x[i0 : i0 + tile]
        for j0 in range(i0, m, tile):
            s = xi @ x[j0 : j0 + tile].T
            if j0 == i0:
                np.fill_diagonal(s, -np.inf)
            np.maximum(max_sim[i0 : i0 + len(s)], s.max(axis=1), out=max_sim[i0 : i0 + len(s)])
            np.maximum(max_sim[j0 : j0 + s.shape[1]], s.max(axis=0), out=max_sim[j0 : j0 + s.shape[1]])
            r, c = np.nonzero(s >= threshold)
            if len(r):
                uf.union(r + i0, c + j0)
    return uf.roots(), max_sim


def document_keys(rows: pa.Table | pa.RecordBatch) -> list[str]:
    """The key of each row's document, as ``semdedup_group`` names documents
    (:func:`dq_ray.stages._keys.doc_key_hex` of the :data:`~dq_ray.stage.KEY_COLUMNS`)."""
    return doc_key_hex(*(rows.column(c) for c in KEY_COLUMNS))


def nearest_in_clusters(
    x_new: np.ndarray, cluster_new: np.ndarray, x_old: np.ndarray, cluster_old: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x_new``, its most similar row of ``x_old`` in the same cluster (unit rows).

    The search of an incremental run (:mod:`dq_ray.pipeline.baseline`): new documents against a part of the
    baseline's. Returns ``(sim, row)``: the highest cosine similarity (``-inf`` when ``x_old`` has no row in the
    cluster) and the position in ``x_old`` of that row (-1 then). Memory is O(tile**2) beyond the inputs.
    """
    best = np.full(len(x_new), -np.inf, dtype=np.float32)
    row = np.full(len(x_new), -1, dtype=np.int64)
    by_new, by_old = np.argsort(cluster_new, kind="stable"), np.argsort(cluster_old, kind="stable")
    sorted_new, sorted_old = cluster_new[by_new], cluster_old[by_old]
    for c in np.intersect1d(sorted_new, sorted_old):
        new_rows = by_new[np.searchsorted(sorted_new, c) : np.searchsorted(sorted_new, c, "right")]
        old_rows = by_old[np.searchsorted(sorted_old, c) : np.searchsorted(sorted_old, c, "right")]
        for i0 in range(0, len(new_rows), tile):
            ni = new_rows[i0 : i0 + tile]
            for j0 in range(0, len(old_rows), tile):
                oj = old_rows[j0 : j0 + tile]
                s = x_new[ni] @ x_old[oj].T
                arg = s.argmax(axis=1)
                top = s[np.arange(len(ni)), arg]
                better = top > best[ni]
                best[ni[better]], row[ni[better]] = top[better], oj[arg[better]]
    return best, row


@register
class SemDedup(Stage):
    """Semantic duplicates (SemDeDup): k-means clusters, then near-identical pairs inside each cluster."""

    name = "semdedup"
    inputs = ("embedding", *KEY_COLUMNS)
    outputs = {
        "semdedup_cluster": pa.int32(),
        "semdedup_group": pa.string(),
        "semdedup_count": pa.int64(),
        "semdedup_keep": pa.bool_(),
        "semdedup_max_sim": pa.float32(),
    }
    Params = SemDedupParams
    default_resources = Resources(num_cpus=1, batch_size=1024)
    group_key = "semdedup_cluster"

    # -- fit ----------------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        """Spherical k-means (FAISS) on a seeded sample; writes ``centroids.npy``."""
        import faiss

        p = self.params
        num_rows = rows_to_fit(data, "semdedup")
        k = p.n_clusters or default_clusters(num_rows)
        x = embedding_sample(data, kmeans_sample_rows(k, p.sample_rows), p.seed)
        k = min(k, len(x))
        kmeans = faiss.Kmeans(
            x.shape[1], k, niter=p.niter, seed=p.seed, spherical=True, min_points_per_centroid=1, verbose=False
        )
        kmeans.train(x)
        centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        save_npy(centroids, posixpath.join(data.artifacts_dir, CENTROIDS))
        sizes = np.bincount(nearest_centroid(x, centroids)[0], minlength=k)
        info = {
            "documents": num_rows,
            "sample_rows": len(x),
            "n_clusters": k,
            "dim": int(x.shape[1]),
            "sample_cluster_sizes": {
                "min": int(sizes.min()),
                "median": float(np.median(sizes)),
                "max": int(sizes.max()),
            },
            "artifact": CENTROIDS,
            "params": dataclasses.asdict(p),
        }
        log.info("semdedup: %d clusters fitted on %d sampled rows", k, len(x))
        return info

    # -- apply --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.artifacts_dir is None:
            raise RuntimeError("semdedup runs after its fit: artifacts_dir is not set")
        digests = trusted_digests(self.artifacts_dir, self.artifact_digests)
        self.centroids = load_npy_trusted(self.artifacts_dir, CENTROIDS, digests)

    def process(self, batch: pa.Table) -> pa.Table:
        label, _ = nearest_centroid(embedding_matrix(batch.column("embedding")), self.centroids)
        return append_columns(batch, {"semdedup_cluster": pa.array(label, pa.int32())})

    def process_groups(self, rows: pa.Table) -> pa.Table:
        n = rows.num_rows
        x = embedding_matrix(rows.column("embedding"))
        cluster = rows.column("semdedup_cluster").to_numpy()
        order = self._keep_order(rows, x, cluster)
        roots = np.arange(n)  # positions into `order`
        max_sim = np.full(n, np.nan, dtype=np.float32)
        bounds = np.flatnonzero(np.r_[True, cluster[order][1:] != cluster[order][:-1], True]) if n else [0]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo > 1:
                if hi - lo > 100_000:
                    log.warning("semdedup: cluster of %d documents (%d similarities)", hi - lo, (hi - lo) ** 2 // 2)
                r, s = cluster_pairs(x[order[lo:hi]], self.params.threshold, self.params.tile_rows)
                roots[lo:hi], max_sim[lo:hi] = r + lo, s
        sizes = component_sizes(roots)
        kept = order[roots]  # row of the member each (sorted) row's group keeps
        keys = document_keys(rows)
        out_group = np.empty(n, dtype=object)
        out_group[order] = [keys[k] for k in kept]
        out_keep, out_count, out_sim = (np.empty(n, dtype=t) for t in (bool, np.int64, np.float32))
        out_keep[order] = roots == np.arange(n)
        out_count[order] = sizes
        out_sim[order] = max_sim
        return append_columns(
            rows,
            {
                "semdedup_group": pa.array(out_group, pa.string()),
                "semdedup_count": pa.array(out_count, pa.int64()),
                "semdedup_keep": pa.array(out_keep, pa.bool_()),
                "semdedup_max_sim": pa.array(out_sim, pa.float32(), from_pandas=True),
            },
        )

    def _keep_order(self, rows: pa.Table, x: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        """Row positions sorted by cluster, then by the keep rule (the member kept comes first)."""
        if not rows.num_rows:
            return np.zeros(0, dtype=np.int64)
        sort_keys = [(c, "ascending") for c in KEY_COLUMNS]
        input_rank = np.empty(rows.num_rows, dtype=np.int64)
        input_rank[pc.sort_indices(rows, sort_keys=sort_keys).to_numpy()] = np.arange(rows.num_rows)
        if self.params.keep == "first":
            return np.lexsort((input_rank, cluster))
        sim = np.einsum("ij,ij->i", x, self.centroids[cluster])
        closeness = sim if self.params.keep == "hard" else -sim  # hard: least similar to the centroid first
        return np.lexsort((input_rank, closeness, cluster))
