"""Running a whole job: check the input and the run directory, connect to Ray, execute the plan, and write the
manifest (counts, flags, per-stage statistics, stage summaries)."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dq_ray import __version__
from dq_ray.config import JobConfig
from dq_ray.io import InputFile, RunDir, RunExistsError, discover_inputs, redact, redact_url
from dq_ray.io.guard import check_output
from dq_ray.io.readers import changed_inputs
from dq_ray.pipeline.baseline import BaselineOptions, BaselinePlan, finish, plan_baseline, prepare_plan
from dq_ray.pipeline.faults import Faults
from dq_ray.pipeline.faults import from_env as faults_from_env
from dq_ray.pipeline.plan import READ_CPUS, Plan
from dq_ray.pipeline.progress import progress_of, resolve_every, resolve_mode
from dq_ray.pipeline.session import ray_session
from dq_ray.pipeline.workers import stats_actor_class
from dq_ray.stage import Stage

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run_job` returns: where the run is and its manifest."""

    run_dir: str
    manifest: dict[str, Any]


def _versions() -> dict[str, str]:
    """The versions of Python, dq-ray and the libraries that decide its results (for the manifest)."""
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
    """The manifest's ``stages`` block: the statistics actor's totals per stage, in pipeline order."""
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


#: CPUs a groupby task holds (Ray's default for a task that names none)
GROUP_CPUS = 1.0
#: CPUs a fit is assumed to hold: it runs on the driver, or in one task, for its whole wall time
FIT_CPUS = 1.0
#: documents the cost block is given for
COST_DOCS = 1_000_000_000
COST_BASIS = (
    "per stage, its measured seconds per document scaled to 1e9 documents: core-hours = busy_s x num_cpus / rows, "
    "GPU-hours = busy_s x num_gpus / rows (num_cpus, num_gpus: what each of its workers asks for, the config's "
    "resources; a small machine may give it less, stage_info.<stage>.resources; read tasks hold 0.5 CPU, groupby "
    "tasks 1); a fit: wall_s x 1 CPU (assumed: "
    "the driver or one task) per document of its stage, scaled as if linear (a fit on a fixed-size sample costs "
    "less at scale, one that runs its own Ray Data job over the whole corpus may hold more CPUs). Busy time counts "
    "only time inside batches (full utilisation): idle actors, commits, Ray Data's repartitions and the driver "
    "are not in it. setup_core_hours (model loads) is measured, per worker, and does not scale with documents."
)


def cost_of(stages: dict[str, dict[str, Any]], resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``cost`` block: core-hours and GPU-hours per 1e9 documents of every step of ``stages`` (the
    manifest's ``stages`` block) from its measured seconds per document (see :data:`COST_BASIS`).

    ``resources``: per stage, the ``num_cpus`` and ``num_gpus`` each of its workers asks for.
    """
    per: dict[str, dict[str, Any]] = {}
    for name, s in stages.items():
        if name.endswith(".fit"):
            rows, busy, setup = stages.get(name[: -len(".fit")], {}).get("rows"), s["wall_s"], 0.0
            cpus, gpus = FIT_CPUS, 0.0
        else:
            rows, busy, setup = s["rows"], s["busy_s"], s["setup_s"]
            if name == "read":
                cpus, gpus = READ_CPUS, 0.0
            elif name.endswith(".group"):
                cpus, gpus = GROUP_CPUS, 0.0
            else:
                res = resources.get(name, {})
                cpus, gpus = float(res.get("num_cpus") or 0.0), float(res.get("num_gpus") or 0.0)
        if not rows:
            continue
        scale = COST_DOCS / rows / 3600
        per[name] = {
            "core_hours": round(busy * cpus * scale, 3),
            "gpu_hours": round(busy * gpus * scale, 3),
            "num_cpus": cpus,
            "num_gpus": gpus,
            "rows": rows,
            "setup_core_hours": round(setup * cpus / 3600, 6),
        }
    total = {
        key: round(sum(c[key] for c in per.values()), 6 if key.startswith("setup") else 3)
        for key in ("core_hours", "gpu_hours", "setup_core_hours")
    }
    return {"documents": COST_DOCS, "per_1b_docs": per, "total": total, "basis": COST_BASIS}


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


def run_job(
    cfg: JobConfig,
    overwrite: bool = False,
    resume: bool = False,
    progress: str | None = None,
    progress_every: float | None = None,
    baseline: BaselineOptions | None = None,
) -> RunResult:
    """Run a whole job: read, score, group, write ``docs/``, ``rejected/`` and ``manifest.json``.

    Input paths and the config are checked before Ray starts. With ``resume``, an earlier attempt in the same
    run directory (killed, or failed) is continued: committed shards, phases and fits are kept, the rest is
    redone (see docs/reliability.md). Raises on failure after recording ``status: failed`` and the error in the
    manifest.

    ``progress`` (``auto``, ``bars``, ``log``, ``off``, ``ray``; None: ``$DQ_RAY_PROGRESS``, else ``auto``) and
    ``progress_every`` (seconds between plain lines; None: ``$DQ_RAY_PROGRESS_EVERY``, else 10) choose how the
    run shows its progress (:mod:`dq_ray.pipeline.progress`).

    ``baseline``: an incremental run against an earlier finished run (checked before Ray starts; see
    :mod:`dq_ray.pipeline.baseline`): only the new documents are scored, in the baseline's fitted world.
    """
    mode, every = resolve_mode(progress), resolve_every(progress_every)
    check_output(cfg.output.path, cfg.input.paths)
    files = discover_inputs(cfg.input)
    stages = [sc.build() for sc in cfg.stages]
    faults = faults_from_env()
    run = RunDir(cfg.output.path)
    cfg_dict = redact(cfg.to_dict())
    bplan = plan_baseline(cfg_dict, stages, baseline, cfg.output.path) if baseline is not None else None
    previous = _resume_check(run, cfg_dict, files) if resume and run.state() == "run" else {}
    resumed = run.prepare(overwrite=overwrite, resume=resume)
    try:
        return _run_prepared(cfg, run, files, stages, faults, cfg_dict, previous, resumed, (mode, every), bplan)
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
    progress: tuple[str, float] = ("off", 10.0),
    bplan: BaselinePlan | None = None,
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
    if bplan is not None:
        manifest["baseline"] = bplan.describe()
    if faults.active:
        manifest["faults"] = list(faults.rules)
    run.write_json("manifest.json", manifest)
    log.info("run %s: %d input file(s), stages: %s", redact_url(run.path), len(files), [s.name for s in stages])
    try:
        with ray_session(cfg.ray) as ray_info:
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = progress[0] == "ray"  # Ray Data's own bars; ours: dq_ray.pipeline.progress
            reserve = cfg.ray.reserve_operator_resources
            ctx.op_resource_reservation_enabled = ray_info["cpus"] >= 8 if reserve is None else reserve
            ctx.max_consecutive_actor_init_deaths = cfg.ray.max_actor_restarts
            # Ray Data's "uses N MiB per worker, consider setting memory=" advice names its own call, which a
            # CLI user cannot reach (a stage's `resources.memory` is the way); its other detectors stay on
            ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
            manifest["ray"] = ray_info
            stats = stats_actor_class().remote()
            plan = Plan(
                cfg,
                files,
                run,
                stats,
                cluster_gpus=ray_info["gpus"],
                faults=faults,
                cluster_cpus=ray_info["cpus"],
                stages=stages,
                cluster_nodes=ray_info["nodes"],
            )
            if bplan is not None:  # the baseline's fits, marked fitted, and the content-hash caches
                prepare_plan(bplan, run, plan)
            for st, res in zip(stages, plan.resources):
                manifest["stage_info"][st.name]["resources"] = asdict(res)
            # what each stage's workers ask for, before a small machine shrinks it (Plan: share_cpus): the cost basis
            asked = {
                st.name: asdict(st.resources_for(sc.resources, ray_info["gpus"])) for st, sc in zip(stages, cfg.stages)
            }
            for name, res in asked.items():
                manifest["stage_info"][name]["requested"] = res
            t0 = time.time()
            try:
                with progress_of(plan, stats, files, *progress):
                    plan.execute()
            finally:
                if resumed:
                    manifest["resume"]["reused"] = plan.reused
            write_wall = time.time() - t0
            raw_stats = ray.get(stats.summary.remote())
        if bplan is not None:  # cross-run duplicates in docs/, the cache's counts, the view's size
            manifest["baseline"].update(finish(bplan, run, raw_stats))
        order = ["read"] + [n for s in stages for n in (f"{s.name}.fit", s.name, f"{s.name}.group")]
        manifest["stages"] = _stage_table(raw_stats, order, plan.timings)
        manifest["cost"] = cost_of(manifest["stages"], asked)
        for name, c in manifest["cost"]["per_1b_docs"].items():
            manifest["stages"][name]["core_hours_per_1b_docs"] = c["core_hours"]
            manifest["stages"][name]["gpu_hours_per_1b_docs"] = c["gpu_hours"]
        for name, info in plan.fits.items():
            manifest["stage_info"][name]["fit"] = info
        manifest["pipeline_wall_s"] = round(write_wall, 3)
        manifest["phases"] = plan.phase_table()
        manifest["shuffle"] = plan.shuffle
        manifest["counts"] = count_run(run)
        manifest["flags"] = summarise_flags(run)
        # dataset-level summaries of the stages that have one (``Stage.summarise_run``, e.g. pairs, askllm)
        summaries = {st.name: summary for st in stages if (summary := st.summarise_run(run)) is not None}
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
