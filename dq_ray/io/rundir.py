"""The run directory: its layout, atomic commits, and what ``--resume`` reads back."""

from __future__ import annotations

import json
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

from dq_ray.io.readers import REJECTED_SCHEMA, ShardResult, qualify


class RunExistsError(RuntimeError):
    """The output directory already holds a run."""


class RunDir:
    """The layout of a run directory (a public contract; see docs/schema.md).

    ``docs/`` signals per accepted document, ``rejected/`` every record that did not become one,
    ``artifacts/`` fitted state, ``manifest.json`` the record of the run, ``_shards/`` per-input receipts.
    """

    def __init__(self, path: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(path)
        if isinstance(self.fs, LocalFileSystem):
            root = os.path.abspath(root)  # so every Ray worker agrees on it
        self.root = root.rstrip("/")
        self.path = qualify(self.fs, self.root)

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

    def prepare(self, overwrite: bool = False, resume: bool = False) -> bool:
        """Make the layout. An earlier run is refused unless ``resume`` (keep it) or ``overwrite`` (delete it).

        Returns True when an earlier run is being resumed.
        """
        existing = [n for n in ("manifest.json", "docs", "rejected", "_shards") if self.fs.exists(self._p(n))]
        if existing and not (overwrite or resume):
            raise RunExistsError(
                f"{self.path} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                f"(finished work is kept) or --overwrite to replace it"
            )
        if existing and not resume:
            for name in (*existing, "_work", "artifacts", "_faults"):
                if self.fs.exists(self._p(name)):
                    self.fs.rm(self._p(name), recursive=True)
        for name in ("rejected", "_shards", "artifacts"):
            self.fs.makedirs(self._p(name), exist_ok=True)
        if resume and existing:
            self.remove_temporaries()
        return bool(resume and existing)

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
        return xxhash.xxh3_64_hexdigest(shard_path.encode())

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
        counts: dict[str, int] = {}
        for path in self.fs.glob(self._p(f"{folder}/*-*.parquet")):
            key = posixpath.basename(path).split("-", 1)[0]
            with self.fs.open(path, "rb") as fh:
                counts[key] = counts.get(key, 0) + pq.ParquetFile(fh).metadata.num_rows
        return counts

    def shard_files(self, folder: str, keys: Iterable[str] | None = None) -> list[str]:
        """The committed files of ``RUN/<folder>/`` (of the given shard keys only, when given)."""
        files = sorted(self.fs.glob(self._p(f"{folder}/*-*.parquet")))
        if keys is not None:
            wanted = set(keys)
            files = [f for f in files if posixpath.basename(f).split("-", 1)[0] in wanted]
        return [qualify(self.fs, f) for f in files]

    def stage_rejections_by_shard(self, phase: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in self.fs.glob(self._p(f"rejected/*.p{phase}-*.parquet")):
            key = posixpath.basename(path).split(".", 1)[0]
            with self.fs.open(path, "rb") as fh:
                counts[key] = counts.get(key, 0) + pq.ParquetFile(fh).metadata.num_rows
        return counts

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
        """Half-written files of a killed run (hidden ``.*.tmp`` names)."""
        for path in self.fs.glob(self._p("**/.*.tmp")):
            self.fs.rm(path)

    def marker(self, name: str) -> dict[str, Any] | None:
        """A completion marker under ``RUN/_shards/`` (None when absent)."""
        path = f"_shards/{name}.json"
        return self.read_json(path) if self.fs.exists(self._p(path)) else None

    def set_marker(self, name: str, data: dict[str, Any]) -> None:
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
        files = [p for p in self.fs.glob(self._p(f"{name}/**/*.parquet"))]
        total = 0
        for p in files:
            with self.fs.open(p, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

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
