"""Building and running the Ray Data plan of one job, phase by phase.

A run is: one read task per input file (documents out, rejections and a receipt written beside the run) -> one
``map_batches`` per stage -> for stages with a ``group_key``, a Ray groupby over hash buckets of that key ->
Parquet files in ``RUN/docs/``. The text column is dropped as soon as no later stage reads it (unless
``output.keep_text``).

The run is cut into :class:`Phase` s (before every fit, at every groupby), each committed file by file per
input shard, so ``--resume`` redoes only what a killed attempt had not committed (docs/reliability.md). What
is committed, complete or still to do is answered by the run directory (:class:`~dq_ray.io.RunDir`); the
functions that run inside the workers are in :mod:`dq_ray.pipeline.workers`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dq_ray.artifacts import UntrustedArtifactError, verify_artifacts
from dq_ray.config import JobConfig
from dq_ray.io import InputFile, RunDir
from dq_ray.pipeline.cache import add_text_hash
from dq_ray.pipeline.faults import Faults
from dq_ray.pipeline.workers import (
    BUCKET_COLUMN,
    READ_CPUS,
    ParquetFitData,
    StageActor,
    StageRef,
    commit,
    faulty_map_stage,
    group_here,
    group_stage,
    map_stage,
    read_committed,
    read_files,
)
from dq_ray.stage import CPU_POOL_MAX, Stage, gather_for_sort

log = logging.getLogger(__name__)

#: CPUs of Ray Data's own operators between stages (``repartition``, ``drop_columns``): one each, not settable
HELPER_CPUS = 1.0
#: Bytes of shuffled signal rows per groupby partition we aim for (signals are ~10% of input bytes).
_SHUFFLE_BYTES_PER_PARTITION = 128 * 2**20
_SIGNAL_BYTES_PER_INPUT_BYTE = 0.1


def _shuffle_partitions(cfg: JobConfig, files: list[InputFile]) -> int:
    """Partitions of the groupby shuffles: ``ray.shuffle_partitions``, else sized from the input bytes."""
    if cfg.ray.shuffle_partitions:
        return cfg.ray.shuffle_partitions
    total = sum(f.size for f in files)
    return max(1, min(4096, math.ceil(total * _SIGNAL_BYTES_PER_INPUT_BYTE / _SHUFFLE_BYTES_PER_PARTITION)))


def shuffle_kind(cfg: JobConfig, files: list[InputFile]) -> str:
    """``sort`` or ``hash``: the shuffle of this job's groupbys (``ray.shuffle``; ``auto`` decides by input size).

    Ray's hash shuffle starts long-lived aggregator actors (about 10 s on a small machine, whatever the data);
    the pull-based sort shuffle runs as plain tasks and costs about a second, which matters for every run that
    is not huge. Measured in benchmarks/README.md ("Fixed costs").
    """
    if cfg.ray.shuffle != "auto":
        return cfg.ray.shuffle
    return "hash" if sum(f.size for f in files) >= cfg.ray.shuffle_hash_from_bytes else "sort"


def use_shuffle(kind: str) -> Any:
    """Make ``kind`` the shuffle of Ray Data's groupbys and aggregations in this driver (the fits' too); returns
    the strategy it replaced, to be put back with :func:`restore_shuffle` (other Ray Data code in the same
    process, e.g. the map's key-based repartition, needs Ray's own default)."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE if kind == "hash" else ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return before


def restore_shuffle(strategy: Any) -> None:
    """Put back the shuffle strategy :func:`use_shuffle` replaced."""
    import ray.data

    ray.data.DataContext.get_current().shuffle_strategy = strategy


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


def _map_batches(ds, fn, **kwargs):
    """``ds.map_batches`` with retry limits (``max_retries``...), which Ray 2.60 only takes as remote args.

    Ray warns that remote args are deprecated (named parameters replace them, but none exists yet for
    retries); the warning is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(fn, **kwargs)


def share_cpus(phases: Sequence[Phase], stages: Sequence[Stage], resources: list, cpus: float, nodes: int = 1) -> list:
    """Shrink the CPU requests of a phase's actor pools when together they would leave no CPU for its tasks.

    Every actor pool holds its actors (one, or the ``concurrency`` named in the config) and their CPUs for the
    whole phase, while reads, commits, Ray Data's repartitions (one CPU each) and task stages need CPUs free
    to run: two 1-CPU model stages in one phase on a 2-CPU machine would wait for each other forever. The
    actors' request is then scaled down so that the largest task still fits; the threads a model uses are set
    by its own params (``num_threads``), not by this reservation.
    """
    out = list(resources)
    for ph in phases:
        actors = [i for i in ph.stages if in_actors(stages[i], resources[i], nodes)]
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


def in_actors(stage: Stage, res: Any, nodes: int = 1) -> bool:
    """Whether ``stage`` runs in an actor pool (a model, a GPU, a ``cpu_pool`` stage on one node) rather than as
    Ray tasks, on a cluster of ``nodes`` nodes."""
    return bool(stage.stateful or (stage.cpu_pool and nodes <= 1) or res.num_gpus)


#: Input bytes per actor of a ``cpu_pool`` stage: a smaller input gets fewer actors, because each one's start (a
#: process and the stage's set-up, e.g. spaCy's tokenizer: ~2.5 CPU-s) costs more than its share of the work
#: (benchmarks/README.md, "Fixed costs")
CPU_POOL_BYTES_PER_ACTOR = 4 * 2**20


def fill_cpus(stage: Stage, res: Any, cpus: float, nodes: int = 1, input_bytes: int | None = None) -> Any:
    """A ``cpu_pool`` stage with no ``concurrency`` in its config gets one actor per ``res.num_cpus`` CPUs of the
    cluster (at most :data:`CPU_POOL_MAX`), and at most one per :data:`CPU_POOL_BYTES_PER_ACTOR` of
    ``input_bytes`` (the job's input, when given); :func:`share_cpus` then scales their requests so tasks fit."""
    if not stage.cpu_pool or res.concurrency or res.num_gpus or nodes > 1:
        return res
    n = max(1, min(CPU_POOL_MAX, int(cpus // max(res.num_cpus, 1e-3))))
    if input_bytes is not None:
        n = min(n, max(1, math.ceil(input_bytes / CPU_POOL_BYTES_PER_ACTOR)))
    return dataclasses.replace(res, concurrency=n)


def _actor_pool(stage: Stage, res: Any):
    """The actor pool of a model stage: exactly ``concurrency`` actors when the config names a number (all of
    them start at once, whatever Ray Data's autoscaler would make of a short queue), else 1 up to as many as the
    CPUs allow. A ``cpu_pool`` stage starts all its actors at once too, but may end with fewer (a run of one
    block has work for one)."""
    from ray.data import ActorPoolStrategy

    if stage.cpu_pool and res.concurrency:
        return ActorPoolStrategy(min_size=1, max_size=res.concurrency, initial_size=res.concurrency)
    if res.concurrency:
        return ActorPoolStrategy(size=res.concurrency)
    return ActorPoolStrategy(min_size=1, max_size=_default_actors(res))


def _default_actors(res: Any) -> int:
    """Leave one CPU for readers and writers."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    per = max(res.num_cpus, 1e-3)
    return max(1, int((cpus - 1) // per))


class Plan:
    """Builds and runs the Ray Data plan of one job, phase by phase, skipping what an earlier attempt committed.

    ``stages`` are the job's stages as built from ``cfg.stages`` (built here when not given).
    """

    def __init__(
        self,
        cfg: JobConfig,
        files: list[InputFile],
        run: RunDir,
        stats: Any,
        cluster_gpus: float = 0.0,
        faults: Faults | None = None,
        cluster_cpus: float | None = None,
        stages: Sequence[Stage] | None = None,
        cluster_nodes: int = 1,
    ) -> None:
        self.cfg, self.files, self.run, self.stats = cfg, files, run, stats
        self.faults = faults or Faults()
        self.stages = list(stages) if stages is not None else [sc.build() for sc in cfg.stages]
        #: what each stage runs with: the config's resources, adapted to the cluster (GPUs) by the stage
        self.resources = [st.resources_for(sc.resources, cluster_gpus) for st, sc in zip(self.stages, cfg.stages)]
        for st, res in zip(self.stages, self.resources):
            if res.num_gpus and res.num_gpus > cluster_gpus:
                raise RuntimeError(
                    f"stage {st.name} asks for {res.num_gpus:g} GPU(s) per actor but the cluster has "
                    f"{cluster_gpus:g}; it would wait forever. Set its resources.num_gpus to 0 or add GPU nodes"
                )
        self.partitions = _shuffle_partitions(cfg, files)
        #: ``sort`` or ``hash``: the shuffle of the groupbys (see :func:`shuffle_kind`)
        self.shuffle = shuffle_kind(cfg, files)
        users = [i for i, st in enumerate(self.stages) if "text" in st.inputs]
        self.last_text_user = max(users, default=-1)
        self.phases = phases_of(self.stages)
        self.cluster_nodes = cluster_nodes
        if cluster_cpus:
            pairs = zip(self.stages, self.resources)
            size = sum(f.size for f in files)
            self.resources = [fill_cpus(st, res, cluster_cpus, cluster_nodes, size) for st, res in pairs]
            self.resources = share_cpus(self.phases, self.stages, self.resources, cluster_cpus, cluster_nodes)
        self.fits: dict[str, dict[str, Any]] = {}
        #: per fitted stage, the digests of its signed artifacts (what workers may load)
        self.digests: dict[str, dict[str, str]] = {}
        self.timings: dict[str, float] = {}
        #: called as ``on_step(kind, name, ended)`` when a phase (``"phase"``, its index) or a fit (``"fit"``, the
        #: stage) starts (``ended`` False) and ends (True); :mod:`dq_ray.pipeline.progress` sets it
        self.on_step: Callable[[str, str, bool], None] = lambda kind, name, ended: None
        #: what this attempt found already done: {"phases": [...], "shards": {phase: n}, "fits": [...]}
        self.reused: dict[str, Any] = {"phases": [], "shards": {}, "fits": []}
        #: an incremental run (``dq_ray.pipeline.baseline``): per stage, its content-hash cache file; while any is
        #: set, every document carries its text hash (``dq_ray.pipeline.cache.TEXT_HASH``) until ``docs/``
        self.caches: dict[str, str] = {}
        #: per stage, what its fit sees instead of the plain upstream data (an update's MinHash fit also sees the
        #: baseline's documents); called with the :class:`ParquetFitData` and returns a ``FitData``
        self.fit_data: dict[str, Callable[[Any], Any]] = {}

    def ref(self, i: int, phase: int = 0) -> StageRef:
        """What the workers of stage ``i`` get; the faults only when some are injected (tests)."""
        sc = self.cfg.stages[i]
        digests = self.digests.get(sc.name)
        faults = self.faults if self.faults.active else None
        cache = self.caches.get(sc.name)
        return StageRef(sc, self.run.sub(f"artifacts/{sc.name}"), self.run.path, phase, faults, digests, cache)

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
            read_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"input_cfg": self.cfg.input, "run_path": self.run.path, "stats": self.stats},
            # reading is I/O-bound; a different CPU request also keeps Ray from fusing it with the first stage
            num_cpus=READ_CPUS,
            max_retries=self.cfg.ray.max_task_retries,
        )
        ds = ds.repartition(target_num_rows_per_block=block_rows)
        if self.caches:
            ds = ds.map_batches(add_text_hash, batch_format="pyarrow", num_cpus=READ_CPUS)
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
        if not in_actors(stage, res, self.cluster_nodes):
            # cheap to set up: plain Ray tasks (fused with their neighbours), scheduled freely
            ds = _map_batches(
                ds,
                map_stage if ref.faults is None else faulty_map_stage,
                fn_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                concurrency=res.concurrency,
                max_retries=ray_cfg.max_task_retries,
                **common,
            )
        else:
            ds = _map_batches(
                ds,
                StageActor,
                fn_constructor_kwargs={"ref": ref, "stats": self.stats, "num_buckets": self.partitions},
                compute=_actor_pool(stage, res),
                max_restarts=ray_cfg.max_actor_restarts,
                max_task_retries=ray_cfg.max_task_retries,
                **common,
            )
        if i == self.last_text_user and not self.cfg.output.keep_text:
            ds = ds.drop_columns(["text"])
        return ds

    def group(self, ds, i: int, phase: int, source_bytes: int | None = None):
        """Stage ``i``'s groupby: hash buckets of its key, each handed whole to its ``process_groups``.

        Under the sort shuffle its input is first gathered into a few large blocks
        (:func:`~dq_ray.stage.gather_for_sort`).
        """
        ds = gather_for_sort(ds, source_bytes, self.partitions)
        with warnings.catch_warnings():  # see _map_batches
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return ds.groupby(BUCKET_COLUMN, num_partitions=self.partitions).map_groups(
                group_stage,
                batch_format="pyarrow",
                fn_kwargs={"ref": self.ref(i, phase), "stats": self.stats},
                max_retries=self.cfg.ray.max_task_retries,
            )

    def group_here(self, ph: Phase, size: int) -> Any:
        """Group phase ``ph``'s groupby on the driver (pyarrow) when its input (``size`` bytes of Parquet) holds
        at most ``ray.local_group_bytes``: a Ray Data shuffle costs seconds to start whatever the data
        (benchmarks/README.md, "Fixed costs"). Returns the grouped rows, or None (too large: a Ray shuffle; or
        faults injected, which target the Ray path)."""
        limit = self.cfg.ray.local_group_bytes
        if not limit or self.faults.active or ph.group is None or size > limit:
            return None
        log.info("phase %d: grouping %.1f MiB on the driver (no shuffle)", ph.index, size / 2**20)
        return group_here(self.run.read_table(ph.source), self.ref(ph.group, ph.index), self.stats)

    def _dataset(self, ph: Phase, todo: list[str] | None, sources: list[str] | None, grouped: Any, size: int):
        """Phase ``ph``'s input as a Ray dataset: the input files (phase 0), the rows grouped on the driver, or
        the previous phase's Parquet (``size`` bytes; grouped by a Ray shuffle in a group phase)."""
        import ray.data

        if sources is None:
            wanted = set(todo or ())
            return self.read([f for f in self.files if self.run.shard_key(f.path) in wanted], self.block_rows(ph))
        if grouped is not None:
            return ray.data.from_arrow(grouped).repartition(target_num_rows_per_block=self.block_rows(ph))
        ds = read_committed(sources, max_retries=self.cfg.ray.max_task_retries)
        if ph.streaming:
            ds = ds.repartition(target_num_rows_per_block=self.block_rows(ph))
        if ph.group is None:
            return ds
        return self.group(ds, ph.group, ph.index, size)

    def commit(self, ds, folder: str, after_group: bool) -> int:
        """Write ``ds`` into ``RUN/<folder>/`` file by file (per shard, atomic renames); returns the rows written."""
        if not after_group:
            # gather small blocks into files of up to output.rows_per_file rows; a separate operator, so the
            # stages before it keep their own small batches spread over every worker
            ds = ds.repartition(target_num_rows_per_block=self.cfg.output.rows_per_file)
        ds = _map_batches(
            ds,
            commit,
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
        done = self.run.fit_done(name)
        stage.artifacts_dir = self.ref(i).artifacts_dir
        if done is not None:
            log.info("reusing the %s artifacts fitted by an earlier attempt", name)
            try:  # refuses artifacts dq-ray did not sign (or runs made before artifacts were signed)
                self.digests[name] = verify_artifacts(stage.artifacts_dir)
            except UntrustedArtifactError as exc:
                raise UntrustedArtifactError(f"{exc}. To start this run over, pass --overwrite") from None
            self.fits[name] = {**done, "reused": True}
            self.reused["fits"].append(name)
            return
        if self.run.fs.exists(artifacts):  # a fit that was killed half-way
            self.run.fs.rm(artifacts, recursive=True)
        self.run.fs.makedirs(artifacts, exist_ok=True)
        data = ParquetFitData(self.run.sub(source), stage.artifacts_dir, self.run.count_rows(source))
        if name in self.fit_data:
            data = self.fit_data[name](data)
        t0 = time.perf_counter()
        log.info("fitting %s on %d documents", name, data.num_rows())
        self.on_step("fit", name, False)
        self.fits[name] = stage.fit_signed(data)
        self.digests[name] = verify_artifacts(stage.artifacts_dir)
        self.timings[f"{name}.fit"] = time.perf_counter() - t0
        self.on_step("fit", name, True)
        self.run.mark_fit(name, self.fits[name])
        if self.faults.crash_after_fit == name:
            self.faults.crash_driver(f"after fitting {name}")

    def execute(self) -> None:
        """Run every phase not yet committed; remove the intermediate ``_work/`` at the end."""
        before = use_shuffle(self.shuffle)
        try:
            for phase in self.phases:
                t0 = time.perf_counter()
                self.on_step("phase", str(phase.index), False)
                self.run_phase(phase)
                self.timings[f"phase-{phase.index}"] = time.perf_counter() - t0
                self.on_step("phase", str(phase.index), True)
            if len(self.phases) > 1 and self.run.fs.exists(f"{self.run.root}/_work"):
                self.run.fs.rm(f"{self.run.root}/_work", recursive=True)
        finally:
            restore_shuffle(before)

    def phase_table(self) -> list[dict[str, Any]]:
        """The manifest's ``phases`` block: what each phase ran and its wall time (fit included), in order."""
        table = []
        for ph in self.phases:
            row: dict[str, Any] = {
                "phase": ph.index,
                "stages": [self.stages[i].name for i in ph.stages],
                "wall_s": round(self.timings.get(f"phase-{ph.index}", 0.0), 3),
            }
            if ph.fit is not None:
                row["fit"] = self.stages[ph.fit].name
            if ph.group is not None:
                row["group"] = self.stages[ph.group].name
            table.append(row)
        return table

    def run_phase(self, ph: Phase) -> None:
        """Run one phase: skip it when committed, else redo its incomplete shards (a group phase: all of it)."""
        if self.run.phase_done(ph.index):
            log.info("phase %d was committed by an earlier attempt; skipping it", ph.index)
            self.reused["phases"].append(ph.index)
            if ph.fit is not None:
                self.fit(ph.fit, ph.source)  # only records the earlier fit (its marker exists)
            return
        if ph.fit is not None:
            self.fit(ph.fit, ph.source)
        if ph.streaming:
            expected = self.run.expected_rows(ph.source, self.files)
            todo = sorted(set(expected) - self.run.complete_shards(ph.index, ph.output, expected))
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
            size = self.run.fs.du(self.run.sub(ph.source)) if ph.group is not None else 0  # a group phase's input
            grouped = self.group_here(ph, size)  # None: left to a Ray shuffle
            if grouped is not None and not ph.stages:
                commit(grouped, self.run.path, ph.output)  # grouped on the driver; nothing left for Ray Data
            else:
                ds = self._dataset(ph, todo, sources, grouped, size)
                for i in ph.stages:
                    ds = self.apply(ds, i, ph.index)
                watcher = self._crash_watcher(ph) if ph.index == 0 and self.faults.crash_after_shards else None
                try:
                    self.commit(ds, ph.output, after_group=ph.group is not None and grouped is None and not ph.stages)
                finally:
                    if watcher is not None:
                        watcher.set()
        self.run.check_phase(ph.index, ph.source, ph.output, ph.streaming, self.files)
        self.run.mark_phase(ph.index, ph.output)

    def _crash_watcher(self, ph: Phase) -> threading.Event:
        """Fault injection: SIGKILL this driver once ``crash_after_shards`` more shards are committed."""
        stop = threading.Event()
        run, files = self.run, self.files
        before = run.complete_shards(ph.index, ph.output, run.expected_rows(ph.source, files))
        limit = self.faults.crash_after_shards

        def watch() -> None:
            while not stop.wait(0.05):
                done = run.complete_shards(ph.index, ph.output, run.expected_rows(ph.source, files)) - before
                if len(done) >= limit:
                    self.faults.crash_driver(f"{len(done)} shard(s) committed")

        threading.Thread(target=watch, daemon=True, name="dq-fault-crash").start()
        return stop
