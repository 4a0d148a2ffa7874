"""Applying a selection policy to a finished run: ``selected/``, the curation report and ``selection.json``.

:func:`select_run` reads the signals the rules need from ``RUN/docs/``, evaluates the policy
(:func:`dq_ray.select.policy.evaluate`), joins the kept documents back to their input records in Ray tasks (one per
input file, text included) and writes them to ``selected/`` with the report (:mod:`dq_ray.select.report`).
:func:`run_selection` does the same inside a Ray session; :func:`format_selection` is the table the CLI prints.
:class:`OutputOptions` says how ``selected/`` is written for a trainer: Parquet or JSONL (``text`` and ``id``), shuffled
(a seeded global order), with ``source_file`` absolute, relative to its input root or redacted, in files of a
target number of rows.

Nothing of :mod:`dq_ray.io`, :mod:`dq_ray.config` or :mod:`dq_ray.pipeline` is imported at module level (they lead
to the job config, which imports :mod:`dq_ray.select.policy`): importing :mod:`dq_ray.select` stays light.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import xxhash

from dq_ray.errors import ConfigError
from dq_ray.io.redact import redact_url
from dq_ray.select.policy import KEY_COLUMNS, Evaluation, Policy, check_columns, doc_hashes, evaluate
from dq_ray.select.report import write_report
from dq_ray.typed import build_dataclass

log = logging.getLogger(__name__)

#: Signals the report summarises when the run has them (besides the columns the rules read).
REPORT_COLUMNS = (
    "topic_id",
    "topic_coarse_id",
    "askllm_score",
    "askllm_pred",
    "density_score",
    "density_weight",
    "heur_dup_line_frac",
    "heur_dup_para_frac",
    "heur_top_2gram_char_frac",
    "heur_dup_5gram_char_frac",
    "semdedup_max_sim",
    "lang",
    "lang_score",
    "lang_heur_mismatch",
    "pii_count",
    "pii_kinds",
    "pii_reason",
    "pii_spans",  # offsets only: redacts the report's text snippets, counts personal data by kind
    "offensive_score",
    "offensive_flag",
    "offensive_words",
    "quality_pred",
)
SELECTED_DIR = "selected"
OUTPUT_FORMATS = ("parquet", "jsonl")
SOURCE_PATHS = ("absolute", "relative", "redacted")


@dataclass(frozen=True)
class OutputOptions:
    """How ``selected/`` is written (``dq-ray select --format --shuffle --source-paths --rows-per-file``).

    Attributes:
        format: ``parquet`` (input fields, text included, and signals) or ``jsonl`` (one JSON object per line with
            ``text`` and ``id``: what a trainer reads).
        shuffle: write the rows in one seeded random order across the whole selection (the policy's seed, or
            ``--seed``), not in input order; the same seed gives the same order.
        source_paths: ``source_file`` as stored in the run (``absolute``), relative to the input root it was found
            under (``relative``, the default) or ``redacted`` (a 16-hex-digit hash of the stored path: rows of
            one file still share it, the path is not shown).
        rows_per_file: files of exactly this many rows (the last one: the rest), streamed through the driver
            (None: Ray's write tasks write one file per input file's share of the selection).
    """

    format: str = "parquet"
    shuffle: bool = False
    source_paths: str = "relative"
    rows_per_file: int | None = None

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"format {self.format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        if self.source_paths not in SOURCE_PATHS:
            raise ConfigError(f"source_paths {self.source_paths!r} is not one of {', '.join(SOURCE_PATHS)}")
        if self.rows_per_file is not None and self.rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be >= 1, got {self.rows_per_file}")

    @property
    def suffix(self) -> str:
        return ".parquet" if self.format == "parquet" else ".jsonl"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SelectionResult:
    """What :func:`select_run` wrote: the output directory, the evaluation and the summary (selection.json)."""

    output_dir: str
    evaluation: Evaluation
    summary: dict[str, Any]


def signal_columns(schema: pa.Schema, policy: Policy, keep_fields: Sequence[str]) -> list[str]:
    """The docs/ columns the driver reads: keys, rule columns, flags, report signals and kept input fields."""
    names = schema.names
    flags = [
        n for n in names if (n.endswith("_pass") or n.endswith("_keep")) and pa.types.is_boolean(schema.field(n).type)
    ]
    wanted = ["id", *KEY_COLUMNS, *policy.columns(), *flags, *REPORT_COLUMNS, *keep_fields]
    return [c for c in dict.fromkeys(wanted) if c in names]


def read_signals(run_path: str, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` of ``RUN/docs/``, streamed batch by batch (pyarrow). A run made with ``--baseline`` is
    read with its baselines' ``docs/`` (one corpus; see :mod:`dq_ray.io.baseline`)."""
    import pyarrow.dataset as pads

    from dq_ray.io import RunDir
    from dq_ray.io.baseline import is_view, view_files, view_schema

    run = RunDir(run_path)
    files = view_files(run)
    if not files:
        raise FileNotFoundError(f"{run.path} has no docs/ Parquet: is it a dq-ray run directory?")
    schema = view_schema(run, files) if is_view(run) else None
    dataset = pads.dataset(files, filesystem=run.fs, format="parquet", schema=schema)
    # scans batch by batch, only these columns; __filename: the docs/ file of each row (to re-read it later)
    return dataset.to_table(columns=[*columns, "__filename"])


def select_run(
    run_path: str,
    policy: Policy,
    output: str | None = None,
    seed: int | None = None,
    examples_per_rule: int = 3,
    options: OutputOptions | None = None,
) -> SelectionResult:
    """Apply ``policy`` to a finished run: write ``selected/``, ``report.md``, ``report.html`` and selection.json.

    Nothing is recomputed: the rules read the signals in ``RUN/docs/`` (only the columns they need), the kept
    documents are joined back to their input records (re-read in Ray tasks, one per input file) so
    ``selected/`` holds the input fields, text included, next to every signal. ``output`` defaults to the
    run directory itself (then the manifest gains a ``selection`` section). ``options``: the output format,
    order, ``source_file`` form and file size (:class:`OutputOptions`; default: Parquet, input order, relative
    paths). Needs a running Ray.
    """
    from dq_ray.io import RunDir
    from dq_ray.io.guard import take_selection_output

    t0 = time.perf_counter()
    if seed is not None:
        policy = dataclasses.replace(policy, seed=seed)
    run = RunDir(run_path)
    manifest = run.read_json("manifest.json")
    input_cfg = input_config(manifest, run)
    schema = docs_schema(run)
    check_columns(policy, schema.names, where="policy")
    missing = [c for c in policy.exclude_columns if c not in schema.names]
    if missing:
        log.info("exclude_columns %s are not in docs/ (nothing to leave out)", missing)
    signals = read_signals(run.path, signal_columns(schema, policy, input_cfg.keep_fields))
    ev = evaluate(policy, signals)
    log.info("policy keeps %d of %d documents", int(ev.kept.sum()), signals.num_rows)

    out = RunDir(output) if output else run
    lock = take_selection_output(out.fs, out.root, into_run=out.root == run.root)
    try:
        opts = options or OutputOptions()
        return _write_selection(run, out, manifest, input_cfg, schema, policy, signals, ev, examples_per_rule, t0, opts)
    finally:
        lock.release()


def topic_names(run: Any) -> dict[str, str]:
    """``{topic_id: topic_label}`` of the fine topics of ``run`` (a ``RunDir``; from ``artifacts/topics.parquet``)."""
    import pyarrow.parquet as pq

    path = run.sub("artifacts/topics.parquet")
    if not run.fs.exists(path):
        return {}
    from dq_ray.stages.topics import topic_labels

    with run.fs.open(path, "rb") as fh:
        return topic_labels(pq.read_table(fh))


def _write_selection(run, out, manifest, input_cfg, schema, policy, signals, ev, examples_per_rule, t0, options):
    """The writing half of :func:`select_run`, with ``out`` locked."""
    from dq_ray.io.guard import remove_entries

    selected_path = out.sub(SELECTED_DIR)
    remove_entries(out.fs, out.root, [SELECTED_DIR])
    out.fs.makedirs(out.root, exist_ok=True)
    kept_keys = signals.filter(pa.array(ev.kept)).select([*KEY_COLUMNS, "__filename"])
    written = write_selected(run, input_cfg, schema, policy, kept_keys, selected_path, options)
    if written != int(ev.kept.sum()):
        raise ConfigError(
            f"selected {int(ev.kept.sum())} documents but found {written} of them in the inputs: "
            "were the input files changed or moved since the run?"
        )
    examples = removed_examples(run, input_cfg, signals, ev, examples_per_rule)
    summary = write_report(
        out_dir=out.path,
        run_manifest=manifest,
        policy=policy,
        signals=signals,
        evaluation=ev,
        selected_path=selected_path,
        examples=examples,
        rejected=run.read_table("rejected", columns=["reason"]),
        # JSONL holds text and id only: the "after" numbers come from the signals of the rows written
        after=signals.filter(pa.array(ev.kept)) if options.format == "jsonl" else None,
        topic_names=topic_names(run),
    )
    summary["output"] = options.to_dict()
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    out.write_json("selection.json", summary)
    if out.root == run.root:
        manifest = run.read_json("manifest.json")
        manifest["selection"] = summary
        run.write_json("manifest.json", manifest)
    return SelectionResult(out.path, ev, summary)


def input_config(manifest: dict[str, Any], run: Any = None):
    """The run's input config (an :class:`~dq_ray.config.InputConfig`), from its manifest; given the run (a
    ``RunDir``) made with ``--baseline``, its paths are the run's and its baselines' (the view's text)."""
    from dq_ray.config import InputConfig

    raw = dict(manifest["config"]["input"])
    if run is not None and manifest.get("baseline"):
        from dq_ray.io.baseline import view_input_paths

        raw["paths"] = view_input_paths(run, manifest)
    return build_dataclass(InputConfig, raw, "manifest.config.input")


def docs_schema(run) -> pa.Schema:
    """The Arrow schema of ``RUN/docs/`` (``run``: a :class:`~dq_ray.io.RunDir`), of its baselines' too when it
    was made with ``--baseline`` (one schema for the view)."""
    import pyarrow.parquet as pq

    from dq_ray.io.baseline import is_view, view_files, view_schema

    files = view_files(run)
    if not files:
        raise FileNotFoundError(f"{run.path} has no docs/ Parquet: is it a dq-ray run directory?")
    if is_view(run):
        return view_schema(run, files)
    with run.fs.open(files[0], "rb") as fh:
        return pq.read_schema(fh)


def _input_files(input_cfg, wanted: set[str]) -> list:
    from dq_ray.io import discover_inputs

    files = [f for f in discover_inputs(input_cfg) if redact_url(f.path) in wanted]  # stored paths are redacted
    lost = wanted - {redact_url(f.path) for f in files}
    if lost:
        raise ConfigError(f"input file(s) of the run are gone: {sorted(lost)[:5]}")
    return files


def _read_back(batch: pa.Table, input_cfg: Any, keys: Any) -> Any:
    """Ray task: re-read input files (one per row of ``batch``) and keep the records whose keys are wanted."""
    from dq_ray.io import InputFile, ShardResult, read_shard, redact_url

    keys = _deref(keys)
    for row in batch.to_pylist():
        shard = InputFile(**row)
        wanted = keys[redact_url(shard.path)]
        for table in read_shard(shard, input_cfg, ShardResult(shard.path)):
            mask = np.isin(table.column("source_index").to_numpy(), wanted)
            if mask.any():
                yield table.filter(pa.array(mask))


def _deref(value: Any) -> Any:
    """The value behind an ObjectRef (a key map shared by every task through the object store)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _keys_by_file(keys: pa.Table) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for f, i in zip(keys.column("source_file").to_pylist(), keys.column("source_index").to_pylist()):
        out.setdefault(f, []).append(i)
    return {f: np.sort(np.asarray(v, dtype=np.int64)) for f, v in out.items()}


def read_back_inputs(input_cfg: Any, keys: pa.Table) -> Any:
    """A Ray dataset of the input records (reader fields, text included) with the given (file, index) keys."""
    import ray
    import ray.data

    by_file = _keys_by_file(keys)
    files = _input_files(input_cfg, set(by_file))
    items = [dataclasses.asdict(f) for f in files]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(
        _read_back, batch_size=1, batch_format="pyarrow", fn_kwargs={"input_cfg": input_cfg, "keys": ray.put(by_file)}
    )


def _gather(
    batch: pa.Table,
    input_cfg: Any,
    sig_cols: list[str],
    filesystem: Any,
    redact_pii: bool = False,
    drop: tuple[str, ...] = (),
    order_seed: int | None = None,
    source_paths: str = "absolute",
    schema: pa.Schema | None = None,
) -> Any:
    """Ray task, one per input file: its kept records (re-read, text included) joined with their signals.

    Each row of ``batch`` names an input file, the ``source_index`` values kept from it and the ``docs/`` files
    that hold their signals; only those files are read, only the kept rows are joined (by ``source_index``).
    With ``redact_pii`` the text's personal-data spans are replaced by placeholders (:func:`redact_pii_text`);
    ``drop``: signal columns read only for that (excluded from the output by the policy). ``order_seed``: add
    ``__order``, a seeded hash of the document key (a global shuffle sorts on it); ``source_paths``: the form of
    ``source_file`` written (:func:`shown_source_file`). ``schema``: the signal columns' types, when the
    ``docs/`` files differ (a run and its baselines: a column one lacks is read as nulls).
    """
    import pyarrow.dataset as pads

    from dq_ray.io import InputFile, ShardResult, read_shard, redact_url

    for row in batch.to_pylist():
        shard = InputFile(**row["shard"])
        wanted = np.asarray(row["indices"], dtype=np.int64)
        docs = pads.dataset(row["docs_files"], filesystem=filesystem, format="parquet", schema=schema)
        stored = redact_url(shard.path)
        expr = (pads.field("source_file") == stored) & pads.field("source_index").isin(pa.array(wanted))
        signals = docs.to_table(columns=sig_cols, filter=expr)
        position = {int(v): k for k, v in enumerate(signals.column("source_index").to_pylist())}
        for table in read_shard(shard, input_cfg, ShardResult(shard.path)):
            mask = np.isin(table.column("source_index").to_numpy(), wanted)
            if not mask.any():
                continue
            table = table.filter(pa.array(mask))
            take = [position.get(int(v), -1) for v in table.column("source_index").to_pylist()]
            if min(take) < 0:  # an input record without a signals row: the input changed since the run
                table = table.filter(pa.array([t >= 0 for t in take]))
                take = [t for t in take if t >= 0]
            matched = signals.take(pa.array(take, pa.int64()))
            for name in sig_cols:
                if name not in table.column_names:
                    table = table.append_column(matched.schema.field(name), matched.column(name))
            table = redact_pii_text(table) if redact_pii else table
            table = table.drop_columns(list(drop)) if drop else table
            if order_seed is not None:  # of the stored key, before source_file is rewritten
                table = table.append_column("__order", pa.array(doc_hashes(table, order_seed)))
            if source_paths != "absolute":
                shown = pa.array([shown_source_file(stored, shard.name, source_paths)] * table.num_rows, pa.string())
                table = table.set_column(table.schema.get_field_index("source_file"), "source_file", shown)
            yield table


def shuffle_seed(seed: int) -> int:
    """The hash seed of ``--shuffle``'s order: the policy's seed salted apart from every rule's own draws (rule
    ``i`` hashes with ``seed * 1_000_003 + i``), so the order is independent of what a random rule kept."""
    return (seed * 1_000_003 - 1) % 2**64


def shown_source_file(stored: str, name: str, mode: str) -> str:
    """``source_file`` as written under ``mode`` (:data:`SOURCE_PATHS`): the stored path (``absolute``), the file's
    path under its input root (``name``, ``relative``) or a hash of the stored path (``redacted``)."""
    if mode == "absolute":
        return stored
    if mode == "relative":
        return name
    return xxhash.xxh3_64_hexdigest(stored.encode())


def source_file_map(input_cfg: Any, stored: Sequence[str], mode: str) -> dict[str, str]:
    """Stored ``source_file`` -> its written form under ``mode`` (``relative`` finds the input files)."""
    if mode != "relative":
        return {f: shown_source_file(f, f, mode) for f in stored}
    return {redact_url(f.path): f.name for f in _input_files(input_cfg, set(stored))}


def redact_pii_text(table: pa.Table) -> pa.Table:
    """``text`` with every ``pii_spans`` span replaced by its placeholder (``<EMAIL>``...), nothing else changed;
    ``pii_spans`` then locates the placeholders in the new text."""
    from dq_ray.stages.pii import SPAN_TYPE, redact_column

    texts, spans, _ = redact_column(table.column("text").to_pylist(), table.column("pii_spans").to_pylist())
    table = table.set_column(
        table.schema.get_field_index("text"), table.schema.field("text"), pa.array(texts, pa.string())
    )
    return table.set_column(table.schema.get_field_index("pii_spans"), "pii_spans", pa.array(spans, SPAN_TYPE))


def write_selected(
    run, input_cfg, schema: pa.Schema, policy: Policy, keys: pa.Table, path: str, options: OutputOptions | None = None
) -> int:
    """Write the kept documents, input fields (text included) + signals, as Parquet (or text and id as JSONL) from
    Ray tasks; return the rows.

    ``keys`` holds ``source_file``, ``source_index`` and ``__filename`` (the ``docs/`` file of the row);
    ``options``: format, order, ``source_file`` form and file size (:class:`OutputOptions`).
    """
    from dq_ray.config import READER_COLUMNS

    options = options or OutputOptions()
    if keys.num_rows == 0:
        return 0
    reader_cols = set(READER_COLUMNS) | set(input_cfg.keep_fields)
    sig_cols = [
        c for c in schema.names if c not in policy.exclude_columns and (c in KEY_COLUMNS or c not in reader_cols)
    ]
    drop: tuple[str, ...] = ()
    if policy.redact_pii:
        if "pii_spans" not in schema.names:
            raise ConfigError("redact_pii: the run has no pii_spans column (add the pii stage to the job)")
        if "pii_spans" not in sig_cols:  # excluded from the output, but the redaction needs it
            sig_cols.append("pii_spans")
            drop = ("pii_spans",)
    ds = gather_dataset(
        run,
        input_cfg,
        keys,
        sig_cols,
        redact_pii=policy.redact_pii,
        drop=drop,
        order_seed=shuffle_seed(policy.seed) if options.shuffle else None,
        source_paths=options.source_paths,
    )
    if options.format == "jsonl":
        ds = ds.select_columns(["id", "text", *(["__order"] if options.shuffle else [])])  # reader columns
    return write_dataset(ds, path, options)


def gather_dataset(
    run,
    input_cfg,
    keys: pa.Table,
    sig_cols: Sequence[str],
    *,
    redact_pii: bool = False,
    drop: tuple[str, ...] = (),
    order_seed: int | None = None,
    source_paths: str = "absolute",
) -> Any:
    """A Ray dataset of the documents ``keys`` names: input records (re-read, text included) joined with the
    ``sig_cols`` of their ``docs/`` rows, one Ray task per input file (arguments as in :func:`_gather`).

    ``keys`` holds ``source_file``, ``source_index`` and ``__filename`` (the ``docs/`` file of the row).
    """
    import ray.data

    groups: dict[str, dict[str, Any]] = {}
    for f, i, d in zip(*(keys.column(c).to_pylist() for c in (*KEY_COLUMNS, "__filename"))):
        g = groups.setdefault(f, {"indices": [], "docs_files": set()})
        g["indices"].append(i)
        g["docs_files"].add(d)
    files = {redact_url(f.path): f for f in _input_files(input_cfg, set(groups))}  # groups hold stored paths
    from dq_ray.io.baseline import is_view

    view = docs_schema(run) if is_view(run) else None  # a run and its baselines: columns one lacks read as nulls
    schema = pa.schema([view.field(c) for c in sig_cols if c in view.names]) if view is not None else None
    items = [
        {"shard": dataclasses.asdict(files[f]), "indices": sorted(g["indices"]), "docs_files": sorted(g["docs_files"])}
        for f, g in sorted(groups.items())
    ]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _gather,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "input_cfg": input_cfg,
            "sig_cols": list(sig_cols),
            "filesystem": run.fs,
            "redact_pii": redact_pii,
            "drop": drop,
            "order_seed": order_seed,
            "source_paths": source_paths,
            "schema": schema,
        },
    )


def write_dataset(ds: Any, path: str, options: OutputOptions) -> int:
    """Write a Ray dataset as ``part-*.parquet`` / ``part-*.jsonl`` files under ``path``; return the rows written.

    With ``options.shuffle`` the ``__order`` column (from :func:`gather_dataset`'s ``order_seed``) is sorted on
    across the whole dataset (a distributed sort) and dropped; the files are named in that order, so reading them
    by name reads the shuffled order. With ``options.rows_per_file`` the rows stream through the driver into
    files of exactly that many rows (the last one: the rest), named ``part-000000``, ``part-000001``...;
    otherwise Ray's write tasks write one file each (``part-<task>-<write id>``).
    """
    import ray.data

    if options.shuffle:
        ds = ds.sort("__order").drop_columns(["__order"])
    fs, root = fsspec.core.url_to_fs(path)
    ctx = ray.data.DataContext.get_current()
    preserve = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # blocks keep their (sorted) order into the files
    try:
        if options.rows_per_file is not None:
            fs.makedirs(root, exist_ok=True)
            rows = 0
            batches = ds.iter_batches(batch_size=options.rows_per_file, batch_format="pyarrow")
            for k, batch in enumerate(batches):
                write_file(fs, f"{root}/part-{k:06d}{options.suffix}", batch, options.format)
                rows += batch.num_rows
            return rows
        names = _part_names(options.suffix)
        if options.format == "parquet":
            ds.write_parquet(path, filename_provider=names)
        else:
            ds.write_json(path, filename_provider=names, force_ascii=False)
    finally:
        ctx.execution_options.preserve_order = preserve
    return count_rows(path, options.format)


def write_file(fs: Any, path: str, table: pa.Table, fmt: str) -> None:
    """One ``table`` as a Parquet file or a JSON Lines file (one object per row, UTF-8)."""
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with fs.open(path, "wb") as fh:
            pq.write_table(table, fh)
    else:
        with fs.open(path, "w", encoding="utf-8") as fh:
            if table.num_rows:
                fh.write(table.to_pandas().to_json(orient="records", lines=True, force_ascii=False))


def _part_names(suffix: str) -> Any:
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        """``part-<task>-<write id><suffix>``: named in the order of the write tasks."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:06d}-{write_uuid}{suffix}"

    return PartNames()


def count_rows(path: str, fmt: str = "parquet") -> int:
    """Rows of the ``*.parquet`` (footers) or ``*.jsonl`` (lines) files under ``path``."""
    from dq_ray.io.rundir import parquet_rows

    fs, root = fsspec.core.url_to_fs(path)
    if fmt == "parquet":
        return parquet_rows(fs, fs.glob(f"{root}/**/*.parquet"))
    total = 0
    for f in fs.glob(f"{root}/**/*.jsonl"):
        with fs.open(f, "rb") as fh:
            total += sum(1 for line in fh if line.strip())
    return total


def removed_examples(run, input_cfg, signals: pa.Table, ev: Evaluation, per_rule: int) -> dict[int, list[dict]]:
    """A few documents each rule removed (the first by seeded hash), with a text snippet from the inputs.

    When the run has ``pii_spans`` the snippet is redacted first (the report never shows personal data)."""
    picks: dict[int, np.ndarray] = {}
    hashes = doc_hashes(signals, 0)
    for i in range(len(ev.steps)):
        rows = np.flatnonzero(ev.removed_by == i)
        picks[i] = rows[np.argsort(hashes[rows], kind="stable")[:per_rule]]
    rows = np.concatenate(list(picks.values())) if picks else np.zeros(0, dtype=np.int64)
    if per_rule <= 0 or len(rows) == 0:
        return {i: [] for i in picks}
    keys = signals.take(pa.array(rows)).select(list(KEY_COLUMNS))
    found = read_back_inputs(input_cfg, keys).take_all()
    text = {(r["source_file"], r["source_index"]): r["text"] for r in found}
    if "pii_spans" in signals.column_names:
        from dq_ray.stages.pii import redact

        spans = signals.column("pii_spans")
        for r in rows.tolist():
            key = (signals.column("source_file")[r].as_py(), signals.column("source_index")[r].as_py())
            if text.get(key) is not None:
                text[key] = redact(text[key], spans[r].as_py())[0]
    files = signals.column("source_file").to_pylist()
    idx = signals.column("source_index").to_pylist()
    ids = signals.column("id").to_pylist()
    out = {}
    for i, rs in picks.items():
        out[i] = [
            {"id": ids[r], "text": " ".join((text.get((files[r], idx[r])) or "").split())[:300]} for r in rs.tolist()
        ]
    return out


def run_selection(
    run_path: str,
    policy: Policy,
    output: str | None = None,
    seed: int | None = None,
    ray_cfg: Any = None,
    options: OutputOptions | None = None,
) -> SelectionResult:
    """:func:`select_run` inside a Ray session (the configured cluster, ``$RAY_ADDRESS``, or embedded Ray)."""
    from dq_ray.config import RayConfig
    from dq_ray.pipeline import ray_session

    with ray_session(ray_cfg or RayConfig()):
        return select_run(run_path, policy, output=output, seed=seed, options=options)


def format_selection(summary: dict[str, Any]) -> str:
    """The short table printed after a selection."""
    lines = ["", f"{'rule':<48}{'in':>9}{'kept':>9}{'removed':>9}"]
    for i, r in enumerate(summary["rules"]):
        label = f"{i + 1}. {r['rule']}"[:47]
        lines.append(f"{label:<48}{r['in']:>9,}{r['kept']:>9,}{r['removed']:>9,}")
    lines += [
        "",
        f"selected {summary['selected']:,} of {summary['documents']:,} documents -> {summary['selected_path']}",
        f"report: {summary['report']['markdown']} (and .html)",
    ]
    return "\n".join(lines)
