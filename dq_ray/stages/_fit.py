"""What the fits of the embedding stages share: the row check, the embedding sample, and writing artifacts.

``semdedup``, ``topics`` and ``map`` open their :meth:`~dq_ray.stage.Stage.fit` the same way: refuse an empty
input (:func:`rows_to_fit`), then draw a seeded sample of the ``embedding`` column as unit vectors
(:func:`embedding_sample`); the two k-means stages size that sample alike (:func:`kmeans_sample_rows`). The
artifact writers take a local path or any fsspec URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.stage import CPU_POOL_MAX, FitData
from dq_ray.vectors import embedding_matrix

#: Most rows a k-means sample holds by default (1.5 GB at dimension 384).
MAX_KMEANS_SAMPLE = 1_000_000
#: Sampled points per centroid by default: FAISS's k-means uses at most 256 per centroid.
POINTS_PER_CENTROID = 256


def rows_to_fit(data: FitData, stage: str) -> int:
    """The rows of ``data``; ``ValueError`` naming ``stage`` when there are none."""
    n = data.num_rows()
    if n == 0:
        raise ValueError(f"{stage}: no rows to fit on")
    return n


def embedding_sample(data: FitData, rows: int, seed: int) -> np.ndarray:
    """The ``embedding`` column of a seeded uniform sample of ``rows`` rows (every row when there are fewer), as
    unit vectors: a ``float32`` matrix in input order."""
    return embedding_matrix(data.sample(["embedding"], rows, seed=seed).column("embedding"))


def kmeans_sample_rows(k: int, sample_rows: int | None) -> int:
    """Rows to fit a ``k``-means on: ``sample_rows`` when set, else 256 per centroid, at most 1,000,000."""
    return sample_rows or min(POINTS_PER_CENTROID * k, MAX_KMEANS_SAMPLE)


# -- a fit's map over every document ----------------------------------------------------------------------


def cpu_pool_args(max_actors: int = CPU_POOL_MAX) -> dict[str, Any]:
    """``map_batches`` arguments for a fit's CPU-bound map with a costly per-process set-up (a tokenizer): one
    actor per cluster CPU (at most ``max_actors``), each set up once, their CPU requests leaving one CPU for the
    tasks that read the fit's input. Ray tasks would start fresh worker processes as Ray replaces idle ones, and
    each would pay the set-up again. Empty on a cluster of several nodes: the map runs as Ray tasks there."""
    import ray
    from ray.data import ActorPoolStrategy

    cpus = float(ray.cluster_resources().get("CPU", 1))
    n = max(1, min(max_actors, int(cpus)))
    pool = ActorPoolStrategy(min_size=1, max_size=n, initial_size=n)  # all start; a tiny fit may use one
    if sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
        return {}  # Ray tasks, as on a cluster a `cpu_pool` stage runs (see dq_ray.stage.Stage)
    return {"compute": pool, "num_cpus": round(max(0.1, (cpus - 1) / n), 3)}


# -- artifacts on local disk or any fsspec URL ------------------------------------------------------------


def save_npy(array: np.ndarray, path: str) -> None:
    """Write ``array`` as ``.npy`` to ``path`` (a local path or an fsspec URL)."""
    import fsspec

    with fsspec.open(path, "wb") as f:
        np.save(f, array)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (a local path or an fsspec URL)."""
    import fsspec

    with fsspec.open(path, "w") as f:
        json.dump(data, f)


def write_parquet(table: pa.Table, path: str) -> None:
    """Write ``table`` as Parquet to ``path`` (a local path or an fsspec URL)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "wb") as f:
        pq.write_table(table, f)


def is_local(path: str) -> bool:
    """``path`` is on this machine's disk (a plain path or a ``file://`` URL)."""
    return "://" not in path or path.startswith("file://")


def strip_file(path: str) -> str:
    """``path`` without a leading ``file://``."""
    return path[len("file://") :] if path.startswith("file://") else path


@contextlib.contextmanager
def local_dir(target: str) -> Iterator[str]:
    """A local directory to write artifacts into; copied to ``target`` afterwards when it is a remote URL."""
    if is_local(target):
        os.makedirs(strip_file(target), exist_ok=True)
        yield strip_file(target)
        return
    import fsspec

    tmp = tempfile.mkdtemp(prefix="dq-density-")
    try:
        yield tmp
        fs, root = fsspec.core.url_to_fs(target)
        fs.makedirs(root, exist_ok=True)
        for name in os.listdir(tmp):
            fs.put_file(os.path.join(tmp, name), f"{root.rstrip('/')}/{name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fetched(source: str) -> Iterator[str]:
    """A local directory holding the artifacts at ``source`` (downloaded first when it is a remote URL)."""
    if is_local(source):
        yield strip_file(source)
        return
    import fsspec

    tmp = tempfile.mkdtemp(prefix="dq-density-")
    try:
        fs, root = fsspec.core.url_to_fs(source)
        for path in fs.ls(root, detail=False):
            fs.get_file(path, os.path.join(tmp, os.path.basename(path.rstrip("/"))))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
