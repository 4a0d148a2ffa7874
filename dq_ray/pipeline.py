"""The only module that builds Ray Data plans.

A run is: discover input files (driver, before Ray starts) -> one read task per file (documents out,
rejections and a receipt written beside the run) -> one ``map_batches`` per stage -> for stages with a
``group_key``, a Ray groupby over hash buckets of that key -> ``write_parquet`` into ``RUN/docs/``.
The text column is dropped as soon as no later stage reads it (unless ``output.keep_text``).

The library never calls ``ray.init()`` on its own: :func:`ray_session` is what the CLI and ``jobs/`` use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dq_ray import __version__
from dq_ray.config import JobConfig, RayConfig, StageConfig
from dq_ray.io import InputFile, RunDir, ShardResult, discover_inputs, read_shard
from dq_ray.stage import Stage, get_stage

log = logging.getLogger(__name__)

BUCKET_COLUMN = "_dq_bucket"
READ_CPUS = 0.5
ROWS_PER_FILE = 100_000
SAMPLE_KEY = "_dq_sample_key"
#: Bytes of shuffled signal rows per groupby partition we aim for (signals are ~10% of input bytes).
_SHUFFLE_BYTES_PER_PARTITION = 128 * 2**20
_SIGNAL_BYTES_PER_INPUT_BYTE = 0.1


# -- Ray session -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[dict[str, Any]]:
    """Connect to Ray for one job: the configured cluster, ``$RAY_ADDRESS``, or an embedded local Ray.

    An already initialised Ray (a test fixture, a Ray job driver) is used as is and left running.
    """
    import ray

    started = False
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            log.info("starting an embedded local Ray")
            ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        yield {
            "mode": "cluster" if (cfg.address or os.environ.get("RAY_ADDRESS")) else "embedded",
            "nodes": len(nodes),
            "cpus": ray.cluster_resources().get("CPU", 0),
            "gpus": ray.cluster_resources().get("GPU", 0),
            "ray_version": ray.__version__,
        }
    finally:
        if started:
            ray.shutdown()


# -- per-stage statistics ------------------------------------------------------------------------------


def _stats_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class StageStats:
        """Collects (rows, seconds) per stage from every worker, for the manifest."""

        def __init__(self) -> None:
            self.data: dict[str, dict[str, Any]] = {}

        def record(self, stage: str, rows: int, busy: float, start: float, end: float, setup: float, node: str) -> None:
            s = self.data.setdefault(
                stage,
                {"rows": 0, "busy_s": 0.0, "setup_s": 0.0, "start": start, "end": end, "calls": 0, "nodes": set()},
            )
            s["nodes"].add(node)
            s["rows"] += rows
            s["busy_s"] += busy
            s["setup_s"] += setup
            s["calls"] += 1
            s["start"] = min(s["start"], start)
            s["end"] = max(s["end"], end)

        def summary(self) -> dict[str, dict[str, Any]]:
            return self.data

    return StageStats


def _record(stats: Any, stage: str, rows: int, busy: float, start: float, end: float, setup: float = 0.0):
    import ray

    node = ray.get_runtime_context().get_node_id()
    ray.get(stats.record.remote(stage, rows, busy, start, end, setup, node))


# -- Ray Data UDFs ---------------------------------------------------------------------------------------


def _read_files(batch: pa.Table, input_cfg: Any, run_path: str, stats: Any) -> Iterator[pa.Table]:
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
        _record(stats, "read", result.records, busy, start, time.time())


@dataclass(frozen=True)
class StageRef:
    """What a Ray worker needs to rebuild a stage: its config and where its fitted artifacts are."""

    config: StageConfig
    artifacts_dir: str


_WORKER_STAGES: dict[int, tuple[Stage, float]] = {}


def _worker_stage(ref: StageRef) -> tuple[Stage, float]:
    """The stage object of this worker process, built and set up once (returns it and its setup time)."""
    key = hash((ref.config.name, repr(ref.config.params), ref.artifacts_dir))
    if key not in _WORKER_STAGES:
        t0 = time.perf_counter()
        stage = ref.config.build()
        stage.artifacts_dir = ref.artifacts_dir
        stage.ensure_setup()
        _WORKER_STAGES[key] = (stage, time.perf_counter() - t0)
        return _WORKER_STAGES[key]
    return _WORKER_STAGES[key][0], 0.0


def _bucket_of(keys: pa.Array, num_buckets: int) -> pa.Array:
    values = keys.to_pylist()
    return pa.array([xxhash.xxh32_intdigest(str(v).encode()) % num_buckets for v in values], pa.int32())


def _map_stage(batch: pa.Table, ref: StageRef, stats: Any, num_buckets: int) -> pa.Table:
    stage, setup = _worker_stage(ref)
    start, t0 = time.time(), time.perf_counter()
    out = stage.process(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {batch.num_rows}")
    if stage.group_key:
        out = out.append_column(BUCKET_COLUMN, _bucket_of(out.column(stage.group_key), num_buckets))
    _record(stats, stage.name, batch.num_rows, time.perf_counter() - t0, start, time.time(), setup)
    return out


def _group_stage(rows: pa.Table, ref: StageRef, stats: Any) -> pa.Table:
    stage, setup = _worker_stage(ref)
    start, t0 = time.time(), time.perf_counter()
    out = stage.process_groups(rows.drop_columns([BUCKET_COLUMN]))
    if out.num_rows != rows.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {rows.num_rows}")
    _record(stats, f"{stage.name}.group", rows.num_rows, time.perf_counter() - t0, start, time.time(), setup)
    return out


class _StageActor:
    """Holds a stateful stage (a model, an index) in a Ray actor for the whole run."""

    def __init__(self, ref: StageRef, stats: Any, num_buckets: int) -> None:
        self.ref, self.stats, self.num_buckets = ref, stats, num_buckets
        _worker_stage(ref)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _map_stage(batch, self.ref, self.stats, self.num_buckets)


def _sample_key(batch: pa.Table, seed: int, cutoff: int) -> pa.Table:
    """Rows whose pseudo-random key (stable across runs, independent of how rows are split) is <= cutoff."""
    files = batch.column("source_file").to_pylist()
    idx = batch.column("source_index").to_pylist()
    keys = pa.array([xxhash.xxh3_64_intdigest(f"{f}#{i}".encode(), seed=seed) for f, i in zip(files, idx)], pa.uint64())
    batch = batch.append_column(SAMPLE_KEY, keys)
    return batch.filter(pc.less_equal(keys, pa.scalar(cutoff, pa.uint64())))


# -- fit data --------------------------------------------------------------------------------------------


class ParquetFitData:
    """:class:`~dq_ray.stage.FitData` over a segment's materialized output (``RUN/_work/segment-N/``)."""

    def __init__(self, path: str, artifacts_dir: str, rows: int) -> None:
        self.path, self.artifacts_dir, self._rows = path, artifacts_dir, rows

    def num_rows(self) -> int:
        return self._rows

    def dataset(self, columns: Sequence[str] | None = None):
        import ray.data

        return ray.data.read_parquet(self.path, columns=list(columns) if columns else None)

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


# -- building the plan -----------------------------------------------------------------------------------


def _shuffle_partitions(cfg: JobConfig, files: list[InputFile]) -> int:
    if cfg.ray.shuffle_partitions:
        return cfg.ray.shuffle_partitions
    total = sum(f.size for f in files)
    return max(1, min(4096, math.ceil(total * _SIGNAL_BYTES_PER_INPUT_BYTE / _SHUFFLE_BYTES_PER_PARTITION)))


def segments_of(stages: Sequence[StageConfig]) -> list[list[int]]:
    """Split the stage list where a stage needs a fit: each segment's output is materialized before it."""
    segments: list[list[int]] = [[]]
    for i, sc in enumerate(stages):
        if get_stage(sc.name).needs_fit():
            segments.append([])
        segments[-1].append(i)
    return segments


class Plan:
    """Builds and runs the Ray Data plan of one job, segment by segment."""

    def __init__(
        self, cfg: JobConfig, files: list[InputFile], run: RunDir, stats: Any, cluster_gpus: float = 0.0
    ) -> None:
        self.cfg, self.files, self.run, self.stats = cfg, files, run, stats
        self.stages = [sc.build() for sc in cfg.stages]
        #: what each stage runs with: the config's resources, adapted to the cluster (GPUs) by the stage
        self.resources = [st.resources_for(sc.resources, cluster_gpus) for st, sc in zip(self.stages, cfg.stages)]
        self.partitions = _shuffle_partitions(cfg, files)
        users = [i for i, st in enumerate(self.stages) if "text" in st.inputs]
        self.last_text_user = max(users, default=-1)
        self.fits: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}

    def ref(self, i: int) -> StageRef:
        sc = self.cfg.stages[i]
        return StageRef(sc, self.run.sub(f"artifacts/{sc.name}"))

    def read(self):
        """One read task per input file, then blocks split so one large file spreads over every worker."""
        import ray

        items = [asdict(f) for f in self.files]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(
            _read_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"input_cfg": self.cfg.input, "run_path": self.run.path, "stats": self.stats},
            # reading is I/O-bound; a different CPU request also keeps Ray from fusing it with the first stage
            num_cpus=READ_CPUS,
        )
        ds = ds.repartition(target_num_rows_per_block=self.cfg.input.batch_rows)
        if self.last_text_user < 0 and not self.cfg.output.keep_text:
            ds = ds.drop_columns(["text"])
        return ds

    def apply(self, ds, i: int):
        """Stage ``i`` as one ``map_batches`` (tasks, or an actor pool for stateful/GPU stages) + its groupby."""
        from ray.data import ActorPoolStrategy

        stage, ref, res = self.stages[i], self.ref(i), self.resources[i]
        common = dict(
            batch_size=res.batch_size,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
            memory=res.memory,
        )
        if not stage.stateful and not res.num_gpus:
            # cheap to set up: plain Ray tasks (fused with their neighbours), scheduled freely
            ds = ds.map_batches(
                _map_stage,
                fn_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                concurrency=res.concurrency,
                **common,
            )
        else:
            ds = ds.map_batches(
                _StageActor,
                fn_constructor_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                compute=ActorPoolStrategy(min_size=1, max_size=res.concurrency or _default_actors(res)),
                **common,
            )
        if i == self.last_text_user and not self.cfg.output.keep_text:
            ds = ds.drop_columns(["text"])
        if stage.group_key:
            ds = ds.groupby(BUCKET_COLUMN, num_partitions=self.partitions).map_groups(
                _group_stage, batch_format="pyarrow", fn_kwargs={"ref": ref, "stats": self.stats}
            )
        return ds

    def write(self, ds, path: str, last_is_group: bool) -> None:
        if not last_is_group:
            # gather small blocks into files of up to ROWS_PER_FILE rows; a separate operator, so the
            # stages before it keep their own small batches spread over every worker
            ds = ds.repartition(target_num_rows_per_block=ROWS_PER_FILE)
        ds.write_parquet(path)

    def fit(self, i: int, work_name: str) -> None:
        stage, name = self.stages[i], self.stages[i].name
        data = ParquetFitData(self.run.sub(work_name), self.ref(i).artifacts_dir, self.run.count_rows(work_name))
        self.run.fs.makedirs(f"{self.run.root}/artifacts/{name}", exist_ok=True)
        stage.artifacts_dir = data.artifacts_dir
        t0 = time.perf_counter()
        log.info("fitting %s on %d documents", name, data.num_rows())
        self.fits[name] = stage.fit(data) or {}
        self.timings[f"{name}.fit"] = time.perf_counter() - t0

    def execute(self) -> None:
        """Run every segment; materialize between segments; write ``docs/``."""
        import ray.data

        segments = segments_of(self.cfg.stages)
        ds = self.read()
        for n, segment in enumerate(segments):
            if n > 0:
                work = f"_work/segment-{n - 1}"
                t0 = time.perf_counter()
                prev = segments[n - 1]
                self.write(ds, self.run.sub(work), last_is_group=bool(prev) and self._is_group(prev[-1]))
                self.timings[f"segment-{n - 1}"] = time.perf_counter() - t0
                self.fit(segment[0], work)
                ds = ray.data.read_parquet(self.run.sub(work))
                ds = ds.repartition(target_num_rows_per_block=self.cfg.input.batch_rows)
            for i in segment:
                ds = self.apply(ds, i)
        t0 = time.perf_counter()
        last = segments[-1]
        self.write(ds, self.run.docs, last_is_group=bool(last) and self._is_group(last[-1]))
        self.timings[f"segment-{len(segments) - 1}"] = time.perf_counter() - t0
        if len(segments) > 1:
            self.run.fs.rm(f"{self.run.root}/_work", recursive=True)

    def _is_group(self, i: int) -> bool:
        return bool(self.stages[i].group_key)


def _default_actors(res: Any) -> int:
    """Leave one CPU for readers and writers."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    per = max(res.num_cpus, 1e-3)
    return max(1, int((cpus - 1) // per))


# -- running a job ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`run_job` returns: where the run is and its manifest."""

    run_dir: str
    manifest: dict[str, Any]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "dq-ray": __version__}
    for pkg in ("ray", "pyarrow", "datatrove", "spacy", "fsspec", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _stage_table(
    raw: dict[str, dict[str, Any]], order: list[str], timings: dict[str, float]
) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name in order:
        if name in timings and name.endswith(".fit"):
            table[name] = {"wall_s": round(timings[name], 6)}
            continue
        s = raw.get(name)
        if not s:
            continue
        wall = max(s["end"] - s["start"], 1e-9)
        table[name] = {
            "rows": s["rows"],
            "wall_s": round(wall, 6),
            "busy_s": round(s["busy_s"], 6),
            "setup_s": round(s["setup_s"], 6),
            "docs_per_s": round(s["rows"] / wall, 1),
            "docs_per_busy_s": round(s["rows"] / s["busy_s"], 1) if s["busy_s"] > 0 else None,
            "nodes": sorted(s["nodes"]),
        }
    return table


def run_job(cfg: JobConfig, overwrite: bool = False) -> RunResult:
    """Run a whole job: read, score, group, write ``docs/``, ``rejected/`` and ``manifest.json``.

    Input paths and the config are checked before Ray starts. Raises on failure after recording
    ``status: failed`` and the error in the manifest.
    """
    files = discover_inputs(cfg.input)
    stages = [sc.build() for sc in cfg.stages]
    run = RunDir(cfg.output.path)
    run.prepare(overwrite=overwrite)
    started = time.time()
    manifest: dict[str, Any] = {
        "dq_ray_version": __version__,
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": run.path,
        "config": cfg.to_dict(),
        "versions": _versions(),
        "inputs": {"files": len(files), "bytes": sum(f.size for f in files)},
        "stage_info": {s.name: s.describe() for s in stages},
    }
    run.write_json("manifest.json", manifest)
    log.info("run %s: %d input file(s), stages: %s", run.path, len(files), [s.name for s in stages])
    try:
        with ray_session(cfg.ray) as ray_info:
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = os.environ.get("DQ_RAY_PROGRESS", "0") == "1"
            reserve = cfg.ray.reserve_operator_resources
            ctx.op_resource_reservation_enabled = ray_info["cpus"] >= 8 if reserve is None else reserve
            manifest["ray"] = ray_info
            stats = _stats_actor_class().remote()
            plan = Plan(cfg, files, run, stats, cluster_gpus=ray_info["gpus"])
            for st, res in zip(stages, plan.resources):
                manifest["stage_info"][st.name]["resources"] = asdict(res)
            t0 = time.time()
            plan.execute()
            write_wall = time.time() - t0
            raw_stats = ray.get(stats.summary.remote())
        order = ["read"] + [n for s in stages for n in (f"{s.name}.fit", s.name, f"{s.name}.group")]
        manifest["stages"] = _stage_table(raw_stats, order, plan.timings)
        for name, info in plan.fits.items():
            manifest["stage_info"][name]["fit"] = info
        manifest["pipeline_wall_s"] = round(write_wall, 3)
        manifest["counts"] = count_run(run)
        manifest["flags"] = summarise_flags(run)
        if not manifest["counts"]["consistent"]:
            raise RuntimeError(f"document counts do not add up: {manifest['counts']}")
        manifest["status"] = "succeeded"
    except BaseException as exc:
        manifest["status"] = "failed"
        manifest["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest["wall_s"] = round(time.time() - started, 3)
        run.write_json("manifest.json", manifest)
    return RunResult(run.path, manifest)


def count_run(run: RunDir) -> dict[str, Any]:
    """Input records (from the per-file receipts) against accepted and rejected rows actually written."""
    receipts = run.receipts()
    input_records = sum(r["records"] for r in receipts)
    accepted = run.count_rows("docs")
    rejected_table = run.read_table("rejected", columns=["reason"])
    rejected = rejected_table.num_rows
    by_reason: dict[str, int] = {}
    if rejected:
        counts = pc.value_counts(rejected_table.column("reason")).to_pylist()
        by_reason = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}
    return {
        "input": input_records,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": by_reason,
        "consistent": input_records == accepted + rejected,
    }


def summarise_flags(run: RunDir) -> dict[str, dict[str, int]]:
    """True/false/null counts of every boolean signal in ``docs/`` (``*_pass``, ``*_keep``...), streamed."""
    import pyarrow.dataset as pads

    files = run.fs.glob(f"{run.root}/docs/**/*.parquet")
    if not files:
        return {}
    dataset = pads.dataset(files, filesystem=run.fs, format="parquet")
    bool_cols = [f.name for f in dataset.schema if pa.types.is_boolean(f.type)]
    totals = {c: {"true": 0, "false": 0, "null": 0} for c in bool_cols}
    for batch in dataset.to_batches(columns=bool_cols):
        for col in bool_cols:
            arr = batch.column(col)
            trues = pc.sum(arr).as_py() or 0
            nulls = arr.null_count
            totals[col]["true"] += trues
            totals[col]["null"] += nulls
            totals[col]["false"] += len(arr) - trues - nulls
    return totals
