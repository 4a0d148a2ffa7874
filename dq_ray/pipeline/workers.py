"""What runs inside Ray workers: the read task, the stage map and groupby functions, the stage actor, commits,
fit-data sampling, and the statistics actor they report to.

Everything here is handed to Ray Data by :mod:`dq_ray.pipeline.plan`. A stage that raises on a document sends it
to ``rejected/`` (``stage_error``) after bisecting its batch. Fault injection (tests only) has its own map
function, :func:`faulty_map_stage`, chosen when the plan is built: the plain :func:`map_stage` never touches it.
"""

from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dq_ray.config import StageConfig
from dq_ray.io import InputFile, RunDir, ShardResult, read_shard
from dq_ray.pipeline.cache import drop_text_hash, split_cached
from dq_ray.pipeline.faults import Faults
from dq_ray.stage import Stage

log = logging.getLogger(__name__)

BUCKET_COLUMN = "_dq_bucket"
SAMPLE_KEY = "_dq_sample_key"
#: CPUs a read or commit task holds: they mostly wait for storage
READ_CPUS = 0.5


# -- per-stage statistics ------------------------------------------------------------------------------


def stats_actor_class():
    """The Ray actor class that collects per-stage statistics (made on demand: defining it imports Ray)."""
    import ray

    @ray.remote(num_cpus=0)
    class StageStats:
        """Collects (rows, seconds) per stage from every worker, for the manifest.

        Each report carries a key naming its batch; a batch reported twice (a retried task, a restarted actor)
        counts once. The driver's progress reporter (:mod:`dq_ray.pipeline.progress`) polls :meth:`progress`.
        """

        def __init__(self) -> None:
            self.data: dict[str, dict[str, Any]] = {}
            self.seen: set[tuple[str, str]] = set()
            #: the reports in arrival order (the same tuples as ``seen``), for :meth:`progress`
            self.order: list[tuple[str, str]] = []

        def record(
            self, stage: str, key: str, rows: int, busy: float, start: float, end: float, setup: float, worker: str
        ) -> None:
            """Add one batch of ``stage`` (``key`` names it; the read stage's key is its input file)."""
            batch = (stage, key)
            if batch in self.seen:
                return
            self.seen.add(batch)
            self.order.append(batch)
            s = self.data.setdefault(
                stage,
                {"rows": 0, "busy_s": 0.0, "setup_s": 0.0, "start": start, "end": end, "calls": 0, "workers": set()},
            )
            s["workers"].add(worker)
            s["rows"] += rows
            s["busy_s"] += busy
            s["setup_s"] += setup
            s["calls"] += 1
            s["start"] = min(s["start"], start)
            s["end"] = max(s["end"], end)

        def summary(self) -> dict[str, dict[str, Any]]:
            """Per stage: rows, busy and setup seconds, first start and last end (Unix), batches, workers (a set)."""
            return self.data

        def progress(self, since: int = 0) -> dict[str, Any]:
            """What a progress poll needs, small: the per-stage totals of :meth:`summary` (``workers`` as a count),
            the ``(stage, key)`` pairs reported after the first ``since`` (``new``) and how many there are now
            (``next``: the ``since`` of the next poll)."""
            stages = {name: {**s, "workers": len(s["workers"])} for name, s in self.data.items()}
            return {"stages": stages, "new": self.order[since:], "next": len(self.order)}

    return StageStats


def _record(stats: Any, stage: str, key: str, rows: int, busy: float, start: float, end: float, setup: float = 0.0):
    """Report one batch of ``stage`` to the statistics actor (named by this worker's node and process)."""
    import ray

    worker = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"
    ray.get(stats.record.remote(stage, key, rows, busy, start, end, setup, worker))


def _batch_key(batch: pa.Table) -> str:
    """Names a batch by its first row and size (stable when Ray retries the batch)."""
    if not batch.num_rows:
        return "empty"
    return f"{batch.column('source_file')[0].as_py()}#{batch.column('source_index')[0].as_py()}+{batch.num_rows}"


# -- reading ---------------------------------------------------------------------------------------------


def read_files(batch: pa.Table, input_cfg: Any, run_path: str, stats: Any) -> Iterator[pa.Table]:
    """Read the input files named in ``batch`` (one per row); rejections and receipts go to the run dir."""
    run = RunDir(run_path)
    for row in batch.to_pylist():
        shard = InputFile(**row)
        result = ShardResult(shard.path)
        start = time.time()
        busy = 0.0
        t0 = time.perf_counter()
        for table in read_shard(shard, input_cfg, result):
            busy += time.perf_counter() - t0
            yield table
            t0 = time.perf_counter()
        busy += time.perf_counter() - t0
        run.write_shard_outputs(result)
        _record(stats, "read", result.path, result.records, busy, start, time.time())


# -- stages ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRef:
    """What a Ray worker needs to rebuild a stage: its config, where its fitted artifacts are, the run and phase
    (stage rejections are written there), and the injected faults (None, the normal case: no fault code runs)."""

    config: StageConfig
    artifacts_dir: str
    run_path: str = ""
    phase: int = 0
    faults: Faults | None = None
    #: the digests of the stage's signed artifacts, verified on the driver (``dq_ray.artifacts``); None: no fit
    artifact_digests: dict[str, str] | None = None
    #: an incremental run's content-hash cache of this stage (``dq_ray.pipeline.cache``); None: compute every row
    cache: str | None = None


class StageSetupError(RuntimeError):
    """A stage could not be set up in a worker (a model that does not load, an engine that fails)."""


_WORKER_STAGES: dict[int, list] = {}  # key -> [stage, setup seconds not yet reported]
_WORKER_CALLS: dict[str, int] = {}  # stage -> batches this worker processed (for kill_actor faults)

#: how a worker runs a stage on a batch (or a piece of one, when bisecting): ``(stage, batch) -> output``
StageCall = Callable[[Stage, pa.Table], pa.Table]


def _worker_stage(ref: StageRef, claim: bool = True) -> tuple[Stage, float]:
    """The stage object of this worker process, built and set up once. Returns it and its setup time, which
    the first claiming call gets (for the stage statistics) and later calls get as 0."""
    key = hash((ref.config.name, repr(ref.config.params), ref.artifacts_dir))
    if key not in _WORKER_STAGES:
        t0 = time.perf_counter()
        try:
            if ref.faults is not None:
                ref.faults.before_setup(ref.config.name)
            stage = _build_stage(ref)
        except Exception as exc:
            raise StageSetupError(
                f"stage {ref.config.name!r} could not be set up on {platform.node()}: {type(exc).__name__}: {exc}"
            ) from exc
        _WORKER_STAGES[key] = [stage, time.perf_counter() - t0]
    entry = _WORKER_STAGES[key]
    setup = entry[1]
    if claim:
        entry[1] = 0.0
    return entry[0], setup


def _build_stage(ref: StageRef) -> Stage:
    """The stage of ``ref``, its fitted artifacts attached, set up."""
    stage = ref.config.build()
    stage.artifacts_dir, stage.artifact_digests = ref.artifacts_dir, ref.artifact_digests
    stage.ensure_setup()
    return stage


def _bucket_of(keys: pa.Array, num_buckets: int) -> pa.Array:
    """The hash bucket (groupby partition) of every key."""
    values = keys.to_pylist()
    return pa.array([xxhash.xxh32_intdigest(str(v).encode()) % num_buckets for v in values], pa.int32())


def _call_stage(stage: Stage, batch: pa.Table) -> pa.Table:
    """Run ``stage`` on ``batch``; it must keep the row count."""
    out = stage.process(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {batch.num_rows}")
    return out


def _isolate(stage: Stage, batch: pa.Table, call: StageCall) -> tuple[list[pa.Table], list[tuple[pa.Table, str]]]:
    """Process ``batch``; on an exception, bisect it to find the rows that fail. Returns (outputs, failures)."""
    try:
        return [call(stage, batch)], []
    except MemoryError:
        raise
    except Exception as exc:
        if batch.num_rows <= 1:
            return [], [(batch, f"{type(exc).__name__}: {exc}")]
        mid = batch.num_rows // 2
        left = _isolate(stage, batch.slice(0, mid), call)
        right = _isolate(stage, batch.slice(mid), call)
        return left[0] + right[0], left[1] + right[1]


def _stage_rejections(stage: str, failures: list[tuple[pa.Table, str]]) -> list[dict[str, Any]]:
    """The ``rejected/`` rows (``stage_error``) of the documents a stage raised on."""
    rows = []
    for table, error in failures:
        for rec in table.select(["id", "source_file", "source_index"]).to_pylist():
            rows.append(
                {
                    "source_file": rec["source_file"],
                    "source_index": rec["source_index"],
                    "stage": stage,
                    "reason": "stage_error",
                    "detail": error[:1000],
                    "id": rec["id"],
                    "raw": None,
                    "raw_truncated": False,
                }
            )
    return rows


def _map_batch(batch: pa.Table, ref: StageRef, stats: Any, num_buckets: int, call: StageCall) -> pa.Table:
    """Run the stage on ``batch`` (bisecting around documents that raise), add the groupby bucket, report."""
    stage, setup = _worker_stage(ref)
    start, t0 = time.time(), time.perf_counter()
    todo, hits = split_cached(batch, ref.cache) if ref.cache else (batch, None)
    outputs, failures = _isolate(stage, todo, call) if todo.num_rows or hits is None else ([], [])
    if hits is not None:  # documents scored by the baseline: its values, not computed again
        outputs.append(hits)
        _record(stats, f"{stage.name}.cached", _batch_key(batch), hits.num_rows, 0.0, start, time.time())
    if failures:
        if not outputs and todo.num_rows > 1:  # not one poison document: the stage itself is broken
            raise RuntimeError(f"stage {stage.name} failed on every document of a batch: {failures[0][1]}")
        rejected = _stage_rejections(stage.name, failures)
        log.warning(
            "stage %s: %d document(s) raised and go to rejected/ (%s)", stage.name, len(rejected), failures[0][1]
        )
        RunDir(ref.run_path).write_stage_rejections(ref.phase, stage.name, rejected)
    out = pa.concat_tables(outputs, promote_options="permissive") if len(outputs) != 1 else outputs[0]
    if stage.group_key:
        out = out.append_column(BUCKET_COLUMN, _bucket_of(out.column(stage.group_key), num_buckets))
    _record(stats, stage.name, _batch_key(batch), batch.num_rows, time.perf_counter() - t0, start, time.time(), setup)
    return out


def map_stage(batch: pa.Table, ref: StageRef, stats: Any, num_buckets: int) -> pa.Table:
    """A stage's ``map_batches`` function (the normal case: no injected fault)."""
    return _map_batch(batch, ref, stats, num_buckets, _call_stage)


def faulty_map_stage(batch: pa.Table, ref: StageRef, stats: Any, num_buckets: int) -> pa.Table:
    """:func:`map_stage` with the injected faults of ``ref.faults`` (tests only): ``slow`` before the batch,
    ``poison`` on every piece the stage is called on, ``kill_actor`` once the batch is done and reported."""
    faults = ref.faults
    if faults is None:
        return map_stage(batch, ref, stats, num_buckets)

    def poisoned_call(stage: Stage, piece: pa.Table) -> pa.Table:
        faults.check_rows(stage.name, piece.column("id").to_pylist())
        return _call_stage(stage, piece)

    name = _worker_stage(ref, claim=False)[0].name  # set up first, as without faults: slow delays the batch only
    faults.before_batch(name)
    out = _map_batch(batch, ref, stats, num_buckets, poisoned_call)
    calls = _WORKER_CALLS.get(name, 0)
    _WORKER_CALLS[name] = calls + 1
    faults.after_batch(name, calls, RunDir(ref.run_path).root)
    return out


def group_stage(rows: pa.Table, ref: StageRef, stats: Any) -> pa.Table:
    """A grouping stage's ``map_groups`` function: one hash bucket of its key, whole."""
    stage, setup = _worker_stage(ref)
    return _group_bucket(stage, rows, stats, setup)


def group_here(rows: pa.Table, ref: StageRef, stats: Any) -> pa.Table:
    """A small grouping phase on the driver (``ray.local_group_bytes``): every hash bucket of ``rows`` through the
    stage's ``process_groups``, as :func:`group_stage` does in a Ray task. The stage is built for this call only
    (the driver keeps no worker state)."""
    t0 = time.perf_counter()
    stage = _build_stage(ref)
    setup = time.perf_counter() - t0
    buckets = rows.column(BUCKET_COLUMN)
    out = []
    for bucket in pc.unique(buckets).to_pylist():
        out.append(_group_bucket(stage, rows.filter(pc.equal(buckets, bucket)), stats, setup))
        setup = 0.0
    return pa.concat_tables(out) if out else rows.drop_columns([BUCKET_COLUMN])


def _group_bucket(stage: Stage, rows: pa.Table, stats: Any, setup: float) -> pa.Table:
    """One hash bucket through ``stage.process_groups``, reported to the statistics actor."""
    start, t0 = time.time(), time.perf_counter()
    key = _batch_key(rows)
    out = stage.process_groups(rows.drop_columns([BUCKET_COLUMN]))
    if out.num_rows != rows.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {rows.num_rows}")
    _record(stats, f"{stage.name}.group", key, rows.num_rows, time.perf_counter() - t0, start, time.time(), setup)
    return out


class StageActor:
    """Holds a stateful or ``cpu_pool`` stage (a model, an index, a tokenizer) in a Ray actor for the whole run."""

    def __init__(self, ref: StageRef, stats: Any, num_buckets: int) -> None:
        self.ref, self.stats, self.num_buckets = ref, stats, num_buckets
        self.map = map_stage if ref.faults is None else faulty_map_stage
        _worker_stage(ref, claim=False)  # the first batch reports the setup time

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.map(batch, self.ref, self.stats, self.num_buckets)


# -- the run's own Parquet, commits and fit data ---------------------------------------------------------


def read_committed(paths: Sequence[str], columns: Sequence[str] | None = None, max_retries: int = 3):
    """A Ray dataset of committed Parquet files of the run (``_work/``, ``docs/``): one Ray task per file, which
    pyarrow reads whole (a file holds at most ``output.rows_per_file`` rows). Ray Data's ``read_parquet`` would
    first list the files and read their footers in actors it starts for that, about 1.5 s per read on a small
    machine (benchmarks/README.md, "Fixed costs"); the files here are already known."""
    import ray.data

    items = [{"path": p} for p in paths]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    with warnings.catch_warnings():  # retries are only a remote arg in Ray 2.60 (see plan._map_batches)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(
            _read_parquet_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"columns": list(columns) if columns else None},
            num_cpus=READ_CPUS,
            max_retries=max_retries,
        )


def _read_parquet_files(batch: pa.Table, columns: list[str] | None) -> pa.Table:
    """Ray Data UDF of :func:`read_committed`: the Parquet files named in ``batch``, read with pyarrow."""
    import fsspec
    import pyarrow.parquet as pq

    tables = []
    for path in batch.column("path").to_pylist():
        fs, local = fsspec.core.url_to_fs(path)
        with fs.open(local, "rb") as fh:
            tables.append(pq.read_table(fh, columns=columns))
    return pa.concat_tables(tables, promote_options="default")


def committed_files(path: str) -> list[str]:
    """The Parquet files under ``path`` (a local path or an fsspec URL), sorted, as :func:`read_committed` takes
    them."""
    import fsspec

    from dq_ray.io.discover import qualify

    fs, root = fsspec.core.url_to_fs(path)
    return [qualify(fs, f) for f in sorted(fs.glob(f"{root.rstrip('/')}/**/*.parquet"))]


def commit(batch: pa.Table, run_path: str, folder: str) -> pa.Table:
    """Write a block into ``RUN/<folder>/`` (one atomically renamed file per input shard); return what was written."""
    if folder == "docs":
        batch = drop_text_hash(batch)
    written = RunDir(run_path).commit_rows(folder, batch) if batch.num_rows else []
    return pa.table({"file": [f for f, _ in written], "rows": pa.array([n for _, n in written], pa.int64())})


def _sample_key(batch: pa.Table, seed: int, cutoff: int) -> pa.Table:
    """Rows whose pseudo-random key (stable across runs, independent of how rows are split) is <= cutoff."""
    files = batch.column("source_file").to_pylist()
    idx = batch.column("source_index").to_pylist()
    keys = pa.array([xxhash.xxh3_64_intdigest(f"{f}#{i}".encode(), seed=seed) for f, i in zip(files, idx)], pa.uint64())
    batch = batch.append_column(SAMPLE_KEY, keys)
    return batch.filter(pc.less_equal(keys, pa.scalar(cutoff, pa.uint64())))


class ParquetFitData:
    """:class:`~dq_ray.stage.FitData` over a phase's committed output (``RUN/_work/phase-N/``)."""

    def __init__(self, path: str, artifacts_dir: str, rows: int) -> None:
        self.path, self.artifacts_dir, self._rows = path, artifacts_dir, rows

    def num_rows(self) -> int:
        return self._rows

    def dataset(self, columns: Sequence[str] | None = None):
        files = committed_files(self.path)
        if not files:
            import ray.data

            return ray.data.read_parquet(self.path, columns=list(columns) if columns else None)  # its error
        return read_committed(files, columns)

    def read(self, columns: Sequence[str]) -> pa.Table:
        """The whole data as one table on the driver, read with pyarrow (for small fits: no Ray Data execution)."""
        files = committed_files(self.path)
        if not files:
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        return _read_parquet_files(pa.table({"path": files}), list(columns))

    def sample(self, columns: Sequence[str], n: int, seed: int = 0) -> pa.Table:
        """Keep the rows with the ``n`` smallest hash keys (drawn in Ray tasks), in input order."""
        keys = ["source_file", "source_index"]
        cols = list(dict.fromkeys([*columns, *keys]))
        # oversample by a hash threshold in Ray tasks, then cut exactly n on the driver
        fraction = min(1.0, 1.5 * n / max(self._rows, 1) + 1e-3) if n < self._rows else 1.0
        cutoff = min(2**64 - 1, int(fraction * 2**64))
        ds = self.dataset(cols).map_batches(
            _sample_key, fn_kwargs={"seed": seed, "cutoff": cutoff}, batch_format="pyarrow"
        )
        rows = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
        table = pa.concat_tables(rows) if rows else pa.table({c: [] for c in cols + [SAMPLE_KEY]})
        if table.num_rows > n:
            table = table.take(pc.sort_indices(table, [(SAMPLE_KEY, "ascending")])[:n])
        table = table.take(pc.sort_indices(table, [(k, "ascending") for k in keys]))
        return table.select(list(columns))
