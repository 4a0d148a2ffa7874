"""dq-ray's ``heuristics`` stage against datatrove's own executor, side by side, on identical input.

One run measures three things over the same uncompressed JSONL shards (the demo corpus, read once through
dq-ray's reader, so both sides see exactly the accepted documents):

* **dq-ray end to end**: ``run_job`` with only the ``heuristics`` stage (read, score, write ``docs/``,
  manifest), on an embedded Ray started beforehand (Ray's start-up is not timed).
* **datatrove, same work**: ``LocalPipelineExecutor`` running ``JsonlReader`` and one step that runs all
  four datatrove filters (Gopher quality, Gopher repetition, C4 quality, FineWeb quality) on every document,
  each on its own copy, and keeps every document: what dq-ray records, so the like-for-like baseline.
* **datatrove, chained**: the usual datatrove pipeline where a failing filter drops the document, so later
  filters see fewer documents (less work than dq-ray does); for context only.

Absolute times drift on a noisy machine, so the table reports ratios against "datatrove, same work".
The run also cross-checks correctness: the number of documents passing each filter must be the same in
dq-ray's ``docs/`` and in the same-work baseline, or the script exits non-zero.

    .venv/bin/python benchmarks/heuristics_vs_datatrove.py [--input data/demo] [--workers 2] [--repeat 1]
        [--rounds 1] [--out benchmarks/results/heuristics_vs_datatrove.md] [--keep-tmp]

The machine may be shared: before each measurement the script waits until the CPUs are (nearly) idle and
records how busy they were; ``--rounds R`` measures everything R times and keeps each system's fastest round.
Ray is started with ``address="local"`` so that a Ray cluster someone else runs on this machine is never used.

Module-level imports are kept light on purpose: datatrove's executor starts its task processes with
``forkserver``, which re-imports this file there, and that import should not pull in Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Row as _Row
from _common import (
    log,
    one_stage_config,
    read_accepted,
    report_header,
    save_report,
    time_run_job,
    wait_quiet,
    write_shards,
)
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

#: dq-ray's filter names (``heur_<name>_pass``) in the order dq-ray runs them, with datatrove's class names.
FILTERS = {
    "gopher_quality": "GopherQualityFilter",
    "gopher_repetition": "GopherRepetitionFilter",
    "c4": "C4QualityFilter",
    "fineweb": "FineWebQualityFilter",
}
#: datatrove's usual order for the chained pipeline.
CHAIN_ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
LANGUAGE = "en"
PACKAGES = ("dq-ray", "ray", "datatrove", "pyarrow", "spacy", "numpy", "orjson", "multiprocess")


# -- the datatrove "same work" step -------------------------------------------------------------------------


def _datatrove_filters(language: str = LANGUAGE) -> dict[str, Any]:
    from datatrove.pipeline import filters

    return {name: getattr(filters, cls)(language=language) for name, cls in FILTERS.items()}


class AllFiltersKeepAll(PipelineStep):
    """Runs every datatrove filter on its own copy of each document and records the verdicts; drops nothing.

    Verdicts go to ``doc.metadata["heur_<filter>_pass"|"_reason"]``; passes are counted in the step's stats
    (``<filter>_pass``), which the executor merges over all tasks. A filter that raises counts as a failure
    (``error:<Exception>``), as in dq-ray, instead of killing the task.
    """

    name = "🧪 All filters, keep all"
    type = "BENCH"

    def __init__(self, language: str = LANGUAGE) -> None:
        super().__init__()
        self.filters = _datatrove_filters(language)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                for name, flt in self.filters.items():
                    # a copy per filter: C4QualityFilter rewrites doc.text of the documents it keeps
                    try:
                        result = flt.filter(Document(text=doc.text, id=doc.id))
                    except Exception as exc:  # datatrove filters divide by word counts that can be 0
                        ok, reason = False, f"error:{type(exc).__name__}"
                        self.stat_update(f"{name}_error")
                    else:
                        ok, reason = result if isinstance(result, tuple) else (result, None)
                        ok = bool(ok)
                        reason = None if ok else str(reason or "failed")
                    doc.metadata[f"heur_{name}_pass"] = ok
                    doc.metadata[f"heur_{name}_reason"] = reason
                    if ok:
                        self.stat_update(f"{name}_pass")
            self.stat_update("documents")
            yield doc


# -- measurements ----------------------------------------------------------------------------------


@dataclass
class Row(_Row):
    """One system (see :class:`_common.Row`), with notes on dq-ray's fastest round."""

    notes: list[str] = field(default_factory=list)


def prepare_input(input_path: str, shards: int, repeat: int, out_dir: Path) -> int:
    """Read the corpus through dq-ray's reader; write accepted (id, text) round-robin into ``shards`` files
    (one datatrove task each, every one with the same mix of sources)."""
    return len(write_shards(read_accepted(input_path), shards, out_dir, repeat))


def run_dq_ray(input_dir: Path, run_dir: Path, workers: int, row: Row) -> tuple[dict[str, int], dict[str, Any]]:
    """Time ``run_job`` with the heuristics stage; return the pass counts read back from ``docs/``."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    cfg = one_stage_config(input_dir, run_dir, workers, {"name": "heuristics"})
    # a fresh embedded Ray (never a cluster someone else started here), its start not timed
    manifest = time_run_job(cfg, row, workers).manifest
    dataset = pads.dataset(str(run_dir / "docs"), format="parquet")
    passes = dict.fromkeys(FILTERS, 0)
    for batch in dataset.to_batches(columns=[f"heur_{name}_pass" for name in FILTERS]):
        for name in FILTERS:
            passes[name] += pc.sum(batch.column(f"heur_{name}_pass")).as_py() or 0
    return passes, manifest


def run_datatrove(input_dir: Path, logging_dir: Path, workers: int, chained: bool, row: Row) -> Any:
    """Time datatrove's LocalPipelineExecutor; return its merged stats."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader

    reader = JsonlReader(str(input_dir), compression=None, text_key="text", id_key="id")
    if chained:
        flts = _datatrove_filters()
        steps = [flts[name] for name in CHAIN_ORDER]
    else:
        steps = [AllFiltersKeepAll()]
    executor = LocalPipelineExecutor(
        pipeline=[reader, *steps], tasks=workers, workers=workers, logging_dir=str(logging_dir)
    )
    busy = wait_quiet(row.system)
    t0 = time.perf_counter()
    stats = executor.run()
    wall = time.perf_counter() - t0
    row.add(int(stats.stats[0].stats["documents"].total), wall, busy)
    return stats


def stage_notes(manifest: dict[str, Any], workers: int) -> list[str]:
    stage, read = manifest["stages"]["heuristics"], manifest["stages"]["read"]
    return [
        f"dq-ray heuristics stage (manifest `stages.heuristics`): docs_per_s {stage['docs_per_s']:.1f} "
        f"over the stage's own wall span of {stage['wall_s']:.2f} s; busy {stage['busy_s']:.2f} s summed over "
        f"workers ({stage['docs_per_busy_s']} docs per busy second), setup {stage['setup_s']:.2f} s; "
        f"busy / span = {stage['busy_s'] / max(stage['wall_s'], 1e-9):.2f} of the {workers} CPUs in use on average",
        f"dq-ray read stage busy {read['busy_s']:.2f} s; Ray Data plan (`write_parquet`) "
        f"{manifest['pipeline_wall_s']:.2f} s of run_job's {manifest['wall_s']:.2f} s",
    ]


# -- reporting ---------------------------------------------------------------------------------------------


def markdown_table(rows: list[Row], baseline: Row) -> str:
    lines = [
        "| system | docs | wall s | docs/s | ratio vs datatrove (same work) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.docs_per_s / baseline.docs_per_s
        lines.append(f"| {row.system} | {row.docs} | {row.wall_s:.2f} | {row.docs_per_s:.1f} | {ratio:.2f}x |")
    return "\n".join(lines)


def pass_table(dq: dict[str, int], dt: dict[str, int], chained: dict[str, str], total: int) -> str:
    lines = [
        f"| filter | dq-ray passes | datatrove same-work passes | match | chained: kept / seen (of {total}) |",
        "|---|---:|---:|:-:|---:|",
    ]
    for name in FILTERS:
        ok = "yes" if dq[name] == dt[name] else "**NO**"
        lines.append(f"| {name} | {dq[name]} | {dt[name]} | {ok} | {chained.get(name, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="corpus read through dq-ray's reader")
    parser.add_argument("--workers", type=int, default=2, help="shards, Ray CPUs and datatrove tasks/workers")
    parser.add_argument("--repeat", type=int, default=1, help="concatenate the corpus this many times")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--out", default="benchmarks/results/heuristics_vs_datatrove.md", help="markdown report")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary shards, runs and logs")
    args = parser.parse_args(argv)
    if min(args.workers, args.repeat, args.rounds) < 1:
        parser.error("--workers, --repeat and --rounds must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; make sure nothing tries

    dq_row = Row("dq-ray end to end (Ray start excluded)")
    same_row = Row("datatrove, same work")
    chain_row = Row("datatrove, chained (drops failures)")
    rows = [dq_row, same_row, chain_row]
    problems: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-"))
    try:
        input_dir = tmp / "input"
        n_docs = prepare_input(args.input, args.workers, args.repeat, input_dir)
        dq_passes = dt_passes = None
        for r in range(args.rounds):
            log.info("round %d/%d: dq-ray run_job, heuristics stage, %d Ray CPUs", r + 1, args.rounds, args.workers)
            passes, manifest = run_dq_ray(input_dir, tmp / f"run-{r}", args.workers, dq_row)
            if dq_row.walls[-1] == dq_row.wall_s:
                dq_row.notes = stage_notes(manifest, args.workers)
            if dq_passes not in (None, passes):
                problems.append(f"dq-ray pass counts changed between rounds: {dq_passes} then {passes}")
            dq_passes = passes

            log.info("round %d/%d: datatrove, same work (all four filters on every document)", r + 1, args.rounds)
            stats = run_datatrove(input_dir, tmp / f"dt-same-{r}", args.workers, False, same_row)
            step = stats.stats[1].stats
            passes = {name: int(step[f"{name}_pass"].total) for name in FILTERS}
            dt_errors = {name: int(step[f"{name}_error"].total) for name in FILTERS if f"{name}_error" in step}
            if int(step["documents"].total) != n_docs:
                problems.append(f"the same-work step scored {int(step['documents'].total)} of {n_docs} documents")
            if dt_passes not in (None, passes):
                problems.append(f"datatrove pass counts changed between rounds: {dt_passes} then {passes}")
            dt_passes = passes

            log.info("round %d/%d: datatrove, chained filters (failures dropped)", r + 1, args.rounds)
            stats = run_datatrove(input_dir, tmp / f"dt-chained-{r}", args.workers, True, chain_row)
            chained = {
                name: f"{int(st.stats['forwarded'].total)} / {int(st.stats['total'].total)}"
                for name, st in zip(CHAIN_ORDER, stats.stats[1:])
            }
    finally:
        if args.keep_tmp:
            log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    for row in rows:
        if row.docs != n_docs:
            problems.append(f"{row.system} saw {row.docs} documents, {n_docs} were written")
    mismatched = [name for name in FILTERS if dq_passes[name] != dt_passes[name]]
    if mismatched:
        problems.append(f"dq-ray and datatrove pass counts differ for {', '.join(mismatched)}")

    table = markdown_table(rows, same_row)
    passes_md = pass_table(dq_passes, dt_passes, chained, n_docs)
    per_round = [row.rounds_line() for row in rows]
    print()
    print(table)
    print()
    for line in [*dq_row.notes, *per_round]:
        print(f"- {line}")
    print()
    print(passes_md)
    if dt_errors:
        print(f"\nfilters that raised in the same-work baseline (counted as failures): {dt_errors}")

    best = "the fastest of the rounds" if args.rounds > 1 else "one run"
    report = [
        *report_header("heuristics: dq-ray vs datatrove", PACKAGES),
        f"- input: `{args.input}` read through dq-ray's reader: {n_docs} accepted documents (repeat "
        f"{args.repeat}) written as {args.workers} uncompressed JSONL shard(s); {args.workers} Ray CPUs, "
        f"{args.workers} datatrove tasks and workers; {args.rounds} round(s)",
        "",
        table,
        "",
        f"wall s is {best}; docs/s = documents / wall s; ratios are against `datatrove, same work` in this run.",
        "",
        *[f"- {line}" for line in dq_row.notes],
        "- wall time of each round (and how busy the machine was just before it started):",
        *[f"  - {line}" for line in per_round],
        "",
        "## pass counts (correctness cross-check)",
        "",
        passes_md,
        "",
        "The chained column follows datatrove's usual order (repetition, quality, C4, FineWeb): each filter "
        "only sees the documents the previous ones kept, and FineWeb sees C4's rewritten text, so those "
        "numbers are context, not a check.",
    ]
    if dt_errors:
        report += ["", f"Filters that raised in the same-work baseline (counted as failures): {dt_errors}"]
    if problems:
        report += ["", "## PROBLEMS", "", *[f"- {p}" for p in problems]]
    save_report(args.out, report)
    for p in problems:
        log.error(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
