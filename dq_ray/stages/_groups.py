"""Shared by the near-duplicate stages: duplicate groups as connected components of a pair graph.

Pairs (edges) are collected with :meth:`UnionFind.union` and the groups come from SciPy's
``scipy.sparse.csgraph.connected_components``; every group is rooted at its smallest element, so numbering the
elements in "keep" order makes each group's root the member to keep. Group names are document keys
(:func:`dq_ray.stages._keys.doc_key_hex`).
"""

from __future__ import annotations

import numpy as np

#: Edges held before :meth:`UnionFind.union` folds them into one edge per grouped element (bounds memory when a
#: caller adds many pairs: at most ``max(n, COMPACT_EDGES)`` edges plus the last call's are kept).
COMPACT_EDGES = 4_000_000


class UnionFind:
    """Disjoint sets over ``0..n-1``: add pairs with :meth:`union` (whole arrays at once), read every element's
    root with :meth:`roots`. The root of a set is its smallest element.

    The sets are the connected components of the pairs, computed by SciPy when they are read (and, to bound
    memory, whenever more than ``max(n, COMPACT_EDGES)`` pairs are waiting).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._pending = 0

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the sets of ``a[i]`` and ``b[i]`` for every i."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        self._a.append(a)
        self._b.append(b)
        self._pending += len(a)
        if self._pending > max(self.n, COMPACT_EDGES):
            # the same components from one edge per grouped element: (element, its root)
            roots = self.roots()
            moved = np.flatnonzero(roots != np.arange(self.n))
            self._a, self._b, self._pending = [moved], [roots[moved]], len(moved)

    def roots(self) -> np.ndarray:
        """The root (smallest element of its set) of every element, as ``int64``."""
        return component_roots(self.n, np.concatenate(self._a or [[]]), np.concatenate(self._b or [[]]))


def component_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For every element of ``0..n-1``, the smallest element of its connected component in the graph with edges
    ``a[i] -- b[i]`` (``int64``; an element on no edge is its own root)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if n == 0 or len(a) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=bool), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    # the first element carrying each label is the smallest of its component
    _, first = np.unique(labels, return_index=True)
    return first[labels].astype(np.int64)


def component_sizes(roots: np.ndarray) -> np.ndarray:
    """For each element, the size of its set."""
    return np.bincount(roots, minlength=len(roots))[roots]
