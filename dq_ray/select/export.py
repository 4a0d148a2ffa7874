"""Exporting a run: its signals joined with the document text and map coordinates, as Parquet or JSONL files that
pandas and Hugging Face ``datasets`` read, with a dataset card (``README.md``) beside them.

:func:`export_run` (``dq-ray export``) reads ``RUN/docs/``, keeps the rows that pass the ``--where`` filters (each
``COLUMN OP VALUE``, parsed by :func:`parse_where` into a :class:`~dq_ray.select.policy.FilterRule` and evaluated by
:func:`~dq_ray.select.policy.evaluate`, the selection policy's own machinery) and, with ``selected``, only the
documents of an earlier ``dq-ray select`` output (matched by ``source_file`` + ``source_index``). The text comes
from ``docs/`` when the run kept it (``output.keep_text``), else it is re-read from the run's inputs in Ray tasks,
exactly as ``dq-ray select`` does (:func:`~dq_ray.select.apply.gather_dataset`).

The card (:func:`dataset_card`) names the source run, summarises its config, counts the rows in the run and the
rows exported, states the filters, and describes every exported column: the stage that writes it (from the
registered stages' ``outputs``, what ``dq-ray stages`` lists, :func:`stage_catalog`) and its meaning (the schema
table of ``docs/schema.md`` when the package sits in a source checkout, else the stage's docstring). Its YAML
header tells ``datasets.load_dataset(PATH)`` which files hold the data.

Like :mod:`dq_ray.select.apply`, nothing of :mod:`dq_ray.io`, :mod:`dq_ray.config` or :mod:`dq_ray.pipeline` is
imported at module level.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.io.redact import redact_url
from dq_ray.select.apply import (
    SELECTED_DIR,
    OutputOptions,
    docs_schema,
    gather_dataset,
    input_config,
    read_signals,
    source_file_map,
    write_dataset,
    write_file,
)
from dq_ray.select.policy import KEY_COLUMNS, FilterRule, Policy, check_columns, evaluate

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("parquet", "jsonl")
#: docs/ columns left out unless ``columns`` names them (vectors: large, and no use in a table).
DEFAULT_EXCLUDED = ("embedding",)
#: Rows per file written on the driver (a run that kept its text, or an export without text).
ROWS_PER_FILE = 250_000
CARD = "README.md"
DATA_DIR = "data"
_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*$")
_READER = {
    "id": "the input id as a string (without one, `<file>#<index>`)",
    "source_file": "the input file the document was read from (as stored in the run)",
    "source_index": "its line number (JSONL, 1-based) or row number (Parquet, 0-based) in that file",
    "text": "the document text",
}


# -- --where -----------------------------------------------------------------------------------------------


def parse_where(expr: str) -> FilterRule:
    """``COLUMN OP VALUE`` (``askllm_score>=0.5``, ``heur_c4_pass==true``, ``lang==en``, ``topic_id!=null``) as a
    :class:`~dq_ray.select.policy.FilterRule`; no ``eval``. ``true`` / ``false`` / ``null`` with ``==`` / ``!=``
    become ``is_true`` / ``is_false`` / ``is_null`` / ``not_null``; numbers are numbers; anything else (quotes
    optional) is a string. Raises ``ConfigError`` with the accepted form."""
    m = _WHERE.match(expr or "")
    if not m or not m.group(3):
        raise ConfigError(
            f"--where {expr!r}: expected COLUMN OP VALUE with OP one of ==, !=, <, <=, >, >= "
            "(e.g. 'askllm_score>=0.5', 'heur_c4_pass==true', 'lang==en')"
        )
    column, op, raw = m.groups()
    word = raw.lower()
    if word in ("true", "false", "null", "none"):
        if op not in ("==", "!="):
            raise ConfigError(f"--where {expr!r}: {raw} takes == or !=")
        positive = op == "=="
        unary = {
            "true": "is_true" if positive else "is_false",
            "false": "is_false" if positive else "is_true",
            "null": "is_null" if positive else "not_null",
            "none": "is_null" if positive else "not_null",
        }[word]
        return FilterRule(column, unary, name=expr.strip())
    value: Any
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--where {expr!r}: the value must be a finite number")
    return FilterRule(column, op, value, name=expr.strip())


def _where_mask(rules: Sequence[FilterRule], table: pa.Table) -> np.ndarray:
    try:
        return evaluate(Policy(rules=tuple(rules)), table).kept
    except (TypeError, ValueError) as exc:  # a string compared with a number...
        labels = ", ".join(r.label() for r in rules)
        raise ConfigError(f"--where {labels}: the value does not fit the column's type ({exc})") from None


# -- column meanings -----------------------------------------------------------------------------------------


def stage_catalog() -> list[dict[str, Any]]:
    """Every registered stage (what ``dq-ray stages`` lists): name, first docstring line, inputs, outputs."""
    from dq_ray.stages import registry

    out = []
    for name, cls in sorted(registry().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out.append({"name": name, "doc": doc, "inputs": tuple(cls.inputs), "outputs": dict(cls.outputs)})
    return out


def _schema_doc_meanings() -> dict[str, str]:
    """``column -> meaning`` from the tables of ``docs/schema.md`` (in a source checkout; empty otherwise)."""
    path = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) >= 4 and re.fullmatch(r"`[a-z0-9_]+`", cells[0]):
            meaning = re.sub(r"\s*\(see \[[^\]]*\]\(#[^)]*\)[^)]*\)", "", " | ".join(cells[3:]))  # page links
            out.setdefault(cells[0].strip("`"), re.sub(r"\[([^\]]*)\]\(#[^)]*\)", r"\1", meaning))
    return out


def column_meanings(columns: Sequence[str], keep_fields: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """Per column, ``(written by, meaning)``: the reader's columns, kept input fields, and each stage's outputs."""
    by_stage = {col: s for s in stage_catalog() for col in s["outputs"]}
    documented = _schema_doc_meanings()
    out = {}
    for c in columns:
        if c in _READER:
            out[c] = ("reader", documented.get(c, _READER[c]) if c != "text" else _READER[c])
        elif c in keep_fields:
            out[c] = ("reader", f"the input field `{c}`, kept as text (`input.keep_fields`)")
        elif c in by_stage:
            s = by_stage[c]
            out[c] = (s["name"], documented.get(c) or f"added by the {s['name']} stage: {s['doc']}")
        else:
            out[c] = ("-", documented.get(c, "not documented by a registered stage"))
    return out


# -- the export ------------------------------------------------------------------------------------------------


def export_run(
    run_path: str,
    output: str,
    *,
    fmt: str = "parquet",
    columns: Sequence[str] | None = None,
    text: bool = True,
    where: Sequence[str] = (),
    selected: str | None = None,
    ray_cfg: Any = None,
    keys: pa.Table | None = None,
    keys_label: str = "a map selection",
) -> dict[str, Any]:
    """Write the rows of a finished run (filtered by ``where``, limited to a selection) with their text into
    ``output`` (a new or empty folder) as ``data/part-*.parquet`` / ``data/part-*.jsonl``, with the dataset card
    (``README.md``) and the numbers (``export.json``) beside them.

    ``columns``: the ``docs/`` columns to write (default: all but the embedding); ``id``, ``source_file`` and
    ``source_index`` always come. Raises ``ConfigError`` / ``FileNotFoundError`` / ``NotARunError`` naming what is
    wrong before anything is written. Starts Ray (``ray_cfg``) only to re-read text from the inputs. Returns the
    numbers also written to ``export.json``.

    ``keys``: only the documents whose ``source_file`` + ``source_index`` are rows of this table (what the map's
    "Export" writes: the documents passing its filters, or a box / lasso selection), named ``keys_label`` in the card.
    """
    from dq_ray.io import RunDir
    from dq_ray.io.guard import NotARunError, read_owner

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    run = RunDir(run_path)
    if read_owner(run.fs, run.root) is None:
        raise NotARunError(f"{redact_url(run.path)} is not a dq-ray run directory (no manifest.json)")
    manifest = run.read_json("manifest.json")
    input_cfg = input_config(manifest, run)
    names = docs_schema(run).names
    rules = [parse_where(w) for w in where]
    check_columns(Policy(rules=tuple(rules)), names, where="--where")
    out_cols = _output_columns(names, columns, text)
    out_fs, out_root = fsspec.core.url_to_fs(output)
    if out_fs.exists(out_root) and (not out_fs.isdir(out_root) or out_fs.ls(out_root)):
        raise ConfigError(f"{redact_url(output)} exists and is not an empty folder: choose a new or empty output")

    text_from_inputs = text and "text" not in names
    read_cols = [c for c in names if c in dict.fromkeys([*KEY_COLUMNS, *(r.column for r in rules), *out_cols])]
    signals = read_signals(run.path, read_cols)
    mask = _where_mask(rules, signals) if rules else np.ones(signals.num_rows, dtype=bool)
    selection = None
    if selected is not None:
        in_sel, selection = _in_selection(selected, signals, input_cfg)
        mask &= in_sel
    if keys is not None:
        mask &= _in_keys(keys, signals)
    rows = signals.filter(pa.array(mask))
    log.info("exporting %d of %d documents", rows.num_rows, signals.num_rows)
    data = f"{out_root}/{DATA_DIR}"
    out_fs.makedirs(data, exist_ok=True)
    if text_from_inputs and rows.num_rows:
        written = _write_from_inputs(run, input_cfg, rows, out_cols, f"{output.rstrip('/')}/{DATA_DIR}", fmt, ray_cfg)
    else:
        written = _write_table(rows.select([c for c in out_cols if c in rows.column_names]), out_fs, data, fmt)
    if written != rows.num_rows:
        raise ConfigError(
            f"exported {written} of {rows.num_rows} documents: were the input files changed since the run?"
        )
    info = {
        "run": redact_url(run.path),
        "output": output,
        "card": f"{output.rstrip('/')}/{CARD}",
        "format": fmt,
        "rows_in_run": signals.num_rows,
        "rows_exported": written,
        "columns": out_cols,
        "text": "none" if not text else ("re-read from the inputs" if text_from_inputs else "docs/ (keep_text)"),
        "where": [r.label() for r in rules],
        "selected": selection,
        "keys": None if keys is None else {"documents": keys.num_rows, "label": keys_label},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    schema = _written_schema(out_fs, data, fmt)
    with out_fs.open(f"{out_root}/{CARD}", "w") as fh:
        fh.write(dataset_card(info, manifest, schema, input_cfg.keep_fields))
    with out_fs.open(f"{out_root}/export.json", "w") as fh:
        json.dump(info, fh, indent=2, default=str)
    return info


def _in_keys(keys: pa.Table, signals: pa.Table) -> np.ndarray:
    """Which rows of ``signals`` have their ``source_file`` + ``source_index`` among the rows of ``keys``."""
    import pyarrow.compute as pc

    def joined(table: pa.Table) -> pa.ChunkedArray:
        index = pc.cast(table.column("source_index"), pa.string())
        return pc.binary_join_element_wise(table.column("source_file"), index, "#")

    wanted = joined(keys).combine_chunks() if keys.num_rows else pa.array([], pa.string())
    return np.asarray(pc.is_in(joined(signals), value_set=wanted).to_numpy(zero_copy_only=False), dtype=bool)


def _output_columns(names: Sequence[str], columns: Sequence[str] | None, text: bool) -> list[str]:
    keys = [c for c in ("id", *KEY_COLUMNS) if c in names]
    if columns is None:
        rest = [c for c in names if c not in DEFAULT_EXCLUDED and c != "text"]
    else:
        unknown = [c for c in columns if c not in names and c != "text"]
        if unknown:
            raise ConfigError(f"--columns: unknown column(s) {unknown}; available: {', '.join(names)}")
        rest = [c for c in columns if c != "text"]
    return list(dict.fromkeys([*keys, *(["text"] if text else []), *rest]))


def _in_selection(selected: str, signals: pa.Table, input_cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Which rows of ``signals`` an earlier ``dq-ray select`` output holds, and what the card says about it."""
    import pyarrow.dataset as pads

    fs, root = fsspec.core.url_to_fs(selected)
    root = root.rstrip("/")
    if fs.isdir(f"{root}/{SELECTED_DIR}"):
        top, data = root, f"{root}/{SELECTED_DIR}"
    else:
        top, data = root.rsplit("/", 1)[0], root
    summary: dict[str, Any] = {}
    if fs.exists(f"{top}/selection.json"):
        with fs.open(f"{top}/selection.json", "r") as fh:
            summary = json.load(fh)
    files = sorted(fs.glob(f"{data}/**/*.parquet"))
    if not files:
        raise ConfigError(
            f"--selected {selected}: no Parquet selection there (give a `dq-ray select` output folder; "
            "a --format jsonl selection holds no source keys to match)"
        )
    keys = pads.dataset(files, filesystem=fs, format="parquet")
    if not all(k in keys.schema.names for k in KEY_COLUMNS):
        raise ConfigError(f"--selected {selected}: the files have no source_file / source_index columns")
    keys = keys.to_table(columns=list(KEY_COLUMNS))
    mode = (summary.get("output") or {}).get("source_paths", "absolute")  # selections before --source-paths
    stored = signals.column("source_file").to_pylist()
    shown = source_file_map(input_cfg, sorted(set(stored)), mode)
    wanted = set(zip(keys.column("source_file").to_pylist(), keys.column("source_index").to_pylist()))
    idx = signals.column("source_index").to_pylist()
    mask = np.fromiter(((shown.get(f), i) in wanted for f, i in zip(stored, idx)), bool, len(stored))
    if int(mask.sum()) != len(wanted):
        log.warning("%d selected documents are not in this run", len(wanted) - int(mask.sum()))
    info = {"path": selected, "documents": len(wanted), "policy": summary.get("policy")}
    return mask, info


def _write_from_inputs(run, input_cfg, rows: pa.Table, out_cols, output, fmt, ray_cfg) -> int:
    """The rows with their text re-read from the inputs (Ray tasks, as ``dq-ray select``), written by Ray."""
    from dq_ray.config import READER_COLUMNS, RayConfig
    from dq_ray.pipeline import ray_session

    reader = set(READER_COLUMNS) | set(input_cfg.keep_fields)
    sig_cols = [c for c in out_cols if c in KEY_COLUMNS or c not in reader]
    keys = rows.select([*KEY_COLUMNS, "__filename"])
    with ray_session(ray_cfg or RayConfig()):
        ds = gather_dataset(run, input_cfg, keys, sig_cols).select_columns(out_cols)
        return write_dataset(ds, output, OutputOptions(format=fmt, source_paths="absolute"))


def _write_table(table: pa.Table, fs: Any, root: str, fmt: str) -> int:
    """``table`` as ``part-NNNNNN`` files of :data:`ROWS_PER_FILE` rows (at least one file, empty or not)."""
    suffix = OutputOptions(format=fmt).suffix
    for n, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_FILE)):
        write_file(fs, f"{root}/part-{n:06d}{suffix}", table.slice(start, ROWS_PER_FILE), fmt)
    return table.num_rows


def _written_schema(fs: Any, root: str, fmt: str) -> list[tuple[str, str]]:
    """``(column, type)`` of what was written (the first file's schema; JSON types for JSONL)."""
    import pyarrow.parquet as pq

    files = sorted(fs.glob(f"{root}/*.parquet" if fmt == "parquet" else f"{root}/*.jsonl"))
    if fmt == "parquet" and files:
        with fs.open(files[0], "rb") as fh:
            return [(f.name, str(f.type)) for f in pq.read_schema(fh)]
    for f in files:
        with fs.open(f, "r") as fh:
            line = fh.readline()
        if line.strip():
            kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
            return [(k, kinds.get(type(v), "null")) for k, v in json.loads(line).items()]
    return []


# -- the dataset card -----------------------------------------------------------------------------------------


def dataset_card(
    info: dict[str, Any], manifest: dict[str, Any], schema: list[tuple[str, str]], keep_fields: Sequence[str] = ()
) -> str:
    """The ``README.md`` of an export: source, config summary, counts, filters and one row per column."""
    suffix = "parquet" if info["format"] == "parquet" else "jsonl"
    builder = "parquet" if suffix == "parquet" else "json"
    cfg = manifest.get("config") or {}
    inp = cfg.get("input") or {}
    counts = manifest.get("counts") or {}
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f'    path: "{DATA_DIR}/part-*.{suffix}"',
        "---",
        "",
        f"# dq-ray export of `{info['run']}`",
        "",
        f"Documents of a dq-ray run with their quality signals, written by `dq-ray export` on {info['exported_at']}.",
        f"Files: `{DATA_DIR}/part-*.{suffix}`; read them with `pandas.read_{builder}` "
        f'or `datasets.load_dataset("{builder}", data_files=...)`.',
        "",
        "## Source",
        "",
        f"- run: `{info['run']}` (run id `{manifest.get('run_id', '?')}`, status `{manifest.get('status', '?')}`, "
        f"dq-ray {manifest.get('dq_ray_version', '?')})",
        f"- inputs: {', '.join(f'`{redact_url(str(p))}`' for p in inp.get('paths', [])) or '?'} "
        f"(shape `{inp.get('shape', 'text')}`, kept fields: {', '.join(keep_fields) or 'none'})",
        f"- stages: {_stages_summary(cfg.get('stages') or [])}",
        f"- text: {info['text']}",
        "",
        "## Counts",
        "",
        f"- input records: {counts.get('input', '?')}; rejected (reader or stage): {counts.get('rejected', '?')}",
        f"- documents in the run (`docs/`): {info['rows_in_run']}",
        f"- documents exported: {info['rows_exported']}",
        "",
        "## Filter",
        "",
    ]
    if info["where"]:
        lines.append(f"- `--where` (all must hold): {', '.join(f'`{w}`' for w in info['where'])}")
    sel = info.get("selected")
    if sel:
        lines.append(f"- `--selected`: the {sel['documents']} documents of `{redact_url(str(sel['path']))}`")
        if sel.get("policy"):
            lines.append(f"  under the policy `{json.dumps(sel['policy'], sort_keys=True)}`")
    picked = info.get("keys")
    if picked:
        lines.append(f"- {picked['label']}: {picked['documents']} documents, by `source_file` + `source_index`")
    if not info["where"] and not sel and not picked:
        lines.append("- none: every document of the run")
    lines += ["", "## Columns", "", "| column | type | written by | meaning |", "|---|---|---|---|"]
    meanings = column_meanings([c for c, _ in schema], keep_fields)
    for col, typ in schema:
        by, meaning = meanings[col]
        lines.append(f"| `{col}` | {typ} | {by} | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _stages_summary(stages: list[Any]) -> str:
    parts = []
    for s in stages:
        if isinstance(s, dict):
            params = {k: v for k, v in (s.get("params") or {}).items() if v not in (None, [], {}, ())}
            parts.append(f"`{s.get('name')}`" + (f" {json.dumps(params, default=str)}" if params else ""))
    return "; ".join(parts) or "none"
