"""The input files of a run, as the map reads them for text snippets: only files a receipt names, that are
still regular files with the size and SHA-256 the receipt recorded, read only in the format the run read."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from dq_ray.io.digest import file_sha256
from dq_ray.io.discover import line_only
from dq_ray.io.readers import parses_as_json
from dq_ray.io.redact import redact_url

log = logging.getLogger(__name__)


class RunPathError(ValueError):
    """A path outside the run directory (or an input the run never read) was asked for."""


#: Storage that snippets may be read from besides local files (fsspec protocols). Anything else (``http://``,
#: ``ftp://``, chained ``a::b`` URLs...) named by a receipt is never opened by the server.
REMOTE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "memory"})
#: The input formats a receipt may name; records are parsed in that format only.
INPUT_FORMATS = ("jsonl", "parquet")
#: Largest JSON-array input (decompressed bytes) parsed whole for a snippet; a larger one shows no text.
MAX_ARRAY_SNIPPET_BYTES = 512 << 20
#: How many (file version -> SHA-256) results the process keeps.
DIGEST_CACHE_SIZE = 4096

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class InputReceipt:
    """What one receipt (``RUN/_shards/<key>.json``) says about an input file the run read.

    ``format``, ``size`` and ``sha256`` are None when the receipt lacks them (runs of older dq-ray versions);
    ``conflict`` is set when two receipts name the same file with different contents.
    """

    path: str
    format: str | None = None
    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None
    conflict: bool = False

    @classmethod
    def parse(cls, data: Any) -> InputReceipt | None:
        """The receipt in ``data`` (a decoded JSON object), or None when it names no input path."""
        if not isinstance(data, dict) or not isinstance(data.get("path"), str) or "\x00" in data["path"]:
            return None
        fmt = data.get("format")
        size = data.get("size")
        mtime = data.get("mtime")
        sha = data.get("sha256")
        return cls(
            path=data["path"],
            format=fmt if fmt in INPUT_FORMATS else None,
            size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
            mtime=float(mtime) if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) else None,
            sha256=sha.lower() if isinstance(sha, str) and _SHA256.fullmatch(sha.lower()) else None,
        )


class RunInputs:
    """The input files a run read, as its receipts describe them: the only files the map opens, and how.

    :meth:`check` refuses a path that no receipt names (:class:`RunPathError`); :meth:`verify` checks a file
    against its receipt (regular file, size, SHA-256); :meth:`read` reads the text of records of a verified file,
    in the receipt's format. A file that fails gives no text (one warning per file and reason), never an error.
    """

    def __init__(self, receipts: Iterable[InputReceipt]) -> None:
        #: normalised path (:func:`_norm_input`) -> receipt; two receipts that disagree about a file mark it
        self.receipts: dict[str, InputReceipt] = {}
        for receipt in receipts:
            key = _norm_input(receipt.path)
            seen = self.receipts.get(key)
            if seen is not None and (seen.sha256, seen.size, seen.format) != (
                receipt.sha256,
                receipt.size,
                receipt.format,
            ):
                receipt = InputReceipt(receipt.path, conflict=True)
            self.receipts[key] = receipt
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def check(self, source_file: str) -> str:
        """``source_file`` (normalised) if a receipt names it, else :class:`RunPathError`."""
        if not isinstance(source_file, str) or "\x00" in source_file:
            raise RunPathError(f"not an input of this run: {source_file!r}")
        norm = _norm_input(source_file)
        if norm not in self.receipts:
            raise RunPathError(f"not an input of this run: {source_file!r}")
        return norm

    def verify(self, path: str) -> tuple[str, tuple] | None:
        """(format, version key) when ``path`` (a :meth:`check` result) may be read now, else None.

        None (with one warning per file and reason) unless the receipt has a format, a size and a SHA-256, and
        the file is a regular file (local) or a plain object (object stores) of that size whose bytes hash to
        that digest now.
        """
        receipt = self.receipts.get(path)
        if receipt is None:
            why = "not an input of this run"
        elif receipt.conflict:
            why = "the run's receipts disagree about this file"
        elif receipt.sha256 is None or receipt.size is None:
            why = "receipt has no digest (a run from an older dq-ray)"
        elif receipt.format is None:
            why = "receipt names no input format"
        else:
            key = _version_key(path)
            why = key if isinstance(key, str) else _check_digest(path, key, receipt.size, receipt.sha256)
            if why is None:
                return receipt.format, key
        self._warn_once(path, why)
        return None

    def read(self, path: str, indices: list[int], text_field: str) -> dict[int, str | None]:
        """:func:`read_records` of a verified input, or {} (no text) when it is not verified or changed meanwhile."""
        verified = self.verify(path)
        if verified is None:
            return {}
        fmt, key = verified
        try:
            found = read_records(path, indices, text_field, fmt=fmt)
        except Exception as exc:  # a corrupt or vanished input: no snippets, not a broken page
            self._warn_once(path, f"could not be read ({type(exc).__name__})")
            return {}
        if _version_key(path) != key:  # replaced or rewritten between the check and the read
            self._warn_once(path, "input changed while it was read")
            return {}
        return found

    def _warn_once(self, path: str, why: str) -> None:
        with self._lock:
            if (path, why) in self._warned:
                return
            self._warned.add((path, why))
        log.warning("no text snippets from %s: %s", redact_url(path), why)


def _norm_input(path: str) -> str:
    """A local path (or ``file://`` URL) as its real path; any other URL as written."""
    for prefix in ("file://", "local://"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    return path if not _is_local(path) else os.path.realpath(path)


def _is_local(path: str) -> bool:
    return "://" not in path and "::" not in path


def _version_key(path: str) -> tuple | str:
    """What identifies the current version of an input: a tuple, or a string saying why it must not be opened.

    Local files: ``lstat`` of the resolved path, which must be a regular file (so a FIFO, device, directory or a
    link swapped in since the path was resolved is refused without being opened). Object stores: the object's
    size and version fields. Any other URL is refused.
    """
    if _is_local(path):
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"input is missing ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        return ("local", path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
    protocol = path.split("://", 1)[0].lower()
    if "::" in path or protocol not in REMOTE_PROTOCOLS:
        return "the map opens only local files and object-store inputs"
    try:
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        info = fs.info(inner)
    except Exception as exc:  # missing object, no credentials, network error
        return f"input is missing or unreadable ({type(exc).__name__})"
    if info.get("type") != "file" or not isinstance(info.get("size"), int):
        return "not a file"
    version = tuple(
        str(info.get(k)) for k in ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "generation")
    )
    return ("remote", path, info["size"], version)


_DIGESTS: OrderedDict[tuple, str] = OrderedDict()
_DIGESTS_LOCK = threading.Lock()
_HASHING: dict[tuple, threading.Lock] = {}


def _digest_of_version(path: str, key: tuple) -> str | None:
    """The SHA-256 of ``path`` at version ``key``: hashed once per version per process (None if it changed)."""
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            _DIGESTS.move_to_end(key)
            return _DIGESTS[key]
        lock = _HASHING.setdefault(key, threading.Lock())
    with lock:  # one thread hashes a file; the others wait for its result
        with _DIGESTS_LOCK:
            if key in _DIGESTS:
                return _DIGESTS[key]
        try:
            size, digest = file_sha256(path)
            same = size == key[2] and _version_key(path) == key
        finally:
            with _DIGESTS_LOCK:
                _HASHING.pop(key, None)
        if not same:
            return None
        with _DIGESTS_LOCK:
            _DIGESTS[key] = digest
            while len(_DIGESTS) > DIGEST_CACHE_SIZE:
                _DIGESTS.popitem(last=False)
        log.info("hashed %s (%d bytes) for text snippets", redact_url(path), size)
        return digest


def _check_digest(path: str, key: tuple, size: int, sha256: str) -> str | None:
    """None when ``path``, at version ``key`` (:func:`_version_key`), has ``size`` bytes hashing to ``sha256``."""
    if key[2] != size:
        return f"input changed since the run (now {key[2]} bytes, the receipt says {size})"
    try:
        digest = _digest_of_version(path, key)
    except Exception as exc:
        return f"input could not be hashed ({type(exc).__name__})"
    if digest is None:
        return "input changed while it was hashed"
    if digest != sha256:
        return "input changed since the run (its SHA-256 differs from the receipt's)"
    return None


def read_records(
    path: str, indices: list[int], text_field: str = "text", fmt: str | None = None
) -> dict[int, str | None]:
    """The text of the records at ``indices`` of one input, by ``source_index`` (as the reader numbers them).

    ``fmt`` is the input's format (``jsonl`` or ``parquet``; from its name when None). A JSON input gives the
    ``text_field`` of the JSON object on each wanted 1-based line (or, for a file holding one top-level JSON
    array, of the element at each wanted 0-based position); a Parquet input the ``text_field`` column of each
    wanted 0-based row. Nothing else of the file is ever returned (a line that is not a JSON object gives None).
    ``path`` must already be checked (:meth:`RunStore.check_input` and :meth:`RunStore.verified_input`). Reads
    only what it needs: a JSON Lines file up to the last wanted line, a Parquet file only the row groups holding
    the wanted rows.
    """
    from dq_ray.io.readers import format_of, open_lines

    fmt = fmt or format_of(path)
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"cannot read records of {redact_url(path)!r}: unknown format {fmt!r}")
    want = {i for i in indices if i >= 0}
    out: dict[int, str | None] = {}
    if not want:
        return out
    if fmt == "parquet":
        import fsspec

        with fsspec.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if pf.schema_arrow.get_field_index(text_field) < 0:
                return {i: None for i in want}
            start = 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                hits = [i for i in want if start <= i < start + n]
                if hits:
                    col = pf.read_row_group(rg, columns=[text_field]).column(0)
                    for i in hits:
                        out[i] = _as_text(col[i - start].as_py())
                start += n
        return out
    with open_lines(path) as lines:
        return _json_records(path, lines, want, text_field)


def _json_records(path: str, lines: Iterator[bytes], want: set[int], text_field: str) -> dict[int, str | None]:
    """The text of the wanted records of a JSON input: JSON Lines (1-based lines) or one JSON array (0-based).

    As the reader decides: a file whose first non-blank line starts with ``[`` holds one array when its name
    does not say JSON Lines and that line is the only one or is not a whole JSON value on its own.
    """
    head: list[bytes] = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    first = head[-1] if head else b""
    source: Iterable[bytes] = itertools.chain(head, lines)
    if first.lstrip().startswith(b"[") and not line_only(path):
        size = sum(len(b) for b in head)
        for line in lines:
            size += len(line)
            if size > MAX_ARRAY_SNIPPET_BYTES:
                raise ValueError(f"a JSON array file over {MAX_ARRAY_SNIPPET_BYTES} bytes")
            head.append(line)
        if sum(1 for b in head if b.strip()) == 1 or not parses_as_json(first):
            try:
                values = json.loads(b"".join(head))
            except ValueError:
                values = None
            if not isinstance(values, list):
                return {i: None for i in want}  # a broken array: no text rather than a wrong one
            return {i: _text_of(values[i], text_field) if i < len(values) else None for i in want}
        source = head
    out: dict[int, str | None] = {}
    last = max(want)
    for lineno, line in enumerate(source, start=1):
        if lineno in want:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            out[lineno] = _text_of(record, text_field)
        if lineno >= last:
            break
    return out


def _text_of(record: Any, text_field: str) -> str | None:
    return _as_text(record.get(text_field)) if isinstance(record, dict) else None


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)
