"""Readers: JSONL, JSON-array and Parquet input files, on any fsspec filesystem.

Reading never loses a record silently. Every input record becomes either a document (a row with
``id, text, source_file, source_index`` and any ``keep_fields``) or a rejection (a row in ``RUN/rejected/``
with its ``reason``). Each input file also leaves a receipt in ``RUN/_shards/`` with the number of records it
held, so the manifest can check ``input == accepted + rejected`` against an independent count, and with the
identity of the bytes it read (format, size, modification time, SHA-256) for ``--resume`` and the dashboard.

``source_index`` is the 1-based line number for JSONL, the 0-based element position for a file holding one
top-level JSON array, and the 0-based row number for Parquet.

The SHA-256 of a JSON file is computed on its raw (stored, maybe compressed) bytes as they stream through the
reader; Parquet needs random access, so a Parquet input is read a second time, sequentially, for its digest.
A file holding one top-level JSON array is parsed whole in memory (bounded: ``array_too_large``).

Compression is recognised by content (magic bytes: gzip, zstd, bz2, xz), not by the file name, and a leading
UTF-8 byte order mark is ignored. Paths are stored only through :func:`~dq_ray.io.redact.redact_url`, so
credentials in an input URL stay in memory (``InputFile.path``) and never reach a row, a receipt or a log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import decimal
import itertools
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.io.digest import file_sha256
from dq_ray.io.discover import (  # noqa: F401  (re-exported: the reader's public names in one place)
    COMPRESSION_SUFFIXES,
    JSONL_SUFFIXES,
    LINE_ONLY_SUFFIXES,
    PARQUET_SUFFIXES,
    InputError,
    InputFile,
    changed_inputs,
    discover_inputs,
    format_of,
    info_mtime,
    line_only,
    qualify,
)
from dq_ray.io.input_config import InputConfig
from dq_ray.io.redact import redact_url, scrub
from dq_ray.io.shapes import PREF_COLUMNS, SHAPE_REJECT_REASONS, ShapeReader
from dq_ray.io.streams import BOM, READ_CHUNK, RawStream, TruncatedInput, open_lines, open_raw  # noqa: F401

log = logging.getLogger(__name__)


#: A file holding one top-level JSON array is parsed whole: it may hold at most this many (decompressed)
#: bytes per byte of ``input.max_text_bytes``, and never more than :data:`MAX_ARRAY_BYTES`.
ARRAY_BYTES_PER_TEXT_BYTE = 256
MAX_ARRAY_BYTES = 2 << 30


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
    "not_a_regular_file": "a FIFO, socket, device or broken link found in an input directory; never opened",
    "array_too_large": "a top-level JSON array file is larger than the limit for files parsed whole",
    **SHAPE_REJECT_REASONS,  # preference / instruction shapes (input.shape), see dq_ray.io.shapes
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
        ("raw_bytes", pa.binary()),
    ]
)


# -- reading ---------------------------------------------------------------------------------------------


def doc_schema(keep_fields: tuple[str, ...], include_text: bool = True, shape: str = "text") -> pa.Schema:
    """The Arrow schema of the document batches the readers produce."""
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
    """A field value as the string stored for it (ids, ``keep_fields``, raw Parquet rows).

    Strings as they are; integers exactly (any size); booleans ``true``/``false``; floats and containers as
    their JSON text; bytes decoded as UTF-8 (invalid bytes replaced).
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # integers beyond 64 bits inside a container
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)


_LONG_DIGITS = re.compile(r"[0-9]{19}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _has_float(value: Any) -> bool:
    """Whether a parsed JSON value holds a float anywhere (iteratively: no recursion limit)."""
    if type(value) is float:
        return True
    stack = [value]
    while stack:
        item = stack.pop()
        for v in item.values() if type(item) is dict else item if type(item) is list else ():
            kind = type(v)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(v)
    return False


def _may_hold_big_integers(text: str, value: Any) -> bool:
    """Whether orjson may have turned an integer beyond 64 bits of ``text`` into a float in ``value``.

    It does so without a word; such an integer has at least 19 digits. (The float check comes first: it is
    much cheaper than searching the text.)
    """
    return _has_float(value) and _LONG_DIGITS.search(text) is not None


def loads_exact(text: str) -> Any:
    """Parse one JSON value; integers are kept exact whatever their size.

    orjson (fast) first; when that may have turned a big integer into a float, the text is parsed again with
    the standard ``json`` module (as strict as orjson: no NaN or Infinity). Raises ``ValueError`` on invalid
    JSON.
    """
    value = orjson.loads(text)
    if _may_hold_big_integers(text, value):
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    return value


@dataclass
class ShardResult:
    """What reading one input file produced, besides its document batches.

    ``path`` is stored redacted. ``format``, ``size``, ``mtime`` and ``sha256`` identify the bytes read.
    """

    path: str
    records: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    format: str | None = None
    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        self.path = redact_url(self.path)

    def receipt(self) -> dict[str, Any]:
        """The receipt written to ``RUN/_shards/<key>.json``: counts and the identity of the file read."""
        return {
            "path": self.path,
            "records": self.records,
            "accepted": self.accepted,
            "rejected": len(self.rejected),
            "format": self.format,
            "size": self.size,
            "mtime": self.mtime,
            "sha256": self.sha256,
        }


class _Batcher:
    """Validates records one at a time and turns the good ones into Arrow batches."""

    def __init__(self, shard: InputFile, cfg: InputConfig, result: ShardResult) -> None:
        self.shard, self.cfg, self.result = shard, cfg, result
        self.source = redact_url(shard.path)
        self.name = redact_url(shard.name)  # discovery already leaves queries out of names
        self.schema = doc_schema(cfg.keep_fields, shape=cfg.shape)
        self.shape = ShapeReader(cfg.shape, cfg.fields, cfg.max_text_bytes) if cfg.shape != "text" else None
        self._clear()

    def _clear(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in self.schema.names}

    def reject(
        self,
        index: int,
        reason: str,
        detail: str = "",
        raw: str | None = None,
        doc_id: Any = None,
        raw_bytes: bytes | None = None,
    ) -> None:
        """Record one rejection (``raw``/``raw_bytes`` are cut at ``input.max_raw_bytes``)."""
        limit = self.cfg.max_raw_bytes
        truncated = (raw is not None and len(raw) > limit) or (raw_bytes is not None and len(raw_bytes) > limit)
        self.result.rejected.append(
            {
                "source_file": self.source,
                "source_index": index,
                "stage": "read",
                "reason": reason,
                "detail": scrub(detail, self.shard.path)[:1000],
                "id": _as_field_string(doc_id),
                "raw": raw[:limit] if raw is not None else None,
                "raw_truncated": truncated,
                "raw_bytes": raw_bytes[:limit] if raw_bytes is not None else None,
            }
        )

    def reject_record(
        self, index: int, reason: str, detail: str, raw: Any = None, raw_bytes: bytes | None = None
    ) -> None:
        """Count one input record and reject it."""
        self.result.records += 1
        self.reject(index, reason, detail, raw, None, raw_bytes)

    def corrupt(self, index: int, exc: BaseException, where: str) -> None:
        """The file could not be read past ``index``: one ``corrupt_file`` rejection (earlier records kept)."""
        message = scrub(f"{type(exc).__name__}: {exc}", self.shard.path)
        log.warning("could not read %s to its end (%s %d): %s", self.source, where, index, message)
        self.reject_record(index, "corrupt_file", message)

    def add(self, index: int, record: dict[str, Any], raw: Any) -> None:
        """Add one record; ``raw`` is its source text, or a callable that builds it on demand."""
        self.result.records += 1
        cfg = self.cfg
        text = record.get(cfg.text_field)
        doc_id = record.get(cfg.id_field)
        problem = None
        pref = None
        raw_bytes = None
        if self.shape is not None:  # a preference shape: the prompt is the text (dq_ray.io.shapes)
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
                raw_bytes = text
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
            self.reject(index, problem[0], problem[1], raw() if callable(raw) else raw, doc_id, raw_bytes)
            return
        if doc_id is None or doc_id == "":
            doc_id = generated_id(self.name, index)
        self.cols["id"].append(_as_field_string(doc_id))
        self.cols["text"].append(text)
        self.cols["source_file"].append(self.source)
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


# -- JSONL and JSON arrays -------------------------------------------------------------------------------


def _array_limit(cfg: InputConfig) -> int:
    return min(MAX_ARRAY_BYTES, ARRAY_BYTES_PER_TEXT_BYTE * cfg.max_text_bytes)


def parses_as_json(line: bytes) -> bool:
    """Whether one line (or a whole buffer) is valid JSON on its own."""
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _is_array_file(shard: InputFile, peeked: list[bytes]) -> bool:
    """Whether a file read as JSON holds one top-level array (rather than JSON Lines).

    Only asked of files whose name does not say JSON Lines (``.jsonl``, ``.ndjson``). Its first non-blank
    line must start with ``[``, and that line must either not be a whole JSON value on its own (a
    pretty-printed array) or be the only non-blank line (an array on one line). ``peeked`` holds the lines
    up to the second non-blank one.
    """
    nonblank = [line for line in peeked if line.strip()]
    if not nonblank or not nonblank[0].lstrip().startswith(b"["):
        return False
    return len(nonblank) == 1 or not parses_as_json(nonblank[0])


def _iter_jsonl(shard: InputFile, batcher: _Batcher) -> Iterator[pa.Table]:
    result = batcher.result
    try:
        with open_raw(shard.path) as stream:
            yield from _read_json_content(shard, batcher, stream)  # catches what breaks while reading
            try:  # the digest covers the raw bytes, of a corrupt file too
                result.size, result.sha256 = stream.finish()
            except Exception as exc:
                log.warning("could not hash %s: %s", batcher.source, scrub(f"{type(exc).__name__}: {exc}", shard.path))
    except Exception as exc:  # the file could not be opened at all
        batcher.corrupt(1, exc, "line")
    tail = batcher.flush()
    if tail is not None:
        yield tail


def _read_json_content(shard: InputFile, batcher: _Batcher, stream: RawStream) -> Iterator[pa.Table]:
    index = 0
    try:
        lines = stream.lines()
        peeked: list[bytes] = []
        if not line_only(shard.path):
            nonblank = 0
            for line in lines:
                peeked.append(line)
                nonblank += bool(line.strip())
                if nonblank == 2:
                    break
            if _is_array_file(shard, peeked):
                yield from _read_array(batcher, itertools.chain(peeked, lines))
                return
        for line in itertools.chain(peeked, lines):
            index += 1
            if not line.strip():
                continue  # blank lines are not records
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                batcher.reject_record(index, "invalid_utf8", str(exc), raw_bytes=line.rstrip(b"\r\n"))
                continue
            try:
                record = loads_exact(decoded)
            except ValueError as exc:
                batcher.reject_record(index, "malformed_json", str(exc), decoded.rstrip("\r\n"))
                continue
            if not isinstance(record, dict):
                batcher.reject_record(index, "not_an_object", f"a JSON {type(record).__name__}", decoded.rstrip())
                continue
            batcher.add(index, record, lambda d=decoded: d.rstrip("\r\n"))
            if batcher.full():
                yield batcher.flush()
    except Exception as exc:  # a stream that breaks mid-file: truncated gzip/zstd, I/O error
        batcher.corrupt(index + 1, exc, "line")


_WS = re.compile(r"[ \t\n\r]*")


def _read_array(batcher: _Batcher, lines: Iterator[bytes]) -> Iterator[pa.Table]:
    """Read a file holding one top-level JSON array, parsed whole (up to :func:`_array_limit` bytes).

    Each element is a record at its 0-based position. Fast path: orjson on the whole text; if that fails
    (or the text has integers beyond 64 bits), elements are parsed one by one, so the elements before a
    break are kept and the break becomes one ``corrupt_file`` rejection.
    """
    limit = _array_limit(batcher.cfg)
    parts, size = [], 0
    for line in lines:
        size += len(line)
        if size > limit:
            batcher.reject_record(
                0,
                "array_too_large",
                f"a JSON array file is parsed whole; this one holds more than {limit} bytes (the limit is "
                f"{ARRAY_BYTES_PER_TEXT_BYTE} x input.max_text_bytes, at most {MAX_ARRAY_BYTES}); "
                f"convert it to JSON Lines",
            )
            return
        parts.append(line)
    # invalid UTF-8 survives as lone surrogates: orjson refuses them, the element-wise parse rejects the
    # elements holding them as invalid_utf8 (with their raw bytes)
    text = b"".join(parts).decode("utf-8", errors="surrogateescape")
    del parts
    values = None
    with contextlib.suppress(orjson.JSONDecodeError):
        values = orjson.loads(text)
    if isinstance(values, list) and not _may_hold_big_integers(text, values):
        for index, value in enumerate(values):
            yield from _array_element(batcher, index, value, None)
        return
    yield from _array_elements_one_by_one(batcher, text)


def _array_element(batcher: _Batcher, index: int, value: Any, raw: str | None) -> Iterator[pa.Table]:
    if not isinstance(value, dict):
        shown = raw if raw is not None else _as_field_string(value)
        batcher.reject_record(index, "not_an_object", f"a JSON {type(value).__name__}", shown)
        return
    batcher.add(index, value, (lambda: raw) if raw is not None else (lambda v=value: _as_field_string(v)))
    if batcher.full():
        yield batcher.flush()


def _array_elements_one_by_one(batcher: _Batcher, text: str) -> Iterator[pa.Table]:
    decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
    pos = _WS.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        batcher.corrupt(0, ValueError("the file does not start with a JSON array"), "element")
        return
    pos = _WS.match(text, pos + 1).end()
    index = 0
    if text[pos : pos + 1] == "]":
        pos = _WS.match(text, pos + 1).end()
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except ValueError as exc:
                batcher.corrupt(index, exc, "element")
                return
            raw = text[pos:end]
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError as exc:
                batcher.reject_record(
                    index, "invalid_utf8", str(exc), raw_bytes=raw.encode("utf-8", errors="surrogateescape")
                )
            else:
                yield from _array_element(batcher, index, value, raw)
            index += 1
            pos = _WS.match(text, end).end()
            sep = text[pos : pos + 1]
            pos = _WS.match(text, pos + 1).end()
            if sep == "]":
                break
            if sep != ",":
                problem = "the array ends early (truncated file?)" if not sep else f"expected ',' or ']', got {sep!r}"
                batcher.corrupt(index, ValueError(f"{problem} at character {pos}"), "element")
                return
    if pos < len(text):
        batcher.corrupt(index, ValueError(f"extra data after the JSON array at character {pos}"), "element")


# -- Parquet ---------------------------------------------------------------------------------------------


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
        batcher.corrupt(row, exc, "row")
    tail = batcher.flush()
    if tail is not None:
        yield tail
    # Parquet needs random access, so its digest is a second sequential read of the file (same task)
    try:
        batcher.result.size, batcher.result.sha256 = file_sha256(shard.path)
    except Exception as exc:
        log.warning("could not hash %s: %s", batcher.source, scrub(f"{type(exc).__name__}: {exc}", shard.path))


def _read_time_mtime(shard: InputFile) -> float | None:
    """The file's modification time now (before it is read), else the one discovery saw."""
    try:
        fs, path = fsspec.core.url_to_fs(shard.path)
        return info_mtime(fs.info(path))
    except Exception as exc:
        message = scrub(f"{type(exc).__name__}: {exc}", shard.path)
        log.debug("no modification time for %s: %s", redact_url(shard.path), message)
        return shard.mtime


def read_shard(shard: InputFile, cfg: InputConfig, result: ShardResult) -> Iterator[pa.Table]:
    """Yield document batches from one input file; rejections, counts and the file's identity go to ``result``.

    A file marked by discovery as not regular (``shard.problem``) is never opened: it gives one
    ``not_a_regular_file`` rejection.
    """
    batcher = _Batcher(shard, cfg, result)
    result.format = shard.format
    if shard.problem is not None:
        result.size, result.mtime = shard.size, shard.mtime
        batcher.reject_record(0, "not_a_regular_file", f"{shard.problem}; not opened")
        return
    result.mtime = _read_time_mtime(shard)
    reader = _iter_jsonl if shard.format == "jsonl" else _iter_parquet
    yield from reader(shard, batcher)
    if result.records == 0:
        batcher.reject_record(0, "empty_file", "the file holds no records")
