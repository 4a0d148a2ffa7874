"""dq-ray's ``heuristics`` stage against datatrove's quality filters, on the same documents, verdict by verdict.

Two corpora, each written once as uncompressed JSONL shards that both sides read:

* **demo**: the demo corpus (``--input``), read once through dq-ray's reader, so both sides see exactly the
  accepted documents;
* **long**: ``--long N`` documents of 3-25 real sentences each (the demo sources cut into sentences, drawn with
  a seeded RNG and joined by spaces into one paragraph: the shape of ``benchmarks/scale.py``'s corpus).

On each corpus, both sides' whole processing is timed:

* **dq-ray**: ``run_job`` with only the ``heuristics`` stage (read, score, write ``docs/``, manifest), on an
  embedded Ray started beforehand (Ray's start-up is not timed); its rate in the stage (documents / the stage's
  span in the manifest) is reported too;
* **datatrove**: ``LocalPipelineExecutor`` running ``JsonlReader`` and one step that runs all four datatrove
  filters (Gopher quality, Gopher repetition, C4 quality, FineWeb quality) on its own copy of every document
  and writes the verdicts (id, pass, reason) to a JSONL file per task: what dq-ray records.

Then every document's verdict and reason of every filter is compared; any difference makes the script exit 1.
Rates are also given per core (``--workers`` Ray CPUs, datatrove tasks and workers), next to NeMo Curator's
published floor for its CPU heuristic filters (about 150 documents per second per core).

    .venv/bin/python benchmarks/heuristics_vs_datatrove.py [--input data/demo] [--repeat 1] [--long 3000] [--workers 2]
        [--rounds 1] [--quiet-wait 180] [--out benchmarks/results/heuristics_vs_datatrove.md] [--keep-tmp]

The machine may be shared: before each measurement the script waits until the CPUs are (nearly) idle and
records how busy they were; ``--rounds R`` measures everything R times and keeps each system's fastest round.
Ray is started with ``address="local"`` so that a Ray cluster someone else runs on this machine is never used.

Module-level imports are kept light on purpose: datatrove's executor starts its task processes with
``forkserver``, which re-imports this file there, and that import should not pull in Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    QUIET,
    log,
    one_stage_config,
    read_accepted,
    report_header,
    save_report,
    time_run_job,
    wait_quiet,
    write_shards,
)
from _common import Row as _Row
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

#: dq-ray's filter names (``heur_<name>_pass``) with datatrove's class names.
FILTERS = {
    "gopher_quality": "GopherQualityFilter",
    "gopher_repetition": "GopherRepetitionFilter",
    "c4": "C4QualityFilter",
    "fineweb": "FineWebQualityFilter",
}
VERDICT_COLUMNS = [f"heur_{name}_{part}" for name in FILTERS for part in ("pass", "reason")]
LANGUAGE = "en"
#: NeMo Curator's published CPU throughput for its heuristic filters, documents per second per core
NEMO_CURATOR_FLOOR = 150
PACKAGES = ("dq-ray", "ray", "datatrove", "pyarrow", "spacy", "numpy", "orjson", "multiprocess")
LONG_SENTENCES = (3, 25)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


# -- the datatrove side ---------------------------------------------------------------------------------------


class AllFiltersVerdicts(PipelineStep):
    """Runs every datatrove filter on its own copy of each document, writes the verdicts, drops nothing.

    One JSONL line per document (``id`` and the ``heur_<filter>_pass`` / ``_reason`` columns) goes to
    ``verdicts-<rank>.jsonl`` in ``out_dir``; passes are counted in the step's stats (``<filter>_pass``). A filter
    that raises counts as a failure (``error:<Exception>``), as in dq-ray, instead of killing the task.
    """

    name = "🧪 All filters, verdicts"
    type = "BENCH"

    def __init__(self, out_dir: str, language: str = LANGUAGE) -> None:
        from datatrove.pipeline import filters

        super().__init__()
        self.out_dir = out_dir
        self.filters = {name: getattr(filters, cls)(language=language) for name, cls in FILTERS.items()}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.data import Document

        with open(Path(self.out_dir) / f"verdicts-{rank:05d}.jsonl", "w", encoding="utf-8") as out:
            for doc in data:
                with self.track_time():
                    row: dict[str, Any] = {"id": doc.id}
                    for name, flt in self.filters.items():
                        # a copy per filter: C4QualityFilter rewrites doc.text of the documents it keeps
                        try:
                            result = flt.filter(Document(text=doc.text, id=doc.id))
                        except Exception as exc:  # datatrove filters divide by word counts that can be 0
                            ok, reason = False, f"error:{type(exc).__name__}"
                        else:
                            ok, reason = result if isinstance(result, tuple) else (result, None)
                            ok = bool(ok)
                            reason = None if ok else str(reason or "failed")
                        row[f"heur_{name}_pass"] = ok
                        row[f"heur_{name}_reason"] = reason
                        if ok:
                            self.stat_update(f"{name}_pass")
                    out.write(json.dumps(row) + "\n")
                self.stat_update("documents")
                yield doc


def run_datatrove(input_dir: Path, work_dir: Path, workers: int, row: Row) -> dict[str, dict]:
    """Time datatrove's LocalPipelineExecutor over ``input_dir``; return its verdicts by document id."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader

    out_dir = work_dir / "verdicts"
    out_dir.mkdir(parents=True)
    reader = JsonlReader(str(input_dir), compression=None, text_key="text", id_key="id")
    executor = LocalPipelineExecutor(
        pipeline=[reader, AllFiltersVerdicts(str(out_dir))],
        tasks=workers,
        workers=workers,
        logging_dir=str(work_dir / "logs"),
    )
    busy = wait_quiet(row.system)
    t0 = time.perf_counter()
    stats = executor.run()
    wall = time.perf_counter() - t0
    row.add(int(stats.stats[1].stats["documents"].total), wall, busy)
    verdicts: dict[str, dict] = {}
    for path in sorted(out_dir.glob("verdicts-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            verdicts[record.pop("id")] = record
    return verdicts


# -- the dq-ray side ------------------------------------------------------------------------------------------


@dataclass
class Row(_Row):
    """One system (see :class:`_common.Row`), with notes on dq-ray's fastest round."""

    notes: list[str] = field(default_factory=list)


def run_dq_ray(input_dir: Path, run_dir: Path, workers: int, row: Row) -> dict[str, dict]:
    """Time ``run_job`` with the heuristics stage; return the verdicts read back from ``docs/`` by id."""
    import pyarrow.dataset as pads

    cfg = one_stage_config(input_dir, run_dir, workers, {"name": "heuristics"})
    manifest = time_run_job(cfg, row, workers, stage="heuristics").manifest
    if row.walls[-1] == row.wall_s:
        row.notes = stage_notes(manifest, workers)
    table = pads.dataset(str(run_dir / "docs"), format="parquet").to_table(columns=["id", *VERDICT_COLUMNS])
    verdicts = {}
    for record in table.to_pylist():
        verdicts[record.pop("id")] = record
    return verdicts


def stage_notes(manifest: dict[str, Any], workers: int) -> list[str]:
    stage = manifest["stages"]["heuristics"]
    return [
        f"dq-ray heuristics stage (manifest `stages.heuristics`): docs_per_s {stage['docs_per_s']:.1f} over the "
        f"stage's own wall span of {stage['wall_s']:.2f} s; busy {stage['busy_s']:.2f} s summed over workers "
        f"({stage['docs_per_busy_s']} docs per busy second), setup {stage['setup_s']:.2f} s; "
        f"busy / span = {stage['busy_s'] / max(stage['wall_s'], 1e-9):.2f} of the {workers} CPUs",
        f"Ray Data plan (`write_parquet`) {manifest['pipeline_wall_s']:.2f} s of run_job's {manifest['wall_s']:.2f} s",
    ]


# -- CPU time in one process ----------------------------------------------------------------------------------


def score_in_this_process(side: str, input_dir: Path) -> dict[str, float]:
    """Score every document of ``input_dir`` with one side, here, one batch of 128 after another (dq-ray's batch
    size); return the documents and the CPU seconds that took (set-up and the tokenizer's load not counted)."""
    import orjson
    import pyarrow as pa

    docs = [orjson.loads(line) for path in sorted(input_dir.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    if side == "dq-ray":
        from dq_ray.stages.heuristics import Heuristics

        stage = Heuristics()
        stage.ensure_setup()
        stage.process(pa.table({"id": ["warm-up"], "text": ["The tokenizer loads here."]}))

        def score(batch: list[dict]) -> None:
            stage.process(pa.table({"id": [d["id"] for d in batch], "text": [d["text"] for d in batch]}))

    else:
        from datatrove.data import Document
        from datatrove.pipeline import filters as dt_filters
        from datatrove.utils.text import split_into_words

        flts = [getattr(dt_filters, cls)(language=LANGUAGE) for cls in FILTERS.values()]
        split_into_words("The tokenizer loads here.", LANGUAGE)

        def score(batch: list[dict]) -> None:
            for d in batch:
                for flt in flts:
                    try:
                        flt.filter(Document(text=d["text"], id=d["id"]))
                    except Exception:  # counted as a failure on both sides; only the time matters here
                        pass

    t0 = time.process_time()
    for i in range(0, len(docs), 128):
        score(docs[i : i + 128])
    return {"docs": len(docs), "cpu_s": time.process_time() - t0}


def cpu_rates(input_dir: Path) -> dict[str, dict[str, float]]:
    """Each side in a fresh Python process of its own (one core, no Ray, no executor), one after the other."""
    out = {}
    for side in ("dq-ray", "datatrove"):
        wait_quiet(f"{side} (CPU time)")
        cmd = [sys.executable, __file__, "--cpu-worker", side, str(input_dir)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# -- the corpora ----------------------------------------------------------------------------------------------


def long_documents(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` documents of 3-25 real sentences each, drawn (seeded) from the demo sources' unique sentences and
    joined by spaces into one paragraph."""
    from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs

    pool: set[str] = set()
    for source in (wikipedia_docs, news_docs, speech_docs, tweet_docs):
        for doc in source():
            pool.update(s for s in _SENTENCE.split(" ".join(doc["text"].split())) if len(s.split()) >= 3)
    sentences = sorted(pool)
    rng = random.Random(seed)
    return [(f"long-{i:06d}", " ".join(rng.sample(sentences, rng.randint(*LONG_SENTENCES)))) for i in range(n)]


def differences(dq: dict[str, dict], dt: dict[str, dict]) -> list[str]:
    """Every document and filter where the two sides' verdict or reason differ (and ids only one side has)."""
    out = [f"{doc_id}: only in dq-ray" for doc_id in sorted(set(dq) - set(dt))]
    out += [f"{doc_id}: only in datatrove" for doc_id in sorted(set(dt) - set(dq))]
    for doc_id in sorted(set(dq) & set(dt)):
        for name in FILTERS:
            a = (dq[doc_id][f"heur_{name}_pass"], dq[doc_id][f"heur_{name}_reason"])
            b = (dt[doc_id][f"heur_{name}_pass"], dt[doc_id][f"heur_{name}_reason"])
            if a != b:
                out.append(f"{doc_id}: {name} dq-ray {a} datatrove {b}")
    return out


@dataclass
class CorpusResult:
    """The measurements of one corpus."""

    name: str
    docs: int
    chars: int
    dq: Row
    dt: Row
    passes: dict[str, int] = field(default_factory=dict)
    diffs: list[str] = field(default_factory=list)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


def measure_corpus(name: str, docs: list[tuple[str, str]], tmp: Path, workers: int, rounds: int) -> CorpusResult:
    """Write ``docs`` as shards, time both sides ``rounds`` times, compare their verdicts."""
    ids = [doc_id for doc_id, _ in docs]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{name}: document ids are not unique; verdicts could not be compared by id")
    input_dir = tmp / name / "input"
    write_shards(docs, workers, input_dir)
    result = CorpusResult(
        name, len(docs), sum(len(text) for _, text in docs), Row(f"dq-ray ({name})"), Row(f"datatrove ({name})")
    )
    for r in range(rounds):
        log.info("%s, round %d/%d: dq-ray run_job, heuristics stage, %d Ray CPUs", name, r + 1, rounds, workers)
        dq = run_dq_ray(input_dir, tmp / name / f"run-{r}", workers, result.dq)
        log.info("%s, round %d/%d: datatrove, all four filters on every document", name, r + 1, rounds)
        dt = run_datatrove(input_dir, tmp / name / f"datatrove-{r}", workers, result.dt)
        result.diffs += [f"round {r + 1}: {d}" for d in differences(dq, dt)]
    result.passes = {flt: sum(bool(v[f"heur_{flt}_pass"]) for v in dt.values()) for flt in FILTERS}
    log.info("%s: each side in one process of its own, CPU time", name)
    result.cpu = cpu_rates(input_dir)
    return result


# -- reporting ------------------------------------------------------------------------------------------------


def markdown_table(results: list[CorpusResult], workers: int) -> str:
    lines = [
        "| corpus | docs | mean chars | system | wall s | docs/s | docs/s per core | ratio vs datatrove "
        "| per core vs NeMo Curator floor (150) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        base = res.dt.docs_per_s
        rows = [
            ("dq-ray end to end (Ray start excluded)", res.dq.wall_s, res.dq.docs_per_s),
            ("dq-ray in the stage (manifest span)", res.dq.span_s, res.dq.stage_docs_per_s),
            ("datatrove, all four filters", res.dt.wall_s, base),
        ]
        for system, wall, rate in rows:
            per_core = rate / workers
            lines.append(
                f"| {res.name} | {res.docs} | {res.chars / res.docs:,.0f} | {system} | {wall:.2f} | {rate:,.1f} "
                f"| {per_core:,.1f} | {rate / base:.2f}x | {per_core / NEMO_CURATOR_FLOOR:.2f}x |"
            )
    return "\n".join(lines)


def cpu_table(results: list[CorpusResult]) -> str:
    lines = [
        "| corpus | system, one process | docs | CPU s | docs per CPU-second | ratio vs datatrove "
        "| vs NeMo Curator floor (150) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        base = res.cpu["datatrove"]["docs"] / res.cpu["datatrove"]["cpu_s"]
        for side, label in (("dq-ray", "dq-ray `Heuristics.process`"), ("datatrove", "datatrove, four filters")):
            m = res.cpu[side]
            rate = m["docs"] / m["cpu_s"]
            lines.append(
                f"| {res.name} | {label} | {m['docs']:.0f} | {m['cpu_s']:.2f} | {rate:,.1f} | {rate / base:.2f}x "
                f"| {rate / NEMO_CURATOR_FLOOR:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="demo corpus, read through dq-ray's reader")
    parser.add_argument("--long", type=int, default=3000, help="long documents to generate (0: skip that corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the long documents")
    parser.add_argument("--workers", type=int, default=2, help="shards, Ray CPUs and datatrove tasks/workers")
    parser.add_argument(
        "--repeat", type=int, default=1, help="the demo corpus K times over (new ids), so fixed costs weigh less"
    )
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--out", default="benchmarks/results/heuristics_vs_datatrove.md", help="markdown report")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary shards, runs and logs")
    parser.add_argument(
        "--quiet-wait", type=float, default=QUIET["max_wait_s"], help="most seconds to wait for a quiet machine"
    )
    parser.add_argument("--cpu-worker", nargs=2, metavar=("SIDE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_worker:  # a child of cpu_rates(): one side, timed in this fresh process
        print(json.dumps(score_in_this_process(args.cpu_worker[0], Path(args.cpu_worker[1]))))
        return 0
    if min(args.workers, args.rounds, args.repeat) < 1 or args.long < 0:
        parser.error("--workers, --rounds and --repeat must be >= 1, --long >= 0")
    QUIET["max_wait_s"] = args.quiet_wait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; make sure nothing tries

    demo = read_accepted(args.input)
    demo = [(doc_id if k == 0 else f"{doc_id}~{k}", text) for k in range(args.repeat) for doc_id, text in demo]
    corpora = [("demo", demo)]
    if args.long:
        corpora.append(("long", long_documents(args.long, args.seed)))
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-"))
    try:
        results = [measure_corpus(name, docs, tmp, args.workers, args.rounds) for name, docs in corpora]
    finally:
        if args.keep_tmp:
            log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    problems = []
    for res in results:
        for row in (res.dq, res.dt):
            if row.docs != res.docs:
                problems.append(f"{row.system} saw {row.docs} documents, {res.docs} were written")
        if res.diffs:
            problems.append(f"{res.name}: {len(res.diffs)} verdicts or reasons differ, e.g. {res.diffs[:5]}")
    table = markdown_table(results, args.workers)
    cpu_md = cpu_table(results)
    checks = [
        f"- {res.name}: {res.docs} documents x {len(FILTERS)} filters compared, "
        f"{'all verdicts and reasons equal' if not res.diffs else f'**{len(res.diffs)} differ**'}; datatrove passes: "
        + ", ".join(f"{k} {v}" for k, v in res.passes.items())
        for res in results
    ]
    notes = [line for res in results for line in (*res.dq.notes, res.dq.rounds_line(), res.dt.rounds_line())]
    print()
    print(table)
    print()
    print(cpu_md)
    print()
    print("\n".join(checks))
    best = "the fastest of the rounds" if args.rounds > 1 else "one run"
    report = [
        *report_header("heuristics: dq-ray vs datatrove", PACKAGES),
        f"- corpora: demo (`{args.input}` read through dq-ray's reader, {args.repeat} time(s) over) and "
        f"{args.long} long documents "
        f"({LONG_SENTENCES[0]}-{LONG_SENTENCES[1]} real sentences, seed {args.seed}); {args.workers} uncompressed "
        f"JSONL shard(s) each; {args.workers} Ray CPUs, {args.workers} datatrove tasks and workers; "
        f"{args.rounds} round(s)",
        "",
        table,
        "",
        f"wall s is {best}; docs/s = documents / wall s; per core = docs/s / {args.workers}; ratios are against "
        f"datatrove on the same corpus in this run; NeMo Curator's published CPU floor for its heuristic filters "
        f"is about {NEMO_CURATOR_FLOOR} documents per second per core.",
        "",
        "## CPU time, one process per side",
        "",
        "Each side scores the same shards again in a fresh Python process of its own (one core, no Ray, no "
        "executor; dq-ray in batches of 128, as its stage runs): documents per CPU-second of that process, which "
        "other processes on a shared machine disturb much less than wall time.",
        "",
        cpu_md,
        "",
        "## verdicts, document by document",
        "",
        *checks,
        "",
        "## rounds",
        "",
        *[f"- {line}" for line in notes],
    ]
    if problems:
        report += ["", "## PROBLEMS", "", *[f"- {p}" for p in problems]]
    save_report(args.out, report)
    for p in problems:
        log.error(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
