"""Input discovery: paths, directories and globs -> the input files of a run, checked before any work starts.

Only regular files are read: a FIFO, socket, device or broken link named explicitly stops the run here
(:class:`InputError`); one found in a folder or by a glob becomes an :class:`InputFile` with a ``problem``,
which the reader records as one ``not_a_regular_file`` rejection without opening it. Each file's size and
modification time are recorded so ``--resume`` can refuse inputs that changed (:func:`changed_inputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import glob as globlib
import logging
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dq_ray.errors import ConfigError
from dq_ray.io.input_config import InputConfig
from dq_ray.io.redact import redact_url, scrub, without_query

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
LINE_ONLY_SUFFIXES = (".jsonl", ".ndjson")  # never read as one JSON array, whatever the content
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(ConfigError):
    """An input path that cannot be read at all (raised before any work starts)."""


@dataclass(frozen=True)
class InputFile:
    """One input shard: a file, its format, and the name used in generated ids.

    ``path`` is the only place a URL's credentials are kept (to open the file); everything stored uses
    ``redact_url(path)``. ``problem`` is set for an entry that must never be opened (a FIFO, socket, device
    or broken link found in an input directory): reading it gives one ``not_a_regular_file`` rejection.
    """

    path: str  # what fsspec opens (protocol-qualified unless local)
    format: str  # "jsonl" | "parquet"
    name: str  # path relative to the input root it was found under (no URL query: no credentials)
    size: int = 0  # bytes on storage (compressed size for compressed files)
    mtime: float | None = None  # modification time (Unix seconds) from the filesystem, when it has one
    problem: str | None = None  # why the entry is not a regular file (then it is never opened)


def format_of(path: str) -> str | None:
    """``"jsonl"``, ``"parquet"`` or None, from the file name (a URL's query string is ignored)."""
    lower = without_query(path).lower()
    for comp in COMPRESSION_SUFFIXES:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
            break
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def line_only(path: str) -> bool:
    """Whether the name says JSON Lines outright (``.jsonl``, ``.ndjson``): never read as one JSON array."""
    lower = without_query(path).lower()
    for comp in COMPRESSION_SUFFIXES:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
            break
    return lower.endswith(LINE_ONLY_SUFFIXES)


def qualify(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` as fsspec opens it from anywhere: protocol-qualified unless it is local."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def info_mtime(info: dict[str, Any]) -> float | None:
    """The modification time (Unix seconds) in an fsspec ``info`` dict, or None when it has none.

    Local files have ``mtime``; S3 ``LastModified``; GCS ``updated``; HTTP ``Last-Modified``.
    """
    for key in ("mtime", "LastModified", "last_modified", "Last-Modified", "updated"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError, TypeError):
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            with contextlib.suppress(ValueError, TypeError, IndexError):
                return email.utils.parsedate_to_datetime(value).timestamp()
    return None


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _entry_state(
    fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]
) -> tuple[int, float | None, str | None]:
    """``(size, mtime, problem)`` of a listed entry; ``problem`` says why it is not a regular file.

    Local entries are checked with ``os.stat`` (symbolic links followed), others by their ``type``.
    """
    if isinstance(fs, LocalFileSystem):
        try:
            st = os.stat(path)
        except OSError as exc:
            return 0, None, f"cannot be opened ({exc.strerror}; a broken symbolic link?), not a regular file"
        if stat.S_ISREG(st.st_mode):
            return st.st_size, st.st_mtime, None
        kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "a special file")
        return st.st_size, st.st_mtime, f"{kind}, not a regular file"
    kind = info.get("type")
    problem = None if kind in ("file", None) else f"of type {kind!r}, not a regular file"
    return int(info.get("size") or 0), info_mtime(info), problem


def _is_dir(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    if _protocol(fs) in ("http", "https"):  # isdir would download the file to look for links in it
        try:
            return fs.info(root).get("type") == "directory"
        except FileNotFoundError:
            return False
    return fs.isdir(root)


def discover_inputs(cfg: InputConfig) -> list[InputFile]:
    """Expand ``cfg.paths`` (files, directories, globs) into input files. Raises :class:`InputError` early.

    A path given explicitly must be a regular file (a FIFO would block the reader forever); a FIFO, socket,
    device or broken link inside an input directory (or matched by a glob) is kept as an :class:`InputFile`
    with ``problem`` set, which reading turns into one ``not_a_regular_file`` rejection without opening it.
    Errors never show a URL's credentials.
    """
    found: dict[str, InputFile] = {}
    for raw in cfg.paths:
        try:
            _discover_one(cfg, raw, found)
        except InputError:
            raise
        except Exception as exc:  # listing failed: network, permissions... (without the credentials)
            detail = scrub(f"{type(exc).__name__}: {exc}", raw)
            raise InputError(f"cannot list input {redact_url(raw)!r}: {detail}") from None
    files = sorted(found.values(), key=lambda f: f.path)
    # generated ids use the file name under its root; fall back to the full path if two roots collide
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        files = [dataclasses.replace(f, name=redact_url(without_query(f.path))) for f in files]
    return files


def glob_pattern(path: str, protocol: str | None = None) -> str:
    """``path`` without the query string of an http(s) URL, where ``?`` starts a query, not a glob."""
    http = protocol in ("http", "https") if protocol is not None else path.startswith(("http://", "https://"))
    return path.split("?", 1)[0] if http else path


def glob_base(pattern: str) -> str | None:
    """The folder a glob pattern reads under (up to the last ``/`` before its first glob character); None when
    ``pattern`` is not a glob."""
    if not globlib.has_magic(pattern):
        return None
    return pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)].rsplit("/", 1)[0]


def _discover_one(cfg: InputConfig, raw: str, found: dict[str, InputFile]) -> None:
    shown = redact_url(raw)
    fs, root = fsspec.core.url_to_fs(raw)
    base = glob_base(glob_pattern(root, _protocol(fs)))
    if base is not None:
        matches = {p: i for p, i in fs.glob(root, detail=True).items() if i.get("type") != "directory"}
        if not matches:
            raise InputError(f"input glob {shown!r} matches no file")
        explicit = "glob"
    elif _is_dir(fs, root):
        matches = fs.find(root, detail=True)
        base = root.rstrip("/")
        explicit = ""
    elif fs.exists(root):
        matches, base, explicit = {root: fs.info(root)}, "", "path"
    else:
        raise InputError(f"input path {shown!r} does not exist")
    kept = 0
    for path, info in sorted(matches.items()):
        leaf = posixpath.basename(without_query(path))
        if leaf.startswith((".", "_")):
            continue  # hidden files and markers such as _SUCCESS
        fmt = cfg.format if cfg.format != "auto" else format_of(path)
        if fmt is None:
            if explicit:
                raise InputError(
                    f"cannot tell the format of {redact_url(path)!r} from its name; name it .jsonl[.gz|.zst] or "
                    f".parquet, or set input.format to jsonl or parquet"
                )
            log.info("skipping %s: not a JSONL or Parquet file name", redact_url(path))
            continue
        size, mtime, problem = _entry_state(fs, path, info)
        if problem is not None and explicit == "path":
            raise InputError(f"input path {shown!r} is {problem}: give a file (reading it could block forever)")
        name = posixpath.relpath(without_query(path), base) if base else leaf
        qualified = qualify(fs, path)
        found.setdefault(qualified, InputFile(qualified, fmt, name, size, mtime, problem))
        kept += 1
    if not kept:
        raise InputError(f"input {shown!r} holds no JSONL or Parquet file")


def changed_inputs(files: list[InputFile], receipts: dict[str, dict]) -> list[str]:
    """The inputs that changed since their receipts were written (``--resume`` refuses to mix them).

    ``receipts`` are keyed by their ``path`` (the redacted path, as stored). A file changed when its size,
    or its modification time where both the receipt and the filesystem have one, differs from the receipt.
    A file without a receipt, or whose receipt has no size (older runs), counts as unchanged. Returns the
    redacted paths (the receipts' keys).
    """
    changed = []
    for f in files:
        key = redact_url(f.path)
        receipt = receipts.get(key)
        if receipt is None:
            receipt = receipts.get(f.path)
        if not receipt or receipt.get("size") is None:
            continue
        if int(receipt["size"]) != int(f.size):
            changed.append(key)
        elif receipt.get("mtime") is not None and f.mtime is not None and float(receipt["mtime"]) != float(f.mtime):
            changed.append(key)
    return changed
