"""What every benchmark script shares: timing rows, a quiet machine, versions and the report header.

The benchmarks run on shared, noisy machines. Each script measures dq-ray and a baseline side by side in one
run and reports their ratio; :func:`wait_quiet` waits until other processes leave the CPUs alone before each
measurement, and :class:`Interference` records how much CPU other processes used during it, so a reader can
tell a clean measurement from a disturbed one.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger("bench")

#: before each measurement, wait (at most max_wait_s) until the machine is at most busy_share busy
QUIET = {"busy_share": 0.25, "max_wait_s": 180.0}


@dataclass
class Row:
    """One system of a benchmark: the wall time of each round (tables show the fastest round)."""

    system: str
    docs: int = 0
    walls: list[float] = field(default_factory=list)
    busy_before: list[float | None] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)
    #: dq-ray rows: the measured stage's span in each round (first batch in to last batch out, from the manifest)
    spans: list[float] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return min(self.walls)

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def span_s(self) -> float:
        """The stage's shortest span (nan for a row without one)."""
        return min(self.spans) if self.spans else float("nan")

    @property
    def stage_docs_per_s(self) -> float:
        """Documents per second while the stage ran: its throughput once the actors are up (nan: no span)."""
        return self.docs / self.span_s if self.spans else float("nan")

    @property
    def fixed_s(self) -> float:
        """End-to-end wall minus the stage's span in the fastest round: start-up, reads before the first batch,
        the write and manifest after the last (nan: no span)."""
        return self.wall_s - self.spans[self.walls.index(self.wall_s)] if self.spans else float("nan")

    def add(self, docs: int, wall: float, busy: float | None, others: float | None = None) -> None:
        if self.walls and docs != self.docs:
            raise RuntimeError(f"{self.system}: {docs} documents in one round, {self.docs} in another")
        self.docs = docs
        self.walls.append(wall)
        self.busy_before.append(busy)
        if others is not None:
            self.others_cpu.append(others)

    def rounds_line(self) -> str:
        """``system: 12.3 s (4% busy before; other processes used 0.5 CPU-s during it), ...``"""
        parts = []
        for i, (wall, busy) in enumerate(zip(self.walls, self.busy_before)):
            notes = [f"{100 * busy:.0f}% busy before"] if busy is not None else []
            if i < len(self.others_cpu):
                notes.append(f"other processes used {self.others_cpu[i]:.1f} CPU-s during it")
            parts.append(f"{wall:.2f} s" + (f" ({'; '.join(notes)})" if notes else ""))
        return f"{self.system}: " + ", ".join(parts)


# -- a quiet machine ---------------------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    return values[3] + values[4], sum(values)  # idle + iowait, total


def machine_busy(interval: float = 1.0) -> float | None:
    """Share of the whole machine's CPU time that was busy over ``interval`` seconds (None: unknown)."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(interval)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


def wait_quiet(what: str) -> float | None:
    """Wait (up to ``QUIET["max_wait_s"]``) until other processes leave the CPUs alone; return the last busy
    share. The machine is shared: another job running on it would be timed along with ours."""
    start = time.monotonic()
    while True:
        busy = machine_busy()
        if busy is None or busy <= QUIET["busy_share"]:
            return busy
        waited = time.monotonic() - start
        if waited > QUIET["max_wait_s"]:
            log.warning("the machine is still %.0f%% busy after %.0f s; measuring %s anyway", 100 * busy, waited, what)
            return busy
        log.info("the machine is %.0f%% busy with other processes; waiting before %s", 100 * busy, what)
        time.sleep(2)


def _cpu_by_pid() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds used so far)} of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class Interference:
    """CPU seconds used during a measurement by processes that are not this one or its descendants (another
    user's jobs on a shared machine). Processes that start and end inside the window are not seen."""

    def __enter__(self) -> Interference:
        self.start = _cpu_by_pid()
        self.others = 0.0
        return self

    def __exit__(self, *exc) -> None:
        end = _cpu_by_pid()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in {**self.start, **end}.items():
            children.setdefault(ppid, []).append(pid)
        ours, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid not in ours:
                ours.add(pid)
                todo.extend(children.get(pid, []))
        self.others = sum(cpu - self.start.get(pid, (0, 0.0))[1] for pid, (_, cpu) in end.items() if pid not in ours)


# -- the input ------------------------------------------------------------------------------------------


def read_accepted(input_path: str) -> list[tuple[str, str]]:
    """(id, text) of every document dq-ray's own reader accepts from ``input_path``, in reading order."""
    from dq_ray.config import InputConfig
    from dq_ray.io import ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(input_path,))
    docs: list[tuple[str, str]] = []
    rejected = 0
    for shard in discover_inputs(cfg):
        result = ShardResult(shard.path)
        for table in read_shard(shard, cfg, result):
            docs.extend(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
        rejected += len(result.rejected)
    log.info("read %d accepted documents (%d records rejected by dq-ray's reader)", len(docs), rejected)
    return docs


def write_shards(docs: list[tuple[str, str]], shards: int, out_dir: Path, repeat: int = 1) -> list[tuple[str, str]]:
    """Write ``docs`` as JSONL ``{"id", "text"}`` round-robin into ``shards`` files in ``out_dir`` (so every shard
    holds the same mix of sources), ``repeat`` times over (copies get the ids ``<id>~<k>``: a longer run over
    the same texts). Returns the documents written, in order."""
    import orjson

    written = docs + [(f"{doc_id}~{k}", text) for k in range(1, repeat) for doc_id, text in docs]
    out_dir.mkdir(parents=True)
    handles = [open(out_dir / f"shard-{i:05d}.jsonl", "wb") for i in range(shards)]
    try:
        for n, (doc_id, text) in enumerate(written):
            handles[n % shards].write(orjson.dumps({"id": doc_id, "text": text}) + b"\n")
    finally:
        for fh in handles:
            fh.close()
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    log.info("wrote %d documents (%.1f MB) into %d JSONL shard(s) in %s", len(written), size / 1e6, shards, out_dir)
    return written


def one_stage_config(input_dir: Path, run_dir: Path, num_cpus: int, stage: dict):
    """The job config of a benchmark: the JSONL in ``input_dir``, one stage, ``num_cpus`` Ray CPUs."""
    from dq_ray.config import load_config

    return load_config(
        {
            "input": {"paths": [str(input_dir)]},
            "output": {"path": str(run_dir)},
            "ray": {"num_cpus": num_cpus},
            "stages": [stage],
        }
    )


# -- timing dq-ray ----------------------------------------------------------------------------------------


def time_run_job(cfg, row: Row, num_cpus: int | None, stage: str | None = None):
    """``run_job(cfg)`` timed on a fresh embedded Ray started as ``dq-ray run`` starts it (the start is not
    timed), after waiting for a quiet machine; the round goes into ``row``, with the span of ``stage`` (from the
    manifest) where named. Returns the run result."""
    import ray

    from dq_ray.pipeline import init_local_ray, run_job

    init_local_ray(num_cpus)
    try:
        busy = wait_quiet("dq-ray")
        with Interference() as other:
            t0 = time.perf_counter()
            result = run_job(cfg)
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    row.add(result.manifest["counts"]["accepted"], wall, busy, other.others)
    if stage is not None:
        row.spans.append(float(result.manifest["stages"][stage]["wall_s"]))
    return result


# -- statistics --------------------------------------------------------------------------------------------


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by position)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        r = np.empty(len(v))
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        return r

    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"


# -- the report ------------------------------------------------------------------------------------------


def versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each package's installed version ("not installed" where missing)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def command_line() -> str:
    """How this script was started, with the interpreter path relative to the working directory when inside it."""
    exe = sys.executable
    rel = os.path.relpath(exe)
    return shlex.join([exe if rel.startswith("..") else rel, *sys.argv])


def report_header(title: str, packages: Iterable[str], *, load_average: float | None = None) -> list[str]:
    """The first lines of a results file: title, date, command, machine, package versions.

    ``load_average``, where given, is appended to the machine line (``; load average before the run 1.2``).
    """
    ver = versions(packages)
    machine = f"- machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {ver['python']}"
    if load_average is not None:
        machine += f"; load average before the run {load_average:.1f}"
    return [
        f"# {title}",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{command_line()}`",
        machine,
        "- packages: " + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "python"),
    ]


def save_report(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write the report's lines to ``path`` (a newline after each), creating its folder; log and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote %s", out)
    return out
