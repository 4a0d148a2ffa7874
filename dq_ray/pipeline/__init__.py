"""The only package that builds Ray Data plans.

A run is: discover input files (driver, before Ray starts) -> one read task per file (documents out,
rejections and a receipt written beside the run) -> one ``map_batches`` per stage -> for stages with a
``group_key``, a Ray groupby over hash buckets of that key -> Parquet files in ``RUN/docs/``.
The text column is dropped as soon as no later stage reads it (unless ``output.keep_text``).

The run is cut into phases (before every fit, at every groupby), each committed file by file per input
shard, so ``--resume`` redoes only what a killed attempt had not committed (docs/reliability.md). A stage that
raises on a document sends it to ``rejected/`` (``stage_error``) after bisecting its batch.

Modules: :mod:`.session` (connecting to Ray), :mod:`.plan` (phases and the Ray Data plan), :mod:`.workers`
(what runs inside Ray workers), :mod:`.run` (a whole job and its manifest), :mod:`.faults` (fault injection,
tests only). The library never calls ``ray.init()`` on its own: :func:`ray_session` is what the CLI and
``jobs/`` use.
"""

from dq_ray.pipeline.plan import HELPER_CPUS, READ_CPUS, Phase, Plan, phases_of, share_cpus
from dq_ray.pipeline.run import RunResult, count_run, run_job, summarise_flags
from dq_ray.pipeline.session import init_local_ray, ray_session
from dq_ray.pipeline.workers import ParquetFitData

__all__ = [
    "HELPER_CPUS",
    "READ_CPUS",
    "ParquetFitData",
    "Phase",
    "Plan",
    "RunResult",
    "count_run",
    "init_local_ray",
    "phases_of",
    "ray_session",
    "run_job",
    "share_cpus",
    "summarise_flags",
]
