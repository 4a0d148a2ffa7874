"""The drift report: ``compare.md`` (plots in ``compare_files/``), a self-contained ``compare.html`` and
``compare.json``, rendered with the curation report's helpers (:func:`dq_ray.select.report.render_markdown`,
:func:`dq_ray.select.report.render_html` and its template), so both reports look and escape alike."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import fsspec
import numpy as np

from dq_ray.compare.drift import SHIFTED
from dq_ray.select.report import render_html, render_markdown
from dq_ray.select.report_signals import pct

log = logging.getLogger(__name__)

TITLE = "dq-ray drift report"
FILES_DIR = "compare_files"
MAX_PLOTS = 8
MAX_CATEGORY_ROWS = 12


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _rate(x: float | None) -> str:
    return "n/a" if x is None else pct(x)


def _diff(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} pp"


def _verdict(v: str) -> str:
    return "SHIFTED" if v == SHIFTED else v


def sections(s: dict[str, Any]) -> list:
    """The report's sections (``(title, blocks)``, the curation report's block format) of a comparison dict."""
    out = [("Verdict", _verdict_blocks(s))]
    if s["signals"]:
        out.append(("Numeric signals", _signal_blocks(s["signals"])))
    if s["flags"]:
        rows = [
            [c, _rate(f["a"]), _rate(f["b"]), _diff(f["diff"]), _verdict(f["verdict"])] for c, f in s["flags"].items()
        ]
        out.append(("Boolean flags: true rate", [("table", ["flag", "A", "B", "B - A", "verdict"], rows)]))
    if "lang" in s["categories"]:
        out.append(("Language mix", _category_blocks("lang", s["categories"]["lang"])))
    others = {c: v for c, v in s["categories"].items() if c != "lang"}
    if others:
        blocks: list = [
            (
                "table",
                ["column", "categories A", "categories B", "PSI", "total variation", "verdict"],
                [
                    [c, len(v["a"]), len(v["b"]), _num(v["psi"]), _num(v["tvd"]), _verdict(v["verdict"])]
                    for c, v in others.items()
                ],
            )
        ]
        for c, v in others.items():
            blocks += _category_blocks(c, v)
        out.append(("Categorical columns", blocks))
    out.append(("Rejections", _rejection_blocks(s["rejections"])))
    if s["duplicates"]:
        rows = [
            [kind, d["column"], _rate(d["a"]), _rate(d["b"]), _diff(d["diff"]), _verdict(d["verdict"])]
            for kind, d in s["duplicates"].items()
        ]
        out.append(
            (
                "Duplicates within each run",
                [
                    ("p", "Share of each run's documents not kept by a dedup stage (the *_keep flag is false)."),
                    ("table", ["duplicates", "column", "A", "B", "B - A", "verdict"], rows),
                ],
            )
        )
    out.append(("Null rates", _null_blocks(s["nulls"])))
    out.append(("Columns", _column_blocks(s["columns"])))
    return out


def _verdict_blocks(s: dict[str, Any]) -> list:
    a, b, v, t = s["run_a"], s["run_b"], s["verdict"], s["thresholds"]
    runs = [
        [label, r["name"], r["path"], r["run_id"], r["started_at"], f"{r['documents']:,}", ", ".join(r["stages"])]
        for label, r in (("A (baseline)", a), ("B (new)", b))
    ]
    shifted = v["shifted"]
    if v["status"] == "drift":
        head = (
            f"DRIFT: {v['shifted_count']} shifted item(s) between A and B ({v['compared_columns']} columns compared)."
        )
    else:
        head = f"STABLE: nothing shifted between A and B ({v['compared_columns']} columns compared)."
    rows = [[kind.replace("_", " "), len(cols), ", ".join(cols) or "-"] for kind, cols in shifted.items()]
    blocks = [
        ("table", ["run", "name", "path", "run id", "started", "documents", "stages"], runs),
        ("p", head),
        ("table", ["kind", "shifted", "which"], rows),
        (
            "p",
            f"Thresholds: a numeric signal has shifted when PSI >= {t['psi']} (over A's deciles) or KS p < "
            f"{t['ks_pvalue']} with KS statistic >= {t['ks_stat']}; a categorical column when its PSI over the "
            f"categories >= {t['psi']}; a rate (flag, null, duplicate, rejection) when it moved by >= "
            f"{100 * t['rate_diff']:.3g} percentage points.",
        ),
    ]
    if a["sampled"] or b["sampled"]:
        blocks.append(("p", "Quantiles, KS and PSI were computed on a uniform sample of each run's values."))
    return blocks


def signal_order(signals: dict[str, Any]) -> list[str]:
    """The numeric signals, shifted first, then by decreasing PSI (the order of the tables and plots)."""
    return sorted(signals, key=lambda c: (signals[c]["verdict"] != SHIFTED, -(signals[c]["psi"] or 0.0)))


def _signal_blocks(signals: dict[str, Any]) -> list:
    order = signal_order(signals)
    rows = [
        [
            c,
            _verdict(d["verdict"]),
            _num(d["psi"]),
            _num(d["ks_stat"]),
            _num(d["ks_pvalue"]),
            _num(d["a"].get("mean")),
            _num(d["b"].get("mean")),
        ]
        for c, d in ((c, signals[c]) for c in order)
    ]
    quant = []
    for c in order:
        for label in ("a", "b"):
            d = signals[c][label]
            quant.append(
                [
                    c,
                    label.upper(),
                    _num(d["count"]),
                    *[_num(d.get(k)) for k in ("mean", "p1", "p10", "p50", "p90", "p99")],
                ]
            )
    blocks: list = [
        ("table", ["signal", "verdict", "PSI", "KS statistic", "KS p-value", "mean A", "mean B"], rows),
        ("p", "Quantiles, A next to B:"),
        ("table", ["signal", "run", "count", "mean", "p1", "p10", "p50", "p90", "p99"], quant),
    ]
    blocks += [("img", f"dist_{c}.png") for c in order if signals[c]["verdict"] == SHIFTED][:MAX_PLOTS]
    return blocks


def _category_blocks(column: str, v: dict[str, Any]) -> list:
    a, b = v["a"], v["b"]
    top = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0.0), b.get(k, 0.0)))[:MAX_CATEGORY_ROWS]
    rows = [[k, _rate(a.get(k, 0.0)), _rate(b.get(k, 0.0)), _diff(b.get(k, 0.0) - a.get(k, 0.0))] for k in top]
    changes = [[d["category"], _rate(d["a"]), _rate(d["b"]), _diff(d["diff"])] for d in v["top_changes"]]
    text = (
        f"{column}: {_verdict(v['verdict'])} (PSI {_num(v['psi'])}, total variation {_num(v['tvd'])}); "
        f"{len(a)} categories in A, {len(b)} in B. Appeared: {', '.join(map(str, v['appeared'][:10])) or '-'}; "
        f"disappeared: {', '.join(map(str, v['disappeared'][:10])) or '-'}."
    )
    blocks: list = [("p", text), ("table", [column, "share A", "share B", "B - A"], rows)]
    if changes:
        blocks += [("p", f"{column}: largest changes"), ("table", [column, "share A", "share B", "B - A"], changes)]
    return blocks


def _rejection_blocks(r: dict[str, Any]) -> list:
    n, t = r["input_records"], r["total"]
    rows = [["all reasons", _rate(t["a"]), _rate(t["b"]), _diff(t["diff"]), _verdict(t["verdict"])]]
    rows += [
        [reason, _rate(d["a"]), _rate(d["b"]), _diff(d["diff"]), _verdict(d["verdict"])]
        for reason, d in r["by_reason"].items()
    ]
    return [
        (
            "p",
            f"Rejected records (rejected/) as a share of the input records: {n['a']:,} in A "
            f"({t['a_count']:,} rejected), {n['b']:,} in B ({t['b_count']:,} rejected).",
        ),
        ("table", ["reason", "A", "B", "B - A", "verdict"], rows),
    ]


def _null_blocks(nulls: dict[str, Any]) -> list:
    with_nulls = {c: d for c, d in nulls.items() if d["a_count"] or d["b_count"]}
    rows = [[c, _rate(d["a"]), _rate(d["b"]), _diff(d["diff"]), _verdict(d["verdict"])] for c, d in with_nulls.items()]
    blocks: list = [
        ("p", f"{len(nulls) - len(with_nulls)} of {len(nulls)} compared columns have no nulls in either run.")
    ]
    if rows:
        blocks.append(("table", ["column", "null rate A", "null rate B", "B - A", "verdict"], rows))
    return blocks


def _column_blocks(cols: dict[str, Any]) -> list:
    rows = [
        ["only in A", ", ".join(cols["only_a"]) or "-"],
        ["only in B", ", ".join(cols["only_b"]) or "-"],
        *[[f"not compared: {c}", why] for c, why in cols["not_compared"].items()],
    ]
    return [("table", ["columns", ""], rows)]


def plots(s: dict[str, Any], values: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, bytes]:
    """Histograms of A and B (shares of each run) for the shifted numeric signals (at most ``MAX_PLOTS``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    signals = s["signals"]
    shifted = [c for c in signal_order(signals) if signals[c]["verdict"] == SHIFTED and c in values][:MAX_PLOTS]
    for col in shifted:
        a, b = values[col]
        both = np.concatenate([a, b])
        if len(both) == 0:
            continue
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        fig, ax = plt.subplots(figsize=(6, 3))
        for data, label, color in ((a, "A", "#999999"), (b, "B", "#4c72b0")):
            weights = np.full(len(data), 1 / max(len(data), 1))
            ax.hist(data, bins=bins, weights=weights, alpha=0.6, label=f"{label} ({len(data):,})", color=color)
        ax.set_title(col)
        ax.set_ylabel("share of documents")
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
        plt.close(fig)
        out[f"dist_{col}.png"] = buf.getvalue()
    return out


def write_compare(out_dir: str, summary: dict[str, Any], images: dict[str, bytes]) -> dict[str, str]:
    """Write ``compare.json``, ``compare.md`` (+ ``compare_files/*.png``) and ``compare.html``; return their paths."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    if images:
        fs.makedirs(f"{root}/{FILES_DIR}", exist_ok=True)
    for name, data in images.items():
        with fs.open(f"{root}/{FILES_DIR}/{name}", "wb") as fh:
            fh.write(data)
    secs = sections(summary)
    paths = {"json": f"{out_dir}/compare.json", "markdown": f"{out_dir}/compare.md", "html": f"{out_dir}/compare.html"}
    with fs.open(f"{root}/compare.json", "w") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
    with fs.open(f"{root}/compare.md", "w") as fh:
        fh.write(render_markdown(secs, images, title=TITLE, files_dir=FILES_DIR))
    with fs.open(f"{root}/compare.html", "w") as fh:
        fh.write(render_html(secs, images, title=TITLE))
    log.info("drift report in %s", out_dir)
    return paths
