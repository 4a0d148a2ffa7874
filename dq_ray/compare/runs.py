"""Reading what a drift comparison needs from a finished run: one streamed pass over the signal columns of ``docs/``.

:func:`open_run` refuses anything that is not a finished dq-ray run (a ``manifest.json`` written by dq-ray with
``status: succeeded``). :func:`scan_run` reads only the columns it compares (never ``text``, embeddings or other
list columns), batch by batch, and keeps:

* for numeric signals, a uniform sample of at most ``max_values`` values per column (every value below that): the
  quantiles, KS and PSI are computed on it;
* for boolean flags, exact true / false / null counts;
* for categorical columns, exact counts per category (a column with more than ``max_categories`` distinct values
  is dropped as an identifier, not a category);
* for every column read, the exact null count;

and reads the rejection reasons from ``rejected/`` (two small columns).
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

#: Never compared: keys, text, the run-local positions and group ids.
SKIPPED = {"id", "text", "source_file", "source_index", "raw", "raw_bytes", "__filename"}
#: Numeric columns whose values mean something only inside one run (an independent fit's coordinates).
RUN_LOCAL = {"map_x", "map_y"}
#: Integer columns that are category labels, not quantities (suffixes): ``topic_id``, ``topic_coarse_id``.
CATEGORY_INT_SUFFIXES = ("_id",)
#: Suffixes of ids that only mean something inside one run (a group's or a dedup cluster's number).
RUN_LOCAL_SUFFIXES = ("_group", "_cluster")
#: String columns holding several categories, with their separator (``pii_kinds``: ``"email,phone"``).
MULTI_VALUED = {"pii_kinds": ","}
#: The label counted for a null or empty categorical value.
NONE = "none"


class NotAFinishedRunError(RuntimeError):
    """A path that is not a finished dq-ray run (no dq-ray manifest, or a run that did not succeed)."""


@dataclass
class ColumnPlan:
    """Which columns of ``docs/`` are compared, and as what."""

    numeric: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.flags, *self.categorical]


@dataclass
class RunScan:
    """What one pass over a run read: sampled numeric values, flag and category counts, nulls, rejections."""

    path: str
    manifest: dict[str, Any]
    rows: int = 0
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    flags: dict[str, dict[str, int]] = field(default_factory=dict)
    categories: dict[str, Counter] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    high_cardinality: set[str] = field(default_factory=set)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    sampled: bool = False

    def numeric(self, column: str) -> np.ndarray:
        parts = self.values.get(column) or []
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def input_records(self) -> int:
        counts = self.manifest.get("counts") or {}
        if counts.get("input") is not None:
            return int(counts["input"])
        return self.rows + sum(self.rejected_by_reason.values())


@dataclass
class OpenRun:
    """A finished run: its RunDir, manifest, ``docs/`` files and their schema."""

    run: Any
    manifest: dict[str, Any]
    files: list[str]
    schema: pa.Schema

    @property
    def name(self) -> str:
        return posixpath.basename(self.run.root.rstrip("/")) or "run"


def open_run(path: str) -> OpenRun:
    """The run at ``path``; raises :class:`NotAFinishedRunError` unless it is a finished (succeeded) dq-ray run."""
    import pyarrow.dataset as pads

    from dq_ray.io import RunDir, redact_url
    from dq_ray.io.baseline import run_problem

    run = RunDir(path)
    manifest, files, problem = run_problem(run)
    if problem is not None:
        raise NotAFinishedRunError(f"{redact_url(run.path)} {problem}")
    schema = pads.dataset(files, filesystem=run.fs, format="parquet").schema
    return OpenRun(run, manifest, files, schema)


def plan_columns(a: pa.Schema, b: pa.Schema) -> ColumnPlan:
    """The columns present in both schemas, sorted into numeric signals, boolean flags and categorical columns."""
    plan = ColumnPlan()
    for name in a.names:
        if name not in b.names or name in SKIPPED:
            continue
        ta, tb = a.field(name).type, b.field(name).type
        if pa.types.is_boolean(ta) and pa.types.is_boolean(tb):
            plan.flags.append(name)
        elif _is_number(ta) and _is_number(tb):
            if name in RUN_LOCAL:
                plan.skipped[name] = "coordinates of a run-local fit"
            elif name.endswith(RUN_LOCAL_SUFFIXES):
                plan.skipped[name] = "a run-local group or cluster id"
            elif pa.types.is_integer(ta) and name.endswith(CATEGORY_INT_SUFFIXES):
                plan.categorical.append(name)
            else:
                plan.numeric.append(name)
        elif _is_string(ta) and _is_string(tb):
            if name.endswith(RUN_LOCAL_SUFFIXES):
                plan.skipped[name] = "a run-local group or cluster id"
            else:
                plan.categorical.append(name)
        else:
            plan.skipped[name] = f"type {ta} is not compared"
    return plan


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def scan_run(
    opened: OpenRun, plan: ColumnPlan, max_values: int = 1_000_000, max_categories: int = 1000, seed: int = 0
) -> RunScan:
    """One streamed pass over ``docs/`` (only ``plan``'s columns) and the reasons in ``rejected/``."""
    import pyarrow.dataset as pads

    from dq_ray.io.rundir import parquet_rows

    run = opened.run
    scan = RunScan(path=run.path, manifest=opened.manifest)
    total = parquet_rows(run.fs, opened.files)
    keep = min(1.0, max_values / max(total, 1))
    scan.sampled = keep < 1.0
    rng = np.random.default_rng(seed)
    scan.values = {c: [] for c in plan.numeric}
    scan.flags = {c: {"true": 0, "false": 0, "null": 0} for c in plan.flags}
    scan.categories = {c: Counter() for c in plan.categorical}
    scan.nulls = {c: 0 for c in plan.columns}
    dataset = pads.dataset(opened.files, filesystem=run.fs, format="parquet")
    for batch in dataset.to_batches(columns=plan.columns):
        n = batch.num_rows
        scan.rows += n
        mask = rng.random(n) < keep if scan.sampled else None
        for col in plan.numeric:
            arr = batch.column(col)
            scan.nulls[col] += arr.null_count
            values = arr.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
            if mask is not None:
                values = values[mask]
            scan.values[col].append(values[np.isfinite(values)])
        for col in plan.flags:
            arr = batch.column(col)
            trues = int(pc.sum(arr).as_py() or 0)
            counts = scan.flags[col]
            counts["true"] += trues
            counts["null"] += arr.null_count
            counts["false"] += n - trues - arr.null_count
            scan.nulls[col] += arr.null_count
        for col in plan.categorical:
            arr = batch.column(col)
            scan.nulls[col] += arr.null_count
            if col not in scan.high_cardinality:
                _count_categories(scan, col, arr, max_categories)
    scan.rejected_by_reason = _rejections(run)
    log.info("read %s: %d documents, %d columns", run.path, scan.rows, len(plan.columns))
    return scan


def _count_categories(scan: RunScan, col: str, arr: pa.Array, max_categories: int) -> None:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if col in MULTI_VALUED:  # one count per document holding the category (a document may hold several)
        filled = pc.fill_null(arr, "")
        parts = pc.split_pattern(filled, MULTI_VALUED[col])
        empty = pc.equal(pc.utf8_length(filled), 0)
        scan.categories[col][NONE] += int(pc.sum(empty).as_py() or 0)
        values = pc.list_flatten(parts)
        values = values.filter(pc.greater(pc.utf8_length(values), 0))
    else:
        values = arr
    counter = scan.categories[col]
    for item in pc.value_counts(values).to_pylist():
        key = NONE if item["values"] is None or item["values"] == "" else str(item["values"])
        counter[key] += int(item["counts"])
    if len(counter) > max_categories:
        scan.high_cardinality.add(col)
        counter.clear()


def _rejections(run: Any) -> dict[str, int]:
    """Rejected records per reason (``rejected/``), largest first."""
    table = run.read_table("rejected", columns=["reason"])
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("reason").combine_chunks()).to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: -c["counts"])}
