"""The report's sections on signals of single stages: languages (``lang``), personal data (``pii``) and offensive
language (``offensive``).

Plain numbers from the signals the driver read (``docs/``) and from ``selected/`` read back, and the report blocks
(see :mod:`dq_ray.select.report`) that show them. Only counts and shares: never a matched personal-data value.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc


def pct(x: float) -> str:
    """A share as a percentage with two decimals."""
    return f"{100 * x:.2f}%"


MAX_LANGUAGES = 12


def _shares(column: pa.ChunkedArray) -> dict[str, float]:
    """Share of each value (null as ``none``), largest first."""
    n = len(column)
    if n == 0:
        return {}
    counts = pc.value_counts(column.combine_chunks()).to_pylist()
    pairs = sorted(((c["values"] or "none", int(c["counts"]) / n) for c in counts), key=lambda kv: -kv[1])
    return {k: round(v, 6) for k, v in pairs}


def language_summary(signals: pa.Table, after: pa.Table) -> dict[str, Any]:
    """Language shares before (``docs/``) and after (``selected/``), and the heuristics' language mismatches."""
    out: dict[str, Any] = {
        "before": _shares(signals.column("lang")),
        "after": _shares(after.column("lang")) if "lang" in after.column_names else {},
    }
    if "lang_heur_mismatch" in signals.column_names:
        col = signals.column("lang_heur_mismatch")
        out["heur_mismatch"] = int(pc.sum(col).as_py() or 0)
        if "lang_heur_mismatch" in after.column_names:
            out["heur_mismatch_after"] = int(pc.sum(after.column("lang_heur_mismatch")).as_py() or 0)
    return out


def language_blocks(lang: dict[str, Any]) -> list:
    before, after = lang["before"], lang["after"]
    top = list(before)[:MAX_LANGUAGES]
    blocks: list = [
        (
            "p",
            f"{len(before)} languages in docs/, {len(after)} in selected/ (lang: py3langid; 'none': no language, "
            "see lang_reason).",
        ),
        (
            "table",
            ["lang", "share before", "share after"],
            [[k, pct(before[k]), pct(after.get(k, 0.0))] for k in top],
        ),
    ]
    if "heur_mismatch" in lang:
        blocks.append(
            (
                "p",
                f"{lang['heur_mismatch']:,} documents are not in the language the heuristic filters were built for "
                f"(lang_heur_mismatch); {lang.get('heur_mismatch_after', 0):,} of them are in selected/.",
            )
        )
    return blocks


def _kind_counts(spans: pa.ChunkedArray) -> dict[str, int]:
    """Spans per kind in a ``pii_spans`` column."""
    kinds = pc.list_flatten(spans).combine_chunks() if len(spans) else pa.array([])
    if len(kinds) == 0:
        return {}
    return {c["values"]: int(c["counts"]) for c in pc.value_counts(kinds.field("kind")).to_pylist()}


def pii_summary(
    signals: pa.Table, selected_path: str, redacted: bool, after_spans: pa.ChunkedArray | None = None
) -> dict[str, Any]:
    """Personal data before (``docs/``) and after (``selected/``, read back): documents and spans per kind; with
    ``redacted``, the spans of each kind replaced by placeholders in ``selected/``. ``after_spans``: the selected
    rows' ``pii_spans`` when ``selected/`` holds no signals (JSONL)."""
    import pyarrow.dataset as pads

    count = signals.column("pii_count") if "pii_count" in signals.column_names else None
    reason = signals.column("pii_reason") if "pii_reason" in signals.column_names else None

    def reasons(prefix: str) -> int:
        if reason is None:
            return 0
        return int(pc.sum(pc.fill_null(pc.starts_with(reason, prefix), False)).as_py() or 0)

    before = {
        "documents_with_pii": int(pc.sum(pc.greater(count, 0)).as_py() or 0) if count is not None else None,
        "spans": _kind_counts(signals.column("pii_spans")),
        "capped": reasons("capped"),
        "errors": reasons("error"),
    }
    fs, root = fsspec.core.url_to_fs(selected_path)
    files = [] if after_spans is not None else sorted(fs.glob(f"{root}/**/*.parquet"))
    after: dict[str, Any] = {"documents_with_pii": 0, "spans": {}}
    spans = after_spans
    if files:
        ds = pads.dataset(files, filesystem=fs, format="parquet")
        if "pii_spans" in ds.schema.names:
            spans = ds.to_table(columns=["pii_spans"]).column("pii_spans")
    if spans is not None:
        after = {
            "documents_with_pii": int(pc.sum(pc.greater(pc.list_value_length(spans), 0)).as_py() or 0),
            "spans": _kind_counts(spans),
        }
    return {"before": before, "after": after, "redacted": after["spans"] if redacted else {}, "redact_pii": redacted}


def pii_blocks(p: dict[str, Any]) -> list:
    """The report's personal-data section: counts per kind, never a value."""
    b, a = p["before"], p["after"]
    kinds = sorted(set(b["spans"]) | set(a["spans"]))
    note = (
        "Every span in selected/ was replaced by its placeholder (<EMAIL>, <PHONE>, ...); the text outside the spans "
        "is unchanged."
        if p["redact_pii"]
        else "Not redacted: the selected text still holds these values (set redact_pii: true in the policy)."
    )
    if b["capped"]:
        note += f" {b['capped']:,} documents were longer than pii.max_chars: only their start was scanned."
    if b["errors"]:
        note += f" {b['errors']:,} documents could not be scanned (pii_reason 'error: ...')."
    rows = [
        [k, b["spans"].get(k, 0), a["spans"].get(k, 0), p["redacted"].get(k, 0) if p["redact_pii"] else "no"]
        for k in kinds
    ]
    rows.append(["documents with personal data", b["documents_with_pii"], a["documents_with_pii"], ""])
    return [("p", note), ("table", ["kind", "spans in docs/", "spans in selected/", "redacted"], rows)]


def _offensive_counts(table: pa.Table) -> dict[str, Any]:
    """Flagged documents, documents with a listed word, and the score's quantiles in ``table``."""
    names = table.column_names
    out: dict[str, Any] = {"documents": table.num_rows}
    if "offensive_flag" in names:
        flag = table.column("offensive_flag")
        out["flagged"] = int(pc.sum(pc.fill_null(flag, False)).as_py() or 0)
        out["not_scored"] = flag.null_count
    if "offensive_words" in names:
        out["with_listed_words"] = int(pc.sum(pc.greater(pc.fill_null(table.column("offensive_words"), 0), 0)).as_py())
    if "offensive_score" in names and table.num_rows:
        q = pc.quantile(table.column("offensive_score"), q=[0.5, 0.9, 0.99], skip_nulls=True).to_pylist()
        out["score_quantiles"] = {k: None if v is None else round(v, 4) for k, v in zip(("p50", "p90", "p99"), q)}
    return out


def offensive_summary(signals: pa.Table, after: pa.Table) -> dict[str, Any]:
    """Offensive language before (``docs/``) and after (``selected/``): flagged documents (``offensive_flag``),
    documents with a word of the list (``offensive_words`` > 0) and the classifier's score quantiles."""
    return {"before": _offensive_counts(signals), "after": _offensive_counts(after)}


def offensive_blocks(o: dict[str, Any]) -> list:
    """The report's offensive-language section: counts and shares, never the words found."""
    b, a = o["before"], o["after"]

    def share(part: dict[str, Any], key: str) -> str:
        if key not in part:
            return "n/a"
        return f"{part[key]:,} ({pct(part[key] / max(part['documents'], 1))})"

    rows = [
        ["flagged by the classifier (offensive_flag)", share(b, "flagged"), share(a, "flagged")],
        ["with a word of the list (offensive_words > 0)", share(b, "with_listed_words"), share(a, "with_listed_words")],
    ]
    for key in ("p50", "p90", "p99"):
        rows.append(
            [
                f"offensive_score {key}",
                (b.get("score_quantiles") or {}).get(key, "n/a"),
                (a.get("score_quantiles") or {}).get(key, "n/a"),
            ]
        )
    note = (
        "alt-profanity-check's classifier and a word list; both read English. To drop flagged documents: "
        "{kind: filter, column: offensive_flag, op: is_false}."
    )
    if b.get("not_scored"):
        note += f" {b['not_scored']:,} documents have no score (blank, no letters or an error: see offensive_reason)."
    return [("p", note), ("table", ["", "docs/", "selected/"], rows)]
