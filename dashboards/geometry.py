"""Geometry helpers of the map, shared by the data store and the prepared pyramid: masks for a box or a polygon,
and the PCA fallback projection of a run without map coordinates."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads

from dq_ray.vectors import to_matrix

PCA_FIT_ROWS = 50_000


def fit_pca(dataset: pads.Dataset, fit_rows: int = PCA_FIT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, components)`` of the first two principal components of ``embedding`` over its first
    ``fit_rows`` rows (float64; project with ``(x - mean) @ components``)."""
    sample = []
    got = 0
    for batch in dataset.to_batches(columns=["embedding"]):
        sample.append(to_matrix(batch.column(0)))
        got += batch.num_rows
        if got >= fit_rows:
            break
    fit = np.concatenate(sample)[:fit_rows].astype(np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return mean, vt[:2].T


def geometry_mask(x: np.ndarray, y: np.ndarray, bounds=None, polygon=None) -> np.ndarray:
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
    mean, comps = fit_pca(dataset, fit_rows)
    xs, ys = [], []
    for batch in dataset.to_batches(columns=["embedding"]):
        xy = (to_matrix(batch.column(0)) - mean) @ comps
        xs.append(xy[:, 0].astype(np.float32))
        ys.append(xy[:, 1].astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)
