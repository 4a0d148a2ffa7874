"""The only module that builds Ray Data plans.

A run is: discover input files (driver, before Ray starts) -> one read task per file (documents out,
rejections and a receipt written beside the run) -> one ``map_batches`` per stage -> for stages with a
``group_key``, a Ray groupby over hash buckets of that key -> Parquet files in ``RUN/docs/``.
The text column is dropped as soon as no later stage reads it (unless ``output.keep_text``).

The run is cut into :class:`Phase` s (before every fit, at every groupby), each committed file by file per
input shard, so ``--resume`` redoes only what a killed attempt had not committed (docs/reliability.md). A stage
that raises on a document sends it to ``rejected/`` (``stage_error``) after bisecting its batch.

The library never calls ``ray.init()`` on its own: :func:`ray_session` is what the CLI and ``jobs/`` use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dq_ray import __version__
from dq_ray.artifacts import UntrustedArtifactError, verify_artifacts
from dq_ray.config import JobConfig, RayConfig, StageConfig
from dq_ray.faults import Faults
from dq_ray.faults import from_env as faults_from_env
from dq_ray.io import InputFile, RunDir, RunExistsError, ShardResult, discover_inputs, read_shard, redact, redact_url
from dq_ray.io.guard import check_output
from dq_ray.io.readers import changed_inputs
from dq_ray.stage import Stage, get_stage

log = logging.getLogger(__name__)

BUCKET_COLUMN = "_dq_bucket"
READ_CPUS = 0.5
#: CPUs of Ray Data's own operators between stages (``repartition``, ``drop_columns``): one each, not settable
HELPER_CPUS = 1.0
SAMPLE_KEY = "_dq_sample_key"
#: Bytes of shuffled signal rows per groupby partition we aim for (signals are ~10% of input bytes).
_SHUFFLE_BYTES_PER_PARTITION = 128 * 2**20
_SIGNAL_BYTES_PER_INPUT_BYTE = 0.1


# -- Ray session -----------------------------------------------------------------------------------------


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start the embedded local Ray of ``dq-ray run`` (also what benchmarks start, to measure the same thing).

    Ray starts its workers at niceness 15 to keep its own daemons responsive; on a machine that also runs other
    work that would leave every stage (the whole job) the leftovers. Embedded, the job is the point: workers run
    at normal priority unless ``RAY_worker_niceness`` is set.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    os.environ.setdefault("RAY_worker_niceness", "0")
    # Embedded Ray serves this process only: its servers listen on 127.0.0.1, not on every interface. Ray picks
    # the loopback address itself when multi-node clusters are off (its macOS/Windows default); that switch is
    # read when the node starts, so setting it here is enough (``ray start`` clusters are not affected).
    _CLUSTER_MODE.setdefault("enabled", ray_constants.ENABLE_RAY_CLUSTER)
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)


_CLUSTER_MODE: dict[str, bool] = {}


def _restore_cluster_mode() -> None:
    """Undo :func:`init_local_ray`'s loopback switch once its Ray is shut down."""
    if "enabled" in _CLUSTER_MODE:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = _CLUSTER_MODE.pop("enabled")


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
            init_local_ray(cfg.num_cpus)
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
            _restore_cluster_mode()


# -- per-stage statistics ------------------------------------------------------------------------------


def _stats_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class StageStats:
        """Collects (rows, seconds) per stage from every worker, for the manifest.

        Each report carries a key naming its batch; a batch reported twice (a retried task, a restarted actor)
        counts once.
        """

        def __init__(self) -> None:
            self.data: dict[str, dict[str, Any]] = {}
            self.seen: set[tuple[str, str]] = set()

        def record(
            self, stage: str, key: str, rows: int, busy: float, start: float, end: float, setup: float, worker: str
        ) -> None:
            if (stage, key) in self.seen:
                return
            self.seen.add((stage, key))
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
            return self.data

    return StageStats


def _record(stats: Any, stage: str, key: str, rows: int, busy: float, start: float, end: float, setup: float = 0.0):
    import ray

    worker = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"
    ray.get(stats.record.remote(stage, key, rows, busy, start, end, setup, worker))


def _batch_key(batch: pa.Table) -> str:
    """Names a batch by its first row and size (stable when Ray retries the batch)."""
    if not batch.num_rows:
        return "empty"
    return f"{batch.column('source_file')[0].as_py()}#{batch.column('source_index')[0].as_py()}+{batch.num_rows}"


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
        _record(stats, "read", result.path, result.records, busy, start, time.time())


@dataclass(frozen=True)
class StageRef:
    """What a Ray worker needs to rebuild a stage: its config, where its fitted artifacts are, the run and phase
    (stage rejections are written there), and the injected faults (normally none)."""

    config: StageConfig
    artifacts_dir: str
    run_path: str = ""
    phase: int = 0
    faults: Faults = Faults()
    #: the digests of the stage's signed artifacts, verified on the driver (``dq_ray.artifacts``); None: no fit
    artifact_digests: dict[str, str] | None = None


class StageSetupError(RuntimeError):
    """A stage could not be set up in a worker (a model that does not load, an engine that fails)."""


_WORKER_STAGES: dict[int, list] = {}  # key -> [stage, setup seconds not yet reported]
_WORKER_CALLS: dict[str, int] = {}


def _worker_stage(ref: StageRef, claim: bool = True) -> tuple[Stage, float]:
    """The stage object of this worker process, built and set up once. Returns it and its setup time, which
    the first claiming call gets (for the stage statistics) and later calls get as 0."""
    key = hash((ref.config.name, repr(ref.config.params), ref.artifacts_dir))
    if key not in _WORKER_STAGES:
        t0 = time.perf_counter()
        try:
            ref.faults.before_setup(ref.config.name)
            stage = ref.config.build()
            stage.artifacts_dir = ref.artifacts_dir
            stage.artifact_digests = ref.artifact_digests
            stage.ensure_setup()
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


def _bucket_of(keys: pa.Array, num_buckets: int) -> pa.Array:
    values = keys.to_pylist()
    return pa.array([xxhash.xxh32_intdigest(str(v).encode()) % num_buckets for v in values], pa.int32())


def _call_stage(stage: Stage, batch: pa.Table, faults: Faults) -> pa.Table:
    if faults.active:
        faults.check_rows(stage.name, batch.column("id").to_pylist())
    out = stage.process(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {batch.num_rows}")
    return out


def _isolate(stage: Stage, batch: pa.Table, faults: Faults) -> tuple[list[pa.Table], list[tuple[pa.Table, str]]]:
    """Process ``batch``; on an exception, bisect it to find the rows that fail. Returns (outputs, failures)."""
    try:
        return [_call_stage(stage, batch, faults)], []
    except MemoryError:
        raise
    except Exception as exc:
        if batch.num_rows <= 1:
            return [], [(batch, f"{type(exc).__name__}: {exc}")]
        mid = batch.num_rows // 2
        left = _isolate(stage, batch.slice(0, mid), faults)
        right = _isolate(stage, batch.slice(mid), faults)
        return left[0] + right[0], left[1] + right[1]


def _stage_rejections(stage: str, failures: list[tuple[pa.Table, str]]) -> list[dict[str, Any]]:
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


def _map_stage(batch: pa.Table, ref: StageRef, stats: Any, num_buckets: int) -> pa.Table:
    stage, setup = _worker_stage(ref)
    if ref.faults.active:
        ref.faults.before_batch(stage.name)
    start, t0 = time.time(), time.perf_counter()
    outputs, failures = _isolate(stage, batch, ref.faults)
    if failures:
        if not outputs and batch.num_rows > 1:  # not one poison document: the stage itself is broken
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
    if ref.faults.active:
        calls = _WORKER_CALLS.get(stage.name, 0)
        _WORKER_CALLS[stage.name] = calls + 1
        ref.faults.after_batch(stage.name, calls, RunDir(ref.run_path).root)
    return out


def _group_stage(rows: pa.Table, ref: StageRef, stats: Any) -> pa.Table:
    stage, setup = _worker_stage(ref)
    start, t0 = time.time(), time.perf_counter()
    key = _batch_key(rows)
    out = stage.process_groups(rows.drop_columns([BUCKET_COLUMN]))
    if out.num_rows != rows.num_rows:
        raise RuntimeError(f"stage {stage.name} returned {out.num_rows} rows for {rows.num_rows}")
    _record(stats, f"{stage.name}.group", key, rows.num_rows, time.perf_counter() - t0, start, time.time(), setup)
    return out


class _StageActor:
    """Holds a stateful stage (a model, an index) in a Ray actor for the whole run."""

    def __init__(self, ref: StageRef, stats: Any, num_buckets: int) -> None:
        self.ref, self.stats, self.num_buckets = ref, stats, num_buckets
        _worker_stage(ref, claim=False)  # the first batch reports the setup time

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _map_stage(batch, self.ref, self.stats, self.num_buckets)


def _commit(batch: pa.Table, run_path: str, folder: str) -> pa.Table:
    """Write a block into ``RUN/<folder>/`` (one atomically renamed file per input shard); return what was written."""
    written = RunDir(run_path).commit_rows(folder, batch) if batch.num_rows else []
    return pa.table({"file": [f for f, _ in written], "rows": pa.array([n for _, n in written], pa.int64())})


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


@dataclass
class Phase:
    """One Ray Data execution of a run, committed before the next starts (the unit of resume).

    A *streaming* phase (``group is None``) reads the input files (phase 0) or the previous phase's output and
    commits its rows per input shard, so a resumed run redoes only the shards it had not finished. A *group*
    phase starts with the Ray groupby of stage ``group`` over the whole previous output and is committed whole.
    ``fit`` names the stage fitted (on the previous phase's output) before the phase runs.
    """

    index: int
    stages: list[int] = field(default_factory=list)
    group: int | None = None
    fit: int | None = None
    source: str | None = None
    output: str = "docs"

    @property
    def streaming(self) -> bool:
        return self.group is None


def phases_of(stages: Sequence[Stage]) -> list[Phase]:
    """Cut the stage list before every fit and at every groupby (both need the whole upstream data)."""
    phases = [Phase(0)]

    def close() -> str:
        phases[-1].output = f"_work/phase-{phases[-1].index}"
        return phases[-1].output

    for i, stage in enumerate(stages):
        if stage.needs_fit():
            phases.append(Phase(len(phases), fit=i, source=close()))
        phases[-1].stages.append(i)
        if stage.group_key:
            phases.append(Phase(len(phases), group=i, source=close()))
    return phases


class Plan:
    """Builds and runs the Ray Data plan of one job, phase by phase, skipping what an earlier attempt committed."""

    def __init__(
        self,
        cfg: JobConfig,
        files: list[InputFile],
        run: RunDir,
        stats: Any,
        cluster_gpus: float = 0.0,
        faults: Faults | None = None,
        cluster_cpus: float | None = None,
    ) -> None:
        self.cfg, self.files, self.run, self.stats = cfg, files, run, stats
        self.faults = faults or Faults()
        self.stages = [sc.build() for sc in cfg.stages]
        #: what each stage runs with: the config's resources, adapted to the cluster (GPUs) by the stage
        self.resources = [st.resources_for(sc.resources, cluster_gpus) for st, sc in zip(self.stages, cfg.stages)]
        for st, res in zip(self.stages, self.resources):
            if res.num_gpus and res.num_gpus > cluster_gpus:
                raise RuntimeError(
                    f"stage {st.name} asks for {res.num_gpus:g} GPU(s) per actor but the cluster has "
                    f"{cluster_gpus:g}; it would wait forever. Set its resources.num_gpus to 0 or add GPU nodes"
                )
        self.partitions = _shuffle_partitions(cfg, files)
        users = [i for i, st in enumerate(self.stages) if "text" in st.inputs]
        self.last_text_user = max(users, default=-1)
        self.phases = phases_of(self.stages)
        if cluster_cpus:
            self.resources = share_cpus(self.phases, self.stages, self.resources, cluster_cpus)
        self.fits: dict[str, dict[str, Any]] = {}
        #: per fitted stage, the digests of its signed artifacts (what workers may load)
        self.digests: dict[str, dict[str, str]] = {}
        self.timings: dict[str, float] = {}
        #: what this attempt found already done: {"phases": [...], "shards": {phase: n}, "fits": [...]}
        self.reused: dict[str, Any] = {"phases": [], "shards": {}, "fits": []}

    def ref(self, i: int, phase: int = 0) -> StageRef:
        sc = self.cfg.stages[i]
        digests = self.digests.get(sc.name)
        return StageRef(sc, self.run.sub(f"artifacts/{sc.name}"), self.run.path, phase, self.faults, digests)

    def block_rows(self, ph: Phase) -> int:
        """Rows per block entering a phase: ``input.batch_rows``, or less when a stage of the phase takes smaller
        batches. Ray Data hands whole blocks to an actor, so a block larger than the batch would keep the other
        actors of the pool idle (a 500-row block is minutes of Ask-LLM work for one actor)."""
        return min([self.cfg.input.batch_rows, *(self.resources[i].batch_size for i in ph.stages)])

    def read(self, files: list[InputFile], block_rows: int):
        """One read task per input file, then blocks split so one large file spreads over every worker."""
        import ray

        items = [asdict(f) for f in files]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = _map_batches(
            ds,
            _read_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"input_cfg": self.cfg.input, "run_path": self.run.path, "stats": self.stats},
            # reading is I/O-bound; a different CPU request also keeps Ray from fusing it with the first stage
            num_cpus=READ_CPUS,
            max_retries=self.cfg.ray.max_task_retries,
        )
        ds = ds.repartition(target_num_rows_per_block=block_rows)
        if self.last_text_user < 0 and not self.cfg.output.keep_text:
            ds = ds.drop_columns(["text"])
        return ds

    def apply(self, ds, i: int, phase: int):
        """Stage ``i``'s map: Ray tasks, or an actor pool for stateful/GPU stages; retries bounded by ``ray:``."""
        stage, ref, res, ray_cfg = self.stages[i], self.ref(i, phase), self.resources[i], self.cfg.ray
        common = dict(
            batch_size=res.batch_size,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
            memory=res.memory,
        )
        if not stage.stateful and not res.num_gpus:
            # cheap to set up: plain Ray tasks (fused with their neighbours), scheduled freely
            ds = _map_batches(
                ds,
                _map_stage,
                fn_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                concurrency=res.concurrency,
                max_retries=ray_cfg.max_task_retries,
                **common,
            )
        else:
            ds = _map_batches(
                ds,
                _StageActor,
                fn_constructor_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                compute=_actor_pool(res),
                max_restarts=ray_cfg.max_actor_restarts,
                max_task_retries=ray_cfg.max_task_retries,
                **common,
            )
        if i == self.last_text_user and not self.cfg.output.keep_text:
            ds = ds.drop_columns(["text"])
        return ds

    def group(self, ds, i: int, phase: int):
        with warnings.catch_warnings():  # see _map_batches
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return ds.groupby(BUCKET_COLUMN, num_partitions=self.partitions).map_groups(
                _group_stage,
                batch_format="pyarrow",
                fn_kwargs={"ref": self.ref(i, phase), "stats": self.stats},
                max_retries=self.cfg.ray.max_task_retries,
            )

    def commit(self, ds, folder: str, after_group: bool) -> int:
        """Write ``ds`` into ``RUN/<folder>/`` file by file (per shard, atomic renames); returns the rows written."""
        if not after_group:
            # gather small blocks into files of up to output.rows_per_file rows; a separate operator, so the
            # stages before it keep their own small batches spread over every worker
            ds = ds.repartition(target_num_rows_per_block=self.cfg.output.rows_per_file)
        ds = _map_batches(
            ds,
            _commit,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"run_path": self.run.path, "folder": folder},
            num_cpus=READ_CPUS,
            max_retries=self.cfg.ray.max_task_retries,
        )
        return sum(r["rows"] for r in ds.take_all())

    def fit(self, i: int, source: str) -> None:
        """Fit stage ``i`` on a committed phase output, or reuse the artifacts an earlier attempt fitted."""
        stage, name = self.stages[i], self.stages[i].name
        artifacts = f"{self.run.root}/artifacts/{name}"
        done = self.run.marker(f"fits/{name}")
        stage.artifacts_dir = self.ref(i).artifacts_dir
        if done is not None:
            log.info("reusing the %s artifacts fitted by an earlier attempt", name)
            try:  # refuses artifacts dq-ray did not sign (or runs made before artifacts were signed)
                self.digests[name] = verify_artifacts(stage.artifacts_dir)
            except UntrustedArtifactError as exc:
                raise UntrustedArtifactError(f"{exc}. To start this run over, pass --overwrite") from None
            self.fits[name] = {**done["info"], "reused": True}
            self.reused["fits"].append(name)
            return
        if self.run.fs.exists(artifacts):  # a fit that was killed half-way
            self.run.fs.rm(artifacts, recursive=True)
        self.run.fs.makedirs(artifacts, exist_ok=True)
        data = ParquetFitData(self.run.sub(source), stage.artifacts_dir, self.run.count_rows(source))
        t0 = time.perf_counter()
        log.info("fitting %s on %d documents", name, data.num_rows())
        self.fits[name] = stage.fit_signed(data)
        self.digests[name] = verify_artifacts(stage.artifacts_dir)
        self.timings[f"{name}.fit"] = time.perf_counter() - t0
        self.run.set_marker(f"fits/{name}", {"stage": name, "info": self.fits[name]})
        if self.faults.crash_after_fit == name:
            self.faults.crash_driver(f"after fitting {name}")

    def execute(self) -> None:
        """Run every phase not yet committed; remove the intermediate ``_work/`` at the end."""
        for phase in self.phases:
            t0 = time.perf_counter()
            self.run_phase(phase)
            self.timings[f"phase-{phase.index}"] = time.perf_counter() - t0
        if len(self.phases) > 1 and self.run.fs.exists(f"{self.run.root}/_work"):
            self.run.fs.rm(f"{self.run.root}/_work", recursive=True)

    def run_phase(self, ph: Phase) -> None:
        import ray.data

        if self.run.marker(f"phases/phase-{ph.index}") is not None:
            log.info("phase %d was committed by an earlier attempt; skipping it", ph.index)
            self.reused["phases"].append(ph.index)
            if ph.fit is not None:
                self.fit(ph.fit, ph.source)  # only records the earlier fit (its marker exists)
            return
        if ph.fit is not None:
            self.fit(ph.fit, ph.source)
        if ph.streaming:
            expected = self._expected(ph)
            todo = sorted(set(expected) - self._complete(ph, expected))
            if len(todo) < len(expected):
                self.reused["shards"][str(ph.index)] = len(expected) - len(todo)
                log.info(
                    "phase %d: %d of %d shard(s) already committed", ph.index, len(expected) - len(todo), len(expected)
                )
            self.run.drop_shards(ph.output, ph.index, todo, with_receipts=ph.source is None)
        else:
            self.run.drop_phase(ph.output, ph.index)
            todo = None
        sources = self.run.shard_files(ph.source, todo) if ph.source is not None else None
        if (todo is None or todo) and sources != []:
            if sources is None:
                wanted = set(todo)
                ds = self.read([f for f in self.files if self.run.shard_key(f.path) in wanted], self.block_rows(ph))
            else:
                ds = ray.data.read_parquet(sources)
                if ph.streaming:
                    ds = ds.repartition(target_num_rows_per_block=self.block_rows(ph))
            if ph.group is not None:
                ds = self.group(ds, ph.group, ph.index)
            for i in ph.stages:
                ds = self.apply(ds, i, ph.index)
            watcher = self._crash_watcher(ph) if ph.index == 0 and self.faults.crash_after_shards else None
            try:
                self.commit(ds, ph.output, after_group=ph.group is not None and not ph.stages)
            finally:
                if watcher is not None:
                    watcher.set()
        self._check(ph)
        self.run.set_marker(f"phases/phase-{ph.index}", {"phase": ph.index, "output": ph.output})

    def _expected(self, ph: Phase) -> dict[str, int]:
        """Rows each shard brings into a streaming phase (phase 0: the read receipts; -1 when not read yet)."""
        if ph.source is None:
            receipts = self.run.receipt_map()
            keys = [self.run.shard_key(f.path) for f in self.files]
            return {k: receipts[k]["accepted"] if k in receipts else -1 for k in keys}
        return self.run.rows_by_shard(ph.source)

    def _complete(self, ph: Phase, expected: dict[str, int]) -> set[str]:
        """Shards whose committed rows plus stage rejections in this phase add up to what they brought."""
        out = self.run.rows_by_shard(ph.output)
        rejected = self.run.stage_rejections_by_shard(ph.index)
        return {k for k, n in expected.items() if n >= 0 and out.get(k, 0) + rejected.get(k, 0) == n}

    def _check(self, ph: Phase) -> None:
        if ph.streaming:
            expected = self._expected(ph)
            missing = sorted(set(expected) - self._complete(ph, expected))
            if missing:
                raise RuntimeError(f"phase {ph.index}: {len(missing)} shard(s) are not completely written: {missing}")
            return
        source = sum(self.run.rows_by_shard(ph.source).values())
        out = sum(self.run.rows_by_shard(ph.output).values())
        rejected = sum(self.run.stage_rejections_by_shard(ph.index).values())
        if out + rejected != source:
            raise RuntimeError(f"phase {ph.index}: {out} rows written + {rejected} rejected != {source} read")

    def _crash_watcher(self, ph: Phase) -> threading.Event:
        """Fault injection: SIGKILL this driver once ``crash_after_shards`` more shards are committed."""
        stop = threading.Event()
        expected = self._expected(ph)
        before = self._complete(ph, expected)
        limit = self.faults.crash_after_shards

        def watch() -> None:
            while not stop.wait(0.05):
                done = self._complete(ph, self._expected(ph)) - before
                if len(done) >= limit:
                    self.faults.crash_driver(f"{len(done)} shard(s) committed")

        threading.Thread(target=watch, daemon=True, name="dq-fault-crash").start()
        return stop


def _map_batches(ds, fn, **kwargs):
    """``ds.map_batches`` with retry limits (``max_retries``...), which Ray 2.60 only takes as remote args.

    Ray warns that remote args are deprecated (named parameters replace them, but none exists yet for
    retries); the warning is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(fn, **kwargs)


def share_cpus(phases: Sequence[Phase], stages: Sequence[Stage], resources: list, cpus: float) -> list:
    """Shrink the CPU requests of a phase's actor pools when together they would leave no CPU for its tasks.

    Every actor pool holds its actors (one, or the ``concurrency`` named in the config) and their CPUs for the
    whole phase, while reads, commits, Ray Data's repartitions (one CPU each) and task stages need CPUs free
    to run: two 1-CPU model stages in one phase on a 2-CPU machine would wait for each other forever. The
    actors' request is then scaled down so that the largest task still fits; the threads a model uses are set
    by its own params (``num_threads``), not by this reservation.
    """
    out = list(resources)
    for ph in phases:
        actors = [i for i in ph.stages if stages[i].stateful or resources[i].num_gpus]
        tasks = [resources[i].num_cpus for i in ph.stages if i not in actors] + ([1.0] if ph.group is not None else [])
        held = sum(resources[i].num_cpus * (resources[i].concurrency or 1) for i in actors)
        room = cpus - max([READ_CPUS, HELPER_CPUS, *tasks])
        if not actors or held <= room:
            continue
        scale = max(room, 0.1 * len(actors)) / held
        for i in actors:
            # pools keep their size (one actor where none was named: more would take back the CPUs just freed)
            res = resources[i]
            out[i] = dataclasses.replace(res, num_cpus=round(res.num_cpus * scale, 3), concurrency=res.concurrency or 1)
        log.info(
            "phase %d: actor stages %s would hold %.1f of %.1f CPUs and starve the tasks; reserving %s instead",
            ph.index,
            [stages[i].name for i in actors],
            held,
            cpus,
            [out[i].num_cpus for i in actors],
        )
    return out


def _actor_pool(res: Any):
    """The actor pool of a model stage: exactly ``concurrency`` actors when the config names a number (all of
    them start at once, whatever Ray Data's autoscaler would make of a short queue), else 1 up to as many as the
    CPUs allow."""
    from ray.data import ActorPoolStrategy

    if res.concurrency:
        return ActorPoolStrategy(size=res.concurrency)
    return ActorPoolStrategy(min_size=1, max_size=_default_actors(res))


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
            "started": round(s["start"], 3),  # Unix time the first batch went in
            "ended": round(s["end"], 3),  # Unix time the last batch came out
            "busy_s": round(s["busy_s"], 6),
            "setup_s": round(s["setup_s"], 6),
            "docs_per_s": round(s["rows"] / wall, 1),
            "docs_per_busy_s": round(s["rows"] / s["busy_s"], 1) if s["busy_s"] > 0 else None,
            "nodes": sorted({w.split(":")[0] for w in s["workers"]}),
            "workers": len(s["workers"]),  # processes (actors, task workers) that ran its batches
        }
    return table


def _resume_check(run: RunDir, cfg_dict: dict[str, Any], files: list[InputFile]) -> dict[str, Any]:
    """The earlier attempt's manifest; refuses a resume whose input or stages differ from it, or whose input
    files changed since they were read (size or modification time against their receipts)."""
    try:
        before = run.read_json("manifest.json")
    except FileNotFoundError:
        return {}
    if "config" not in before:  # only the marker: the earlier attempt stopped before it started
        return before
    old = before.get("config", {})
    for key in ("input", "stages"):
        if json.loads(json.dumps(old.get(key), default=str)) != json.loads(json.dumps(cfg_dict.get(key), default=str)):
            raise RunExistsError(
                f"{run.path} holds a run made with a different {key!r} config; --resume needs the same input and "
                f"stages (pass --overwrite to start over)"
            )
    changed = changed_inputs(files, {r["path"]: r for r in run.receipts()})
    if changed:
        raise RunExistsError(
            f"{len(changed)} input file(s) changed since this run read them: {', '.join(changed[:5])}; resuming "
            "would mix two versions of the corpus (pass --overwrite to start over)"
        )
    return before


def run_job(cfg: JobConfig, overwrite: bool = False, resume: bool = False) -> RunResult:
    """Run a whole job: read, score, group, write ``docs/``, ``rejected/`` and ``manifest.json``.

    Input paths and the config are checked before Ray starts. With ``resume``, an earlier attempt in the same
    run directory (killed, or failed) is continued: committed shards, phases and fits are kept, the rest is
    redone (see docs/reliability.md). Raises on failure after recording ``status: failed`` and the error in the
    manifest.
    """
    check_output(cfg.output.path, cfg.input.paths)
    files = discover_inputs(cfg.input)
    stages = [sc.build() for sc in cfg.stages]
    faults = faults_from_env()
    run = RunDir(cfg.output.path)
    cfg_dict = redact(cfg.to_dict())
    previous = _resume_check(run, cfg_dict, files) if resume and run.state() == "run" else {}
    resumed = run.prepare(overwrite=overwrite, resume=resume)
    try:
        return _run_prepared(cfg, run, files, stages, faults, cfg_dict, previous, resumed)
    finally:
        run.release()


def _run_prepared(
    cfg: JobConfig,
    run: RunDir,
    files: list[InputFile],
    stages: list[Stage],
    faults: Faults,
    cfg_dict: dict[str, Any],
    previous: dict[str, Any],
    resumed: bool,
) -> RunResult:
    """:func:`run_job` once the run directory is taken (locked, layout made)."""
    started = time.time()
    manifest: dict[str, Any] = {
        "dq_ray_version": __version__,
        "run_id": run.run_id,
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": redact_url(run.path),
        "config": cfg_dict,
        "versions": _versions(),
        "inputs": {"files": len(files), "bytes": sum(f.size for f in files)},
        "stage_info": {s.name: s.describe() for s in stages},
    }
    if resumed:
        earlier = previous.get("resume", {}).get("attempts", [])
        manifest["resume"] = {
            "attempts": [
                *earlier,
                {k: previous.get(k) for k in ("started_at", "finished_at", "status", "error") if k in previous},
            ]
        }
    if faults.active:
        manifest["faults"] = list(faults.rules)
    run.write_json("manifest.json", manifest)
    log.info("run %s: %d input file(s), stages: %s", redact_url(run.path), len(files), [s.name for s in stages])
    try:
        with ray_session(cfg.ray) as ray_info:
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = os.environ.get("DQ_RAY_PROGRESS", "0") == "1"
            reserve = cfg.ray.reserve_operator_resources
            ctx.op_resource_reservation_enabled = ray_info["cpus"] >= 8 if reserve is None else reserve
            ctx.max_consecutive_actor_init_deaths = cfg.ray.max_actor_restarts
            manifest["ray"] = ray_info
            stats = _stats_actor_class().remote()
            plan = Plan(
                cfg, files, run, stats, cluster_gpus=ray_info["gpus"], faults=faults, cluster_cpus=ray_info["cpus"]
            )
            for st, res in zip(stages, plan.resources):
                manifest["stage_info"][st.name]["resources"] = asdict(res)
            t0 = time.time()
            try:
                plan.execute()
            finally:
                if resumed:
                    manifest["resume"]["reused"] = plan.reused
            write_wall = time.time() - t0
            raw_stats = ray.get(stats.summary.remote())
        order = ["read"] + [n for s in stages for n in (f"{s.name}.fit", s.name, f"{s.name}.group")]
        manifest["stages"] = _stage_table(raw_stats, order, plan.timings)
        for name, info in plan.fits.items():
            manifest["stage_info"][name]["fit"] = info
        manifest["pipeline_wall_s"] = round(write_wall, 3)
        manifest["counts"] = count_run(run)
        manifest["flags"] = summarise_flags(run)
        # dataset-level summaries of stages that have one (``Stage.summarise_run(run) -> dict``, e.g. pairs)
        summaries = {st.name: st.summarise_run(run) for st in stages if hasattr(st, "summarise_run")}
        if summaries:
            manifest["summaries"] = summaries
        if not manifest["counts"]["consistent"]:
            raise RuntimeError(f"document counts do not add up: {manifest['counts']}")
        manifest["status"] = "succeeded"
    except BaseException as exc:
        manifest["status"] = "failed"
        manifest["error"] = redact_url(f"{type(exc).__name__}: {exc}")
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
    rejected_table = run.read_table("rejected", columns=["stage", "reason"])
    rejected = rejected_table.num_rows
    by_reason: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    if rejected:
        counts = pc.value_counts(rejected_table.column("reason")).to_pylist()
        by_reason = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}
        counts = pc.value_counts(rejected_table.column("stage")).to_pylist()
        by_stage = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}
    return {
        "input": input_records,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": by_reason,
        "rejected_by_stage": by_stage,
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
