"""Density: a kernel density estimate over the embeddings, and the weight for *Density sampling*.

Density sampling (Sachdeva et al. 2024, "How to Train Data-Efficient LLMs", arXiv 2402.09668) keeps each
document with a probability inversely related to how many similar documents the corpus holds, so that a sample
covers the topics of the corpus instead of repeating its most common ones.

For every document *i* with unit embedding *x_i* the stage writes:

* ``density_score``: the kernel sum over the *other* documents, ``sum_{j != i} K(x_i, x_j)`` (0: nothing
  similar; 1 is worth one near-identical copy, since ``K(x, x) = 1``);
* ``density_weight``: the inverse-propensity sampling weight ``w_i = min(max_weight, c / (1 + density_score_i))``:
  the ``1`` is the document's own kernel term, and ``c`` makes the weights average 1 over the fit sample. Keep a
  document with probability ``min(1, rate * w_i)`` for a sample of about ``rate`` of the corpus, or use ``w_i``
  as a training weight.

Two methods, both **fit / apply** (:meth:`Density.fit` runs once on the driver, the map runs on every row):

* ``knn`` (default): a FAISS index over every embedding (exact ``IndexFlatIP`` for small corpora, IVF-Flat
  up to ``ivf_pq_min_rows``, IVF-PQ above, trained on a deterministic sample); each document sums the kernel
  over its ``k`` nearest neighbours, plus an unbiased estimate of the rest of the sum from ``tail_sample``
  *anchors* (a uniform deterministic sample of documents): ``n / m`` times the kernel values of the anchors that
  are neither the document nor among its ``k`` neighbours. Kernel ``gaussian`` ``exp(-d^2 / (2 h^2))`` or
  ``laplace`` ``exp(-d / h)`` on the Euclidean distance ``d`` between unit vectors (``d^2 = 2 - 2 cos``). The
  bandwidth ``h``, when not given, is estimated in the fit: the median distance to the ``k``-th nearest
  neighbour over a sample, times ``bandwidth_scale`` (0.3; distances shrink as the corpus grows, so ``h``
  follows). A kernel that wide spreads its mass far beyond any affordable ``k`` (the 32 nearest hold ~10% of
  it on the 78k-document validation corpus), which is what lets density tell a crowded topic from a sparse one;
  the anchors recover the rest: Spearman >= 0.99 against the exact brute-force sum, against 0.84 for the kNN
  sum alone (``benchmarks/results/density_validation.md``).
* ``sketch``: the paper's streaming kernel-sum sketch (a RACE sketch: ``sketch_rows`` independent hash tables,
  each hashing a vector with ``sketch_bits`` random hyperplanes (SimHash) into ``2**sketch_bits`` counters). Its
  kernel is the hash collision probability ``(1 - angle / pi) ** sketch_bits``. Counters are computed per block
  on Ray workers and summed (mergeable, memory bounded by ``rows * 2**bits``, independent of the corpus); a
  document's score is its counters averaged over the tables, minus its own count.

Artifacts in ``RUN/artifacts/density/``: ``density.json`` (the fitted settings), and ``index.faiss`` +
``doc_keys.npy`` (knn) or ``sketch.npz`` (sketch). A neighbour is recognised as the document itself by its key in
``doc_keys`` (:func:`dq_ray.stages._keys.doc_key_int63`, unique per input record); an exact copy elsewhere in the
corpus is a neighbour like any other (kernel value 1). :meth:`Density.setup` loads only signed bytes (the folder's
digests, :mod:`dq_ray.artifacts`): the index is deserialised from memory, arrays with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.artifacts import load_json_trusted, load_npy_trusted, load_npz_trusted, read_trusted, trusted_digests
from dq_ray.errors import ConfigError
from dq_ray.stage import KEY_COLUMNS, FitData, Resources, Stage, append_columns, register
from dq_ray.stages._fit import local_dir, rows_to_fit
from dq_ray.stages._keys import doc_key_int63
from dq_ray.vectors import embedding_matrix, to_matrix, unit_rows

log = logging.getLogger(__name__)

METHODS = ("knn", "sketch")
KERNELS = ("gaussian", "laplace")
INDEXES = ("auto", "flat", "ivf_flat", "ivf_pq")
#: Where the kNN index may search (``device``): ``auto`` (a GPU when the cluster has one) or ``cpu``.
INDEX_DEVICES = ("auto", "cpu")
_ITER_ROWS = 65_536  # rows per batch when streaming the corpus through the driver


@dataclass(frozen=True)
class DensityParams:
    """Settings of the ``density`` stage.

    Attributes:
        method: ``knn`` (FAISS kNN kernel sum) or ``sketch`` (the paper's LSH kernel-sum sketch).
        k: neighbours summed per document (knn).
        kernel: ``gaussian`` or ``laplace`` (knn).
        bandwidth: kernel bandwidth ``h`` on the distance between unit vectors; null: estimated in the fit.
        bandwidth_neighbour: which neighbour's median distance the estimate starts from (null: the k-th).
        bandwidth_scale: the estimate is that median distance times this. 0.3 (the default) is wide enough that
            crowded topics score high and rare ones low (Density sampling then shifts weight towards rare
            topics); about 0.2 and below, only near-copies contribute and the weights barely move.
        tail_sample: anchors ``m`` that estimate the kernel mass beyond the ``k`` nearest neighbours (0: the kNN
            sum only, which underestimates wide kernels).
        index: ``flat`` (exact), ``ivf_flat``, ``ivf_pq``, or ``auto`` by corpus size (flat below
            ``flat_max_rows`` rows, IVF-PQ from ``ivf_pq_min_rows``, IVF-Flat between).
        flat_max_rows, ivf_pq_min_rows: the ``auto`` thresholds.
        nlist: IVF lists; null: ``4 * sqrt(rows)``.
        nprobe: IVF lists searched per query.
        pq_m: PQ sub-vectors (bytes per vector) for ``ivf_pq``; must divide the dimension.
        train_size: most vectors the IVF quantiser is trained on (a deterministic sample).
        sample_size: documents of the sample that estimates the bandwidth and the weight normaliser.
        sketch_rows: independent hash tables of the sketch.
        sketch_bits: hyperplanes per table (``2**bits`` counters each); more bits, a narrower kernel.
        max_weight: ``density_weight`` is clipped to this.
        seed: seed of every sample and random projection.
        device: ``auto`` (knn: one GPU per worker when the cluster has GPUs; the index moves to the GPU when
            faiss sees one), or ``cpu`` (never ask for a GPU).
    """

    method: str = "knn"
    k: int = 32
    kernel: str = "gaussian"
    bandwidth: float | None = None
    bandwidth_neighbour: int | None = None
    bandwidth_scale: float = 0.3
    tail_sample: int = 1024
    index: str = "auto"
    flat_max_rows: int = 100_000
    ivf_pq_min_rows: int = 5_000_000
    nlist: int | None = None
    nprobe: int = 16
    pq_m: int = 48
    train_size: int = 100_000
    sample_size: int = 4_000
    sketch_rows: int = 128
    sketch_bits: int = 12
    max_weight: float = 20.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for key, valid in (("method", METHODS), ("kernel", KERNELS), ("index", INDEXES), ("device", INDEX_DEVICES)):
            if getattr(self, key) not in valid:
                raise ConfigError(f"density.{key}: {getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ConfigError("density.bandwidth must be > 0 or null")
        if not 1 <= self.sketch_bits <= 24:
            raise ConfigError("density.sketch_bits must be between 1 and 24")
        if self.bandwidth_neighbour is not None and not 1 <= self.bandwidth_neighbour <= self.k:
            raise ConfigError("density.bandwidth_neighbour must be between 1 and density.k, or null")
        if self.tail_sample < 0:
            raise ConfigError("density.tail_sample must be >= 0")
        for key in ("k", "nprobe", "pq_m", "train_size", "sample_size", "sketch_rows"):
            if getattr(self, key) < 1:
                raise ConfigError(f"density.{key} must be >= 1")
        if self.bandwidth_scale <= 0 or self.max_weight <= 0:
            raise ConfigError("density.bandwidth_scale and density.max_weight must be > 0")


@register
class Density(Stage):
    """Kernel density of each document's embedding among all others, and its Density-sampling weight."""

    name = "density"
    inputs = ("embedding", *KEY_COLUMNS)
    outputs = {"density_score": pa.float32(), "density_weight": pa.float32()}
    Params = DensityParams
    default_resources = Resources(num_cpus=1, batch_size=2048)
    stateful = True

    # -- fit (driver) ------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        p: DensityParams = self.params
        n = rows_to_fit(data, "density")
        t0 = time.perf_counter()
        with local_dir(data.artifacts_dir) as out:
            info = self._fit_knn(data, n, out) if p.method == "knn" else self._fit_sketch(data, n, out)
            info.update(method=p.method, n=n, fit_s=round(time.perf_counter() - t0, 3))
            with open(os.path.join(out, "density.json"), "w", encoding="utf-8") as fh:
                json.dump(info, fh, indent=2)
        log.info("density fit: %s", info)
        return info

    def _fit_knn(self, data: FitData, n: int, out: str) -> dict[str, Any]:
        import faiss

        p: DensityParams = self.params
        kind = p.index if p.index != "auto" else auto_index(n, p.flat_max_rows, p.ivf_pq_min_rows)
        index = None
        dim = 0
        if kind != "flat":
            train = to_matrix(data.sample(["embedding"], p.train_size, seed=p.seed).column("embedding"))
            dim = train.shape[1]
            nlist = p.nlist or default_nlist(n)
            index = new_index(kind, dim, nlist, p.pq_m)
            log.info("density: training %s (nlist %d) on %d vectors", kind, nlist, len(train))
            index.train(unit_rows(train))
            del train
        keys: list[np.ndarray] = []
        columns = ["embedding", *KEY_COLUMNS]
        for batch in data.dataset(columns).iter_batches(batch_size=_ITER_ROWS, batch_format="pyarrow"):
            x = embedding_matrix(batch.column("embedding"))
            if index is None:
                dim = x.shape[1]
                index = new_index(kind, dim)
            index.add(x)
            keys.append(doc_key_int63(batch))
        if index is None or index.ntotal != n:
            raise RuntimeError(f"density: indexed {0 if index is None else index.ntotal} of {n} embeddings")
        keys_all = np.concatenate(keys)
        faiss.write_index(index, os.path.join(out, "index.faiss"))
        np.save(os.path.join(out, "doc_keys.npy"), keys_all)

        set_nprobe(index, p.nprobe)
        anchors = Anchors.from_table(data.sample(columns, p.tail_sample, seed=p.seed + 2), n) if p.tail_sample else None
        if anchors is not None:
            anchors.save(out)
        sample = data.sample(columns, p.sample_size, seed=p.seed + 1)
        queries = embedding_matrix(sample.column("embedding"))
        own = doc_key_int63(sample)
        d2, labels = neighbours(index, keys_all, queries, own, p.k)
        neighbour = p.bandwidth_neighbour or p.k
        bandwidth = p.bandwidth or estimate_bandwidth(d2, neighbour, p.bandwidth_scale)
        self.bandwidth = bandwidth
        score = kernel_sum(d2, p.kernel, bandwidth)
        if anchors is not None:
            score += anchors.tail_sum(queries, own, label_keys(keys_all, labels), p.kernel, bandwidth)
        normaliser = float(np.mean(1.0 / (1.0 + score)))
        return {
            "index": kind,
            "nlist": getattr(faiss.try_extract_index_ivf(index), "nlist", None),
            "nprobe": p.nprobe if kind != "flat" else None,
            "dimension": dim,
            "k": p.k,
            "kernel": p.kernel,
            "bandwidth": bandwidth,
            "bandwidth_estimated": p.bandwidth is None,
            "tail_anchors": 0 if anchors is None else len(anchors.keys),
            "weight_normaliser": normaliser,
            "sample_size": len(queries),
            "index_bytes": os.path.getsize(os.path.join(out, "index.faiss")),
        }

    def _fit_sketch(self, data: FitData, n: int, out: str) -> dict[str, Any]:
        p: DensityParams = self.params
        first = data.sample(["embedding"], 1, seed=p.seed).column("embedding")
        dim = to_matrix(first).shape[1]
        planes = srp_planes(dim, p.sketch_rows, p.sketch_bits, p.seed)
        partial = data.dataset(["embedding"]).map_batches(
            count_block, batch_format="pyarrow", batch_size=16_384, fn_kwargs={"planes": planes, "bits": p.sketch_bits}
        )
        counts = np.zeros(p.sketch_rows << p.sketch_bits, dtype=np.int64)
        for batch in partial.iter_batches(batch_size=None, batch_format="numpy"):
            counts += np.asarray(np.stack(list(batch["counts"])), dtype=np.int64).sum(axis=0)
        counts = counts.reshape(p.sketch_rows, 1 << p.sketch_bits)
        if int(counts[0].sum()) != n:
            raise RuntimeError(f"density sketch counted {int(counts[0].sum())} of {n} embeddings")
        np.savez(os.path.join(out, "sketch.npz"), planes=planes, counts=counts)
        sample = data.sample(["embedding"], p.sample_size, seed=p.seed + 1)
        queries = embedding_matrix(sample.column("embedding"))
        scores = sketch_scores(counts, planes, p.sketch_bits, queries)
        return {
            "dimension": dim,
            "sketch_rows": p.sketch_rows,
            "sketch_bits": p.sketch_bits,
            "kernel": f"(1 - angle/pi)^{p.sketch_bits} (SimHash collision probability)",
            "weight_normaliser": float(np.mean(1.0 / (1.0 + scores))),
            "sample_size": len(scores),
            "sketch_bytes": int(counts.nbytes + planes.nbytes),
        }

    # -- apply (every worker) -----------------------------------------------------------------------------
    def setup(self) -> None:
        if not self.artifacts_dir:
            raise RuntimeError("density: no artifacts_dir; the stage must be fitted before it runs")
        p: DensityParams = self.params
        art = self.artifacts_dir
        digests = trusted_digests(art, self.artifact_digests)
        self.fitted = load_json_trusted(art, "density.json", digests)
        if p.method == "knn":
            import faiss

            # the signed bytes, deserialised from memory (no re-read of the file after the check)
            raw = read_trusted(art, "index.faiss", digests)
            index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
            del raw
            self.keys = load_npy_trusted(art, "doc_keys.npy", digests)
            self.bandwidth = float(self.fitted["bandwidth"])
            if faiss.get_num_gpus() > 0:
                index = faiss.index_cpu_to_all_gpus(index)
            set_nprobe(index, p.nprobe)
            self.index = index
            self.anchors = Anchors.load(art, digests) if self.fitted.get("tail_anchors") else None
        else:
            z = load_npz_trusted(art, "sketch.npz", digests)
            self.planes, self.counts = z["planes"], z["counts"]
        self.normaliser = float(self.fitted["weight_normaliser"])

    def process(self, batch: pa.Table) -> pa.Table:
        p: DensityParams = self.params
        x = embedding_matrix(batch.column("embedding"))
        if p.method == "knn":
            own = doc_key_int63(batch)
            d2, labels = neighbours(self.index, self.keys, x, own, p.k)
            score = kernel_sum(d2, p.kernel, self.bandwidth)
            if self.anchors is not None:
                score += self.anchors.tail_sum(x, own, label_keys(self.keys, labels), p.kernel, self.bandwidth)
        else:
            score = sketch_scores(self.counts, self.planes, p.sketch_bits, x)
        weight = np.minimum(p.max_weight, 1.0 / (self.normaliser * (1.0 + score)))
        return append_columns(
            batch,
            {
                "density_score": pa.array(score.astype(np.float32), pa.float32()),
                "density_weight": pa.array(weight.astype(np.float32), pa.float32()),
            },
        )

    def resources_for(self, resources: Resources, cluster_gpus: float) -> Resources:
        """The resources to run with on a cluster with ``cluster_gpus`` GPUs (for the pipeline, on the driver).

        knn with ``device: auto`` on a cluster with GPUs: one GPU per actor (unless the config asked for some),
        at most one actor per GPU, so faiss searches on the GPU. The sketch is a table lookup: CPU only.
        """
        p: DensityParams = self.params
        if p.method != "knn" or p.device == "cpu" or cluster_gpus <= 0 or resources.num_gpus > 0:
            return resources
        gpus = int(cluster_gpus) or 1
        return dataclasses.replace(resources, num_gpus=1, concurrency=min(resources.concurrency or gpus, gpus))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if getattr(self, "fitted", None):
            info["fitted"] = self.fitted
        return info


# -- kernels and the kNN index ----------------------------------------------------------------------------


def kernel_values(d2: np.ndarray, kernel: str, bandwidth: float) -> np.ndarray:
    """``K(d)`` for squared distances ``d2`` (``inf`` entries give 0)."""
    if kernel == "gaussian":
        return np.exp(-d2 / (2.0 * bandwidth * bandwidth))
    return np.exp(-np.sqrt(d2) / bandwidth)


def kernel_sum(d2: np.ndarray, kernel: str, bandwidth: float) -> np.ndarray:
    """Sum over each row of ``K(d)`` for squared distances ``d2`` (``inf`` entries add 0)."""
    return kernel_values(d2, kernel, bandwidth).sum(axis=1, dtype=np.float64)


def label_keys(keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The document keys of neighbour ``labels`` (-1 where there is no neighbour)."""
    return np.where(labels >= 0, keys[np.maximum(labels, 0)], -1)


@dataclass
class Anchors:
    """A uniform sample of ``m`` of the ``n`` documents, for the part of the kernel sum beyond the k neighbours.

    For document ``i`` with neighbour set ``N_i``, ``n / m * sum(K(x_i, a) for anchors a not in N_i + {i})`` is
    an unbiased estimate of ``sum(K(x_i, x_j) for j not in N_i + {i})`` (each document is an anchor with
    probability ``m / n``); its noise is small next to the kNN part wherever the kNN part is large.
    """

    vectors: np.ndarray  # (m, dim) unit vectors
    keys: np.ndarray  # (m,) document keys
    n: int  # documents in the corpus

    @classmethod
    def from_table(cls, table: pa.Table, n: int) -> Anchors:
        return cls(embedding_matrix(table.column("embedding")), doc_key_int63(table), n)

    def save(self, out: str) -> None:
        np.savez(os.path.join(out, "anchors.npz"), vectors=self.vectors, keys=self.keys, n=self.n)

    @classmethod
    def load(cls, src: str, digests: dict[str, str]) -> Anchors:
        """The anchors saved in the artifact folder ``src`` (a path or URL), checked against its ``digests``."""
        z = load_npz_trusted(src, "anchors.npz", digests)
        return cls(z["vectors"], z["keys"], int(z["n"]))

    def tail_sum(
        self, x: np.ndarray, own_keys: np.ndarray, neighbour_keys: np.ndarray, kernel: str, bandwidth: float
    ) -> np.ndarray:
        """The estimated kernel mass of every query beyond its neighbours (``neighbour_keys``: ``(q, k)``)."""
        m = len(self.keys)
        if m == 0 or len(x) == 0:
            return np.zeros(len(x), np.float64)
        d2 = np.maximum(2.0 - 2.0 * (x @ self.vectors.T), 0.0)
        values = kernel_values(d2, kernel, bandwidth)
        # drop the anchors that are the query itself or already among its neighbours
        order = np.argsort(self.keys, kind="stable")
        sorted_keys = self.keys[order]
        known = np.concatenate([own_keys[:, None], neighbour_keys], axis=1)
        pos = np.minimum(np.searchsorted(sorted_keys, known), m - 1)
        hit = (sorted_keys[pos] == known) & (known >= 0)
        rows = np.broadcast_to(np.arange(len(x))[:, None], known.shape)
        values[rows[hit], order[pos[hit]]] = 0.0
        return values.sum(axis=1, dtype=np.float64) * (self.n / m)


def neighbours(
    index: Any, keys: np.ndarray, x: np.ndarray, own_keys: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances ``(n, k)`` from each query to its k nearest *other* documents in ``index`` (``inf``
    where fewer exist), and their labels (-1 there). A hit whose key equals the query's own key is the query
    itself and is skipped."""
    if len(x) == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    sims, labels = index.search(x, min(k + 1, index.ntotal))
    valid = labels >= 0
    valid &= keys[np.where(valid, labels, 0)] != own_keys[:, None]
    valid &= np.cumsum(valid, axis=1) <= k
    d2 = np.where(valid, np.maximum(2.0 - 2.0 * sims, 0.0), np.inf)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # the valid hits first, nearest first
    d2 = np.take_along_axis(d2, order, axis=1)
    labels = np.take_along_axis(np.where(valid, labels, -1), order, axis=1)
    if d2.shape[1] < k:  # a corpus of at most k documents
        pad = ((0, 0), (0, k - d2.shape[1]))
        d2, labels = np.pad(d2, pad, constant_values=np.inf), np.pad(labels, pad, constant_values=-1)
    return d2.astype(np.float32), labels


def estimate_bandwidth(d2: np.ndarray, neighbour: int, scale: float) -> float:
    """``scale`` times the median distance to the ``neighbour``-th nearest neighbour (rows with fewer: skipped)."""
    col = np.sqrt(d2[:, neighbour - 1])
    col = col[np.isfinite(col)]
    if len(col) == 0:
        col = np.sqrt(d2[np.isfinite(d2)])
    median = float(np.median(col)) if len(col) else 1.0
    return max(median * scale, 1e-3)


def auto_index(n: int, flat_max_rows: int, ivf_pq_min_rows: int) -> str:
    """Exact search for small corpora, IVF-Flat for large ones, IVF-PQ (compressed) for very large ones."""
    if n < flat_max_rows:
        return "flat"
    return "ivf_pq" if n >= ivf_pq_min_rows else "ivf_flat"


def default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def new_index(kind: str, dim: int, nlist: int = 1, pq_m: int = 48) -> Any:
    """An empty inner-product FAISS index (inner product = cosine on unit vectors)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf_pq" and dim % pq_m:
        raise ValueError(f"density.pq_m ({pq_m}) must divide the embedding dimension ({dim})")
    spec = f"IVF{nlist},Flat" if kind == "ivf_flat" else f"IVF{nlist},PQ{pq_m}x8"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.niter = 10  # k-means iterations of the coarse quantiser (faiss: 25)
    if kind == "ivf_pq":  # the factory turns on polysemous training: minutes, and only Hamming filtering uses it
        faiss.downcast_index(index).do_polysemous_training = False
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    """Set ``nprobe`` on an IVF index, on CPU or GPU (no-op for a flat index)."""
    import faiss

    if faiss.try_extract_index_ivf(index) is None and "Gpu" not in type(index).__name__:
        return
    space = faiss.GpuParameterSpace() if "Gpu" in type(index).__name__ else faiss.ParameterSpace()
    with contextlib.suppress(RuntimeError):  # a GPU flat index has no nprobe
        space.set_index_parameter(index, "nprobe", nprobe)


# -- the kernel-sum sketch (RACE with SimHash) ---------------------------------------------------------------


def srp_planes(dim: int, rows: int, bits: int, seed: int) -> np.ndarray:
    """Random hyperplanes ``(dim, rows * bits)``: table ``r`` uses columns ``r*bits .. r*bits+bits-1``."""
    return np.random.default_rng(seed).standard_normal((dim, rows * bits)).astype(np.float32)


def srp_codes(x: np.ndarray, planes: np.ndarray, bits: int) -> np.ndarray:
    """The bucket of every vector in every table ``(n, rows)``: the sign bits of its ``bits`` projections."""
    signs = ((x @ planes) > 0).reshape(len(x), -1, bits)
    return (signs * (1 << np.arange(bits, dtype=np.int64))).sum(axis=2)


def sketch_scores(counts: np.ndarray, planes: np.ndarray, bits: int, x: np.ndarray) -> np.ndarray:
    """Each vector's counters averaged over the tables, minus its own count: the kernel sum over the others."""
    codes = srp_codes(x, planes, bits)  # (n, rows)
    hits = counts[np.arange(counts.shape[0])[None, :], codes]
    return np.maximum(hits - 1, 0).mean(axis=1)


def count_block(batch: pa.Table, planes: np.ndarray, bits: int) -> pa.Table:
    """Sketch counters of one block of embeddings (a Ray map task): one row holding ``rows * 2**bits`` counts."""
    x = embedding_matrix(batch.column("embedding"))
    codes = srp_codes(x, planes, bits)
    rows, buckets = codes.shape[1], 1 << bits
    flat = (codes + np.arange(rows, dtype=np.int64)[None, :] * buckets).ravel()
    counts = np.bincount(flat, minlength=rows * buckets).astype(np.int64)
    return pa.table({"counts": pa.array([counts], pa.list_(pa.int64()))})
