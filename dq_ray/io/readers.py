"""Readers: JSONL and Parquet input files, on any fsspec filesystem.

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
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.config import ConfigError, InputConfig
from dq_ray.io.redact import redact_url
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


# -- discovery -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input shard: a file, its format, and the name used in generated ids."""

    path: str  # what fsspec opens (protocol-qualified unless local)
    format: str  # "jsonl" | "parquet"
    name: str  # path relative to the input root it was found under
    size: int = 0  # bytes on storage (compressed size for compressed files)


def format_of(path: str) -> str | None:
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


def qualify(fs: fsspec.AbstractFileSystem, path: str) -> str:
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
            fmt = cfg.format if cfg.format != "auto" else format_of(path)
            if fmt is None:
                if explicit:
                    raise InputError(
                        f"cannot tell the format of {path!r} from its name; name it .jsonl[.gz|.zst] or "
                        f".parquet, or set input.format to jsonl or parquet"
                    )
                log.info("skipping %s: not a JSONL or Parquet file name", path)
                continue
            name = posixpath.relpath(path, base) if base else leaf
            qualified = qualify(fs, path)
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
def open_lines(path: str) -> Iterator[Iterator[bytes]]:
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
        with open_lines(shard.path) as lines:
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
