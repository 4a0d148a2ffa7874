"""The documents the map shows: a run's ``docs/``, or, for an update (a run made with ``--baseline``), the run's
and its baselines' ``docs/`` as one corpus, with a categorical ``run`` column saying which run a document is from.

The view is the one :func:`dq_ray.io.baseline.view_runs` defines (what ``dq-ray select`` and ``dq-ray export``
read): the run and the chain of baselines its manifest names, newest first. The baselines' Parquet is never copied:
one :class:`pyarrow.dataset.FileSystemDataset` lists every file, and each file carries a partition expression
``run == "<label>"``, so ``run`` is a virtual column that pyarrow fills while scanning (no bytes on disk, and it
is read, filtered and cached like any other category). Rows are numbered in file order, the run's own files first,
so a row of the run itself has the same position as in its own ``docs/``.

A prepared map (``dq-ray dashboard-prepare``) holds the run's own documents only; there the store opens the run
alone (:func:`open_view` with ``own_only``) and the ``run`` colouring is not offered.

This module also holds the confined reads of a run's files (:func:`run_path`, :func:`read_run_file`) and its input
receipts (:func:`read_receipts`), which the store uses for the run and for each of its baselines.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from dashboards.inputs import InputReceipt, RunPathError
from dq_ray.errors import ConfigError
from dq_ray.io.baseline import docs_files, view_runs, view_schema
from dq_ray.io.rundir import RunDir

log = logging.getLogger(__name__)

#: The virtual column naming the run a document comes from (only in the view of an update).
RUN_COLUMN = "run"


@dataclass(frozen=True)
class DocsView:
    """What the store reads: ``dataset`` over ``docs/`` of ``roots`` (real local paths, the run's own first), and
    per root the label its documents carry in the ``run`` column (only when there is more than one root)."""

    dataset: pads.Dataset
    roots: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def is_update(self) -> bool:
        """Whether the map shows baselines' documents too (and offers the ``run`` colouring)."""
        return len(self.roots) > 1

    @property
    def baselines(self) -> tuple[str, ...]:
        """The labels of the baselines (not of the run itself), newest first."""
        return self.labels[1:]


def run_labels(roots: list[str]) -> list[str]:
    """A short, distinct label per run: its folder name, with its parent folder (and then a number) when two runs
    share a name."""
    names = [os.path.basename(r.rstrip(os.sep)) or r for r in roots]
    if len(set(names)) < len(names):
        names = [os.path.join(os.path.basename(os.path.dirname(r.rstrip(os.sep))), n) for r, n in zip(roots, names)]
    out: list[str] = []
    for n in names:
        label, i = n, 2
        while label in out:
            label, i = f"{n} ({i})", i + 1
        out.append(label)
    return out


def open_view(root: str, manifest: dict, own_only: bool = False) -> DocsView:
    """The documents of the run at ``root`` (a real local path) with its baselines when its manifest names any.

    A baseline that is gone, or not on the local filesystem, is logged and left out: the map then shows the run's
    own documents, as for a run made without ``--baseline``.
    """
    own = pads.dataset(os.path.join(root, "docs"), format="parquet")
    if own_only or not manifest.get("baseline"):
        return DocsView(own, (root,), (os.path.basename(root),))
    try:
        members = view_runs(RunDir(root), manifest)
        if any(not isinstance(m.fs, LocalFileSystem) for m, _ in members):
            raise ConfigError("a baseline is not on the local filesystem")
    except (OSError, ConfigError) as exc:
        log.warning("%s: showing the run's own documents only (%s)", root, exc)
        return DocsView(own, (root,), (os.path.basename(root),))
    roots = [root] + [os.path.realpath(m.root) for m, _ in members[1:]]
    labels = run_labels(roots)
    files, parts = [], []
    for i, ((member, _), label) in enumerate(zip(members, labels)):
        mine = list(own.files) if i == 0 else docs_files(member)  # the run's own rows keep their positions
        files += mine
        parts += [pc.field(RUN_COLUMN) == label] * len(mine)
    schema = view_schema(members[0][0], files)
    if RUN_COLUMN in schema.names:
        log.warning("%s: docs/ already has a %r column; the map cannot colour by run", root, RUN_COLUMN)
        return DocsView(own, (root,), (os.path.basename(root),))
    dataset = pads.FileSystemDataset.from_paths(
        files,
        schema=schema.append(pa.field(RUN_COLUMN, pa.string())),
        format=pads.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=parts,
    )
    log.info("%s: the map shows %d runs (%s), %d files", root, len(roots), ", ".join(labels), len(files))
    return DocsView(dataset, tuple(roots), tuple(labels))


# -- confined reads of a run's files ------------------------------------------------------------------------


def run_path(root: str, *parts: str) -> str:
    """The real path of ``parts`` under ``root`` (a real path); :class:`RunPathError` if it leaves it."""
    for p in parts:
        if not isinstance(p, str) or "\x00" in p or os.path.isabs(p):
            raise RunPathError(f"not a relative path inside the run: {p!r}")
    full = os.path.realpath(os.path.join(root, *parts))
    if full != root and not full.startswith(root + os.sep):
        raise RunPathError(f"{os.path.join(*parts)!r} is outside the run directory")
    return full


def read_run_file(root: str, *parts: str) -> bytes:
    """The bytes of a regular file inside the run (:class:`RunPathError` for a FIFO, device or directory)."""
    full = run_path(root, *parts)
    fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, and is refused
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunPathError(f"{os.path.join(*parts)!r} is not a regular file")
        return fh.read()


def read_receipts(root: str) -> list[InputReceipt]:
    """The input receipts of the run at ``root`` (``_shards/*.json``); unreadable ones are logged and skipped."""
    found = []
    shards = run_path(root, "_shards")
    for name in sorted(os.listdir(shards)) if os.path.isdir(shards) else []:
        if not name.endswith(".json"):
            continue
        try:
            receipt = InputReceipt.parse(json.loads(read_run_file(root, "_shards", name)))
        except (OSError, ValueError) as exc:  # RunPathError is a ValueError
            log.warning("ignoring receipt _shards/%s of %s: %s", name, root, exc)
            continue
        if receipt is not None:  # else a completion marker, not a receipt
            found.append(receipt)
    return found
