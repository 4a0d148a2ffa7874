"""What a run may touch: where it may write, which folders it may delete, and one writer at a time.

dq-ray deletes only what it can prove it wrote. A run directory is recognised by its ``manifest.json``, which a
run writes before anything else and which carries ``dq_ray_version`` and a ``run_id``. ``--overwrite`` and
``--resume`` act only on such a folder; a folder that is not empty and holds no dq-ray manifest is refused
whatever the flags, with a list of what is in it. Even in a run directory, only the entries of the run layout
(:data:`RUN_ENTRIES`) are removed, and a layout folder that holds a file dq-ray would not have written (say
``docs/notes.md``) stops the deletion with that file's name. Symbolic links are never followed.

A run holds ``RUN/.dq-ray.lock`` (host, pid, start time) while it writes; a second writer is refused, and a lock
left by a process that no longer exists on this host is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import pwd
import re
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dq_ray.io.discover import glob_base, glob_pattern
from dq_ray.io.redact import redact_url

log = logging.getLogger(__name__)

LOCK_NAME = ".dq-ray.lock"
MANIFEST = "manifest.json"

_TMP = r"\.[^/]+\.tmp"
_PARQUET = r"[0-9a-f]{16}-[0-9a-f]{16}\.parquet"
#: Every top-level entry a run (and ``dq-ray select`` / ``dashboard-prepare`` on it) writes. For the folders whose
#: file names dq-ray fixes, the pattern every file inside must match (relative to the folder); ``None``: the
#: folder's contents are named by the stages and tools that write them.
RUN_ENTRIES: dict[str, re.Pattern[str] | None] = {
    MANIFEST: None,
    f"{MANIFEST}.tmp": None,
    LOCK_NAME: None,
    "docs": re.compile(rf"({_TMP}|{_PARQUET})"),
    "_work": re.compile(rf"phase-\d+/({_TMP}|{_PARQUET})"),
    "rejected": re.compile(rf"({_TMP}|[0-9a-f]{{16}}(\.p\d+-[\w.-]+-[0-9a-f]{{16}})?\.parquet)"),
    "_shards": re.compile(r"((phases|fits)/)?[\w.-]+\.json(\.tmp)?"),
    "artifacts": None,
    "_faults": None,
    "selected": None,
    "selection.json": None,
    "selection.json.tmp": None,
    "report.md": None,
    "report.html": None,
    "report_files": None,
    "dashboard": None,
}
#: The entries a new run replaces (``--overwrite``); a selection and a prepared map go with the run they describe.
#: The manifest goes last, so a folder whose deletion was interrupted is still recognised as a run.
OVERWRITTEN = (*(n for n in RUN_ENTRIES if n not in (LOCK_NAME, MANIFEST)), MANIFEST)


class UnsafeOutputError(ValueError):
    """An output path that a run must not write into (a root, a home, inside or around an input)."""


class NotARunError(RuntimeError):
    """A folder that dq-ray did not create, or that holds files dq-ray did not write, where it would delete."""


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


# -- where a run may write ---------------------------------------------------------------------------------


def _local_homes() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        homes |= {os.path.realpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir and p.pw_dir != "/"}
    except OSError:  # pragma: no cover - no passwd database
        pass
    return homes


def _resolved(path: str) -> tuple[str, str]:
    """``(protocol, normalised path)`` of a URL or local path; local paths are made absolute, links resolved."""
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        return "file", os.path.realpath(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, "/" + posixpath.normpath(root).strip("/")


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_output(output: str, inputs: Sequence[str] = ()) -> None:
    """Refuse an output that is a filesystem root, a home directory (or holds one), or is, holds or sits inside
    one of ``inputs``. Called before Ray starts; raises :class:`UnsafeOutputError` saying which rule."""
    shown = redact_url(output)
    protocol, out = _resolved(output)
    if protocol == "file":
        if out == "/" or os.path.ismount(out):
            raise UnsafeOutputError(f"output {shown!r} is a filesystem root; give a folder for this run")
        for home in _local_homes():
            if _inside(home, out):
                raise UnsafeOutputError(
                    f"output {shown!r} is a home directory or holds one ({home}); give a folder for this run"
                )
    elif out == "/":
        raise UnsafeOutputError(f"output {shown!r} is the root of its store; give a folder for this run")
    for raw in inputs:
        base = glob_base(glob_pattern(raw))  # a glob counts from the folder it reads under
        in_protocol, inp = _resolved(raw if base is None else base or "/")
        if in_protocol != protocol:
            continue
        if _inside(out, inp):
            raise UnsafeOutputError(
                f"output {shown!r} is inside input {redact_url(raw)!r}: the next run would read its own files; "
                "write the run outside the input folders"
            )
        if _inside(inp, out):
            raise UnsafeOutputError(
                f"output {shown!r} holds input {redact_url(raw)!r}: replacing the run could delete the input; "
                "write the run outside the input folders"
            )


# -- is this folder a dq-ray run? ------------------------------------------------------------------------


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_owner(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The folder's ``manifest.json`` when dq-ray wrote it (it names ``dq_ray_version`` and a run id or a
    config), else None."""
    path = f"{root}/{MANIFEST}"
    try:
        if _is_link(fs, path) or not fs.isfile(path):
            return None
        with fs.open(path, "r") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "dq_ray_version" in data and ("run_id" in data or "config" in data):
        return data
    return None


def entries(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Names at the top of ``root`` (empty when it does not exist)."""
    if not fs.exists(root):
        return []
    if not fs.isdir(root):
        raise NotARunError(f"{redact_url(root)} exists and is not a folder")
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))


def _is_link(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return isinstance(fs, LocalFileSystem) and os.path.islink(path)


def _describe(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def foreign_files(fs: fsspec.AbstractFileSystem, root: str, name: str) -> list[str]:
    """Files under the layout entry ``name`` that dq-ray would not have written there (and any symbolic link)."""
    path = f"{root}/{name}"
    if _is_link(fs, path):
        return [name]
    pattern = RUN_ENTRIES.get(name)
    if pattern is None or not fs.isdir(path):
        return []
    bad = []
    if isinstance(fs, LocalFileSystem):  # walk without following links
        for folder, dirs, files in os.walk(path, followlinks=False):
            for d in dirs:
                if os.path.islink(os.path.join(folder, d)):
                    bad.append(os.path.relpath(os.path.join(folder, d), root))
            for f in files:
                rel = os.path.relpath(os.path.join(folder, f), path)
                if os.path.islink(os.path.join(folder, f)) or not pattern.fullmatch(rel):
                    bad.append(f"{name}/{rel}")
        return sorted(bad)
    for f in fs.find(path):
        rel = posixpath.relpath(f, path)
        if not pattern.fullmatch(rel):
            bad.append(f"{name}/{rel}")
    return sorted(bad)


def remove_entries(fs: fsspec.AbstractFileSystem, root: str, names: Sequence[str]) -> list[str]:
    """Delete the layout entries ``names`` of a dq-ray folder, after checking every file in them is dq-ray's.

    Raises :class:`NotARunError` naming the files it will not delete (nothing is deleted then). Returns the
    entries removed.
    """
    unknown = [n for n in names if n not in RUN_ENTRIES]
    if unknown:
        raise ValueError(f"not run layout entries: {unknown}")
    present = [n for n in names if fs.exists(f"{root}/{n}") or _is_link(fs, f"{root}/{n}")]
    foreign = [f for n in present for f in foreign_files(fs, root, n)]
    if foreign:
        raise NotARunError(
            f"{redact_url(root)} holds files dq-ray did not write inside its run layout ({_describe(foreign)}); "
            "nothing was deleted. Move them out, or write the run to another folder"
        )
    for n in present:
        path = f"{root}/{n}"
        if _is_link(fs, path):  # never reached (links are foreign); kept as a last guard
            raise NotARunError(f"{path} is a symbolic link; dq-ray does not delete through links")
        fs.rm(path, recursive=fs.isdir(path))
    return present


#: What ``dq-ray select --output DIR`` writes into a folder of its own.
SELECTION_ENTRIES = ("selected", "selection.json", "selection.json.tmp", "report.md", "report.html", "report_files")


def take_selection_output(fs: fsspec.AbstractFileSystem, root: str, into_run: bool) -> RunLock:
    """Lock the folder a selection writes into, after checking it may: the run itself (``into_run``), a new or
    empty folder, or a folder holding only an earlier selection. Returns the held lock."""
    names = [n for n in entries(fs, root) if n != LOCK_NAME]
    if into_run:
        if read_owner(fs, root) is None:
            raise NotARunError(f"{redact_url(root)} is not a dq-ray run directory (no manifest.json)")
    else:
        check_output(root)
        earlier = "selection.json" in names and all(n in SELECTION_ENTRIES for n in names)
        if names and not earlier and read_owner(fs, root) is None:
            raise NotARunError(
                f"selection output {redact_url(root)} is not empty and holds no earlier dq-ray selection "
                f"({_describe(names)}); choose a new or empty folder"
            )
    fs.makedirs(root, exist_ok=True)
    lock = RunLock(fs, root)
    lock.acquire()
    return lock


# -- one writer at a time --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file ``RUN/.dq-ray.lock`` naming its holder (host, pid, start time, run id).

    On a local filesystem the file is created with ``O_EXCL`` (atomic). On object storage there is no atomic
    create: the lock is a best-effort check-then-write, enough to catch a second ``dq-ray run`` started by hand.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, root
        self.path = f"{root}/{LOCK_NAME}"
        self.held = False

    def _holder(self) -> dict[str, Any]:
        try:
            with self.fs.open(self.path, "r") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def acquire(self, run_id: str = "") -> None:
        """Take the lock or raise :class:`RunLockedError`; a stale lock of a dead local process is replaced."""
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "run_id": run_id}
        for _ in range(2):
            if self._create(info):
                self.held = True
                return
            holder = self._holder()
            pid, host = holder.get("pid"), holder.get("host")
            if host == info["host"] and isinstance(pid, int) and not _alive(pid):
                log.warning("removing the stale lock of process %s on %s (it is no longer running)", pid, host)
                self.fs.rm(self.path)
                continue
            since = holder.get("since")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float) else "?"
            raise RunLockedError(
                f"{redact_url(self.root)} is being written by process {pid} on {host} (since {when}); wait for it "
                f"to finish, or if that process is gone, delete {redact_url(self.path)}"
            )
        raise RunLockedError(f"could not take the lock {redact_url(self.path)}")

    def _create(self, info: dict[str, Any]) -> bool:
        data = json.dumps(info).encode()
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        if self.fs.exists(self.path):
            return False
        with self.fs.open(self.path, "wb") as fh:
            fh.write(data)
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
