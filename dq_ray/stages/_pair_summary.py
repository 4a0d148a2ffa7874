"""Dataset-level summary of preference data (after the ``pairs`` stage): the manifest's ``summaries.pairs``.

* **length bias**: the share of pairs whose chosen answer is longer (in words), the mean and median length
  difference, and, with the judge, the Pearson and Spearman correlation of the judge margin with the length
  difference (a judge that only rewards length correlates strongly);
* **margins**: quantiles, the share of negative margins and a histogram over [-1, 1];
* **flags**: the share of each ``pair_*`` flag among the rows where it applies;
* **aspects** (UltraFeedback-style, when the stage scored them): per aspect the pairs scored, the mean
  P(yes) of each side, the mean margin chosen - rejected and the agreement with the human label (the share
  of pairs where the aspect scores chosen above rejected);
* **KTO labels**: rows per label and the mean judge score of each;
* **topic coverage** (when ``topic_id`` exists): prompts per topic, with the share of flagged pairs and mean
  margin per topic.

:func:`to_markdown` renders it as the "Preference data" section of the run report.

The helper of :mod:`dq_ray.stages.pairs` (its ``summarise_run``); it reads the stage's output columns by name
and imports nothing of the stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

MARGIN_BINS = np.linspace(-1.0, 1.0, 21)
#: The flags of the ``pairs`` stage whose share the summary reports.
FLAGS = ("pair_identical", "pair_near_identical", "pair_rejected_preferred", "pair_length_driven", "pair_prompt_dup")


def _read_docs(run: Any, wanted: list[str]) -> pa.Table:
    import pyarrow.dataset as pads

    files = run.fs.glob(f"{run.root}/docs/**/*.parquet")
    if not files:
        return pa.table({})
    dataset = pads.dataset(files, filesystem=run.fs, format="parquet")
    present = [c for c in wanted if c in dataset.schema.names]
    return dataset.to_table(columns=present)


def _np(table: pa.Table, col: str, dtype=np.float64) -> np.ndarray:
    """A numeric column as floats, nulls as NaN."""
    if col not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.array([np.nan if v is None else v for v in table.column(col).to_pylist()], dtype=dtype)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(1, len(v) + 1)
    _, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation: Pearson's of the (tie-averaged) ranks."""
    return _pearson(_ranks(x), _ranks(y)) if len(x) >= 3 else None


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _r(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


def aspect_names(columns: list[str]) -> list[str]:
    """The aspects whose margins are among ``columns`` (``pair_<aspect>_margin``, the judge's left out)."""
    return [
        c[len("pair_") : -len("_margin")]
        for c in columns
        if c.startswith("pair_") and c.endswith("_margin") and c != "pair_judge_margin"
    ]


def _aspects(table: pa.Table) -> dict[str, Any]:
    """Per aspect with at least one scored pair: pairs, mean chosen / rejected / margin, agreement."""
    out = {}
    for aspect in aspect_names(table.column_names):
        m = _np(table, f"pair_{aspect}_margin")
        scored = ~np.isnan(m)
        if not scored.any():
            continue  # declared but not scored in this run
        out[aspect] = {
            "pairs": int(scored.sum()),
            "mean_chosen": _r(np.nanmean(_np(table, f"pair_{aspect}_chosen")[scored])),
            "mean_rejected": _r(np.nanmean(_np(table, f"pair_{aspect}_rejected")[scored])),
            "mean_margin": _r(m[scored].mean()),
            "agreement": _r(float((m[scored] > 0).mean())),
        }
    return out


def summarise_table(table: pa.Table) -> dict[str, Any]:
    """The summary of a table of ``pairs`` outputs (what :func:`summarise` computes over ``docs/``)."""
    n = table.num_rows
    diff = _np(table, "pair_length_diff_words")
    margin = _np(table, "pair_judge_margin")
    is_pair = ~np.isnan(diff)
    pairs = int(is_pair.sum())
    out: dict[str, Any] = {"rows": n, "pairs": pairs}

    d = diff[is_pair]
    length: dict[str, Any] = {
        "chosen_longer_share": _r(float((d > 0).mean())) if pairs else None,
        "rejected_longer_share": _r(float((d < 0).mean())) if pairs else None,
        "mean_diff_words": _r(float(d.mean()), 2) if pairs else None,
        "median_diff_words": _r(float(np.median(d)), 2) if pairs else None,
    }
    judged = is_pair & ~np.isnan(margin)
    if judged.any():
        length["margin_vs_diff_pearson"] = _r(_pearson(margin[judged], diff[judged]))
        length["margin_vs_diff_spearman"] = _r(_spearman(margin[judged], diff[judged]))
    out["length_bias"] = length

    if judged.any():
        m = margin[judged]
        hist, _ = np.histogram(np.clip(m, -1, 1), bins=MARGIN_BINS)
        out["margin"] = {
            "judged_pairs": int(judged.sum()),
            "mean": _r(m.mean()),
            "quantiles": {q: _r(np.quantile(m, float(q))) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")},
            "negative_share": _r(float((m < 0).mean())),
            "histogram": {"edges": [round(e, 2) for e in MARGIN_BINS.tolist()], "counts": hist.tolist()},
        }

    aspects = _aspects(table)
    if aspects:
        out["aspects"] = aspects

    flags: dict[str, Any] = {}
    for col in FLAGS:
        if col not in table.column_names:
            continue
        values = [v for v in table.column(col).to_pylist() if v is not None]
        if values:  # a flag that applies to no row (no judge, no pairs) is left out
            flags[col] = {"rows": len(values), "true": int(sum(values)), "share": _r(sum(values) / len(values))}
    out["flags"] = flags

    if "pref_label" in table.column_names and table.column("pref_label").null_count < n:
        labels = table.column("pref_label").to_pylist()
        kto: dict[str, Any] = {}
        for label, side in ((True, "chosen"), (False, "rejected")):
            rows = [i for i, v in enumerate(labels) if v is label]
            scores = _np(table, f"pair_{side}_judge")[rows] if rows else np.array([])
            scores = scores[~np.isnan(scores)]
            kto[str(label).lower()] = {"rows": len(rows), "mean_judge": _r(scores.mean()) if len(scores) else None}
        out["kto_labels"] = kto

    if "topic_id" in table.column_names:
        out["topics"] = _topics(table, margin, FLAGS)
    return out


def _topics(table: pa.Table, margin: np.ndarray, flags: tuple[str, ...]) -> dict[str, Any]:
    topics = np.array([-1 if v is None else v for v in table.column("topic_id").to_pylist()])
    flagged = np.zeros(table.num_rows, dtype=bool)
    for col in flags:
        if col in table.column_names:
            flagged |= np.array([bool(v) for v in table.column(col).to_pylist()])
    labels = {}
    if "topic_label" in table.column_names:
        labels = dict(zip(topics.tolist(), table.column("topic_label").to_pylist()))
    per = []
    for t in np.unique(topics):
        sel = topics == t
        m = margin[sel & ~np.isnan(margin)]
        per.append(
            {
                "topic_id": int(t),
                "label": labels.get(int(t)),
                "prompts": int(sel.sum()),
                "flagged_share": _r(float(flagged[sel].mean())),
                "mean_margin": _r(m.mean()) if len(m) else None,
            }
        )
    per.sort(key=lambda r: -r["prompts"])
    counts = np.array([r["prompts"] for r in per], dtype=float)
    p = counts / counts.sum()
    return {
        "topics": len(per),
        "largest_topic_share": _r(float(p.max())) if len(p) else None,
        "normalised_entropy": _r(float(-(p * np.log(p)).sum() / np.log(len(p)))) if len(p) > 1 else None,
        "per_topic": per[:50],
    }


def _topic_table(run: Any) -> dict[int, dict[str, Any]]:
    """Fine topics' labels and keywords from ``artifacts/topics.parquet`` (the ``topics`` stage), if any."""
    import pyarrow.parquet as pq

    path = f"{run.root}/artifacts/topics.parquet"
    if not run.fs.exists(path):
        return {}
    with run.fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    out = {}
    for r in table.to_pylist():
        if r.get("level", "fine") == "fine":
            out[int(r["topic_id"])] = {"label": r.get("topic_label"), "keywords": list(r.get("keywords") or [])[:6]}
    return out


def summarise(run: Any, params: Any = None) -> dict[str, Any]:
    """Summarise ``docs/`` of a run holding ``pairs`` outputs (streams only the columns it needs; the aspects
    are those of ``params.aspects``)."""
    aspects = list(getattr(params, "aspects", None) or ())
    wanted = [
        "pair_length_diff_words",
        "pair_judge_margin",
        "pair_chosen_judge",
        "pair_rejected_judge",
        "pref_label",
        "topic_id",
        "topic_label",
        *FLAGS,
        *[f"pair_{a}_{part}" for a in aspects for part in ("chosen", "rejected", "margin")],
    ]
    summary = summarise_table(_read_docs(run, wanted))
    if "topics" in summary:
        names = _topic_table(run)
        for row in summary["topics"]["per_topic"]:
            info = names.get(row["topic_id"], {})
            row["label"] = row["label"] or info.get("label")
            row["keywords"] = info.get("keywords", [])
    return summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _v(v: Any) -> str:
    return "n/a" if v is None else str(v)


def to_markdown(summary: dict[str, Any]) -> str:
    """The "Preference data" section of the run report."""
    lb = summary.get("length_bias", {})
    lines = [
        "## Preference data",
        "",
        f"{summary['rows']:,} rows, {summary['pairs']:,} of them pairs (prompt, chosen, rejected).",
        "",
        "### Length bias",
        "",
        f"- chosen longer than rejected: {_pct(lb.get('chosen_longer_share'))} of pairs "
        f"(rejected longer: {_pct(lb.get('rejected_longer_share'))})",
        f"- length difference chosen - rejected: mean {_v(lb.get('mean_diff_words'))} words, "
        f"median {_v(lb.get('median_diff_words'))}",
    ]
    if "margin_vs_diff_spearman" in lb:
        lines.append(
            f"- judge margin vs length difference: Spearman {lb['margin_vs_diff_spearman']}, "
            f"Pearson {lb['margin_vs_diff_pearson']}"
        )
    if "margin" in summary:
        m = summary["margin"]
        q = m["quantiles"]
        lines += [
            "",
            "### Judge margin (chosen - rejected)",
            "",
            f"{m['judged_pairs']:,} judged pairs; mean {m['mean']}, quantiles 5/25/50/75/95%: "
            f"{q['0.05']} / {q['0.25']} / {q['0.5']} / {q['0.75']} / {q['0.95']}; "
            f"judge prefers rejected in {_pct(m['negative_share'])}.",
        ]
    if "aspects" in summary:
        lines += [
            "",
            "### Aspects (UltraFeedback-style P(yes) per answer)",
            "",
            "Agreement: the share of pairs where the aspect scores chosen above rejected (agrees with the label).",
            "",
            "| aspect | pairs | mean chosen | mean rejected | mean margin | agreement |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, a in summary["aspects"].items():
            lines.append(
                f"| {name} | {a['pairs']:,} | {_v(a['mean_chosen'])} | {_v(a['mean_rejected'])} | "
                f"{_v(a['mean_margin'])} | {_pct(a['agreement'])} |"
            )
    lines += ["", "### Flags", "", "| flag | rows | true | share |", "|---|---:|---:|---:|"]
    for name, f in summary.get("flags", {}).items():
        lines.append(f"| `{name}` | {f['rows']:,} | {f['true']:,} | {_pct(f['share'])} |")
    if "kto_labels" in summary:
        lines += ["", "### KTO labels", "", "| label | rows | mean judge |", "|---|---:|---:|"]
        for label, v in summary["kto_labels"].items():
            lines.append(f"| {label} | {v['rows']:,} | {_v(v['mean_judge'])} |")
    if "topics" in summary:
        t = summary["topics"]
        lines += [
            "",
            "### Prompt topics",
            "",
            f"{t['topics']} topics; the largest holds {_pct(t['largest_topic_share'])} of prompts; "
            f"normalised entropy {t['normalised_entropy']}.",
            "",
            "| topic | label / keywords | prompts | flagged | mean margin |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in t["per_topic"][:20]:
            name = r["label"] or ", ".join(r.get("keywords") or [])
            lines.append(
                f"| {r['topic_id']} | {name} | {r['prompts']:,} | {_pct(r['flagged_share'])} | {_v(r['mean_margin'])} |"
            )
    return "\n".join(lines) + "\n"
