"""Embedding columns as NumPy matrices: the one place that turns an Arrow ``embedding`` column into vectors.

Used by the stages that read embeddings (density, SemDeDup, topics, the map, distillation) and by the map's data
store. A leaf module: NumPy and PyArrow only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

#: Similarity cells computed at once when assigning rows to centroids (rows x centroids), to bound memory.
ASSIGN_CELLS = 8_000_000


def to_matrix(column: Any) -> np.ndarray:
    """An ``embedding`` column (fixed-size or variable list, float16/32, chunked or not, Ray Data's tensor
    extension type, or an array already) as a contiguous ``float32`` matrix ``(rows, dim)``. Nulls are refused."""
    if isinstance(column, np.ndarray):
        return np.ascontiguousarray(column, dtype=np.float32).reshape(len(column), -1)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    n = len(column)
    if n == 0:
        return np.zeros((0, column.type.list_size if pa.types.is_fixed_size_list(column.type) else 0), np.float32)
    if column.null_count:
        raise ValueError(f"the embedding column has {column.null_count} null row(s)")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if len(values) % n:
        raise ValueError("the embedding column holds vectors of different lengths")
    return np.ascontiguousarray(values.reshape(n, -1), dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every non-zero row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def embedding_matrix(column: Any) -> np.ndarray:
    """:func:`to_matrix` with every row L2-normalised: what cosine-similarity code wants."""
    return unit_rows(to_matrix(column))


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of unit vectors ``x``, the index of its most similar centroid and that cosine similarity."""
    step = max(1, ASSIGN_CELLS // max(len(centroids), 1))
    label = np.empty(len(x), dtype=np.int32)
    sim = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), step):
        s = x[lo : lo + step] @ centroids.T
        label[lo : lo + step] = s.argmax(axis=1)
        sim[lo : lo + step] = s[np.arange(len(s)), label[lo : lo + step]]
    return label, sim
