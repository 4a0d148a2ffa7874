"""Does dq-ray's throughput stay flat from 10k to 1M documents? The CPU stages, run through the real CLI.

For each size N of ``--sizes`` the script

1. **builds a corpus** of N unique documents from real text (the Wikipedia leads, news articles, Commons speeches
   and health tweets of the installed packages that also feed ``dq-ray demo-corpus``): their text is cut once into
   a pool of unique sentences, and every document is 3 to 25 sentences drawn with a seeded NumPy RNG. A known share
   of the documents are planted copies of other documents: exact copies (verbatim, or changed only in case,
   whitespace or punctuation: ``exact_dedup`` folds those) and near-duplicates with 1-5 word edits
   (``dq_ray.demo.planted.edited``; their originals have >= 10 sentences, so the edits leave MinHash's 5-gram
   Jaccard well above its threshold). The documents are written as JSONL (``--zstd``: ``.jsonl.zst``), at most
   ``--docs-per-file`` per file and at least one file per Ray CPU, so Ray reads in parallel at every size;
2. **runs ``dq-ray run``** (a child process with its own embedded Ray) on a config written into the work folder:
   ``heuristics``, ``exact_dedup`` and ``minhash`` in one job, and ``embed`` (the packaged int8 ONNX model,
   1-thread actors, one per Ray CPU) in a second job, only while N <= ``--embed-max`` (a job whose embedded Ray
   times out while starting, as it can on an overloaded machine, is started again);
3. **samples** every 0.2 s while the job runs: the driver's peak RSS (the kernel's high-water mark, ``VmHWM``);
   over the Ray workers started by that driver (its descendants whose command line holds ``ray::`` or
   ``default_worker.py``), the peak RSS of any one worker and the peak of their sum; and the CPU seconds of the
   driver and everything below it (a cost per document that a busy machine disturbs less than wall time);
4. **reads the manifest**: per stage (the manifest's ``stages`` block) docs/s = rows / the stage's wall span
   (first batch in to last batch out), CPU-s per 1k documents = busy_s x the stage's ``num_cpus`` / rows x 1000,
   fits (``<stage>.fit``: docs/s = N / fit wall), and the duplicates each dedup stage dropped (``flags``).

Reported: one Markdown table per job and a verdict per stage: **linear** when docs/s at the largest size is
>= 0.9x docs/s at the smallest (10k against 1M by default), plus the driver's bytes per document (growth of its
peak RSS between sizes). Written to ``benchmarks/results/scale-<date>.md`` and a ``.json`` next to it.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,100000,1000000] [--embed-max 100000]
        [--stages heuristics,exact_dedup,minhash,embed] [--workdir DIR] [--keep] [--num-cpus N]
        [--docs-per-file 100000] [--zstd] [--exact-share 0.02] [--near-share 0.02] [--seed 0]
        [--quiet-wait 180] [--out benchmarks/results/scale-<date>.md]
    .venv/bin/python benchmarks/scale.py --generate-only --sizes 1000000 --workdir /tmp/scale   # time the corpus

The corpus text comes from installed packages; nothing here is meant to be committed but the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import yaml
from _common import QUIET, Interference, log, mib, report_header, save_report, wait_quiet

CPU_STAGES = ("heuristics", "exact_dedup", "minhash")
ALL_STAGES = (*CPU_STAGES, "embed")
PACKAGES = ("dq-ray", "ray", "pyarrow", "datatrove", "numpy", "onnxruntime", "psutil")
#: sentences per document (inclusive)
MIN_SENTENCES, MAX_SENTENCES = 3, 25
#: near-duplicates copy documents of at least this many sentences (1-5 word edits keep Jaccard high)
NEAR_MIN_SENTENCES = 10
#: "linear": docs/s at the largest size >= this share of docs/s at the smallest
LINEAR_SHARE = 0.9
SAMPLE_EVERY_S = 0.2
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


# -- the corpus ------------------------------------------------------------------------------------------


def sentence_pool() -> list[str]:
    """Every unique sentence (>= 3 words, whitespace collapsed) of the demo sources, sorted (a stable pool)."""
    from dq_ray.demo.corpus import news_docs, speech_docs, tweet_docs, wikipedia_docs

    pool: set[str] = set()
    for source in (wikipedia_docs, news_docs, speech_docs, tweet_docs):
        for doc in source():
            for sentence in _SENTENCE.split(" ".join(doc["text"].split())):
                if len(sentence.split()) >= 3:
                    pool.add(sentence)
    return sorted(pool)


@dataclass
class Corpus:
    """A generated corpus: where, how big, and its planted duplicates (the ground truth)."""

    dir: str
    docs: int
    files: int
    bytes: int
    exact_copies: int
    near_copies: int
    seconds: float


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


class CorpusPlan:
    """Which sentences make each of ``n`` documents, and which documents are planted copies of which.

    Every document is MIN..MAX_SENTENCES sentences of ``pool``, drawn with replacement by a seeded NumPy RNG (all
    draws at once). ``exact_share`` of the documents are exact copies of other documents (verbatim, or changed in
    case, whitespace or punctuation only: :func:`dq_ray.demo.corpus.variant`) and ``near_share`` copies with 1-5
    word edits (:func:`dq_ray.demo.planted.edited`), at random positions, each of a different original. With a
    pool of ~200k sentences two drawn documents share their text with negligible probability, so the planted
    copies are the only duplicates.
    """

    def __init__(self, n: int, pool: list[str], seed: int = 0, exact_share: float = 0.02, near_share: float = 0.02):
        rng = np.random.default_rng(seed)
        self.n, self.pool, self.seed = n, pool, seed
        self.lengths = rng.integers(MIN_SENTENCES, MAX_SENTENCES + 1, n)
        self.starts = np.zeros(n + 1, np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        self.picks = rng.integers(0, len(pool), int(self.starts[-1]), dtype=np.int32)

        # ``original[i]``: the document whose text document i copies (-1: its own draw)
        n_exact, n_near = round(exact_share * n), round(near_share * n)
        exact_pos, near_pos, own = np.split(rng.permutation(n), [n_exact, n_exact + n_near])
        long_own = own[self.lengths[own] >= NEAR_MIN_SENTENCES]
        near_orig = rng.choice(long_own, min(n_near, len(long_own)), replace=False)
        exact_orig = rng.choice(np.setdiff1d(own, near_orig), n_exact, replace=False)
        self.original = np.full(n, -1, np.int64)
        self.original[exact_pos] = exact_orig
        self.original[near_pos[: len(near_orig)]] = near_orig
        self.near = np.zeros(n, bool)
        self.near[near_pos[: len(near_orig)]] = True
        self.exact_copies, self.near_copies = n_exact, len(near_orig)
        # each sentence as the bytes it is inside a JSON string (escaped once, joined many times)
        self.pool_json = np.array([orjson.dumps(s)[1:-1] for s in pool], dtype=object)

    def text(self, i: int) -> str:
        """Document ``i``'s text, planted changes included (the slow path: used for the copies only)."""
        from dq_ray.demo.corpus import variant
        from dq_ray.demo.planted import edited

        src = int(self.original[i])
        own = i if src < 0 else src
        text = " ".join(self.pool[j] for j in self.picks[self.starts[own] : self.starts[own + 1]].tolist())
        if src < 0:
            return text
        return edited(text, random.Random(f"{self.seed}:{i}")) if self.near[i] else variant(text, i)

    def jsonl(self, lo: int, hi: int) -> bytes:
        """Documents ``lo..hi-1`` as JSON lines ``{"id":"scale-0000042","text":"..."}``.

        One ``bytes.join`` over pieces gathered with NumPy: per document its id prefix, its sentences with a
        space between them, and the closing ``"}``; a copy's pieces are replaced by its whole line.
        """
        k = self.lengths[lo:hi]
        sizes = 2 * k + 1  # prefix, k sentences, k - 1 spaces, suffix
        first = np.zeros(hi - lo, np.int64)
        np.cumsum(sizes[:-1], out=first[1:])
        pieces = np.full(int(sizes.sum()), b" ", dtype=object)
        pieces[first] = [b'{"id":"scale-%07d","text":"' % i for i in range(lo, hi)]
        pieces[first + sizes - 1] = b'"}\n'
        sentence_doc = np.repeat(np.arange(hi - lo), k)
        sentence_rank = _concat_ranges(np.zeros(hi - lo, np.int64), k)
        pieces[first[sentence_doc] + 1 + 2 * sentence_rank] = self.pool_json[
            self.picks[self.starts[lo] : self.starts[hi]]
        ]
        for d in np.flatnonzero(self.original[lo:hi] >= 0).tolist():
            line = orjson.dumps({"id": f"scale-{lo + d:07d}", "text": self.text(lo + d)}) + b"\n"
            pieces[first[d] : first[d] + sizes[d]] = b""
            pieces[first[d]] = line
        return b"".join(pieces.tolist())


def generate_corpus(
    n: int,
    out_dir: Path,
    pool: list[str],
    *,
    seed: int = 0,
    docs_per_file: int = 100_000,
    min_files: int = 1,
    exact_share: float = 0.02,
    near_share: float = 0.02,
    zstd: bool = False,
) -> Corpus:
    """Write the ``n`` documents of a :class:`CorpusPlan` into ``out_dir``: consecutive ids per file, at most
    ``docs_per_file`` documents per file and at least ``min_files`` files (one per Ray CPU reads in parallel)."""
    t0 = time.perf_counter()
    plan = CorpusPlan(n, pool, seed, exact_share, near_share)
    out_dir.mkdir(parents=True)
    n_files = max(math.ceil(n / docs_per_file), min_files)
    bounds = np.linspace(0, n, n_files + 1).astype(np.int64).tolist()
    for f in range(n_files):
        payload = plan.jsonl(bounds[f], bounds[f + 1])
        if zstd:
            import zstandard

            payload = zstandard.ZstdCompressor(level=3, threads=-1).compress(payload)
        (out_dir / f"part-{f:05d}.jsonl{'.zst' if zstd else ''}").write_bytes(payload)
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return Corpus(str(out_dir), n, n_files, size, plan.exact_copies, plan.near_copies, time.perf_counter() - t0)


# -- running a job and watching its processes -----------------------------------------------------------


def _hwm(pid: int) -> int:
    """A process's peak resident set so far (``VmHWM``), in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class MemorySampler(threading.Thread):
    """Samples a ``dq-ray`` child process and every process below it until :meth:`stop`: the driver's peak RSS,
    the Ray workers' (descendants whose command line holds ``ray::`` or ``default_worker.py``) peak RSS one by one
    and summed, and the CPU seconds the whole tree used (each process's last sample; raylet and GCS included).

    Only the child's own descendants count, so Ray jobs of other users of the machine are never measured.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.driver_peak = 0
        self.worker_peak = 0  # peak RSS of any one worker
        self.workers_sum_peak = 0  # peak of the summed RSS of all workers at one moment
        self.workers_seen: set[int] = set()
        self.cpu_by_pid: dict[int, float] = {}
        self._done = threading.Event()

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid.values())

    def _cpu(self, proc: psutil.Process) -> None:
        times = proc.cpu_times()
        self.cpu_by_pid[proc.pid] = times.user + times.system

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            try:
                self.driver_peak = max(self.driver_peak, _hwm(self.pid))
                self._cpu(root)
                children = root.children(recursive=True)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                break
            total = 0
            for proc in children:
                try:
                    self._cpu(proc)
                    if proc.pid not in self.workers_seen:
                        cmd = " ".join(proc.cmdline())
                        if "ray::" not in cmd and "default_worker.py" not in cmd:
                            continue
                        self.workers_seen.add(proc.pid)
                    total += proc.memory_info().rss
                    self.worker_peak = max(self.worker_peak, _hwm(proc.pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self.workers_sum_peak = max(self.workers_sum_peak, total)
            self._done.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class JobResult:
    """One ``dq-ray run``: its size, timings, memory and manifest."""

    job: str
    docs: int
    process_wall_s: float
    busy_before: float | None
    driver_peak: int
    worker_peak: int
    workers_sum_peak: int
    workers: int
    cpu_s: float  # CPU seconds of the dq-ray process and everything below it
    others_cpu_s: float  # CPU seconds other processes of the machine used meanwhile
    manifest: dict[str, Any] = field(repr=False)


def job_config(corpus_dir: str, run_dir: Path, stages: list[str], num_cpus: int | None) -> dict[str, Any]:
    """The YAML config of one job; ``embed`` gets the int8 ONNX model in single-thread actors, one per CPU."""
    entries: list[dict[str, Any]] = []
    for name in stages:
        if name == "embed":
            actors = num_cpus or os.cpu_count() or 1
            entries.append(
                {"name": "embed", "params": {"backend": "onnx", "num_threads": 1}, "resources": {"concurrency": actors}}
            )
        else:
            entries.append({"name": name})
    return {
        "input": {"paths": [corpus_dir]},
        "output": {"path": str(run_dir)},
        "ray": {"num_cpus": num_cpus},
        "stages": entries,
    }


def dq_ray_command() -> list[str]:
    """The ``dq-ray`` console script of this interpreter's environment (the real CLI)."""
    script = Path(sys.executable).with_name("dq-ray")
    if script.exists():
        return [str(script)]
    found = shutil.which("dq-ray")
    if not found:
        raise SystemExit("the dq-ray command is not installed (make install)")
    return [found]


#: what a Ray that could not start in time says (an overloaded machine); such a job is started again
RAY_START_TIMEOUT = "timed out during startup"
START_ATTEMPTS = 3


def run_cli(job: str, config: dict[str, Any], workdir: Path, docs: int) -> JobResult:
    """Write ``config`` as YAML, run ``dq-ray run`` on it in a child process while sampling memory; read the
    manifest. The child's output goes to ``<workdir>/logs/``. A job whose embedded Ray timed out while starting
    is run again (up to ``START_ATTEMPTS`` times, ``--overwrite``); any other failure ends the benchmark."""
    name = f"{job}-{docs}"
    cfg_path = workdir / "configs" / f"{name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = Path(config["output"]["path"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [*dq_ray_command(), "run", str(cfg_path), "--output", str(run_dir)]
    for attempt in range(1, START_ATTEMPTS + 1):
        log_path = workdir / "logs" / f"{name}-{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        busy = wait_quiet(f"{job} at {docs} documents")
        log.info("%s, %d documents: dq-ray run %s (log %s)", job, docs, cfg_path, log_path)
        with open(log_path, "wb") as out, Interference() as others:
            t0 = time.perf_counter()
            child = subprocess.Popen(
                command + (["--overwrite"] if attempt > 1 else []), stdout=out, stderr=out, env=env
            )
            sampler = MemorySampler(child.pid)
            sampler.start()
            rc = child.wait()
            wall = time.perf_counter() - t0
            sampler.stop()
        if rc == 0:
            break
        tail = log_path.read_text(errors="replace")[-3000:]
        if RAY_START_TIMEOUT not in tail or attempt == START_ATTEMPTS:
            raise SystemExit(f"dq-ray run failed ({job}, {docs} documents, exit {rc}); log {log_path}:\n{tail}")
        log.warning("%s, %d documents: Ray did not start in time (attempt %d); starting again", job, docs, attempt)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return JobResult(
        job,
        docs,
        wall,
        busy,
        sampler.driver_peak,
        sampler.worker_peak,
        sampler.workers_sum_peak,
        len(sampler.workers_seen),
        sampler.cpu_s,
        others.others,
        manifest,
    )


# -- what the manifest says ----------------------------------------------------------------------------


def stage_rows(result: JobResult) -> list[dict[str, Any]]:
    """One row per entry of the manifest's ``stages`` block: docs/s over the stage's span, CPU-s per 1k docs."""
    manifest = result.manifest
    info = manifest.get("stage_info", {})
    rows = []
    for name, st in manifest["stages"].items():
        base = name.split(".")[0]
        if name.endswith(".fit"):  # a fit on the driver: its wall time only, over the whole corpus
            wall = float(st["wall_s"])
            rows.append({"stage": name, "rows": result.docs, "span_s": wall, "docs_per_s": result.docs / wall})
            continue
        num_cpus = float(info.get(base, {}).get("resources", {}).get("num_cpus", 1.0) or 1.0)
        rows_n = int(st["rows"])
        rows.append(
            {
                "stage": name,
                "rows": rows_n,
                "span_s": float(st["wall_s"]),
                "docs_per_s": rows_n / float(st["wall_s"]),
                "busy_s": float(st["busy_s"]),
                "num_cpus": num_cpus,
                "cpu_s_per_1k": float(st["busy_s"]) * num_cpus / rows_n * 1000 if rows_n else None,
                "setup_s": float(st.get("setup_s", 0.0)),
            }
        )
    return rows


def dropped(manifest: dict[str, Any], column: str) -> int | None:
    """Documents a dedup stage marked as not kept (``flags.<column>.false``)."""
    flag = manifest.get("flags", {}).get(column)
    return None if flag is None else int(flag["false"])


# -- the report ----------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def stage_table(results: list[JobResult]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown: per stage and size docs/s, ratio to the smallest size, CPU-s per 1k docs; and the verdicts."""
    by_stage: dict[str, dict[int, dict[str, Any]]] = {}
    for res in results:
        for row in stage_rows(res):
            by_stage.setdefault(row["stage"], {})[res.docs] = row
    lines = [
        "| stage | docs | span s | docs/s | vs smallest | busy s | CPUs | CPU-s / 1k docs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for stage, sizes in by_stage.items():
        ordered = sorted(sizes)
        base = sizes[ordered[0]]["docs_per_s"]
        for n in ordered:
            r = sizes[n]
            ratio = r["docs_per_s"] / base if base else float("nan")
            lines.append(
                f"| {stage} | {n:,} | {r['span_s']:.2f} | {r['docs_per_s']:,.0f} | {ratio:.2f}x | "
                f"{_f(r.get('busy_s'), 2)} | {_f(r.get('num_cpus'), 1)} | {_f(r.get('cpu_s_per_1k'), 2)} |"
            )
        if len(ordered) > 1:
            top = sizes[ordered[-1]]["docs_per_s"]
            ratio = top / base if base else float("nan")
            cost = [sizes[ordered[0]].get("cpu_s_per_1k"), sizes[ordered[-1]].get("cpu_s_per_1k")]
            verdicts.append(
                {
                    "stage": stage,
                    "smallest": ordered[0],
                    "largest": ordered[-1],
                    "ratio": ratio,
                    "linear": ratio >= LINEAR_SHARE,
                    "cpu_s_per_1k": cost if None not in cost else None,
                }
            )
    return "\n".join(lines), verdicts


def job_table(results: list[JobResult], corpora: dict[int, Corpus]) -> str:
    """Markdown: per size the job's wall, CPU, memory and what the dedup stages found against what was planted."""
    lines = [
        "| docs | files | input MB | job wall s | process wall s | job CPU-s / 1k docs | others' CPU-s | "
        "driver peak MiB | worker peak MiB (one) | workers peak MiB (sum) | workers | exact dups dropped / planted "
        "| minhash dropped / planted |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        c = corpora[res.docs]
        exact, near = dropped(res.manifest, "exact_dup_keep"), dropped(res.manifest, "minhash_keep")
        lines.append(
            f"| {res.docs:,} | {c.files} | {c.bytes / 1e6:,.0f} | {res.manifest['wall_s']:.1f} | "
            f"{res.process_wall_s:.1f} | {res.cpu_s / res.docs * 1000:.1f} | {res.others_cpu_s:.0f} | "
            f"{mib(res.driver_peak)} | {mib(res.worker_peak)} | {mib(res.workers_sum_peak)} | {res.workers} | "
            f"{'' if exact is None else f'{exact:,} / {c.exact_copies:,}'} | "
            f"{'' if near is None else f'{near:,} / {c.exact_copies + c.near_copies:,}'} |"
        )
    return "\n".join(lines)


def driver_growth(results: list[JobResult]) -> list[str]:
    """Bytes per document the driver's peak RSS grows by between consecutive sizes."""
    out = []
    ordered = sorted(results, key=lambda r: r.docs)
    for a, b in zip(ordered, ordered[1:]):
        per_doc = (b.driver_peak - a.driver_peak) / (b.docs - a.docs)
        out.append(
            f"{a.docs:,} -> {b.docs:,} documents: driver peak {mib(a.driver_peak)} -> {mib(b.driver_peak)} MiB, "
            f"{per_doc:,.0f} bytes per added document"
        )
    return out


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """``PASS heuristics: docs/s at 1,000,000 is 0.97x ...``, with the stage's CPU cost per document beside it
    (in a streaming phase a cheap stage's span follows the stage before it; its cost per document does not)."""
    lines = []
    for v in verdicts:
        line = (
            f"{'PASS' if v['linear'] else 'FAIL'} {v['stage']}: docs/s at {v['largest']:,} is {v['ratio']:.2f}x "
            f"the rate at {v['smallest']:,} (linear: >= {LINEAR_SHARE}x)"
        )
        if v["cpu_s_per_1k"] and v["cpu_s_per_1k"][0]:
            a, b = v["cpu_s_per_1k"]
            line += f"; CPU-s per 1k docs {a:.2f} -> {b:.2f} ({b / a:.2f}x)"
        lines.append(line)
    return lines


def job_section(title: str, results: list[JobResult], corpora: dict[int, Corpus]) -> tuple[list[str], list]:
    """The Markdown of one job (CPU stages or embed) and its verdicts."""
    stages_md, verdicts = stage_table(results)
    lines = [f"## {title}", "", job_table(results, corpora), "", stages_md, ""]
    lines += [f"- {v}" for v in verdict_lines(verdicts)]
    lines += [f"- {g}" for g in driver_growth(results)]
    return lines, verdicts


# -- main ------------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(float(s)) for s in text.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 10000,100000,1000000")
    return sizes


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = set(stages) - set(ALL_STAGES)
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"stages are a comma list of {', '.join(ALL_STAGES)}")
    return stages


def main(argv: list[str] | None = None) -> int:
    today = datetime.now(timezone.utc).date().isoformat()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=parse_sizes("10000,100000,1000000"), help="corpus sizes, comma list"
    )
    parser.add_argument("--embed-max", type=int, default=100_000, help="largest size the embed job runs at")
    parser.add_argument(
        "--stages", type=parse_stages, default=list(ALL_STAGES), help=f"comma list of {','.join(ALL_STAGES)}"
    )
    parser.add_argument("--workdir", default=None, help="a new or empty folder for corpora, runs, logs (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (default: removed at the end)")
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: every core)")
    parser.add_argument("--docs-per-file", type=int, default=100_000, help="at most this many documents per file")
    parser.add_argument("--zstd", action="store_true", help="write .jsonl.zst instead of .jsonl")
    parser.add_argument("--exact-share", type=float, default=0.02, help="share of planted exact copies")
    parser.add_argument("--near-share", type=float, default=0.02, help="share of planted near-duplicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="most seconds to wait for idle CPUs")
    parser.add_argument("--generate-only", action="store_true", help="only build (and time) the corpora")
    parser.add_argument("--out", default=f"benchmarks/results/scale-{today}.md", help="markdown report (+ .json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    QUIET["max_wait_s"] = args.quiet_wait
    num_cpus = args.num_cpus or os.cpu_count() or 1
    cpu_stages = [s for s in args.stages if s != "embed"]
    embed_sizes = [n for n in args.sizes if n <= args.embed_max] if "embed" in args.stages else []

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dq-scale-"))
    if workdir.exists() and any(workdir.iterdir()) and args.workdir:  # it is removed at the end: ours alone
        parser.error(f"--workdir {workdir} is not empty; name a new or empty folder")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pool = sentence_pool()
    pool_s = time.perf_counter() - t0
    log.info("sentence pool: %d unique sentences in %.1f s", len(pool), pool_s)
    corpora: dict[int, Corpus] = {}
    cpu_results: list[JobResult] = []
    embed_results: list[JobResult] = []
    try:
        for n in args.sizes:
            corpus = generate_corpus(
                n,
                workdir / f"corpus-{n}",
                pool,
                seed=args.seed,
                docs_per_file=args.docs_per_file,
                min_files=num_cpus,
                exact_share=args.exact_share,
                near_share=args.near_share,
                zstd=args.zstd,
            )
            corpora[n] = corpus
            log.info(
                "corpus of %d documents: %d files, %.0f MB, %d exact + %d near copies, generated in %.1f s",
                n, corpus.files, corpus.bytes / 1e6, corpus.exact_copies, corpus.near_copies, corpus.seconds,
            )  # fmt: skip
            if args.generate_only:
                continue
            runs = workdir / "runs"
            if cpu_stages:
                cfg = job_config(corpus.dir, runs / f"cpu-{n}", cpu_stages, args.num_cpus)
                cpu_results.append(run_cli("cpu", cfg, workdir, n))
            if n in embed_sizes:
                cfg = job_config(corpus.dir, runs / f"embed-{n}", ["embed"], args.num_cpus)
                embed_results.append(run_cli("embed", cfg, workdir, n))
            if cpu_results or embed_results:  # what is measured so far, in case a long run is stopped
                write_results(args, today, num_cpus, cpu_stages, pool, pool_s, corpora, cpu_results, embed_results)
            if not args.keep:  # the next size needs the disk more than we need these
                shutil.rmtree(corpus.dir, ignore_errors=True)
                shutil.rmtree(runs, ignore_errors=True)
    finally:
        if args.keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.generate_only:
        for n, c in corpora.items():
            print(f"corpus {n:,}: {c.files} file(s), {c.bytes / 1e6:,.0f} MB, generated in {c.seconds:.1f} s")
        return 0
    results = (args, today, num_cpus, cpu_stages, pool, pool_s, corpora, cpu_results, embed_results)
    write_results(*results, echo=True)
    return 0  # a FAIL verdict is a finding, not an error of the script


def write_results(
    args: argparse.Namespace,
    today: str,
    num_cpus: int,
    cpu_stages: list[str],
    pool: list[str],
    pool_s: float,
    corpora: dict[int, Corpus],
    cpu_results: list[JobResult],
    embed_results: list[JobResult],
    echo: bool = False,
) -> None:
    """Write the report and its JSON for the sizes measured so far (after each size, so a long run that is
    stopped keeps what it measured)."""
    gen_lines = [
        f"sentence pool: {len(pool):,} unique sentences of the demo sources, built in {pool_s:.1f} s",
        *(
            f"corpus {n:,}: {c.files} file(s), {c.bytes / 1e6:,.0f} MB, {c.exact_copies:,} exact and "
            f"{c.near_copies:,} near copies planted, generated in {c.seconds:.1f} s"
            for n, c in corpora.items()
        ),
    ]

    report = [
        *report_header("dq-ray at scale: docs/s from the smallest to the largest corpus", PACKAGES),
        f"- Ray CPUs: {num_cpus}; sizes {', '.join(f'{n:,}' for n in args.sizes)}; embed up to {args.embed_max:,}",
        *[f"- {line}" for line in gen_lines],
        "",
        "docs/s = the stage's rows / its wall span in the manifest (first batch in to last batch out; a fit: the "
        "corpus / the fit's wall). CPU-s / 1k docs = busy_s x the stage's num_cpus per 1,000 rows. Job wall: "
        "the manifest's `wall_s` (run_job, Ray start included); process wall: the whole `dq-ray run` command; "
        "job CPU-s: CPU time of the `dq-ray run` process and all its descendants (Ray's daemons included); others' "
        "CPU-s: what the rest of the machine used meanwhile (a shared machine's noise). "
        "Memory: the driver's peak RSS (VmHWM), the peak RSS of any one Ray worker, the peak of all workers' RSS "
        "summed (sampled every 0.2 s; RSS counts shared pages in every process).",
        "",
    ]
    payload: dict[str, Any] = {"date": today, "sizes": args.sizes, "num_cpus": num_cpus, "pool": len(pool)}
    payload["corpora"] = {n: asdict(c) for n, c in corpora.items()}
    all_verdicts = []
    for title, results in (
        (f"CPU stages ({', '.join(cpu_stages)}), one job", cpu_results),
        ("embed (int8 ONNX, 1-thread actors), its own job", embed_results),
    ):
        if not results:
            continue
        lines, verdicts = job_section(title, results, corpora)
        report += [*lines, ""]
        all_verdicts += verdicts
        payload[results[0].job] = [
            {
                **{k: v for k, v in asdict(r).items() if k != "manifest"},
                "job_wall_s": r.manifest["wall_s"],
                "stages": stage_rows(r),
                "flags": r.manifest.get("flags", {}),
                "resources": {k: v.get("resources") for k, v in r.manifest.get("stage_info", {}).items()},
            }
            for r in results
        ]
    payload["verdicts"] = all_verdicts
    if echo:
        print("\n".join(report[report.index("") + 1 :]))
    out = save_report(args.out, report)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
