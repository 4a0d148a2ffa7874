"""Shared by the near-duplicate stages: document keys and connected components (a vectorised union-find)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash


def doc_keys(source_file: pa.Array | pa.ChunkedArray, source_index: pa.Array | pa.ChunkedArray) -> list[str]:
    """The key of each document: the 128-bit xxHash, in hex, of its location ``source_file`` + ``source_index``.

    A document's location is unique within a run (ids given in the input need not be), so duplicate groups are
    named by the key of the member they keep, and a document in no group is its own group.
    """
    return [
        xxhash.xxh3_128_hexdigest(f"{f}\x00{i}".encode("utf-8", errors="surrogatepass"))
        for f, i in zip(source_file.to_pylist(), source_index.to_pylist())
    ]


class UnionFind:
    """Disjoint sets over ``0..n-1`` that unions whole arrays of pairs at once.

    Every root is the smallest element of its set (a union always hooks the larger root under the smaller one),
    so numbering the elements in "keep" order makes each set's root the member to keep.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        """The roots of ``x`` (and path compression for those elements)."""
        x = np.asarray(x, dtype=np.int64)
        root = self.parent[x]
        while True:
            up = self.parent[root]
            if np.array_equal(up, root):
                break
            root = up
        self.parent[x] = root
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the sets of ``a[i]`` and ``b[i]`` for every i."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while a.size:
            ra, rb = self.find(a), self.find(b)
            apart = ra != rb
            if not apart.any():
                return
            lo, hi = np.minimum(ra[apart], rb[apart]), np.maximum(ra[apart], rb[apart])
            # hook every root under the smallest root it is paired with; pairs hooked elsewhere go round again
            np.minimum.at(self.parent, hi, lo)
            a, b = lo, hi

    def roots(self) -> np.ndarray:
        """The root of every element (fully compressed)."""
        p = self.parent
        while True:
            up = p[p]
            if np.array_equal(up, p):
                return p.copy()
            p = self.parent = up


def component_sizes(roots: np.ndarray) -> np.ndarray:
    """For each element, the size of its set."""
    return np.bincount(roots, minlength=len(roots))[roots]
