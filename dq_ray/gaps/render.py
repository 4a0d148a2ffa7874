"""The coverage report: ``gaps.md``, a self-contained ``gaps.html``, ``gaps.json`` and ``probes.parquet``,
rendered with the curation report's helpers (:func:`dq_ray.select.report.render_markdown` and
:func:`dq_ray.select.report.render_html`), so every dq-ray report looks and escapes alike."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.gaps.coverage import THIN_PERCENTILE
from dq_ray.select.report import render_html, render_markdown
from dq_ray.select.report_signals import pct

log = logging.getLogger(__name__)

TITLE = "dq-ray coverage gaps"
SNIPPET = 100
#: Probes whose nearest documents are listed one by one (the thinnest first); every probe is in gaps.json.
MAX_NEIGHBOUR_TABLES = 30

PROBE_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("probe_id", pa.string()),
        ("text", pa.string()),
        ("source_file", pa.string()),
        ("source_index", pa.int64()),
        ("density_score", pa.float64()),
        ("density_percentile", pa.float64()),
        ("thinnest_decile", pa.bool_()),
        ("density_percentile_selected", pa.float64()),
        ("topic_id", pa.int32()),
        ("topic_label", pa.string()),
        ("topic_similarity", pa.float32()),
        ("nearest_id", pa.string()),
        ("nearest_cosine", pa.float32()),
        ("neighbour_ids", pa.list_(pa.string())),
        ("neighbour_cosines", pa.list_(pa.float32())),
        ("map_x", pa.float32()),
        ("map_y", pa.float32()),
    ]
)


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _snippet(text: str | None, chars: int = SNIPPET) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def sections(s: dict[str, Any]) -> list:
    """The report's sections (``(title, blocks)``, the curation report's block format) of a gaps summary."""
    out = [("Summary", _summary_blocks(s)), ("Probes, thinnest first", _probe_blocks(s))]
    if s["topics"]:
        out.append(("Probes per topic", _topic_blocks(s)))
    if s["probes"] and s["run"]["has_embedding"]:
        out.append(("Nearest corpus documents", _neighbour_blocks(s)))
    out.append(("Rejected probes", _rejected_blocks(s["rejected"])))
    out.append(("Method", _method_blocks(s)))
    return out


def _summary_blocks(s: dict[str, Any]) -> list:
    r, c = s["run"], s["coverage"]
    rows = [
        ["run", r["path"]],
        ["probe file", s["probe_file"]],
        ["probes", f"{c['probes']:,} read, {len(s['rejected']):,} rejected"],
        ["corpus documents (density values)", f"{r['documents']:,}"],
        [f"probes in the thinnest decile (percentile <= {THIN_PERCENTILE:g})", _share(c["thin_share"])],
        ["median density percentile of the probes", _num(c["median_percentile"])],
    ]
    if c.get("selected") is not None:
        sel = c["selected"]
        rows += [
            ["selected documents (selected/)", f"{sel['documents']:,}"],
            ["probes in the selection's thinnest decile", _share(sel["thin_share"])],
            ["median density percentile among selected documents", _num(sel["median_percentile"])],
        ]
    blocks: list = [("table", ["", ""], rows)]
    thin = c["thin_share"]
    if thin is not None:
        blocks.append(
            (
                "p",
                f"{pct(thin)} of the probes lie where the corpus is thinnest (their kernel density is at or below "
                "that of the corpus's 10% least crowded documents): the corpus covers them least.",
            )
        )
    return blocks


def _share(x: float | None) -> str:
    return "n/a" if x is None else pct(x)


def _probe_blocks(s: dict[str, Any]) -> list:
    sel = s["coverage"].get("selected") is not None
    header = ["#", "probe", "text", "density", "percentile"] + (["percentile (selected)"] if sel else [])
    header += ["nearest topic", "nearest document", "cosine", "map x, y"]
    rows = []
    for p in s["probes"]:
        row = [p["rank"], p["probe_id"], _snippet(p["text"]), _num(p["density_score"]), _num(p["density_percentile"])]
        if sel:
            row.append(_num(p["density_percentile_selected"]))
        topic = "-" if p["topic_id"] is None else f"{p['topic_id']}: {p['topic_label']}"
        xy = "-" if p["map_x"] is None else f"{p['map_x']:.3g}, {p['map_y']:.3g}"
        row += [topic, p["nearest_id"] or "-", _num(p["nearest_cosine"], 3), xy]
        rows.append(row)
    return [("table", header, rows)]


def _topic_blocks(s: dict[str, Any]) -> list:
    n = max(len(s["probes"]), 1)
    rows = [
        [t["topic_id"], t["label"], _num(t["size"]), _share(t["share"]), t["probes"], pct(t["probes"] / n)]
        for t in s["topics"]
    ]
    return [
        ("p", "Each probe counts for the fine topic whose fitted centroid (artifacts/topics) is nearest to it."),
        ("table", ["topic", "label", "documents", "corpus share", "probes", "probe share"], rows),
    ]


def _neighbour_blocks(s: dict[str, Any]) -> list:
    blocks: list = []
    signals = s["run"]["neighbour_signals"]
    for p in s["probes"][:MAX_NEIGHBOUR_TABLES]:
        blocks.append(("p", f"{p['rank']}. {p['probe_id']}: {_snippet(p['text'], 160)}"))
        rows = [[d["id"], _num(d["cosine"], 3), *[_num(d.get(c)) for c in signals]] for d in p["neighbours"]]
        blocks.append(("table", ["id", "cosine", *signals], rows))
    if len(s["probes"]) > MAX_NEIGHBOUR_TABLES:
        blocks.append(("p", f"The nearest documents of the other {len(s['probes']) - MAX_NEIGHBOUR_TABLES} probes: "))
        blocks.append(("p", "gaps.json (probes[].neighbours) and probes.parquet (neighbour_ids)."))
    return blocks


def _rejected_blocks(rejected: list[dict[str, Any]]) -> list:
    if not rejected:
        return [("p", "None: every record of the probe file was read as a probe.")]
    rows = [[r["source_file"], r["source_index"], r["id"] or "-", r["reason"], r["detail"] or ""] for r in rejected]
    return [
        ("p", f"{len(rejected)} record(s) of the probe file were not used, by dq-ray's reader rules:"),
        ("table", ["file", "record", "id", "reason", "detail"], rows),
    ]


def _method_blocks(s: dict[str, Any]) -> list:
    m = s["method"]
    return [
        (
            "p",
            f"Probes are embedded by the run's embed stage ({m['embed']}) and scored by its density stage with the "
            f"fitted artifacts (artifacts/density: {m['density']}): a probe's density is the kernel sum over every "
            "corpus document (a probe copied from the corpus finds its copy, kernel value 1). Its percentile is its "
            "mid-rank among the corpus documents' own density_score values. Nearest documents: cosine similarity "
            "of the embeddings in docs/. Map coordinates: the run's fitted map projection (artifacts/map).",
        )
    ]


def probe_table(probes: list[dict[str, Any]]) -> pa.Table:
    """``probes.parquet``: one row per probe (thinnest first) with its numbers and map coordinates."""
    rows = []
    for p in probes:
        row = {name: p.get(name) for name in PROBE_SCHEMA.names}
        row["neighbour_ids"] = [d["id"] for d in p["neighbours"]]
        row["neighbour_cosines"] = [d["cosine"] for d in p["neighbours"]]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PROBE_SCHEMA)


def write_gaps(out_dir: str, summary: dict[str, Any]) -> dict[str, str]:
    """Write ``gaps.json``, ``gaps.md``, ``gaps.html`` and ``probes.parquet``; return their paths."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    secs = sections(summary)
    paths = {
        "json": f"{out_dir}/gaps.json",
        "markdown": f"{out_dir}/gaps.md",
        "html": f"{out_dir}/gaps.html",
        "parquet": f"{out_dir}/probes.parquet",
    }
    with fs.open(f"{root}/gaps.json", "w") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
    with fs.open(f"{root}/gaps.md", "w") as fh:
        fh.write(render_markdown(secs, {}, title=TITLE))
    with fs.open(f"{root}/gaps.html", "w") as fh:
        fh.write(render_html(secs, {}, title=TITLE))
    with fs.open(f"{root}/probes.parquet", "wb") as fh:
        pq.write_table(probe_table(summary["probes"]), fh)
    log.info("coverage report in %s", out_dir)
    return paths
