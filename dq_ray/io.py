"""Readers (JSONL and Parquet, on any fsspec filesystem) and the run directory.

Reading never loses a record silently. Every input record becomes either a document (a row with
``id, text, source_file, source_index`` and any ``keep_fields``) or a rejection (a row in ``RUN/rejected/``
with its ``reason``). Each input file also leaves a receipt in ``RUN/_shards/`` with the number of records it
held, so the manifest can check ``input == accepted + rejected`` against an independent count.

``source_index`` is the 1-based line number for JSONL and the 0-based row number for Parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as globlib
import json
import logging
import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from fsspec.implementations.local import LocalFileSystem

from dq_ray.config import ConfigError, InputConfig
from dq_ray.preference import PREF_COLUMNS, SHAPE_REJECT_REASONS, ShapeReader

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
PARQUET_SUFFIXES = (".parquet", ".pq")

#: Why a record was rejected (the ``reason`` column of ``rejected/``); ``detail`` says more.
REJECT_REASONS = {
    "malformed_json": "the line is not valid JSON",
    "invalid_utf8": "the line (or text value) is not valid UTF-8",
    "not_an_object": "the JSON value is not an object",
    "missing_text_field": "the record has no text field, or it is null",
    "text_not_string": "the text field is not a string",
    "empty_text": "the text is empty or only whitespace",
    "text_too_large": "the UTF-8 text is longer than input.max_text_bytes",
    "empty_file": "the file holds no records",
    "corrupt_file": "the file could not be read to its end (truncated or corrupt); earlier records are kept",
    **SHAPE_REJECT_REASONS,  # preference / instruction shapes (input.shape), see dq_ray.preference
}

REJECTED_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_index", pa.int64()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("id", pa.string()),
        ("raw", pa.string()),
        ("raw_truncated", pa.bool_()),
    ]
)


class InputError(ConfigError):
    """An input path that cannot be read at all (raised before any work starts)."""


_SECRET_QUERY = re.compile(r"(key|secret|token|password|passwd|pwd|signature|sig|credential|auth)", re.I)


def redact_url(value: str) -> str:
    """``value`` with any password in the URL's user info and secret-looking query values replaced by ``***``.

    Credentials belong in the environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``...); this keeps the
    manifest and logs clean when someone puts them in a path anyway.
    """
    if "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"***@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if _SECRET_QUERY.search(k) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(data: Any) -> Any:
    """A copy of plain data (dicts, lists, strings) with every URL passed through :func:`redact_url`."""
    if isinstance(data, str):
        return redact_url(data)
    if isinstance(data, dict):
        return {k: redact(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return data


# -- discovery -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input shard: a file, its format, and the name used in generated ids."""

    path: str  # what fsspec opens (protocol-qualified unless local)
    format: str  # "jsonl" | "parquet"
    name: str  # path relative to the input root it was found under
    size: int = 0  # bytes on storage (compressed size for compressed files)


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for comp in COMPRESSION_SUFFIXES:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
            break
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _qualify(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def discover_inputs(cfg: InputConfig) -> list[InputFile]:
    """Expand ``cfg.paths`` (files, directories, globs) into input files. Raises :class:`InputError` early."""
    found: dict[str, InputFile] = {}
    for raw in cfg.paths:
        fs, root = fsspec.core.url_to_fs(raw)
        if globlib.has_magic(root):
            matches = {p: i for p, i in fs.glob(root, detail=True).items() if i.get("type") == "file"}
            base = root[: min(root.find(c) for c in "*?[" if c in root)].rsplit("/", 1)[0]
            if not matches:
                raise InputError(f"input glob {raw!r} matches no file")
            explicit = True
        elif fs.isdir(root):
            matches = fs.find(root, detail=True)
            base = root.rstrip("/")
            explicit = False
        elif fs.exists(root):
            matches, base, explicit = {root: fs.info(root)}, posixpath.dirname(root), True
        else:
            raise InputError(f"input path {raw!r} does not exist")
        kept = 0
        for path, info in sorted(matches.items()):
            leaf = posixpath.basename(path)
            if leaf.startswith((".", "_")):
                continue  # hidden files and markers such as _SUCCESS
            fmt = cfg.format if cfg.format != "auto" else _format_of(path)
            if fmt is None:
                if explicit:
                    raise InputError(
                        f"cannot tell the format of {path!r} from its name; name it .jsonl[.gz|.zst] or "
                        f".parquet, or set input.format to jsonl or parquet"
                    )
                log.info("skipping %s: not a JSONL or Parquet file name", path)
                continue
            name = posixpath.relpath(path, base) if base else leaf
            qualified = _qualify(fs, path)
            found.setdefault(qualified, InputFile(qualified, fmt, name, int(info.get("size") or 0)))
            kept += 1
        if not kept:
            raise InputError(f"input {raw!r} holds no JSONL or Parquet file")
    files = sorted(found.values(), key=lambda f: f.path)
    # generated ids use the file name under its root; fall back to the full path if two roots collide
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        files = [dataclasses.replace(f, name=f.path) for f in files]
    return files


# -- reading ---------------------------------------------------------------------------------------------


def doc_schema(keep_fields: tuple[str, ...], include_text: bool = True, shape: str = "text") -> pa.Schema:
    fields = [("id", pa.string())]
    if include_text:
        fields.append(("text", pa.string()))
    fields += [("source_file", pa.string()), ("source_index", pa.int64())]
    if shape != "text":
        fields += list(PREF_COLUMNS.items())
    fields += [(f, pa.string()) for f in keep_fields]
    return pa.schema(fields)


def generated_id(file_name: str, index: int) -> str:
    """The deterministic id of a record without one: its file name (under the input root) and position."""
    return f"{file_name}#{index}"


def _as_field_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return str(value)


@dataclass
class ShardResult:
    """What reading one input file produced, besides its document batches."""

    path: str
    records: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def receipt(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.records,
            "accepted": self.accepted,
            "rejected": len(self.rejected),
        }


class _Batcher:
    """Validates records one at a time and turns the good ones into Arrow batches."""

    def __init__(self, shard: InputFile, cfg: InputConfig, result: ShardResult) -> None:
        self.shard, self.cfg, self.result = shard, cfg, result
        self.schema = doc_schema(cfg.keep_fields, shape=cfg.shape)
        self.shape = ShapeReader(cfg.shape, cfg.fields, cfg.max_text_bytes) if cfg.shape != "text" else None
        self._clear()

    def _clear(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in self.schema.names}

    def reject(self, index: int, reason: str, detail: str = "", raw: str | None = None, doc_id=None) -> None:
        limit = self.cfg.max_raw_bytes
        truncated = raw is not None and len(raw) > limit
        self.result.rejected.append(
            {
                "source_file": self.shard.path,
                "source_index": index,
                "stage": "read",
                "reason": reason,
                "detail": detail[:1000],
                "id": _as_field_string(doc_id),
                "raw": raw[:limit] if truncated else raw,
                "raw_truncated": truncated,
            }
        )

    def add(self, index: int, record: dict[str, Any], raw: Any) -> None:
        """Add one record; ``raw`` is its source text, or a callable that builds it on demand."""
        self.result.records += 1
        cfg = self.cfg
        text = record.get(cfg.text_field)
        doc_id = record.get(cfg.id_field)
        problem = None
        pref = None
        if self.shape is not None:  # a preference shape: the prompt is the text (dq_ray.preference)
            pref = self.shape.parse(record)
            if not isinstance(pref, dict):
                self.reject(index, pref.reason, pref.detail, raw() if callable(raw) else raw, doc_id)
                return
            text = pref["text"]
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = ("invalid_utf8", str(exc))
        if problem is None:
            if text is None:
                problem = ("missing_text_field", f"no non-null field {cfg.text_field!r}")
            elif not isinstance(text, str):
                problem = ("text_not_string", f"{cfg.text_field!r} is a {type(text).__name__}")
            elif not text.strip():
                problem = ("empty_text", "")
            else:
                size = len(text.encode("utf-8", errors="surrogatepass"))
                if size > cfg.max_text_bytes:
                    problem = ("text_too_large", f"{size} bytes > input.max_text_bytes={cfg.max_text_bytes}")
        if problem is not None:
            self.reject(index, problem[0], problem[1], raw() if callable(raw) else raw, doc_id)
            return
        if doc_id is None or doc_id == "":
            doc_id = generated_id(self.shard.name, index)
        self.cols["id"].append(_as_field_string(doc_id))
        self.cols["text"].append(text)
        self.cols["source_file"].append(self.shard.path)
        self.cols["source_index"].append(index)
        for name in cfg.keep_fields:
            self.cols[name].append(_as_field_string(record.get(name)))
        if pref is not None:
            for name in PREF_COLUMNS:
                self.cols[name].append(pref[name])
        self.result.accepted += 1

    def full(self) -> bool:
        return len(self.cols["id"]) >= self.cfg.batch_rows

    def flush(self) -> pa.Table | None:
        if not self.cols["id"]:
            return None
        table = pa.Table.from_pydict(self.cols, schema=self.schema)
        self._clear()
        return table


class TruncatedInput(IOError):
    """A compressed stream ended in the middle of a frame."""


def _zstd_lines(fh: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a (multi-frame) zstd stream; raises :class:`TruncatedInput` if it stops mid-frame.

    (zstandard's stream reader returns a short read on a truncated file instead of failing.)
    """
    import zstandard

    dobj = zstandard.ZstdDecompressor().decompressobj()
    pending = b""
    in_frame = False
    while True:
        chunk = fh.read(chunk_size)
        if not chunk:
            break
        while chunk:
            in_frame = True
            out = dobj.decompress(chunk)
            chunk = b""
            if dobj.eof:
                chunk = dobj.unused_data
                dobj = zstandard.ZstdDecompressor().decompressobj()
                in_frame = False
            pending += out
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
    if in_frame:
        raise TruncatedInput("zstd stream ends in the middle of a frame (truncated file?)")
    if pending:
        yield pending


@contextlib.contextmanager
def _open_lines(path: str) -> Iterator[Iterator[bytes]]:
    """Open a (possibly compressed) text file and give an iterator over its raw lines."""
    lower = path.lower()
    if lower.endswith((".zst", ".zstd")):
        with fsspec.open(path, "rb") as fh:
            yield _zstd_lines(fh)
    else:
        with fsspec.open(path, "rb", compression="infer") as fh:
            yield iter(fh)


def _iter_jsonl(shard: InputFile, batcher: _Batcher) -> Iterator[pa.Table]:
    index = 0
    try:
        with _open_lines(shard.path) as lines:
            for line in lines:
                index += 1
                if not line.strip():
                    continue  # blank lines are not records
                try:
                    decoded = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    batcher.result.records += 1
                    batcher.reject(index, "invalid_utf8", str(exc), None)
                    continue
                try:
                    record = orjson.loads(decoded)
                except orjson.JSONDecodeError as exc:
                    batcher.result.records += 1
                    batcher.reject(index, "malformed_json", str(exc), decoded.rstrip("\r\n"))
                    continue
                if not isinstance(record, dict):
                    batcher.result.records += 1
                    batcher.reject(index, "not_an_object", f"a JSON {type(record).__name__}", decoded.rstrip())
                    continue
                batcher.add(index, record, lambda d=decoded: d.rstrip("\r\n"))
                if batcher.full():
                    yield batcher.flush()
    except Exception as exc:  # a stream that breaks mid-file: truncated gzip/zstd, I/O error
        log.warning("could not read %s to its end (line %d): %s", redact_url(shard.path), index, exc)
        batcher.result.records += 1
        batcher.reject(index + 1, "corrupt_file", f"{type(exc).__name__}: {exc}", None)
    tail = batcher.flush()
    if tail is not None:
        yield tail


def _iter_parquet(shard: InputFile, batcher: _Batcher) -> Iterator[pa.Table]:
    cfg = batcher.cfg
    row = 0
    try:
        with fsspec.open(shard.path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = set(pf.schema_arrow.names)
            shape_fields = batcher.shape.input_fields() if batcher.shape is not None else []
            wanted = [c for c in dict.fromkeys([cfg.text_field, cfg.id_field, *shape_fields, *cfg.keep_fields])]
            wanted = [c for c in wanted if c in names]
            for rb in pf.iter_batches(batch_size=cfg.batch_rows, columns=wanted or None):
                for record in rb.to_pylist():
                    batcher.add(row, record, lambda r=record: _as_field_string(r))
                    row += 1
                table = batcher.flush()
                if table is not None:
                    yield table
    except Exception as exc:
        log.warning("could not read %s to its end (row %d): %s", redact_url(shard.path), row, exc)
        batcher.result.records += 1
        batcher.reject(row, "corrupt_file", f"{type(exc).__name__}: {exc}", None)
    tail = batcher.flush()
    if tail is not None:
        yield tail


def read_shard(shard: InputFile, cfg: InputConfig, result: ShardResult) -> Iterator[pa.Table]:
    """Yield document batches from one input file; rejections and counts accumulate in ``result``."""
    batcher = _Batcher(shard, cfg, result)
    reader = _iter_jsonl if shard.format == "jsonl" else _iter_parquet
    yield from reader(shard, batcher)
    if result.records == 0:
        result.records = 1
        batcher.reject(0, "empty_file", "the file holds no records", None)


# -- the run directory -----------------------------------------------------------------------------------


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
        self.path = _qualify(self.fs, self.root)

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
        return [_qualify(self.fs, f) for f in files]

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
