"""The numbers of a drift comparison between run A (the baseline) and run B: ``compare.json``.

:func:`compare_scans` turns two :class:`~dq_ray.compare.runs.RunScan` into one JSON-ready dict:

* ``verdict``: ``drift`` or ``stable``, and every shifted column by kind;
* ``signals``: per numeric signal, quantiles and mean of A and B, KS statistic and p-value, PSI, verdict;
* ``flags``: per boolean flag (``*_pass``, ``*_keep``, ...), the true rate of A and B, the difference, verdict;
* ``categories``: per categorical column (``lang``, ``topic_id``, ``pii_kinds``, ``*_reason``, kept input fields),
  shares of A and B, categories that appeared / disappeared / grew / shrank, PSI, total variation distance;
* ``rejections``: rejected records per reason, as a rate of the input records, A vs B;
* ``duplicates``: the share of documents not kept by exact, MinHash and semantic dedup (``*_keep`` false);
* ``nulls``: the null rate of every compared column, A vs B;
* ``columns``: columns only in A, only in B, and those not compared (with why).
"""

from __future__ import annotations

import math
from typing import Any

from dq_ray.compare.drift import (
    SHIFTED,
    Thresholds,
    compare_categories,
    compare_numeric,
    compare_rates,
)
from dq_ray.compare.runs import ColumnPlan, OpenRun, RunScan

#: The dedup flags whose false share is a duplicate rate (the curation report's names).
DEDUP_FLAGS = {"exact": "exact_dup_keep", "near (MinHash)": "minhash_keep", "semantic (SemDeDup)": "semdedup_keep"}


def run_info(opened: OpenRun, scan: RunScan) -> dict[str, Any]:
    """Who a run is: path, id, status, when, stages, document and record counts."""
    m = opened.manifest
    return {
        "path": m.get("run_dir") or opened.run.path,
        "name": opened.name,
        "run_id": m.get("run_id"),
        "status": m.get("status"),
        "started_at": m.get("started_at"),
        "dq_ray_version": m.get("dq_ray_version"),
        "stages": [s.get("name") for s in (m.get("config") or {}).get("stages", []) if isinstance(s, dict)],
        "documents": scan.rows,
        "input_records": scan.input_records,
        "sampled": scan.sampled,
        "sampled_values": max((len(scan.numeric(c)) for c in scan.values), default=0),
    }


def compare_scans(
    a_run: OpenRun, a: RunScan, b_run: OpenRun, b: RunScan, plan: ColumnPlan, thresholds: Thresholds
) -> dict[str, Any]:
    """The comparison of two scanned runs (see the module docstring)."""
    t = thresholds
    signals = {c: compare_numeric(a.numeric(c), b.numeric(c), t) for c in plan.numeric}
    flags = {}
    for c in plan.flags:
        fa, fb = a.flags[c], b.flags[c]
        flags[c] = compare_rates(fa["true"], fa["true"] + fa["false"], fb["true"], fb["true"] + fb["false"], t)
    categories = {}
    skipped = dict(plan.skipped)
    for c in plan.categorical:
        if c in a.high_cardinality or c in b.high_cardinality:
            skipped[c] = "too many distinct values for a category"
            continue
        categories[c] = compare_categories(a.categories[c], a.rows, b.categories[c], b.rows, t)
    nulls = {c: compare_rates(a.nulls[c], a.rows, b.nulls[c], b.rows, t) for c in plan.columns}
    dups = {
        kind: {"column": col, **compare_rates(a.flags[col]["false"], a.rows, b.flags[col]["false"], b.rows, t)}
        for kind, col in DEDUP_FLAGS.items()
        if col in plan.flags
    }
    rejections = _rejections(a, b, t)
    a_names, b_names = set(a_run.schema.names), set(b_run.schema.names)
    shifted = {
        "signals": [c for c, s in signals.items() if s["verdict"] == SHIFTED],
        "flags": [c for c, s in flags.items() if s["verdict"] == SHIFTED],
        "categories": [c for c, s in categories.items() if s["verdict"] == SHIFTED],
        "null_rates": [c for c, s in nulls.items() if s["verdict"] == SHIFTED],
        "rejections": [r for r, s in rejections["by_reason"].items() if s["verdict"] == SHIFTED],
    }
    if rejections["total"]["verdict"] == SHIFTED:
        shifted["rejections"].insert(0, "all reasons")
    n_shifted = sum(len(v) for v in shifted.values())
    compared = len(signals) + len(flags) + len(categories)
    return {
        "run_a": run_info(a_run, a),
        "run_b": run_info(b_run, b),
        "thresholds": t.to_dict(),
        "verdict": {
            "status": "drift" if n_shifted else "stable",
            "shifted": shifted,
            "shifted_count": n_shifted,
            "compared_columns": compared,
        },
        "signals": signals,
        "flags": flags,
        "categories": categories,
        "rejections": rejections,
        "duplicates": dups,
        "nulls": nulls,
        "columns": {
            "only_a": sorted(a_names - b_names),
            "only_b": sorted(b_names - a_names),
            "not_compared": skipped,
        },
    }


def _rejections(a: RunScan, b: RunScan, t: Thresholds) -> dict[str, Any]:
    """Rejected records per reason as a rate of the input records, A vs B (largest in either first)."""
    na, nb = a.input_records, b.input_records
    reasons = sorted(
        set(a.rejected_by_reason) | set(b.rejected_by_reason),
        key=lambda r: -max(a.rejected_by_reason.get(r, 0) / max(na, 1), b.rejected_by_reason.get(r, 0) / max(nb, 1)),
    )
    return {
        "input_records": {"a": na, "b": nb},
        "total": compare_rates(sum(a.rejected_by_reason.values()), na, sum(b.rejected_by_reason.values()), nb, t),
        "by_reason": {
            r: compare_rates(a.rejected_by_reason.get(r, 0), na, b.rejected_by_reason.get(r, 0), nb, t) for r in reasons
        },
    }


def clean_json(value: Any) -> Any:
    """``value`` with every non-finite float as None (``compare.json`` is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
