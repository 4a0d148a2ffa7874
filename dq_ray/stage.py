"""The one abstraction of dq-ray: a :class:`Stage` maps ``pyarrow.Table`` batches to ``pyarrow.Table`` batches.

A stage declares the columns it reads (``inputs``) and the columns it adds (``outputs``), the resources one
copy of it needs (:class:`Resources`), and a typed, frozen ``Params`` dataclass that mirrors its YAML block.
Heavy state (a model, an index) is loaded once per Ray actor in :meth:`Stage.setup`; :meth:`Stage.process`
is pure and can be unit-tested without Ray.

A stage that also needs every row sharing a key in one place (exact duplicates, for example) sets
``group_key`` and implements :meth:`Stage.process_groups`: after the per-batch map the pipeline shuffles rows
into hash buckets of that key (a Ray groupby) and hands each bucket over whole. ``dq_ray.pipeline`` is the only
module that turns stages into Ray Data operators.

Global signals (an index, centroids, duplicate components) follow **fit / apply**: a stage that overrides
:meth:`Stage.fit` gets, before it runs, the materialized output of every stage before it (:class:`FitData`:
a deterministic sample, or the whole dataset for distributed fits). ``fit`` writes its artifacts into
``RUN/artifacts/<stage>/`` and returns what the manifest should record; then the stage is set up in every
worker with ``self.artifacts_dir`` pointing there and maps over every row like any other stage.

Adding a signal is one file in ``dq_ray/stages/`` (named after the stage, and imported by that package's
``__init__``, whose :func:`~dq_ray.stages.registry` and :func:`~dq_ray.stages.get_stage` answer by name)::

    @register
    class Shout(Stage):
        name = "shout"
        inputs = ("text",)
        outputs = {"shout_ratio": pa.float32()}

        def process(self, batch):
            ratio = [sum(c.isupper() for c in t) / max(len(t), 1) for t in batch["text"].to_pylist()]
            return batch.append_column("shout_ratio", pa.array(ratio, pa.float32()))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from dq_ray.artifacts import sign_artifacts

#: The columns that locate a document in the input (its file and its record number there): the record key every
#: document carries, unique within a run even where ``id`` repeats.
KEY_COLUMNS = ("source_file", "source_index")


#: the most actors a ``cpu_pool`` stage (or a fit's CPU-bound map) starts by itself; on a larger cluster name
#: the stage's ``resources.concurrency``
CPU_POOL_MAX = 256
#: Bytes per block of a sort-shuffled groupby's input, and the most blocks (see :func:`sort_blocks`)
SORT_BLOCK_BYTES = 128 * 2**20
SORT_MAX_BLOCKS = 128


@dataclass(frozen=True)
class Resources:
    """What one copy (Ray actor) of a stage needs, and how many copies may run.

    Attributes:
        num_cpus: CPUs reserved per actor.
        num_gpus: GPUs per actor; 0 means the stage never asks for a GPU.
        memory: bytes of heap memory reserved per actor (None: no reservation).
        concurrency: the most actors at once (None: as many as the CPUs allow, leaving one for I/O; one per
            CPU for a ``cpu_pool`` stage).
        batch_size: rows per batch handed to :meth:`Stage.process`.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    concurrency: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1 or null")


@dataclass(frozen=True)
class NoParams:
    """A stage without settings."""


class FitData(Protocol):
    """What :meth:`Stage.fit` sees: the output of every stage before it, materialized.

    Attributes:
        artifacts_dir: where the fit writes its artifacts (``RUN/artifacts/<stage>``; an fsspec path, created).
    """

    artifacts_dir: str

    def num_rows(self) -> int:
        """Rows (documents) in the data."""
        ...

    def sample(self, columns: Sequence[str], n: int, seed: int = 0) -> pa.Table:
        """A deterministic uniform sample of ``n`` rows (all rows when ``n >= num_rows()``), in input order."""
        ...

    def dataset(self, columns: Sequence[str] | None = None) -> Any:
        """The whole data as a lazy ``ray.data.Dataset``, for distributed fits (map, groupby...)."""
        ...


class Stage:
    """Base class of every signal stage. Override :meth:`process` (and :meth:`setup` for heavy state).

    Class attributes a subclass sets:
        name: the registry name used in YAML (``stages: [{name: heuristics}]``).
        inputs: columns the stage reads.
        outputs: columns the stage adds, with their Arrow types (the public schema).
        Params: a frozen dataclass of the stage's settings.
        default_resources: resources unless the config overrides them.
        group_key: set for stages that also need a shuffle by this column (see :meth:`process_groups`).
        stateful: True for stages whose setup is expensive (a model): they run in a pool of Ray actors that
            live for the whole run. Otherwise they run as Ray tasks, set up once per worker process.
        cpu_pool: True for CPU-bound stages without model threads whose set-up is worth keeping (a tokenizer
            and its warm vocabulary): they run in a pool of one Ray actor per cluster CPU (``stateful`` pools
            leave one CPU for I/O), each set up once, their CPU request scaled so reads and commits still run.
            Ray tasks would land in whichever worker process is free, and Ray replaces idle workers, so every
            new process would pay the set-up again. On a cluster of several nodes they run as Ray tasks still:
            requests scaled to the cluster's CPUs would leave each node a fraction of a CPU, too little for a
            1-CPU task (a per-node sizing is still to come).
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[dict[str, pa.DataType]] = {}
    Params: ClassVar[type] = NoParams
    default_resources: ClassVar[Resources] = Resources()
    group_key: ClassVar[str | None] = None
    stateful: ClassVar[bool] = False
    cpu_pool: ClassVar[bool] = False
    #: True for a fit whose artifact lists the documents it saw (MinHash's duplicate groups) rather than a model
    #: of the corpus (an index, centroids, a projection): an incremental run (``--baseline``) refits it, over its
    #: own documents and the baseline's, instead of applying the baseline's artifact.
    fit_per_document: ClassVar[bool] = False
    #: The verified digests of the stage's artifact folder (``{relative path: sha256}``), for stages with a fit:
    #: set by the pipeline from ``dq_ray.artifacts.verify_artifacts(artifacts_dir)`` on the driver before
    #: ``setup()``, so workers (which may not hold the signing key) load only the signed bytes. When it is None
    #: a stage's ``setup`` calls ``verify_artifacts(self.artifacts_dir)`` itself (the driver, a single machine).
    artifact_digests: dict[str, str] | None = None

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.artifacts_dir: str | None = None  # set by the pipeline: RUN/artifacts/<name>
        self._ready = False

    @classmethod
    def needs_fit(cls) -> bool:
        return cls.fit is not Stage.fit

    @staticmethod
    def extends_prior_fit(digests: dict[str, str]) -> bool:
        """For a ``fit_per_document`` stage: whether an update's fit can extend the baseline's fit, whose
        verified artifact files are ``digests``, instead of re-reading the baseline's documents."""
        return False

    def fit(self, data: FitData) -> dict[str, Any]:
        """Fit global state on the upstream data, write it into ``data.artifacts_dir``; return manifest info.

        Only stages that override this get a fit step. It runs on the driver (use ``data.dataset()`` for
        distributed work) once per run, before the stage maps over any row.
        """
        raise NotImplementedError

    def fit_signed(self, data: FitData) -> dict[str, Any]:
        """:meth:`fit`, then sign what it wrote (``dq_ray.artifacts.sign_artifacts``): what the pipeline runs,
        and what a script that fits a stage by hand calls, since a stage loads only signed artifacts."""
        info = self.fit(data) or {}
        sign_artifacts(data.artifacts_dir)
        return info

    # -- lifecycle -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load heavy state (models, indexes). Called once per actor before the first batch."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    # -- the work -------------------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        """Return ``batch`` with this stage's ``outputs`` appended. Must keep the row count and order."""
        raise NotImplementedError

    def process_groups(self, rows: pa.Table) -> pa.Table:
        """For stages with a ``group_key``: a table holding, for every key value in it, all rows with that value.

        Return it with the stage's remaining outputs appended (any row order).
        """
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        return self.process(batch)

    # -- helpers for subclasses ----------------------------------------------------------------------
    @classmethod
    def output_schema(cls) -> pa.Schema:
        return pa.schema(list(cls.outputs.items()))

    def resources_for(self, resources: Resources, cluster_gpus: float) -> Resources:
        """The resources this stage runs with on a cluster with ``cluster_gpus`` GPUs (called on the driver).

        ``resources`` is what the config resolved (the stage's defaults with the config's overrides). Stages
        with a GPU path (embed, density, askllm) override this to ask for GPUs when the cluster has them.
        """
        return resources

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this stage (its settings; subclasses may add model names...)."""
        return {"params": dataclasses.asdict(self.params)}

    def summarise_run(self, run: Any) -> dict[str, Any] | None:
        """A dataset-level summary of this stage over the finished run (``run``: the run directory, a
        :class:`~dq_ray.io.RunDir`), recorded as the manifest's ``summaries.<stage>``; None (the default) for none.

        Called on the driver for every stage once ``docs/`` is complete (e.g. pairs, askllm override it).
        """
        return None


def append_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Append (or replace) columns on a table, keeping their declared order."""
    for col, values in columns.items():
        idx = batch.schema.get_field_index(col)
        batch = batch.set_column(idx, col, values) if idx >= 0 else batch.append_column(col, values)
    return batch


#: Every stage class registered so far, by registry name (filled by :func:`register`). Read it through
#: :func:`dq_ray.stages.registry`, which imports the built-in stages first; this module imports none.
REGISTERED: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to configs under ``cls.name`` (records it in :data:`REGISTERED`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.name in REGISTERED and REGISTERED[cls.name] is not cls:
        raise ValueError(f"stage name {cls.name!r} is already registered by {REGISTERED[cls.name].__name__}")
    REGISTERED[cls.name] = cls
    return cls


class TableFitData:
    """:class:`FitData` over an in-memory table: for unit tests of a stage's ``fit`` without a pipeline run."""

    def __init__(self, table: pa.Table, artifacts_dir: str) -> None:
        import os

        self.table, self.artifacts_dir = table, artifacts_dir
        os.makedirs(artifacts_dir, exist_ok=True)

    def num_rows(self) -> int:
        return self.table.num_rows

    def sample(self, columns: Sequence[str], n: int, seed: int = 0) -> pa.Table:
        return sample_rows(self.table.select(list(columns)), n, seed)

    def dataset(self, columns: Sequence[str] | None = None) -> Any:
        import ray.data

        return ray.data.from_arrow(self.table.select(list(columns)) if columns else self.table)

    def read(self, columns: Sequence[str]) -> pa.Table:
        return self.table.select(list(columns))


def sample_rows(table: pa.Table, n: int, seed: int = 0) -> pa.Table:
    """``n`` rows drawn uniformly without replacement by a seeded generator, kept in their original order."""
    import numpy as np

    if n >= table.num_rows:
        return table
    picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(picked))


def sort_blocks(nbytes: int | None, partitions: int) -> int:
    """Blocks a sort-shuffled groupby's input is gathered into: one per :data:`SORT_BLOCK_BYTES`, at least
    ``partitions``, at most :data:`SORT_MAX_BLOCKS` (larger inputs take the hash shuffle,
    ``ray.shuffle_hash_from_bytes``)."""
    import math

    by_size = math.ceil((nbytes or 0) / SORT_BLOCK_BYTES)
    return max(1, min(SORT_MAX_BLOCKS, max(partitions, by_size)))


def gather_for_sort(ds: Any, nbytes: int | None, partitions: int) -> Any:
    """``ds`` ready for a groupby: under Ray Data's sort shuffle, gathered into :func:`sort_blocks` blocks.

    The sort shuffle keeps as many blocks as its input has and splits each one into as many pieces, which the
    driver tracks: the 1,000 files of a million-document phase made a million pieces, most small enough to be
    kept in the driver's own memory (17 GB before Ray killed the job). The hash shuffle is left as it is.
    """
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    if DataContext.get_current().shuffle_strategy != ShuffleStrategy.SORT_SHUFFLE_PULL_BASED:
        return ds
    return ds.repartition(sort_blocks(nbytes, partitions))
