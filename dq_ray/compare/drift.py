"""Drift statistics between two samples: quantiles, Kolmogorov-Smirnov, the population stability index, verdicts.

Pure functions over numpy arrays and count dictionaries; nothing here reads a run (see :mod:`dq_ray.compare.runs`).

* :func:`ks_test`: the two-sample Kolmogorov-Smirnov statistic (the largest gap between the two empirical CDFs) and
  its p-value (:func:`scipy.stats.ks_2samp`, two-sided);
* :func:`psi`: the population stability index over the baseline's deciles,
  ``sum((b_i - a_i) * ln(b_i / a_i))`` with the shares ``a_i``, ``b_i`` of each bin floored at ``eps``; the usual
  reading is < 0.1 no change, 0.1-0.2 a moderate change, >= 0.2 a significant one;
* :func:`category_psi` and :func:`share_changes`: the same index and the per-category changes for categorical
  columns;
* :class:`Thresholds` and the ``*_verdict`` functions: when a column counts as ``shifted``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The quantiles shown for every numeric signal, A next to B.
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
STABLE = "stable"
SHIFTED = "shifted"
NOT_COMPARED = "n/a"


@dataclass(frozen=True)
class Thresholds:
    """When a column counts as ``shifted`` between run A (the baseline) and run B.

    Attributes:
        psi: a numeric signal or a categorical column whose population stability index is at least this
            (over A's deciles, or over the categories) has shifted. 0.2 is the usual "significant change".
        ks_pvalue: a numeric signal has also shifted when the Kolmogorov-Smirnov p-value is below this...
        ks_stat: ... and the KS statistic (the largest CDF gap) is at least this (so that a negligible gap on
            millions of documents is not called a shift).
        rate_diff: a boolean flag (pass / keep rate), a null rate, a duplicate rate or a rejection rate has
            shifted when it moved by at least this (absolute difference of the two rates).
        eps: the floor of a bin's (or category's) share in the PSI, so that an empty bin gives a finite index.
        psi_confirm_pvalue: a numeric signal's PSI counts only when the KS p-value is also below this: on small
            samples and tied values (a few distinct values: deciles merge) the PSI alone flags noise.
    """

    psi: float = 0.2
    ks_pvalue: float = 0.001
    ks_stat: float = 0.1
    rate_diff: float = 0.05
    eps: float = 1e-4
    psi_confirm_pvalue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("psi", "ks_stat", "rate_diff"):
            if getattr(self, name) < 0:
                raise ValueError(f"threshold {name} must be >= 0, got {getattr(self, name)}")
        for name in ("ks_pvalue", "psi_confirm_pvalue"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"threshold {name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _clean(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def distribution(values: np.ndarray) -> dict[str, Any]:
    """Count, mean and the quantiles p1, p10, p50, p90, p99 of a sample (non-finite values dropped)."""
    values = _clean(values)
    if len(values) == 0:
        return {"count": 0}
    qs = np.quantile(values, QUANTILES)
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        **{f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, qs)},
    }


def ks_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and two-sided p-value; ``(nan, nan)`` when a sample is empty."""
    from scipy import stats

    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    res = stats.ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def decile_edges(a: np.ndarray) -> np.ndarray:
    """The inner bin edges of the PSI: A's deciles (p10..p90), ties merged (a discrete signal has fewer bins)."""
    a = _clean(a)
    if len(a) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(a, np.linspace(0.1, 0.9, 9)))


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of ``values`` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    values = _clean(values)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def psi_of_shares(a: np.ndarray, b: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two share vectors over the same bins, each share floored at ``eps``."""
    a = np.maximum(np.asarray(a, dtype=np.float64), eps)
    b = np.maximum(np.asarray(b, dtype=np.float64), eps)
    return float(np.sum((b - a) * np.log(b / a)))


def psi(a: np.ndarray, b: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of B against A over A's deciles; nan when a sample is empty."""
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    edges = decile_edges(a)
    return psi_of_shares(binned_shares(a, edges), binned_shares(b, edges), eps)


def numeric_verdict(ks_stat: float, ks_pvalue: float, psi_value: float, t: Thresholds) -> str:
    """``shifted`` when PSI >= ``t.psi`` with KS p < ``t.psi_confirm_pvalue``, or KS p < ``t.ks_pvalue`` with KS
    statistic >= ``t.ks_stat``."""
    if any(math.isnan(x) for x in (ks_stat, ks_pvalue, psi_value)):
        return NOT_COMPARED
    if (psi_value >= t.psi and ks_pvalue < t.psi_confirm_pvalue) or (ks_pvalue < t.ks_pvalue and ks_stat >= t.ks_stat):
        return SHIFTED
    return STABLE


def compare_numeric(a: np.ndarray, b: np.ndarray, t: Thresholds) -> dict[str, Any]:
    """Quantiles of A and B, the KS statistic and p-value, the PSI and the verdict of one numeric signal."""
    stat, p = ks_test(a, b)
    index = psi(a, b, t.eps)
    return {
        "a": distribution(a),
        "b": distribution(b),
        "ks_stat": None if math.isnan(stat) else stat,
        "ks_pvalue": None if math.isnan(p) else p,
        "psi": None if math.isnan(index) else index,
        "verdict": numeric_verdict(stat, p, index, t),
    }


def rate_verdict(a: float | None, b: float | None, t: Thresholds) -> str:
    """``shifted`` when two rates differ by at least ``t.rate_diff``."""
    if a is None or b is None:
        return NOT_COMPARED
    return SHIFTED if abs(b - a) >= t.rate_diff else STABLE


def compare_rates(a_count: int, a_total: int, b_count: int, b_total: int, t: Thresholds) -> dict[str, Any]:
    """Two rates ``count / total``, their difference (B - A) and the verdict."""
    ra = a_count / a_total if a_total else None
    rb = b_count / b_total if b_total else None
    return {
        "a": ra,
        "b": rb,
        "diff": None if ra is None or rb is None else rb - ra,
        "a_count": int(a_count),
        "b_count": int(b_count),
        "verdict": rate_verdict(ra, rb, t),
    }


def shares(counts: Mapping[str, int], total: int) -> dict[str, float]:
    """Share of each category (count / total), largest first."""
    if total <= 0:
        return {}
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def category_psi(a: Mapping[str, float], b: Mapping[str, float], eps: float = 1e-4) -> float:
    """Population stability index over the union of the categories of two share maps."""
    keys = sorted(set(a) | set(b), key=str)
    if not keys:
        return 0.0
    return psi_of_shares(np.array([a.get(k, 0.0) for k in keys]), np.array([b.get(k, 0.0) for k in keys]), eps)


def share_changes(a: Mapping[str, float], b: Mapping[str, float], top: int = 10) -> dict[str, Any]:
    """Categories that appeared (only in B), disappeared (only in A), and the largest share changes."""
    keys = set(a) | set(b)
    diffs = sorted(
        ({"category": k, "a": a.get(k, 0.0), "b": b.get(k, 0.0), "diff": b.get(k, 0.0) - a.get(k, 0.0)} for k in keys),
        key=lambda d: (-abs(d["diff"]), str(d["category"])),
    )
    return {
        "appeared": sorted((k for k in b if k not in a), key=lambda k: -b[k]),
        "disappeared": sorted((k for k in a if k not in b), key=lambda k: -a[k]),
        "grew": [d["category"] for d in diffs if d["diff"] > 0][:top],
        "shrank": [d["category"] for d in diffs if d["diff"] < 0][:top],
        "top_changes": [d for d in diffs if d["diff"] != 0][:top],
        "tvd": 0.5 * sum(abs(d["diff"]) for d in diffs),
    }


def compare_categories(
    a_counts: Mapping[str, int], a_total: int, b_counts: Mapping[str, int], b_total: int, t: Thresholds
) -> dict[str, Any]:
    """Shares per category in A and B, their PSI, total variation distance, top changes and the verdict."""
    sa, sb = shares(a_counts, a_total), shares(b_counts, b_total)
    index = category_psi(sa, sb, t.eps) if sa and sb else math.nan
    out = {"a": sa, "b": sb, "psi": None if math.isnan(index) else index, **share_changes(sa, sb)}
    if math.isnan(index):
        out["verdict"] = NOT_COMPARED
    else:
        out["verdict"] = SHIFTED if index >= t.psi else STABLE
    return out
