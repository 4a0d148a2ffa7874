"""Coverage of a probe set: ``dq-ray gaps RUN --probes FILE`` (what a model should learn, or gets wrong).

* :mod:`dq_ray.gaps.probes`: the probes, read by dq-ray's readers (rejected records listed with their reasons),
  and the run's own stages rebuilt from its manifest and its signed artifacts;
* :mod:`dq_ray.gaps.coverage`: one streamed pass over ``docs/`` (density values, nearest documents);
* :mod:`dq_ray.gaps.render`: ``gaps.md``, ``gaps.html``, ``gaps.json`` and ``probes.parquet``.

Each probe is embedded by the run's ``embed`` stage (same params), scored by its ``density`` stage (the fitted
index, bandwidth and anchors) and expressed as a percentile of the corpus documents' own ``density_score``; it
gets its ``k`` nearest corpus documents with their signals, its nearest topic (the fitted centroids) and map
coordinates (the fitted projection) when the run has them. :func:`find_gaps` does all of it; no Ray.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from dq_ray.compare.runs import NotAFinishedRunError, open_run
from dq_ray.compare.summary import clean_json
from dq_ray.gaps.coverage import DENSITY, percentiles, scan_corpus, thin_share, topic_names
from dq_ray.gaps.probes import GapsInputError, in_batches, probe_keys, read_probes, run_stage, stage_entries
from dq_ray.gaps.render import write_gaps
from dq_ray.vectors import embedding_matrix, nearest_centroid

log = logging.getLogger(__name__)

__all__ = ["GapsInputError", "GapsResult", "NotAFinishedRunError", "find_gaps", "format_gaps"]

EMBED_ROWS = 256
DENSITY_ROWS = 2048


@dataclass
class GapsResult:
    """What :func:`find_gaps` wrote: the output directory, the numbers (``gaps.json``) and the file paths."""

    output_dir: str
    summary: dict[str, Any]
    paths: dict[str, str]


def probe_stem(path: str) -> str:
    """``questions`` for ``probes/questions.jsonl.zst`` (the default report folder is ``RUN/gaps-<stem>``)."""
    name = posixpath.basename(path.rstrip("/")) or "probes"
    return name.split(".")[0] or "probes"


def find_gaps(
    run_path: str,
    probes_path: str,
    output: str | None = None,
    k: int = 10,
    text_field: str = "text",
    id_field: str = "id",
) -> GapsResult:
    """Place every probe of ``probes_path`` in the finished run at ``run_path`` and write the coverage report
    into ``output`` (default ``RUN/gaps-<probe file stem>``).

    Raises :class:`NotAFinishedRunError` for a path that is not a finished dq-ray run, and
    :class:`GapsInputError` for a run without the embed and density stages or a probe file without probes.
    """
    import pyarrow.dataset as pads

    from dq_ray.io.guard import check_output

    if k < 1:
        raise GapsInputError("k must be >= 1")
    opened = open_run(run_path)
    run = opened.run
    entries = stage_entries(opened.manifest)
    missing = [s for s in ("embed", "density") if s not in entries]
    if missing or DENSITY not in opened.schema.names:
        raise GapsInputError(
            f"gaps needs the embed and density stages; {run.path} has no {' or '.join(missing or ['density_score'])}"
        )
    probes = read_probes(probes_path, text_field=text_field, id_field=id_field)
    out = output or f"{run.path}/gaps-{probe_stem(probes_path)}"
    check_output(out)

    embed = run_stage(run.path, entries["embed"])
    embedded = in_batches(embed, probes.table, EMBED_ROWS)
    x = embedding_matrix(embedded.column("embedding"))
    density = run_stage(run.path, entries["density"])
    scored = in_batches(density, probe_keys(embedded.drop_columns(["text"])), DENSITY_ROWS)
    score = scored.column(DENSITY).to_numpy(zero_copy_only=False).astype(np.float64)

    topic_ids = topic_sims = None
    topics: dict[int, dict[str, Any]] = {}
    if "topics" in entries:
        stage = run_stage(run.path, entries["topics"])
        topic_ids, topic_sims = nearest_centroid(x, stage.centroids)
        topics = topic_names(_topic_table(run))
    xy = run_stage(run.path, entries["map"]).project(x) if "map" in entries else None

    dataset = pads.dataset(opened.files, filesystem=run.fs, format="parquet")
    selected = _selected_keys(opened, dataset)
    scan = scan_corpus(dataset, x, k, selected)
    pct = percentiles(score, scan.densities)
    pct_sel = percentiles(score, scan.selected_densities) if scan.selected_densities is not None else None

    rows = probes.table.to_pylist()
    records = []
    for i, r in enumerate(rows):
        t = None if topic_ids is None else int(topic_ids[i])
        nb = scan.neighbours[i] if scan.neighbours else []
        records.append(
            {
                "probe_id": r["id"],
                "text": r["text"],
                "source_file": r["source_file"],
                "source_index": r["source_index"],
                "density_score": float(score[i]),
                "density_percentile": float(pct[i]),
                "thinnest_decile": bool(pct[i] <= 10.0),
                "density_percentile_selected": None if pct_sel is None else float(pct_sel[i]),
                "topic_id": t,
                "topic_label": None if t is None else topics.get(t, {}).get("label"),
                "topic_similarity": None if topic_sims is None else float(topic_sims[i]),
                "nearest_id": nb[0]["id"] if nb else None,
                "nearest_cosine": nb[0]["cosine"] if nb else None,
                "map_x": None if xy is None else float(xy[i, 0]),
                "map_y": None if xy is None else float(xy[i, 1]),
                "neighbours": nb,
            }
        )
    records.sort(key=lambda p: (p["density_percentile"], p["density_score"], str(p["probe_id"])))
    for rank, p in enumerate(records, 1):
        p["rank"] = rank

    coverage: dict[str, Any] = {
        "probes": len(records),
        "thin_share": thin_share(pct),
        "median_percentile": float(np.median(pct)) if len(pct) else None,
        "selected": None,
    }
    if pct_sel is not None:
        coverage["selected"] = {
            "documents": len(selected or ()),
            "thin_share": thin_share(pct_sel),
            "median_percentile": float(np.nanmedian(pct_sel)) if np.isfinite(pct_sel).any() else None,
        }
    per_topic = Counter(p["topic_id"] for p in records if p["topic_id"] is not None)
    topic_rows = [
        {"topic_id": t, **info, "probes": per_topic.get(t, 0)}
        for t, info in sorted(topics.items(), key=lambda kv: (-per_topic.get(kv[0], 0), kv[0]))
    ]
    summary = clean_json(
        {
            "run": {
                "path": run.path,
                "run_id": opened.manifest.get("run_id"),
                "documents": len(scan.densities),
                "has_embedding": scan.has_embedding,
                "has_topics": "topics" in entries,
                "has_map": "map" in entries,
                "neighbour_signals": scan.signals,
            },
            "probe_file": probes_path,
            "k": k,
            "coverage": coverage,
            "topics": topic_rows,
            "probes": records,
            "rejected": probes.rejected,
            "method": {
                "embed": embed.describe().get("model"),
                "density": density.params.method,
                "density_kernel": getattr(density, "fitted", {}).get("kernel"),
                "density_bandwidth": getattr(density, "fitted", {}).get("bandwidth"),
            },
            "output": out,
        }
    )
    paths = write_gaps(out, summary)
    log.info("gaps: %d probes, %s in the thinnest decile", len(records), coverage["thin_share"])
    return GapsResult(out, summary, paths)


def _topic_table(run: Any):
    import pyarrow.parquet as pq

    path = f"{run.root}/artifacts/topics.parquet"
    if not run.fs.exists(path):
        return None
    with run.fs.open(path, "rb") as fh:
        return pq.read_table(fh)


def _selected_keys(opened: Any, dataset: Any) -> set[tuple[str, int]] | None:
    """The ``(source_file, source_index)`` keys, as ``docs/`` stores them, of ``RUN/selected/`` (a ``dq-ray
    select`` output in the run directory), if any; its source paths are mapped back as ``dq-ray export`` does."""
    import json

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from dq_ray.select.apply import input_config, source_file_map

    run = opened.run
    files = sorted(run.fs.glob(f"{run.root}/selected/**/*.parquet"))
    if not files:
        return None
    sel = pads.dataset(files, filesystem=run.fs, format="parquet")
    if not {"source_file", "source_index"} <= set(sel.schema.names):
        log.warning("gaps: %s/selected has no source_file / source_index; selection ignored", run.path)
        return None
    mode = "absolute"
    if run.fs.exists(f"{run.root}/selection.json"):
        with run.fs.open(f"{run.root}/selection.json", "r") as fh:
            mode = (json.load(fh).get("output") or {}).get("source_paths", "absolute")
    stored = pc.unique(dataset.to_table(columns=["source_file"]).column("source_file")).to_pylist()
    back = {shown: f for f, shown in source_file_map(input_config(opened.manifest), sorted(stored), mode).items()}
    keys = sel.to_table(columns=["source_file", "source_index"])
    wanted = zip(keys.column("source_file").to_pylist(), keys.column("source_index").to_pylist())
    return {(back.get(f, f), i) for f, i in wanted}


def format_gaps(result: GapsResult) -> str:
    """The short text the CLI prints: the thin share, the thinnest probes and where the report is."""
    s = result.summary
    c = s["coverage"]
    thin = "n/a" if c["thin_share"] is None else f"{100 * c['thin_share']:.1f}%"
    lines = [
        f"run: {s['run']['path']}  {s['run']['documents']:,} documents",
        f"probes: {c['probes']:,} ({len(s['rejected'])} rejected); in the corpus's thinnest decile: {thin}",
    ]
    for p in s["probes"][:5]:
        lines.append(f"  {p['density_percentile']:6.1f} pct  {p['probe_id']}")
    lines.append(f"report: {result.paths['markdown']}, gaps.html, gaps.json, probes.parquet")
    lines.append(f"to sample more near the thin probes: {{kind: density_sample, favour: {result.output_dir}}}")
    return "\n".join(lines)
