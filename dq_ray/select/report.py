"""The curation report: a dataset quality summary, then what a selection policy kept and removed, and why.

:func:`write_report` writes ``report.md`` (plots as PNG files in ``report_files/``) and a self-contained
``report.html`` (the same plots embedded as PNG data URIs) into the selection's output directory, and returns
the numbers as a dict (``selection.json``, and the run manifest's ``selection`` section). The HTML is rendered
from the Jinja2 templates in ``dq_ray/select/templates/`` (autoescaped: every value is shown as text).

Every "after" number (documents selected, score distributions, topic shares) is read back from the Parquet
written to ``selected/``, so the report describes the files, not an intention.

Quality summary (:func:`quality_summary`):

* **error rate**: input records rejected by the reader, by reason; documents failing each heuristic
  (``heur_*_pass`` false);
* **completeness**: fill rate of the text (accepted documents / input records) and of every kept input field
  (non-null, non-empty), and the share of input records with every one of them filled;
* **coherence**: the Ask-LLM score and the documents' perplexity under the judge model (when the run has
  ``askllm_score`` / ``askllm_ppl``) and the repetition signals (duplicate lines / paragraphs / n-grams) with the
  Gopher repetition failure rate;
* **freshness**: for a kept input field named like a date (``date``, ``published``, ``created``, ``timestamp``)
  that parses as dates, the age distribution in days at the time of the run;
* **duplicates**: the share of documents not kept by exact, near (MinHash) and semantic (SemDeDup) dedup;
* **topic coverage**: topics, the largest topic's share, and the effective number of topics ``exp(entropy)``.

Languages and personal data (:mod:`dq_ray.select.report_signals`), when the run has the ``lang`` / ``pii`` stage: the
share of each language before and after, and the documents the English-built heuristic filters judged in another
language (``lang_heur_mismatch``); documents holding personal data and spans per kind, in ``docs/`` and in
``selected/``, and, under a policy with ``redact_pii``, how many spans of each kind were replaced by placeholders.
Only counts: never a matched value (text snippets are redacted before they are shown).
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import fsspec
import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dq_ray.select.report_signals import (
    language_blocks,
    language_summary,
    offensive_blocks,
    offensive_summary,
    pii_blocks,
    pii_summary,
)

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
REPETITION_COLUMNS = (
    "heur_dup_line_frac",
    "heur_dup_para_frac",
    "heur_top_2gram_char_frac",
    "heur_dup_5gram_char_frac",
)
DEDUP_FLAGS = {"exact": "exact_dup_keep", "near": "minhash_keep", "semantic": "semdedup_keep"}
SCORE_COLUMNS = ("askllm_score", "askllm_pred", "quality_pred", "density_weight", "density_score")
_DATE_NAME = re.compile(r"date|time|published|created|updated", re.IGNORECASE)
MAX_TOPIC_BARS = 25


# -- numbers ---------------------------------------------------------------------------------------------


def _numeric(table: pa.Table, column: str) -> np.ndarray:
    arr = table.column(column).combine_chunks()
    values = arr.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    return values[~np.isnan(values)]


def distribution(values: np.ndarray) -> dict[str, Any]:
    """Count, mean and quantiles (p05..p95) of a numeric sample (nulls already dropped)."""
    if len(values) == 0:
        return {"count": 0}
    qs = np.quantile(values, QUANTILES)
    return {
        "count": int(len(values)),
        "mean": round(float(values.mean()), 6),
        **{f"p{round(q * 100):02d}": round(float(v), 6) for q, v in zip(QUANTILES, qs)},
    }


def topic_shares(topics: np.ndarray) -> dict[int, float]:
    if len(topics) == 0:
        return {}
    ids, counts = np.unique(topics, return_counts=True)
    return {int(i): int(c) / len(topics) for i, c in zip(ids, counts)}


def coverage(topics: np.ndarray) -> dict[str, Any]:
    """Topics present, the largest topic's share and the effective number of topics (exp of the entropy)."""
    shares = np.array(list(topic_shares(topics).values()))
    if len(shares) == 0:
        return {"topics": 0}
    return {
        "topics": int(len(shares)),
        "largest_share": round(float(shares.max()), 6),
        "effective_topics": round(float(math.exp(-(shares * np.log(shares)).sum())), 3),
    }


def _flag_false(table: pa.Table, column: str) -> int:
    arr = table.column(column)
    return int(len(arr) - arr.null_count - (pc.sum(arr).as_py() or 0))


def quality_summary(manifest: dict[str, Any], signals: pa.Table, rejected: pa.Table) -> dict[str, Any]:
    """The dataset quality summary of a run (see the module docstring); plain numbers, JSON-ready."""
    docs = signals.num_rows
    receipts_input = (manifest.get("counts") or {}).get("input")
    records = int(receipts_input) if receipts_input is not None else docs + rejected.num_rows
    names = signals.column_names
    by_reason: dict[str, int] = {}
    if rejected.num_rows:
        for c in pc.value_counts(rejected.column("reason")).to_pylist():
            by_reason[c["values"]] = int(c["counts"])
    heur = {}
    for col in names:
        if col.startswith("heur_") and col.endswith("_pass"):
            failed = _flag_false(signals, col)
            heur[col] = {"failed": failed, "rate": round(failed / max(docs, 1), 6)}
    error = {
        "input_records": records,
        "rejected": rejected.num_rows,
        "rejected_rate": round(rejected.num_rows / max(records, 1), 6),
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "heuristic_failures": heur,
    }

    keep_fields = list((manifest.get("config") or {}).get("input", {}).get("keep_fields") or [])
    fill = {"text": round(docs / max(records, 1), 6)}
    complete = np.ones(docs, dtype=bool)
    for f in keep_fields:
        if f not in names:
            continue
        arr = signals.column(f).combine_chunks()
        filled = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0), False))
        fill[f] = round(float(filled.sum()) / max(records, 1), 6)
        complete &= filled
    completeness = {
        "required_fields": ["text", *[f for f in keep_fields if f in names]],
        "fill_rates": fill,
        "complete_records": int(complete.sum()),
        "complete_share": round(float(complete.sum()) / max(records, 1), 6),
    }

    coherence: dict[str, Any] = {}
    if "askllm_score" in names:
        coherence["askllm_score"] = distribution(_numeric(signals, "askllm_score"))
    if "askllm_ppl" in names and signals.column("askllm_ppl").null_count < docs:
        coherence["askllm_ppl"] = distribution(_numeric(signals, "askllm_ppl"))
    coherence["repetition"] = {c: distribution(_numeric(signals, c)) for c in REPETITION_COLUMNS if c in names}
    if "heur_gopher_repetition_pass" in names:
        coherence["gopher_repetition_fail_rate"] = heur["heur_gopher_repetition_pass"]["rate"]

    dups = {
        kind: {"not_kept": _flag_false(signals, col), "rate": round(_flag_false(signals, col) / max(docs, 1), 6)}
        for kind, col in DEDUP_FLAGS.items()
        if col in names
    }
    summary = {
        "documents": docs,
        "error_rate": error,
        "completeness": completeness,
        "coherence": coherence,
        "freshness": freshness(manifest, signals, keep_fields),
        "duplicates": dups,
    }
    if "topic_id" in names:
        summary["topic_coverage"] = coverage(signals.column("topic_id").drop_null().to_numpy())
    return summary


def freshness(manifest: dict[str, Any], signals: pa.Table, keep_fields: Sequence[str]) -> dict[str, Any]:
    """Age distribution (days before the run started) of the first date-like kept field that parses."""
    import pandas as pd

    started = (
        pd.Timestamp(manifest.get("started_at") or datetime.now().isoformat()).tz_convert("UTC")
        if (manifest.get("started_at"))
        else pd.Timestamp.now(tz="UTC")
    )
    for f in keep_fields:
        if f not in signals.column_names or not _DATE_NAME.search(f):
            continue
        raw = pd.Series(signals.column(f).to_pylist(), dtype=object).dropna()
        if raw.empty:
            continue
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        ok = parsed.dropna()
        if len(ok) < 0.5 * len(raw):
            continue
        ages = ((started - ok).dt.total_seconds() / 86400.0).to_numpy()
        return {
            "field": f,
            "dated_documents": int(len(ok)),
            "dated_share": round(len(ok) / max(signals.num_rows, 1), 6),
            "oldest": ok.min().date().isoformat(),
            "newest": ok.max().date().isoformat(),
            "age_days": distribution(ages),
        }
    return {"field": None, "note": "no kept input field holds dates (add one to input.keep_fields)"}


# -- plots -----------------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plots(steps: list[dict], dists: dict[str, tuple[np.ndarray, np.ndarray]], shares: tuple[dict, dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    if steps:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(steps)))
        labels = [f"{i + 1}. {s['rule']}" for i, s in enumerate(steps)][::-1]
        ax.barh(labels, [s["kept"] for s in steps][::-1], color="#4c72b0", label="kept")
        ax.barh(
            labels,
            [s["removed"] for s in steps][::-1],
            left=[s["kept"] for s in steps][::-1],
            color="#dd8452",
            label="removed",
        )
        ax.set_xlabel("documents")
        ax.legend(loc="lower right")
        out["rules.png"] = _png(fig)
    for col, (before, after) in dists.items():
        fig, ax = plt.subplots(figsize=(6, 3))
        both = np.concatenate([before, after]) if len(before) + len(after) else np.zeros(1)
        bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 31)
        ax.hist(before, bins=bins, alpha=0.5, label=f"before ({len(before)})", color="#999999")
        ax.hist(after, bins=bins, alpha=0.7, label=f"after ({len(after)})", color="#4c72b0")
        ax.set_title(col)
        ax.legend()
        out[f"dist_{col}.png"] = _png(fig)
    before, after = shares
    if before:
        top = sorted(before, key=lambda t: -before[t])[:MAX_TOPIC_BARS]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(top)), 3))
        x = np.arange(len(top))
        ax.bar(x - 0.2, [before[t] for t in top], 0.4, label="before", color="#999999")
        ax.bar(x + 0.2, [after.get(t, 0.0) for t in top], 0.4, label="after", color="#4c72b0")
        ax.set_xticks(x, [str(t) for t in top], fontsize=7)
        ax.set_xlabel("topic_id (largest first)")
        ax.set_ylabel("share of documents")
        ax.legend()
        out["topics.png"] = _png(fig)
    return out


# -- the report ------------------------------------------------------------------------------------------


def write_report(
    out_dir: str,
    run_manifest: dict[str, Any],
    policy: Any,
    signals: pa.Table,
    evaluation: Any,
    selected_path: str,
    examples: dict[int, list[dict]],
    rejected: pa.Table,
    after: pa.Table | None = None,
    topic_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report_files/*.png`` and ``report.html`` into ``out_dir``; return the numbers.

    ``topic_names``: ``{topic_id: name}`` of the run's fine topics (``topic_label``), shown beside the ids.

    ``after``: the signals of the selected rows, for a ``selected/`` whose files hold no signals (JSONL: text
    and id); by default they are read back from its Parquet."""
    from dq_ray.io.rundir import parquet_rows  # not at module level: dq_ray.io leads to the job config

    if after is None:
        sel_fs, sel_root = fsspec.core.url_to_fs(selected_path)
        selected_rows = parquet_rows(sel_fs, sel_fs.glob(f"{sel_root}/**/*.parquet"))
        after_spans = None
        after = _read_selected(selected_path, signals.schema)
    else:
        selected_rows = after.num_rows
        after_spans = after.column("pii_spans") if "pii_spans" in after.column_names else None
    score_cols = [c for c in dict.fromkeys([*SCORE_COLUMNS, *_rule_score_columns(policy)]) if c in signals.column_names]
    score_cols = [
        c
        for c in score_cols
        if pa.types.is_integer(signals.schema.field(c).type) or pa.types.is_floating(signals.schema.field(c).type)
    ][:6]
    dists = {
        c: (_numeric(signals, c), _numeric(after, c) if c in after.column_names else np.zeros(0)) for c in score_cols
    }
    has_topics = "topic_id" in signals.column_names
    shares_before = topic_shares(signals.column("topic_id").drop_null().to_numpy()) if has_topics else {}
    shares_after = (
        topic_shares(after.column("topic_id").drop_null().to_numpy())
        if has_topics and "topic_id" in after.column_names
        else {}
    )
    steps = evaluation.counts()
    quality = quality_summary(run_manifest, signals, rejected)
    summary: dict[str, Any] = {
        "policy": policy.to_dict(),
        "documents": signals.num_rows,
        "selected": selected_rows,
        "selected_path": selected_path,
        "rules": steps,
        "quality": quality,
        "scores": {c: {"before": distribution(b), "after": distribution(a)} for c, (b, a) in dists.items()},
    }
    if "lang" in signals.column_names:
        summary["languages"] = language_summary(signals, after)
    if "offensive_flag" in signals.column_names:
        summary["offensive"] = offensive_summary(signals, after)
    if "pii_spans" in signals.column_names:
        summary["pii"] = pii_summary(
            signals, selected_path, bool(getattr(policy, "redact_pii", False)), after_spans=after_spans
        )
    if has_topics:
        summary["topics"] = {
            "before": {str(k): round(v, 6) for k, v in shares_before.items()},
            "after": {str(k): round(v, 6) for k, v in shares_after.items()},
            "coverage_after": coverage(after.column("topic_id").drop_null().to_numpy())
            if "topic_id" in after.column_names
            else {},
            "names": dict(topic_names or {}),
        }
    images = _plots(steps, dists, (shares_before, shares_after))
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(f"{root}/report_files", exist_ok=True)
    for name, data in images.items():
        with fs.open(f"{root}/report_files/{name}", "wb") as fh:
            fh.write(data)
    sections = _sections(summary, examples, steps)
    with fs.open(f"{root}/report.md", "w") as fh:
        fh.write(_markdown(sections, images))
    with fs.open(f"{root}/report.html", "w") as fh:
        fh.write(render_html(sections, images))
    summary["report"] = {"markdown": f"{out_dir}/report.md", "html": f"{out_dir}/report.html"}
    return summary


def _rule_score_columns(policy: Any) -> list[str]:
    cols = []
    for r in policy.rules:
        kind = type(r).__name__
        if kind in ("TopFractionRule", "TrimTailsRule", "DensitySampleRule"):
            cols.append(r.column)
        elif kind == "FilterRule" and r.op in ("<", "<=", ">", ">="):
            cols.append(r.column)
    return cols


def _read_selected(path: str, schema: pa.Schema) -> pa.Table:
    import pyarrow.dataset as pads

    fs, root = fsspec.core.url_to_fs(path)
    files = sorted(fs.glob(f"{root}/**/*.parquet"))
    if not files:
        return pa.table({})
    ds = pads.dataset(files, filesystem=fs, format="parquet")
    cols = [c for c in ("topic_id", *SCORE_COLUMNS, *schema.names) if c in ds.schema.names and c != "text"]
    cols = [
        c
        for c in dict.fromkeys(cols)
        if not pa.types.is_list(ds.schema.field(c).type) and not pa.types.is_fixed_size_list(ds.schema.field(c).type)
    ]
    return ds.to_table(columns=cols)


# A report is a list of sections: (title, [blocks]); a block is ("p", text) | ("table", header, rows) | ("img", name)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _sections(s: dict[str, Any], examples: dict[int, list[dict]], steps: list[dict]) -> list:
    q = s["quality"]
    e, c, coh = q["error_rate"], q["completeness"], q["coherence"]
    quality_rows = [
        ["input records", f"{e['input_records']:,}"],
        ["rejected records", f"{e['rejected']:,} ({_pct(e['rejected_rate'])})"],
        *[[f"rejected: {r}", f"{n:,}"] for r, n in e["rejected_by_reason"].items()],
        *[[f"failing {h}", f"{v['failed']:,} ({_pct(v['rate'])})"] for h, v in e["heuristic_failures"].items()],
        [
            "complete records (" + ", ".join(c["required_fields"]) + ")",
            f"{c['complete_records']:,} ({_pct(c['complete_share'])})",
        ],
        *[[f"fill rate: {f}", _pct(v)] for f, v in c["fill_rates"].items()],
    ]
    for kind, d in q["duplicates"].items():
        quality_rows.append([f"{kind} duplicates (not kept)", f"{d['not_kept']:,} ({_pct(d['rate'])})"])
    if "topic_coverage" in q and q["topic_coverage"].get("topics"):
        tc = q["topic_coverage"]
        quality_rows.append(
            ["topics", f"{tc['topics']} (largest {_pct(tc['largest_share'])}, effective {tc['effective_topics']})"]
        )
    fr = q["freshness"]
    if fr.get("field"):
        a = fr["age_days"]
        quality_rows.append(
            [
                f"freshness ({fr['field']})",
                f"{fr['dated_documents']:,} dated, {fr['oldest']} .. {fr['newest']}, median age {a['p50']:.0f} days",
            ]
        )
    else:
        quality_rows.append(["freshness", fr["note"]])
    dist_header = ["signal", "count", "mean", "p05", "p25", "p50", "p75", "p95"]

    def dist_row(name: str, d: dict) -> list:
        return [
            name,
            d["count"],
            *[f"{d[k]:.4g}" if k in d else "" for k in ("mean", "p05", "p25", "p50", "p75", "p95")],
        ]

    coherence_rows = [dist_row(k, v) for k, v in coh.get("repetition", {}).items()]
    if "askllm_score" in coh:
        coherence_rows.insert(0, dist_row("askllm_score", coh["askllm_score"]))
    else:
        coherence_rows.insert(0, ["askllm_score", "not in this run", "", "", "", "", "", ""])
    if "askllm_ppl" in coh:
        coherence_rows.insert(1, dist_row("askllm_ppl (perplexity)", coh["askllm_ppl"]))
    sections = [
        (
            "Dataset quality summary",
            [
                ("table", ["measure", "value"], quality_rows),
                ("p", "Coherence: Ask-LLM score and repetition signals"),
                ("table", dist_header, coherence_rows),
            ],
        ),
        (
            "Selection",
            [
                (
                    "p",
                    f"{s['selected']:,} of {s['documents']:,} documents selected "
                    f"({_pct(s['selected'] / max(s['documents'], 1))}), seed {s['policy']['seed']}.",
                ),
                (
                    "table",
                    ["#", "rule", "in", "kept", "removed"],
                    [[i + 1, st["rule"], st["in"], st["kept"], st["removed"]] for i, st in enumerate(steps)],
                ),
                ("img", "rules.png"),
            ],
        ),
    ]
    score_blocks: list = []
    for col, d in s["scores"].items():
        score_blocks += [
            (
                "table",
                dist_header[:1] + ["when"] + dist_header[1:],
                [[col, "before", *dist_row(col, d["before"])[1:]], [col, "after", *dist_row(col, d["after"])[1:]]],
            ),
            ("img", f"dist_{col}.png"),
        ]
    if score_blocks:
        sections.append(("Score distributions before / after", score_blocks))
    if "topics" in s:
        before, after = s["topics"]["before"], s["topics"]["after"]
        top = sorted(before, key=lambda t: -before[t])[:MAX_TOPIC_BARS]
        cov = s["topics"]["coverage_after"]
        names = s["topics"].get("names", {})
        sections.append(
            (
                "Topic shares before / after",
                [
                    (
                        "p",
                        f"{len(after)} of {len(before)} topics keep at least one document; effective topics after: "
                        f"{cov.get('effective_topics', 0)}.",
                    ),
                    (
                        "table",
                        ["topic_id", "name", "share before", "share after"],
                        [[t, names.get(t, ""), _pct(before[t]), _pct(after.get(t, 0.0))] for t in top],
                    ),
                    ("img", "topics.png"),
                ],
            )
        )
    if "languages" in s:
        sections.append(("Languages", language_blocks(s["languages"])))
    if "pii" in s:
        sections.append(("Personal data", pii_blocks(s["pii"])))
    if "offensive" in s:
        sections.append(("Offensive language", offensive_blocks(s["offensive"])))
    ex_blocks: list = []
    for i, st in enumerate(steps):
        rows = [[x["id"], x["text"]] for x in examples.get(i, [])]
        ex_blocks.append(("p", f"{i + 1}. {st['rule']}: removed {st['removed']:,}"))
        if rows:
            ex_blocks.append(("table", ["id", "text (start)"], rows))
    sections.append(("Examples of removed documents", ex_blocks))
    return sections


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _markdown(sections: list, images: dict[str, bytes]) -> str:
    return render_markdown(sections, images)


def render_markdown(
    sections: list, images: dict[str, bytes], title: str = "dq-ray curation report", files_dir: str = "report_files"
) -> str:
    """The Markdown report: ``sections`` as headings, paragraphs and tables, plots as ``files_dir/<name>`` links."""
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "table":
                lines.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
                lines.append("|" + "---|" * len(b[1]))
                lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b[2]]
                lines.append("")
            elif b[0] == "img" and b[1] in images:
                lines += [f"![{b[1]}]({files_dir}/{b[1]})", ""]
    return "\n".join(lines)


@functools.cache
def _templates() -> jinja2.Environment:
    """The report templates shipped in ``dq_ray/select/templates/`` (autoescape on)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("dq_ray.select", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render_html(sections: list, images: dict[str, bytes], title: str = "dq-ray curation report") -> str:
    """The self-contained HTML report: ``sections`` as headings, paragraphs and tables, plots as PNG data URIs."""
    encoded = {name: base64.b64encode(data).decode() for name, data in images.items()}
    return _templates().get_template("report.html").render(sections=sections, images=encoded, title=title)
