"""The run directory: its layout, atomic commits, and what ``--resume`` reads back."""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Iterable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from fsspec.implementations.local import LocalFileSystem

from dq_ray import __version__
from dq_ray.io.guard import (
    LOCK_NAME,
    MANIFEST,
    OVERWRITTEN,
    NotARunError,
    RunLock,
    entries,
    foreign_files,
    new_run_id,
    read_owner,
    remove_entries,
)
from dq_ray.io.readers import REJECTED_SCHEMA, InputFile, ShardResult, qualify
from dq_ray.io.redact import redact_url

log = logging.getLogger(__name__)


def parquet_rows(fs: fsspec.AbstractFileSystem, paths: Iterable[str]) -> int:
    """Rows in the Parquet files ``paths``, from their footers (no data is read)."""
    total = 0
    for p in paths:
        with fs.open(p, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


class RunExistsError(RuntimeError):
    """The output directory already holds a run (pass ``--resume`` or ``--overwrite``)."""


class RunDir:
    """The layout of a run directory (a public contract; see docs/schema.md).

    ``docs/`` signals per accepted document, ``rejected/`` every record that did not become one,
    ``artifacts/`` fitted state, ``manifest.json`` the record of the run, ``_shards/`` per-input receipts.
    """

    def __init__(self, path: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(path)
        if isinstance(self.fs, LocalFileSystem):
            root = os.path.abspath(root)  # so every Ray worker agrees on it
        self.root = root.rstrip("/") or "/"
        self.path = qualify(self.fs, self.root)
        self.run_id: str | None = None

    def sub(self, name: str) -> str:
        return f"{self.path}/{name}"

    @property
    def docs(self) -> str:
        return self.sub("docs")

    @property
    def rejected(self) -> str:
        return self.sub("rejected")

    @property
    def manifest(self) -> str:
        return self.sub("manifest.json")

    def state(self) -> str:
        """``"new"`` (absent or empty), ``"run"`` (holds a dq-ray manifest) or ``"foreign"`` (anything else)."""
        # the lock and a half-written manifest are a run being started: the lock decides who writes
        names = [n for n in entries(self.fs, self.root) if n not in (LOCK_NAME, f"{MANIFEST}.tmp")]
        if not names:
            return "new"
        return "run" if read_owner(self.fs, self.root) is not None else "foreign"

    def prepare(self, overwrite: bool = False, resume: bool = False) -> bool:
        """Take the run directory for this run: check it is ours, lock it, and make the layout.

        A new or empty folder is started; a folder holding an earlier run is refused unless ``resume`` (keep it)
        or ``overwrite`` (delete the run's own entries, :func:`~dq_ray.io.guard.remove_entries`); any other
        non-empty folder is refused whatever the flags. The manifest (with ``run_id``) is written before
        anything else, so the folder is recognisable as a run from the first moment. Returns True when an
        earlier run is being resumed. The caller releases the lock with :meth:`release`.
        """
        state = self.state()
        if state == "foreign":
            raise NotARunError(
                f"{redact_url(self.path)} is not empty and is not a dq-ray run directory (no manifest.json written "
                f"by dq-ray); it holds: {', '.join(entries(self.fs, self.root)[:8])}. dq-ray only replaces or "
                "resumes folders it created: choose a new or empty output folder"
            )
        if state == "run" and not (overwrite or resume):
            raise RunExistsError(
                f"{redact_url(self.path)} already holds a run; pass --resume to continue it "
                f"(finished work is kept) or --overwrite to replace it"
            )
        previous = read_owner(self.fs, self.root) or {}
        resumed = bool(resume and state == "run")
        self.run_id = (previous.get("run_id") or new_run_id()) if resumed else new_run_id()
        self.fs.makedirs(self.root, exist_ok=True)
        self.lock = RunLock(self.fs, self.root)
        self.lock.acquire(self.run_id)
        try:
            if state == "run" and not resume:
                removed = remove_entries(self.fs, self.root, OVERWRITTEN)
                log.info("--overwrite: removed the earlier run's %s", ", ".join(removed))
            if not resumed:  # the marker, first
                self.write_json(MANIFEST, {"dq_ray_version": __version__, "run_id": self.run_id, "status": "starting"})
            for name in ("rejected", "_shards", "artifacts"):
                self.fs.makedirs(self._p(name), exist_ok=True)
            if resumed:
                self.remove_temporaries()
        except BaseException:
            self.release()
            raise
        return resumed

    def release(self) -> None:
        """Give up the writer lock taken by :meth:`prepare` (or :meth:`take`)."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def take(self) -> None:
        """Lock a finished run for a later writer (``dq-ray select`` into the run); refuses a non-run folder."""
        if read_owner(self.fs, self.root) is None:
            raise NotARunError(f"{redact_url(self.path)} is not a dq-ray run directory (no manifest.json)")
        self.lock = RunLock(self.fs, self.root)
        self.lock.acquire()

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write_json(self, name: str, data: Any) -> None:
        tmp = self._p(name + ".tmp")
        with self.fs.open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
        self.fs.mv(tmp, self._p(name))

    def read_json(self, name: str) -> Any:
        with self.fs.open(self._p(name), "r") as fh:
            return json.load(fh)

    def shard_key(self, shard_path: str) -> str:
        """The file-name key of an input shard (of its redacted path, the only form of it that is stored)."""
        return xxhash.xxh3_64_hexdigest(redact_url(shard_path).encode())

    def write_shard_outputs(self, result: ShardResult) -> None:
        """Rejections and the receipt of one input file (idempotent: a retried task overwrites them).

        The rejections are committed before the receipt, so a receipt always has its rejections beside it.
        """
        key = self.shard_key(result.path)
        if result.rejected:
            table = pa.Table.from_pylist(result.rejected, schema=REJECTED_SCHEMA)
            self.write_parquet_atomic(f"rejected/{key}.parquet", table)
        self.write_json(f"_shards/{key}.json", result.receipt())

    # -- atomic commits and what resume reads back -------------------------------------------------------

    def write_parquet_atomic(self, name: str, table: pa.Table) -> None:
        """Write ``RUN/<name>`` under a hidden temporary name, then rename it: readers never see half a file."""
        folder, leaf = posixpath.split(self._p(name))
        tmp = f"{folder}/.{leaf}.{os.getpid()}.tmp"
        self.fs.makedirs(folder, exist_ok=True)
        with self.fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh)
        self.fs.mv(tmp, f"{folder}/{leaf}")

    def commit_rows(self, folder: str, table: pa.Table) -> list[tuple[str, int]]:
        """Commit rows into ``RUN/<folder>/``: one file per input shard, named by the shard and the rows' positions.

        A retried batch writes the same names (so it overwrites, never duplicates). Returns (file, rows) pairs.
        """
        out = []
        sources = table.column("source_file")
        for src in pc.unique(sources).to_pylist():
            part = table.filter(pc.equal(sources, src))
            part = part.take(pc.sort_indices(part, [("source_index", "ascending")]))
            digest = xxhash.xxh3_64_hexdigest(part.column("source_index").to_numpy().tobytes())
            name = f"{folder}/{self.shard_key(src)}-{digest}.parquet"
            self.write_parquet_atomic(name, part)
            out.append((name, part.num_rows))
        return out

    def write_stage_rejections(self, phase: int, stage: str, rows: list[dict[str, Any]]) -> None:
        """Rejections raised inside stage ``stage`` (phase ``phase``), one file per shard, idempotent by name."""
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_shard.setdefault(row["source_file"], []).append(row)
        for src, items in by_shard.items():
            items.sort(key=lambda r: r["source_index"])
            digest = xxhash.xxh3_64_hexdigest(",".join(str(r["source_index"]) for r in items).encode())
            table = pa.Table.from_pylist(items, schema=REJECTED_SCHEMA)
            self.write_parquet_atomic(f"rejected/{self.shard_key(src)}.p{phase}-{stage}-{digest}.parquet", table)

    def rows_by_shard(self, folder: str) -> dict[str, int]:
        """Committed rows per shard key in ``RUN/<folder>/`` (from Parquet footers)."""
        return self._rows_by_key(f"{folder}/*-*.parquet", "-")

    def shard_files(self, folder: str, keys: Iterable[str] | None = None) -> list[str]:
        """The committed files of ``RUN/<folder>/`` (of the given shard keys only, when given)."""
        files = sorted(self.fs.glob(self._p(f"{folder}/*-*.parquet")))
        if keys is not None:
            wanted = set(keys)
            files = [f for f in files if posixpath.basename(f).split("-", 1)[0] in wanted]
        return [qualify(self.fs, f) for f in files]

    def stage_rejections_by_shard(self, phase: int) -> dict[str, int]:
        """Stage rejections per shard key written in phase ``phase`` (from Parquet footers)."""
        return self._rows_by_key(f"rejected/*.p{phase}-*.parquet", ".")

    def _rows_by_key(self, pattern: str, sep: str) -> dict[str, int]:
        """Rows per shard key (the file name up to ``sep``) of the files matching ``RUN/<pattern>``."""
        by_key: dict[str, list[str]] = {}
        for path in self.fs.glob(self._p(pattern)):
            by_key.setdefault(posixpath.basename(path).split(sep, 1)[0], []).append(path)
        return {key: parquet_rows(self.fs, paths) for key, paths in by_key.items()}

    def drop_shards(self, folder: str, phase: int, keys: Iterable[str], with_receipts: bool = False) -> None:
        """Delete what incomplete shards left behind in a phase (and their read outputs when ``with_receipts``)."""
        for key in keys:
            paths = self.fs.glob(self._p(f"{folder}/{key}-*.parquet"))
            paths += self.fs.glob(self._p(f"rejected/{key}.p{phase}-*.parquet"))
            if with_receipts:
                paths += [p for p in (self._p(f"rejected/{key}.parquet"), self._p(f"_shards/{key}.json"))]
            for path in paths:
                if self.fs.exists(path):
                    self.fs.rm(path)

    def drop_phase(self, folder: str, phase: int) -> None:
        """Delete every output of a phase that is re-run whole (its folder and its stage rejections)."""
        if self.fs.exists(self._p(folder)):
            self.fs.rm(self._p(folder), recursive=True)
        for path in self.fs.glob(self._p(f"rejected/*.p{phase}-*.parquet")):
            self.fs.rm(path)

    def remove_temporaries(self) -> None:
        """Half-written files of a killed run (hidden ``.*.tmp`` names), inside the run's own folders only."""
        for folder in ("docs", "_work", "rejected", "_shards", "artifacts"):
            if not self.fs.isdir(self._p(folder)) or foreign_files(self.fs, self.root, folder):
                continue  # a link or a folder with files that are not ours: leave it alone
            for path in self.fs.glob(self._p(f"{folder}/**/.*.tmp")):
                self.fs.rm(path)

    # -- phase bookkeeping: what is done, what an attempt must redo -----------------------------------------

    def expected_rows(self, source: str | None, files: Iterable[InputFile] = ()) -> dict[str, int]:
        """Rows each shard brings into a streaming phase, by shard key: the read receipts' ``accepted`` for the
        phase that reads the input files (``source`` None; -1 for a shard not read yet), else the shard's
        committed rows in ``RUN/<source>/``."""
        if source is None:
            receipts = self.receipt_map()
            keys = [self.shard_key(f.path) for f in files]
            return {k: receipts[k]["accepted"] if k in receipts else -1 for k in keys}
        return self.rows_by_shard(source)

    def complete_shards(self, phase: int, output: str, expected: dict[str, int]) -> set[str]:
        """Shards whose committed rows in ``RUN/<output>/`` plus stage rejections in phase ``phase`` add up to
        what they brought (``expected``, from :meth:`expected_rows`)."""
        out = self.rows_by_shard(output)
        rejected = self.stage_rejections_by_shard(phase)
        return {k for k, n in expected.items() if n >= 0 and out.get(k, 0) + rejected.get(k, 0) == n}

    def check_phase(
        self, phase: int, source: str | None, output: str, streaming: bool, files: Iterable[InputFile] = ()
    ) -> None:
        """Raise unless phase ``phase`` wrote every row it read: each shard complete (a streaming phase), or the
        rows written plus rejected equal to the rows of ``RUN/<source>/`` (a group phase, committed whole)."""
        if streaming:
            expected = self.expected_rows(source, files)
            missing = sorted(set(expected) - self.complete_shards(phase, output, expected))
            if missing:
                raise RuntimeError(f"phase {phase}: {len(missing)} shard(s) are not completely written: {missing}")
            return
        read = sum(self.rows_by_shard(source).values()) if source is not None else 0
        written = sum(self.rows_by_shard(output).values())
        rejected = sum(self.stage_rejections_by_shard(phase).values())
        if written + rejected != read:
            raise RuntimeError(f"phase {phase}: {written} rows written + {rejected} rejected != {read} read")

    def phase_done(self, phase: int) -> bool:
        """Whether phase ``phase`` was committed whole (by this attempt or an earlier one)."""
        return self._marker(f"phases/phase-{phase}") is not None

    def mark_phase(self, phase: int, output: str) -> None:
        """Record that phase ``phase`` is committed (its rows in ``RUN/<output>/``)."""
        self._set_marker(f"phases/phase-{phase}", {"phase": phase, "output": output})

    def fit_done(self, stage: str) -> dict[str, Any] | None:
        """The manifest info of ``stage``'s finished fit (None when it was not fitted, or not to the end)."""
        done = self._marker(f"fits/{stage}")
        return None if done is None else done["info"]

    def mark_fit(self, stage: str, info: dict[str, Any]) -> None:
        """Record that ``stage``'s fit returned ``info`` (written only after its artifacts are complete)."""
        self._set_marker(f"fits/{stage}", {"stage": stage, "info": info})

    def _marker(self, name: str) -> dict[str, Any] | None:
        """A completion marker under ``RUN/_shards/`` (None when absent)."""
        path = f"_shards/{name}.json"
        return self.read_json(path) if self.fs.exists(self._p(path)) else None

    def _set_marker(self, name: str, data: dict[str, Any]) -> None:
        self.fs.makedirs(posixpath.dirname(self._p(f"_shards/{name}.json")), exist_ok=True)
        self.write_json(f"_shards/{name}.json", data)

    def receipt_map(self) -> dict[str, dict[str, Any]]:
        """Read receipts by shard key."""
        return {self.shard_key(r["path"]): r for r in self.receipts()}

    def receipts(self) -> list[dict[str, Any]]:
        paths = sorted(self.fs.glob(self._p("_shards/*.json")))
        out = []
        for p in paths:
            with self.fs.open(p, "r") as fh:
                out.append(json.load(fh))
        return out

    def count_rows(self, name: str) -> int:
        """Rows of every Parquet file under ``RUN/<name>/`` (from footers)."""
        return parquet_rows(self.fs, self.fs.glob(self._p(f"{name}/**/*.parquet")))

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        files = sorted(self.fs.glob(self._p(f"{name}/**/*.parquet")))
        tables = []
        for p in files:
            with self.fs.open(p, "rb") as fh:
                tables.append(pq.read_table(fh, columns=columns))
        if not tables:
            schema = REJECTED_SCHEMA if name == "rejected" else None
            if schema is not None:
                return schema.empty_table() if columns is None else schema.empty_table().select(columns)
            return pa.table({})
        return pa.concat_tables(tables, promote_options="default")
