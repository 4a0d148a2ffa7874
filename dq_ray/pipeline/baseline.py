"""Incremental runs: ``dq-ray run CONFIG --input NEW --baseline OLD_RUN --output NEW_RUN``.

An update scores the new documents only, in the baseline's fitted world, and reads as one corpus with it:

1. **Checks, before Ray starts** (:func:`plan_baseline`): the baseline must be a finished run; its stages (names
   and resolved params: model, prompt, thresholds) and the input settings that define a document's text must be
   the new config's. Differences are refused, listed per stage; with ``recompute_changed`` the changed stages,
   and every stage that reads their columns, are computed afresh for the new documents instead (their fits
   refitted on the new documents, no cache).
2. **Fitted artifacts reused** (:func:`prepare_plan`): every fit that models the corpus (density index, topic
   centroids and table, map projection, SemDeDup centroids, the askllm_distill regressor) is copied from the
   baseline, verified by its signature (:func:`dq_ray.artifacts.verify_artifacts`) and re-signed, and marked as
   fitted, so the pipeline applies it instead of refitting. Fits that list the documents they saw
   (``Stage.fit_per_document``: MinHash) are refitted (MinHash: over both runs, see 4).
3. **Content-hash cache**: a new document whose normalised text (the ``exact_dedup`` hash) matches a baseline
   document gets the baseline's outputs for every per-document stage whose config and upstream are unchanged
   (:mod:`dq_ray.pipeline.cache`); the manifest counts them per stage (``baseline.cache.reused``). Needs
   ``exact_dedup`` in the baseline (its ``exact_dup_group`` is the key).
4. **Cross-run exact duplicates** (:func:`finish`): a new document whose hash is in the baseline gets
   ``exact_dup_in_baseline = true``, its ``exact_dup_count`` counts the baseline copies too, and with
   ``keep: old`` (the default) ``exact_dup_keep`` is false, so the baseline's copy stays; ``keep: both`` flags
   without changing ``exact_dup_keep``. **Near duplicates**: MinHash is fitted over the new documents and the
   baseline's: the baseline fit's band rows when it kept them (:class:`PriorFitData`; only the new documents are
   hashed), else its documents re-read from its input files (:class:`BaselineFitData`); a new document whose
   group holds a baseline document gets ``minhash_in_baseline = true`` (and, with ``keep: old``,
   ``minhash_keep`` false).
   **Semantic duplicates**: with the baseline's SemDeDup centroids, each new document is compared with the
   baseline's documents of its cluster (:func:`mark_cross_run_semantic_duplicates`); a new document within the
   threshold of one, and the rest of its SemDeDup group, gets ``semdedup_in_baseline = true``,
   ``semdedup_baseline_of`` (the old document's key) and, with ``keep: old``, ``semdedup_keep`` false.
5. **One corpus**: the manifest's ``baseline`` block names the baseline; ``dq-ray select`` and ``dq-ray export``
   read ``docs/`` of the update and of its baselines (:mod:`dq_ray.io.baseline`), never copying old Parquet.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dq_ray.artifacts import read_trusted, sign_artifacts, verify_artifacts
from dq_ray.io import RunDir, ShardResult, read_shard, redact_url
from dq_ray.io.baseline import (
    MANIFEST_KEY,
    Baseline,
    BaselineError,
    docs_files,
    format_differences,
    input_differences,
    open_baseline,
    stage_differences,
    view_files,
    view_runs,
    view_schema,
)
from dq_ray.pipeline.cache import TEXT_HASH, cached_rows, write_cache
from dq_ray.stage import KEY_COLUMNS, Stage
from dq_ray.stages.exact_dedup import text_hash
from dq_ray.stages.semdedup import SemDedupParams, document_keys, embedding_matrix, nearest_in_clusters

log = logging.getLogger(__name__)

#: What ``keep`` may be: which copy of a cross-run exact duplicate keeps ``exact_dup_keep``.
KEEP_CHOICES = ("old", "both")
#: The column an update adds to its ``docs/``: the document's text is already in the baseline.
IN_BASELINE = "exact_dup_in_baseline"
#: The baseline's key of the content-hash cache and of cross-run duplicates.
HASH_COLUMN = "exact_dup_group"
#: Where the caches live while the run runs (removed at its end).
CACHE_DIR = "artifacts/_baseline_cache"
#: The column an update with ``minhash`` adds: the document is a near-duplicate of a baseline document.
NEAR_IN_BASELINE = "minhash_in_baseline"
#: The columns an update with ``semdedup`` adds: a semantic duplicate of a baseline document, and that document's key.
SEMANTIC_IN_BASELINE = "semdedup_in_baseline"
SEMANTIC_BASELINE_OF = "semdedup_baseline_of"
#: New documents whose embeddings the semantic search holds at once; the baseline's documents of their clusters
#: are read once per such chunk of the update (batch by batch), never all at once.
SEARCH_ROWS = 100_000


@dataclass(frozen=True)
class BaselineOptions:
    """How an incremental run uses its baseline.

    Attributes:
        path: the baseline run directory (a finished dq-ray run).
        recompute_changed: compute stages whose config differs from the baseline's (and the stages that read
            their outputs) afresh for the new documents, instead of refusing the baseline.
        keep: ``old`` (a new copy of a baseline document loses ``exact_dup_keep``) or ``both`` (flag only).
    """

    path: str
    recompute_changed: bool = False
    keep: str = "old"

    def __post_init__(self) -> None:
        if self.keep not in KEEP_CHOICES:
            raise BaselineError(f"baseline keep {self.keep!r} is not one of {', '.join(KEEP_CHOICES)}")


@dataclass
class BaselinePlan:
    """What an incremental run takes from its baseline, decided before Ray starts (:func:`plan_baseline`)."""

    baseline: Baseline
    options: BaselineOptions
    #: per stage (or ``input``), what differs from the baseline (empty unless ``recompute_changed``)
    differences: dict[str, list[str]] = field(default_factory=dict)
    #: stages computed afresh: changed, or reading a changed stage's columns
    recomputed: list[str] = field(default_factory=list)
    #: stages whose fitted artifacts are taken from the baseline
    fits: list[str] = field(default_factory=list)
    #: stages the content-hash cache answers for documents already in the baseline
    cached: list[str] = field(default_factory=list)
    #: whether the baseline has the text hash (``exact_dup_group``): cache and cross-run duplicates need it
    hashed: bool = False

    def describe(self) -> dict[str, Any]:
        """The manifest's ``baseline`` block as known before the run (:func:`finish` adds the outcome)."""
        return {
            "path": redact_url(self.baseline.run.path),
            "run_id": self.baseline.manifest.get("run_id"),
            "keep": self.options.keep,
            "recompute_changed": self.options.recompute_changed,
            "differences": self.differences,
            "recomputed": self.recomputed,
            "fits_reused": self.fits,
            "cache": {"stages": self.cached, "key": HASH_COLUMN if self.hashed else None},
        }


def plan_baseline(cfg_dict: dict[str, Any], stages: list[Stage], options: BaselineOptions, output: str) -> BaselinePlan:
    """Open and check the baseline against the new config (``cfg_dict``: the resolved config as plain data);
    decide which fits are reused and which stages the cache answers.

    Raises :class:`~dq_ray.io.baseline.BaselineError` for a baseline that is not a finished run, that is the
    output itself, or whose stages or input settings differ (unless ``options.recompute_changed``).
    """
    baseline = open_baseline(options.path)
    out = RunDir(output)
    if out.path == baseline.run.path or out.path.startswith(baseline.run.path.rstrip("/") + "/"):
        raise BaselineError(f"--output {redact_url(out.path)} is the baseline run (or inside it): choose a new folder")
    differences = stage_differences(baseline, cfg_dict.get("stages") or [])
    changed_input = input_differences(baseline, cfg_dict.get("input") or {})
    if changed_input:
        differences["input"] = changed_input
    if differences and not options.recompute_changed:
        raise BaselineError(
            f"--baseline {redact_url(baseline.run.path)} was made with a different config:\n"
            f"{format_differences(differences)}\n"
            "Use the baseline's config, or pass --recompute-changed to compute these stages afresh",
            differences,
        )
    schema = view_schema(baseline.run, view_files(baseline.run))
    hashed = HASH_COLUMN in schema.names and "input" not in differences
    if not hashed:
        log.warning(
            "the baseline has no %s (no exact_dedup stage): no content-hash cache, no cross-run duplicates", HASH_COLUMN
        )
    tainted_columns: set[str] = set()
    plan = BaselinePlan(baseline, options, differences, hashed=hashed)
    for stage in stages:
        fresh = stage.name in differences or "input" in differences or bool(tainted_columns & set(stage.inputs))
        if fresh:
            plan.recomputed.append(stage.name)
            tainted_columns |= set(stage.outputs)
            continue
        if stage.needs_fit() and not stage.fit_per_document:
            plan.fits.append(stage.name)
        per_document = not stage.group_key and (not stage.needs_fit() or stage.name in plan.fits)
        # a stage's declared outputs it writes (some are written only with some params: the same on both sides)
        if hashed and per_document and any(c in schema.names for c in stage.outputs):
            plan.cached.append(stage.name)
    return plan


def baseline_inputs(base: Baseline) -> list[tuple[Any, list[Any]]]:
    """Per run of the baseline's view, its input config and the input files it read (from its receipts: a file
    added to an input folder since is not the baseline's)."""
    from dq_ray.io import InputConfig, discover_inputs
    from dq_ray.typed import build_dataclass

    out = []
    for member, manifest in view_runs(base.run):
        cfg = build_dataclass(InputConfig, (manifest.get("config") or {}).get("input") or {}, "baseline input")
        read = {redact_url(r["path"]) for r in member.receipts()}
        out.append((cfg, [f for f in discover_inputs(cfg) if redact_url(f.path) in read]))
    return out


def _read_inputs(batch: pa.Table, input_cfg: Any) -> Any:
    """Ray task: the documents of the input files named in ``batch`` (what the baseline's reader accepted)."""
    from dq_ray.io import InputFile, ShardResult, read_shard

    for row in batch.to_pylist():
        shard = InputFile(**row)
        yield from read_shard(shard, input_cfg, ShardResult(shard.path))


class BaselineFitData:
    """The fit data of a fit that lists documents (``Stage.fit_per_document``: MinHash) in an update: the new
    documents and the baseline's, re-read from the baseline's input files, so groups span both runs."""

    def __init__(self, data: Any, base: Baseline) -> None:
        self.data, self.base, self.artifacts_dir = data, base, data.artifacts_dir
        self.inputs = baseline_inputs(base)
        self._old_rows = sum(pq.ParquetFile(base.run.fs.open(f, "rb")).metadata.num_rows for f in base.files)

    def num_rows(self) -> int:
        return self.data.num_rows() + self._old_rows

    def sample(self, columns: Any, n: int, seed: int = 0) -> pa.Table:
        return self.data.sample(columns, n, seed)  # a model of the new documents only

    def dataset(self, columns: Any = None) -> Any:
        import dataclasses

        import ray.data

        new = self.data.dataset(columns)
        if columns is not None and set(columns) <= {"source_file"}:  # the file names: from the receipts
            names = [redact_url(f.path) for _, files in self.inputs for f in files]
            return new.union(ray.data.from_arrow(pa.table({"source_file": pa.array(names, pa.string())})))
        parts = []
        for cfg, files in self.inputs:
            items = [dataclasses.asdict(f) for f in files]
            if not items:
                continue
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.map_batches(_read_inputs, batch_size=1, batch_format="pyarrow", fn_kwargs={"input_cfg": cfg})
            parts.append(ds.select_columns(list(columns)) if columns is not None else ds)
        return new.union(*parts) if parts else new


class PriorFitData:
    """The fit data of a ``fit_per_document`` stage whose baseline fit kept what an update needs to extend it
    (``Stage.extends_prior_fit``: MinHash's band rows): the new documents, and ``prior_artifacts``, the
    baseline's verified artifact folder and digests."""

    def __init__(self, data: Any, path: str, digests: dict[str, str]) -> None:
        self.data, self.artifacts_dir = data, data.artifacts_dir
        self.prior_artifacts = (path, digests)

    def num_rows(self) -> int:
        return self.data.num_rows()

    def sample(self, columns: Any, n: int, seed: int = 0) -> pa.Table:
        return self.data.sample(columns, n, seed)

    def dataset(self, columns: Any = None) -> Any:
        return self.data.dataset(columns)

    def read(self, columns: Any) -> pa.Table:
        return self.data.read(columns)


def _per_document_fit_data(stage: Stage, base: Baseline) -> Any:
    """How an update feeds a fit that lists documents: the baseline fit extended (:class:`PriorFitData`) when
    its artifacts allow it, else the baseline's documents re-read with the new ones (:class:`BaselineFitData`)."""
    path = base.run.sub(f"artifacts/{stage.name}")
    digests = verify_artifacts(path) if base.run.fs.exists(f"{path}/_signature.json") else {}
    if stage.extends_prior_fit(digests):
        log.info("%s: extending the baseline's fit (its kept rows), hashing only the new documents", stage.name)
        return lambda data: PriorFitData(data, path, digests)
    return lambda data: BaselineFitData(data, base)


def _copy_artifacts(src: str, dst: str, fs: Any) -> int:
    """Copy the signed files of the artifact folder ``src`` into ``dst`` (each byte checked against the
    signature while read) and sign the copy with this machine's key. Returns the files copied."""
    digests = verify_artifacts(src)
    if fs.exists(dst):
        fs.rm(dst, recursive=True)
    fs.makedirs(dst, exist_ok=True)
    for rel in digests:
        target = posixpath.join(dst, rel)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.pipe_file(target, read_trusted(src, rel, digests))
    sign_artifacts(dst)
    return len(digests)


def prepare_plan(plan_of_baseline: BaselinePlan, run: RunDir, plan: Any) -> None:
    """Before the pipeline runs: take the baseline's fits into ``run`` (marked fitted, so the plan applies them)
    and write the content-hash caches, named in ``plan.caches`` (``plan``: the :class:`~dq_ray.pipeline.Plan`)."""
    bp, base = plan_of_baseline, plan_of_baseline.baseline
    shown = redact_url(base.run.path)
    for name in bp.fits:
        if run.fit_done(name) is not None:  # a resumed update: taken already
            continue
        files = _copy_artifacts(base.run.sub(f"artifacts/{name}"), f"{run.root}/artifacts/{name}", run.fs)
        # artifacts a stage keeps beside its folder (topics: artifacts/topics.parquet, the topic table)
        for extra in base.run.fs.glob(f"{base.run.root}/artifacts/{name}.*"):
            run.fs.pipe_file(f"{run.root}/artifacts/{posixpath.basename(extra)}", base.run.fs.cat_file(extra))
        info = {k: v for k, v in ((base.manifest.get("stage_info") or {}).get(name, {}).get("fit") or {}).items()}
        info.pop("reused", None)
        run.mark_fit(name, {**info, "from_baseline": shown})
        log.info("%s: applying the baseline's fitted artifacts (%d file(s)) from %s", name, files, shown)
    for stage in plan.stages:  # MinHash: groups over the new documents and the baseline's
        if stage.fit_per_document and run.fit_done(stage.name) is None:
            plan.fit_data[stage.name] = _per_document_fit_data(stage, base)
    if not bp.cached:
        return
    files = view_files(base.run)
    schema = view_schema(base.run, files)
    outputs = {s.name: [c for c in s.outputs if c in schema.names] for s in plan.stages if s.name in bp.cached}
    columns = list(dict.fromkeys([HASH_COLUMN, *(c for cols in outputs.values() for c in cols)]))
    # only the baseline rows whose text the new input holds: the cache grows with the update, not the baseline
    wanted = new_text_hashes(plan.files, plan.cfg.input)
    dataset = pads.dataset(files, filesystem=base.run.fs, format="parquet", schema=schema)
    batches = dataset.to_batches(columns=columns, filter=pc.field(HASH_COLUMN).isin(wanted))
    keep = pa.schema([dataset.schema.field(c) for c in columns])
    table = pa.Table.from_batches(list(batches), schema=keep) if len(wanted) else None
    if table is None or not table.num_rows:
        log.info("content-hash cache: none of the %d new text(s) is in the baseline", len(wanted))
        return
    _, first = np.unique(table.column(HASH_COLUMN).to_numpy(zero_copy_only=False), return_index=True)
    table = table.take(pa.array(np.sort(first)))
    for name, cols in outputs.items():
        path = run.sub(f"{CACHE_DIR}/{name}.arrow")
        part = table.select([HASH_COLUMN, *cols]).rename_columns([TEXT_HASH, *cols])
        write_cache(path, part)
        plan.caches[name] = path
    log.info("content-hash cache: %d baseline text(s) for %s", table.num_rows, ", ".join(outputs))


def _file_hashes(shard: Any, input_cfg: Any) -> list[str]:
    """The distinct normalised-text hashes of one input file, read by dq-ray's reader (nothing is recorded: the
    pipeline's own read records the file's counts and rejections)."""
    hashes: set[str] = set()
    for table in read_shard(shard, input_cfg, ShardResult(shard.path)):
        hashes.update(text_hash(t or "") for t in table.column("text").to_pylist())
    return sorted(hashes)


def new_text_hashes(files: list[Any], input_cfg: Any) -> pa.Array:
    """The distinct normalised-text hashes of the update's documents (one Ray task per input file), so that the
    content-hash cache holds only the baseline rows it can answer."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(_file_hashes)
    found: set[str] = set()
    for hashes in ray.get([task.remote(f, input_cfg) for f in files]):
        found.update(hashes)
    return pa.array(sorted(found), pa.string())


def finish(plan_of_baseline: BaselinePlan, run: RunDir, stats: dict[str, Any]) -> dict[str, Any]:
    """After the pipeline: mark cross-run exact duplicates in ``docs/``, drop the caches, and return the outcome
    for the manifest's ``baseline`` block (``stats``: the statistics actor's summary, for the cache's counts)."""
    bp = plan_of_baseline
    out: dict[str, Any] = {
        "cache": {**bp.describe()["cache"], "reused": {name: cached_rows(stats, name) for name in bp.cached}}
    }
    if run.fs.exists(f"{run.root}/{CACHE_DIR}"):
        run.fs.rm(f"{run.root}/{CACHE_DIR}", recursive=True)
    out["cross_run"] = mark_cross_run_duplicates(bp, run)
    if run.fs.exists(f"{run.root}/artifacts/minhash"):
        out["cross_run"]["near_duplicates"] = mark_cross_run_near_duplicates(bp, run)
    if run.fs.exists(f"{run.root}/artifacts/semdedup"):
        out["cross_run"]["semantic_duplicates"] = mark_cross_run_semantic_duplicates(bp, run)
    base_rows = sum(pq.ParquetFile(run.fs.open(f, "rb")).metadata.num_rows for f in view_files(bp.baseline.run))
    out["view"] = {"baseline_rows": base_rows, "rows": base_rows + run.count_rows("docs")}
    return out


def mark_cross_run_duplicates(bp: BaselinePlan, run: RunDir) -> dict[str, Any]:
    """Rewrite the update's ``docs/`` files with :data:`IN_BASELINE` and, for its documents whose text the
    baseline holds, ``exact_dup_count`` counting the baseline's copies and (``keep: old``) ``exact_dup_keep``
    false. Idempotent: a file that has the column already is left as it is."""
    files = docs_files(run)
    if not bp.hashed or not files:
        return {"exact_duplicates": None, "reason": "the baseline or the update has no exact_dedup"}
    with run.fs.open(files[0], "rb") as fh:
        if HASH_COLUMN not in pq.read_schema(fh).names:
            return {"exact_duplicates": None, "reason": "the update has no exact_dedup stage"}
    base_files = view_files(bp.baseline.run)
    old = pads.dataset(base_files, filesystem=bp.baseline.run.fs, format="parquet").to_table(columns=[HASH_COLUMN])
    value_counts = pc.value_counts(old.column(HASH_COLUMN))
    old_keys = value_counts.field("values")
    old_counts = value_counts.field("counts").to_numpy()

    def mark(table: pa.Table) -> tuple[np.ndarray, dict[str, pa.Array]]:
        where = pc.index_in(table.column(HASH_COLUMN), value_set=old_keys)
        hit = where.is_valid().to_numpy(zero_copy_only=False)
        extra = np.where(hit, old_counts[pc.fill_null(where, 0).to_numpy()], 0)
        count = table.column("exact_dup_count").to_numpy() + extra
        return hit, {"exact_dup_count": pa.array(count, pa.int64())}

    found = _mark_docs(run, files, IN_BASELINE, "exact_dup_keep", bp.options.keep == "old", mark)
    log.info("%d new document(s) copy a baseline document (keep: %s)", found, bp.options.keep)
    return {"exact_duplicates": found, "keep": bp.options.keep}


__all__ = [
    "IN_BASELINE",
    "KEEP_CHOICES",
    "MANIFEST_KEY",
    "BaselineOptions",
    "BaselinePlan",
    "finish",
    "plan_baseline",
    "prepare_plan",
]


def mark_cross_run_near_duplicates(bp: BaselinePlan, run: RunDir) -> int:
    """Rewrite the update's ``docs/`` with :data:`NEAR_IN_BASELINE`: the document's MinHash group (fitted over the
    new and the baseline's documents) holds a baseline document; with ``keep: old`` its ``minhash_keep`` is false.
    Returns how many new documents are such near-duplicates. Idempotent, as :func:`mark_cross_run_duplicates`."""
    art = run.sub("artifacts/minhash")
    digests = verify_artifacts(art)
    members = pq.read_table(pa.BufferReader(read_trusted(art, "members.parquet", digests)))
    files = docs_files(run)
    new_files = pads.dataset(files, filesystem=run.fs, format="parquet").to_table(columns=["source_file"])
    new_names = pc.unique(new_files.column("source_file"))
    old = pc.invert(pc.is_in(members.column("source_file"), value_set=new_names))
    groups = pc.unique(members.filter(old).column("minhash_group"))

    def mark(table: pa.Table) -> tuple[np.ndarray, dict[str, pa.Array]]:
        return pc.is_in(table.column("minhash_group"), value_set=groups).to_numpy(zero_copy_only=False), {}

    found = _mark_docs(run, files, NEAR_IN_BASELINE, "minhash_keep", bp.options.keep == "old", mark)
    log.info("%d new document(s) are near-duplicates of baseline documents (keep: %s)", found, bp.options.keep)
    return found


def _mark_docs(run: RunDir, files: list[str], marker: str, keep_column: str, keep_old: bool, mark) -> int:
    """Rewrite each ``docs/`` file with the flag column ``marker`` (``mark(table)`` returns the rows to flag and
    the columns to replace or add) and, with ``keep_old``, ``keep_column`` false on the flagged rows; return how many
    rows are flagged. Idempotent: a file that has ``marker`` already is counted, not rewritten."""
    found = 0
    for path in files:
        with run.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        if marker in table.column_names:
            found += int(pc.sum(table.column(marker)).as_py() or 0)
            continue
        hit, columns = mark(table)
        if keep_old:
            keep = table.column(keep_column).to_numpy(zero_copy_only=False) & ~hit
            columns = {**columns, keep_column: pa.array(keep, pa.bool_())}
        for name, values in columns.items():
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, values) if i >= 0 else table.append_column(name, values)
        table = table.append_column(marker, pa.array(hit, pa.bool_()))
        run.write_parquet_atomic(posixpath.relpath(path, run.root), table)
        found += int(hit.sum())
    return found


def _has_column(run: RunDir, path: str, name: str) -> bool:
    with run.fs.open(path, "rb") as fh:
        return name in pq.read_schema(fh).names


def _cluster_chunks(clusters: pa.ChunkedArray, rows: int) -> list[pa.Array]:
    """The update's cluster ids in chunks of about ``rows`` new documents (a larger cluster is a chunk alone)."""
    counts = pc.value_counts(clusters.drop_null())
    order = np.argsort(counts.field("values").to_numpy())
    ids, sizes = counts.field("values").to_numpy()[order], counts.field("counts").to_numpy()[order]
    chunks, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        if held and held + size > rows:
            chunks.append(pa.array(ids[start:i], pa.int32()))
            start, held = i, 0
        held += size
    if held:
        chunks.append(pa.array(ids[start:], pa.int32()))
    return chunks


def _semantic_matches(
    new_ds: pads.Dataset, old_ds: pads.Dataset, threshold: float, tile: int
) -> tuple[dict[str, tuple[str, float]], dict[str, str]]:
    """Search the baseline (``old_ds``) for each new document's most similar document of its cluster.

    Returns ``(matches, groups)``: new document key -> (old key, similarity) where the old document is within
    ``threshold`` or closer than any member of the new run (``semdedup_max_sim``), and SemDeDup group -> the old
    key it duplicates. Only the baseline's rows in the new documents' clusters are read, batch by batch, once per
    chunk of :data:`SEARCH_ROWS` new documents.
    """
    matches: dict[str, tuple[str, float]] = {}
    groups: dict[str, str] = {}
    new_cols = [*KEY_COLUMNS, "semdedup_cluster", "semdedup_group", "semdedup_max_sim", "embedding"]
    for chunk in _cluster_chunks(new_ds.to_table(columns=["semdedup_cluster"]).column(0), SEARCH_ROWS):
        where = pc.field("semdedup_cluster").isin(chunk)
        new = new_ds.to_table(columns=new_cols, filter=where)
        x, cluster = embedding_matrix(new.column("embedding")), new.column("semdedup_cluster").to_numpy()
        best = np.full(new.num_rows, -np.inf, dtype=np.float32)
        best_key = np.full(new.num_rows, None, dtype=object)
        for batch in old_ds.to_batches(columns=[*KEY_COLUMNS, "semdedup_cluster", "embedding"], filter=where):
            if not batch.num_rows:
                continue
            old_cluster = batch.column("semdedup_cluster").to_numpy(zero_copy_only=False)
            sim, row = nearest_in_clusters(x, cluster, embedding_matrix(batch.column("embedding")), old_cluster, tile)
            better = sim > best
            if better.any():
                take = pa.array(row[better])
                best_key[better] = document_keys(batch.take(take))
                best[better] = sim[better]
        own = new.column("semdedup_max_sim").to_numpy(zero_copy_only=False)
        hit = best >= threshold
        keep = hit | (best > np.nan_to_num(own, nan=-np.inf))
        keys = document_keys(new.select(list(KEY_COLUMNS)).filter(pa.array(keep)))
        matches.update(zip(keys, zip(best_key[keep], best[keep].tolist())))
        for g, k in zip(new.column("semdedup_group").filter(pa.array(hit)).to_pylist(), best_key[hit]):
            groups.setdefault(g, k)
    return matches, groups


def mark_cross_run_semantic_duplicates(bp: BaselinePlan, run: RunDir) -> dict[str, Any]:
    """Rewrite the update's ``docs/`` with :data:`SEMANTIC_IN_BASELINE` and :data:`SEMANTIC_BASELINE_OF`.

    The update assigned its documents to the baseline's SemDeDup centroids, so each new document is compared with
    the baseline's documents of the same cluster (the update's cost grows with its own clusters' share of the
    baseline, not the whole baseline). A new document within ``threshold`` of a baseline document is a semantic
    duplicate of it; so is every member of its SemDeDup group in the update (the groups are connected components,
    as within a run). ``semdedup_baseline_of`` names the old document (its key, as ``semdedup_group`` names
    documents; for a member flagged through its group, the old document its group duplicates); with ``keep: old``
    ``semdedup_keep`` is false. ``semdedup_max_sim`` counts the baseline's documents too. Idempotent, as
    :func:`mark_cross_run_duplicates`.
    """
    if "semdedup" not in bp.fits:
        return {"found": None, "reason": "semdedup was refitted on the update: its clusters are not the baseline's"}
    files = docs_files(run)
    base_files = view_files(bp.baseline.run)
    base_schema = view_schema(bp.baseline.run, base_files)
    if not files or not {"semdedup_cluster", "embedding"} <= set(base_schema.names):
        return {"found": None, "reason": "the baseline or the update has no semdedup columns"}
    params = (bp.baseline.stages.get("semdedup") or {}).get("params") or {}
    threshold = float(params.get("threshold", SemDedupParams.threshold))
    tile = int(params.get("tile_rows", SemDedupParams.tile_rows))
    new_ds = pads.dataset(files, filesystem=run.fs, format="parquet")
    old_ds = pads.dataset(base_files, filesystem=bp.baseline.run.fs, format="parquet", schema=base_schema)
    marked = all(_has_column(run, f, SEMANTIC_IN_BASELINE) for f in files)
    matches, groups = ({}, {}) if marked else _semantic_matches(new_ds, old_ds, threshold, tile)

    def mark(table: pa.Table) -> tuple[np.ndarray, dict[str, pa.Array]]:
        keys = document_keys(table)
        found = [matches.get(k, (None, np.nan)) for k in keys]
        direct = [old if sim >= threshold else None for old, sim in found]
        of = [d or groups.get(g) for d, g in zip(direct, table.column("semdedup_group").to_pylist())]
        own = table.column("semdedup_max_sim").to_numpy(zero_copy_only=False)
        max_sim = np.fmax(own, np.array([sim for _, sim in found], dtype=np.float32))
        return np.array([o is not None for o in of], dtype=bool), {
            "semdedup_max_sim": pa.array(max_sim, pa.float32(), from_pandas=True),
            SEMANTIC_BASELINE_OF: pa.array(of, pa.string()),
        }

    found = _mark_docs(run, files, SEMANTIC_IN_BASELINE, "semdedup_keep", bp.options.keep == "old", mark)
    log.info("%d new document(s) are semantic duplicates of baseline documents (keep: %s)", found, bp.options.keep)
    return {"found": found, "keep": bp.options.keep, "threshold": threshold}
