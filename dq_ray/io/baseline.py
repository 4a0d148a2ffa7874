"""An earlier run as the baseline of an incremental run, and the view that reads a run with its baselines.

``dq-ray run CONFIG --input NEW --baseline OLD_RUN --output NEW_RUN`` scores only the new documents and places them
in the old run's fitted world (:mod:`dq_ray.pipeline.baseline`). This module holds what needs no Ray:

- :func:`open_baseline`: the baseline must be a finished (``succeeded``) dq-ray run with ``docs/``;
- :func:`stage_differences`: how the baseline's stages (names, resolved params: model, prompt, thresholds...)
  differ from the new config's, listed per stage, so a mismatched baseline is refused before Ray starts;
- the **view**: a run made with ``--baseline`` records it in its manifest (``baseline.path``), and readers of a
  run (``dq-ray select``, ``dq-ray export``) read ``docs/`` of the run *and* of its baselines
  (:func:`view_runs`, :func:`view_files`, :func:`view_schema`), never copying the old Parquet. The old rows keep
  their own input files (:func:`view_input_paths` names them for re-reading text).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.errors import ConfigError
from dq_ray.io.guard import read_owner
from dq_ray.io.redact import redact_url
from dq_ray.io.rundir import RunDir

log = logging.getLogger(__name__)

#: The manifest block a run made with ``--baseline`` carries.
MANIFEST_KEY = "baseline"
#: Stage params that change how fast a stage runs, never what it computes: ignored when configs are compared.
EXECUTION_PARAMS = frozenset({"num_threads", "shuffle_partitions", "batch_size", "local_hash_rows"})
#: Input settings that decide what a document's text is: the baseline and the update must agree on them.
INPUT_KEYS = ("shape", "text_field", "id_field", "fields", "max_text_bytes")
#: The most baselines a view follows (a chain of updates), so a cycle cannot loop forever.
MAX_CHAIN = 64


class BaselineError(ConfigError):
    """A baseline that cannot serve an incremental run: not a finished run, or made with a different config.

    Attributes:
        differences: per stage (or ``input``), what differs (empty when the run itself is the problem).
    """

    def __init__(self, message: str, differences: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.differences = differences or {}


@dataclass
class Baseline:
    """A finished run opened as a baseline: its run directory, manifest and ``docs/`` files (fs paths)."""

    run: RunDir
    manifest: dict[str, Any]
    files: list[str]

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """The baseline's stage configs by name (as its manifest recorded them: name, params, resources)."""
        return {s["name"]: s for s in (self.manifest.get("config") or {}).get("stages") or []}

    def schema(self) -> pa.Schema:
        """The unified Arrow schema of the baseline's ``docs/`` (footers only)."""
        return _unified_schema(self.run, self.files)


def docs_files(run: RunDir) -> list[str]:
    """The ``docs/`` Parquet files of one run (fs paths, sorted)."""
    return sorted(run.fs.glob(f"{run.root}/docs/**/*.parquet"))


def run_problem(run: RunDir) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """A finished run's manifest and ``docs/`` files, or what keeps ``run`` from being one (the end of a sentence
    that starts with its path); the one check of ``--baseline``, ``dq-ray compare`` and ``dq-ray gaps``."""
    manifest = read_owner(run.fs, run.root)
    if manifest is None:
        return None, [], "is not a dq-ray run directory (no manifest.json written by dq-ray)"
    status = manifest.get("status")
    if status != "succeeded":
        return (
            manifest,
            [],
            (
                f"is not a finished run (manifest status: {status!r}, expected 'succeeded'); "
                "finish it with `dq-ray run --resume` first"
            ),
        )
    files = docs_files(run)
    if not files:
        return manifest, [], "has no docs/ Parquet files"
    return manifest, files, None


def open_baseline(path: str) -> Baseline:
    """The run at ``path`` as a baseline; :class:`BaselineError` unless it is a finished dq-ray run with ``docs/``."""
    run = RunDir(path)
    manifest, files, problem = run_problem(run)
    if problem is not None:
        raise BaselineError(f"--baseline {redact_url(run.path)} {problem}")
    return Baseline(run, manifest, files)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _dict_differences(old: dict[str, Any], new: dict[str, Any], prefix: str, ignore=frozenset()) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} in the baseline, {json.dumps(b)} now")
    return out


def stage_differences(baseline: Baseline, stages: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What differs between the baseline's stages and ``stages`` (the new config's ``stages`` as plain data:
    name, params, resources), per stage name: a stage only one side has, or a param with another value.

    Resources and the params in :data:`EXECUTION_PARAMS` change speed, not results, and are not compared.
    """
    old = {name: _plain(s.get("params") or {}) for name, s in baseline.stages.items()}
    new = {s["name"]: _plain(s.get("params") or {}) for s in stages}
    out: dict[str, list[str]] = {}
    for name in [*new, *(n for n in old if n not in new)]:
        if name not in old:
            out[name] = ["not in the baseline"]
        elif name not in new:
            out[name] = ["in the baseline only"]
        else:
            diffs = _dict_differences(old[name], new[name], "params.", EXECUTION_PARAMS)
            if diffs:
                out[name] = diffs
    return out


def input_differences(baseline: Baseline, input_cfg: dict[str, Any]) -> list[str]:
    """The input settings of :data:`INPUT_KEYS` (what a document's text is) that differ from the baseline's."""
    old = _plain((baseline.manifest.get("config") or {}).get("input") or {})
    new = _plain(input_cfg)
    return _dict_differences({k: old.get(k) for k in INPUT_KEYS}, {k: new.get(k) for k in INPUT_KEYS}, "input.")


def format_differences(differences: dict[str, list[str]]) -> str:
    """The differences as indented lines, one per difference, grouped by stage."""
    return "\n".join(f"  {name}: {line}" for name, lines in differences.items() for line in lines)


# -- the view: a run and its baselines, read as one corpus ------------------------------------------------------


def view_runs(run: RunDir, manifest: dict[str, Any] | None = None) -> list[tuple[RunDir, dict[str, Any]]]:
    """The run and every baseline behind it (a chain of updates), newest first, with their manifests.

    A run without a ``baseline`` block is a view of itself only. A baseline that is gone is an error naming it.
    """
    manifest = manifest if manifest is not None else (read_owner(run.fs, run.root) or {})
    out = [(run, manifest)]
    seen = {run.path}
    while len(out) < MAX_CHAIN:
        block = out[-1][1].get(MANIFEST_KEY) or {}
        path = block.get("path")
        if not path:
            break
        base = RunDir(path)
        if base.path in seen:
            break
        found = read_owner(base.fs, base.root)
        if found is None or not docs_files(base):
            raise FileNotFoundError(
                f"{redact_url(out[-1][0].path)} reads its baseline {redact_url(base.path)}, which is gone or "
                "holds no docs/ (an update is a view over its baseline: keep the baseline run)"
            )
        seen.add(base.path)
        out.append((base, found))
    return out


def is_view(run: RunDir) -> bool:
    """Whether the run was made with ``--baseline`` (its readers read its baselines' ``docs/`` too)."""
    return bool((read_owner(run.fs, run.root) or {}).get(MANIFEST_KEY))


def view_files(run: RunDir, manifest: dict[str, Any] | None = None) -> list[str]:
    """The ``docs/`` files of the run and of its baselines (fs paths on ``run.fs``), the run's own first."""
    files: list[str] = []
    for member, _ in view_runs(run, manifest):
        if type(member.fs) is not type(run.fs):
            raise ConfigError(f"baseline {redact_url(member.path)} is on another filesystem than {run.path}")
        files.extend(docs_files(member))
    return files


def _unified_schema(run: RunDir, files: list[str]) -> pa.Schema:
    schemas = []
    for path in files:
        with run.fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
        if not schemas or schema != schemas[-1]:
            schemas.append(schema.remove_metadata())
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


def view_schema(run: RunDir, files: list[str] | None = None) -> pa.Schema:
    """One schema for every ``docs/`` file of the view (columns one run lacks read as nulls)."""
    return _unified_schema(run, files if files is not None else view_files(run))


def view_input_paths(run: RunDir, manifest: dict[str, Any] | None = None) -> list[str]:
    """The input paths of the run and of its baselines (to re-read the text of any row of the view)."""
    paths: list[str] = []
    for _, found in view_runs(run, manifest):
        for p in ((found.get("config") or {}).get("input") or {}).get("paths") or []:
            if p not in paths:
                paths.append(p)
    return paths
