"""The probes of a coverage check and the run's own fitted stages that place them.

:func:`read_probes` reads a probe file (JSONL or Parquet) with dq-ray's readers and their rejection rules:
every record is a probe or a rejection with its reason (none is dropped silently). :func:`run_stage` rebuilds
one stage of a finished run from the resolved config in its ``manifest.json`` (the same params) and points it
at the run's signed artifacts (``RUN/artifacts/<stage>``, verified when the stage sets up, as on the driver of
a run), so the probes are embedded by the run's own model and scored by the run's own density index.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pyarrow as pa

from dq_ray.io import InputConfig, InputError, ShardResult, discover_inputs, read_shard
from dq_ray.stage import Stage
from dq_ray.stages import get_stage
from dq_ray.typed import build_dataclass

log = logging.getLogger(__name__)

#: Where the probes' keys live, so that a probe never counts as a corpus document itself (see ``probe_keys``).
PROBE_SOURCE_PREFIX = "probe:"


class GapsInputError(ValueError):
    """A run or probe file a coverage check cannot use (a run without embeddings or density, no probes)."""


@dataclasses.dataclass
class Probes:
    """The accepted probes (``id, text, source_file, source_index``) and the rejected records with reasons."""

    table: pa.Table
    rejected: list[dict[str, Any]]
    files: list[str]


def read_probes(path: str, text_field: str = "text", id_field: str = "id", max_text_bytes: int | None = None) -> Probes:
    """Read every probe of ``path`` (a file, folder or glob of JSONL / Parquet) through dq-ray's readers."""
    extra = {} if max_text_bytes is None else {"max_text_bytes": max_text_bytes}
    cfg = InputConfig(paths=(path,), text_field=text_field, id_field=id_field, **extra)
    try:
        files = discover_inputs(cfg)
    except InputError as exc:
        raise GapsInputError(f"probes: {exc}") from None
    tables: list[pa.Table] = []
    rejected: list[dict[str, Any]] = []
    for f in files:
        result = ShardResult(f.path)
        tables.extend(read_shard(f, cfg, result))
        rejected.extend(
            {k: r.get(k) for k in ("source_file", "source_index", "id", "reason", "detail")} for r in result.rejected
        )
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        reasons = sorted({r["reason"] for r in rejected})
        raise GapsInputError(
            f"probes: no usable probe in {path!r} (an empty probe file"
            + (f"; rejected: {', '.join(reasons)}" if reasons else "")
            + ")"
        )
    if rejected:
        log.warning("probes: %d record(s) rejected (listed in the report)", len(rejected))
    return Probes(table, rejected, [f.path for f in files])


def probe_keys(table: pa.Table) -> pa.Table:
    """``table`` with ``source_file`` prefixed, so a probe's key (``source_file#source_index``) is never a corpus
    document's: a probe copied from the corpus finds its copy as a neighbour like any other document."""
    idx = table.schema.get_field_index("source_file")
    files = [PROBE_SOURCE_PREFIX + str(f) for f in table.column("source_file").to_pylist()]
    return table.set_column(idx, "source_file", pa.array(files, pa.string()))


def stage_entries(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's stage entries (``name``, ``params``, ``resources``) by name, from the manifest's config."""
    out: dict[str, dict[str, Any]] = {}
    for entry in (manifest.get("config") or {}).get("stages") or []:
        if isinstance(entry, str):
            entry = {"name": entry}
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out.setdefault(entry["name"], entry)
    return out


def run_stage(run_path: str, entry: dict[str, Any], setup: bool = True) -> Stage:
    """The stage of ``entry`` with the run's params, its ``artifacts_dir`` the run's and (``setup``) set up.

    The stage verifies the signature of its artifact folder when it sets up (``artifact_digests`` is None: the
    driver's own check), so only artifacts dq-ray signed are ever loaded.
    """
    name = entry["name"]
    cls = get_stage(name)
    params = build_dataclass(cls.Params, entry.get("params"), f"manifest.config.stages({name}).params")
    stage = cls(params)
    stage.artifacts_dir = f"{run_path}/artifacts/{name}"
    if setup:
        stage.ensure_setup()
    return stage


def in_batches(stage: Stage, table: pa.Table, rows: int) -> pa.Table:
    """``stage.process`` over ``table`` in slices of ``rows`` rows (no Ray: a probe set is small)."""
    parts = [stage.process(table.slice(lo, rows)) for lo in range(0, table.num_rows, rows)]
    return pa.concat_tables(parts) if parts else table
