"""Drift between two finished runs: ``dq-ray compare RUN_A RUN_B`` (A: the baseline, B: the new run).

* :mod:`dq_ray.compare.drift`: the statistics (quantiles, Kolmogorov-Smirnov, population stability index) and
  :class:`Thresholds`, which decide when a column counts as ``shifted``;
* :mod:`dq_ray.compare.runs`: one streamed pass over each run's ``docs/`` (only the compared columns, never the
  text) and its ``rejected/`` reasons;
* :mod:`dq_ray.compare.summary`: the numbers (``compare.json``);
* :mod:`dq_ray.compare.render`: ``compare.md`` and ``compare.html``, with the curation report's renderer.

:func:`compare_runs` does all of it; nothing needs Ray.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Any

from dq_ray.compare.drift import Thresholds, ks_test, psi
from dq_ray.compare.render import plots, write_compare
from dq_ray.compare.runs import NotAFinishedRunError, open_run, plan_columns, scan_run
from dq_ray.compare.summary import clean_json, compare_scans

log = logging.getLogger(__name__)

__all__ = [
    "CompareResult",
    "NotAFinishedRunError",
    "Thresholds",
    "compare_runs",
    "format_compare",
    "ks_test",
    "psi",
]


@dataclass
class CompareResult:
    """What :func:`compare_runs` wrote: the output directory, the numbers (``compare.json``) and the file paths."""

    output_dir: str
    summary: dict[str, Any]
    paths: dict[str, str]


def compare_runs(
    run_a: str,
    run_b: str,
    output: str | None = None,
    thresholds: Thresholds | None = None,
    max_values: int = 1_000_000,
    seed: int = 0,
) -> CompareResult:
    """Compare run B against run A and write ``compare.json``, ``compare.md`` and ``compare.html`` into ``output``
    (default ``RUN_B/compare-<name of RUN_A>``: the report lives with the new run).

    Raises :class:`NotAFinishedRunError` when either path is not a finished (succeeded) dq-ray run. ``max_values``:
    numeric values sampled per column and run for the quantiles, KS and PSI (counts are always exact).
    """
    from dq_ray.io.guard import check_output

    t = thresholds or Thresholds()
    a_run, b_run = open_run(run_a), open_run(run_b)
    out = output or f"{b_run.run.path}/compare-{a_run.name}"
    check_output(out)
    plan = plan_columns(a_run.schema, b_run.schema)
    a = scan_run(a_run, plan, max_values=max_values, seed=seed)
    b = scan_run(b_run, plan, max_values=max_values, seed=seed + 1)
    summary = clean_json(compare_scans(a_run, a, b_run, b, plan, t))
    summary["output"] = out
    images = plots(summary, {c: (a.numeric(c), b.numeric(c)) for c in plan.numeric})
    paths = write_compare(out, summary, images)
    log.info("compared %s with %s: %s", a_run.name, b_run.name, summary["verdict"]["status"])
    return CompareResult(out, summary, paths)


def format_compare(result: CompareResult) -> str:
    """The short text the CLI prints: the verdict, the shifted columns and where the report is."""
    s = result.summary
    v = s["verdict"]
    a, b = s["run_a"], s["run_b"]
    lines = [
        f"A (baseline): {a['path']}  {a['documents']:,} documents",
        f"B (new):      {b['path']}  {b['documents']:,} documents",
        f"verdict: {v['status'].upper()}  ({v['shifted_count']} shifted, {v['compared_columns']} columns compared)",
    ]
    for kind, cols in v["shifted"].items():
        if cols:
            lines.append(f"  shifted {kind.replace('_', ' ')}: {', '.join(cols)}")
    lines.append(f"report: {result.paths['markdown']}, {posixpath.basename(result.paths['html'])}, compare.json")
    return "\n".join(lines)
