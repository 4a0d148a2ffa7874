"""The dashboard's tabs beside the map: the run summary (``manifest.json``) and the topics
(``artifacts/topics.parquet``)."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import panel as pn

from dashboards.data_store import RunStore


def summary_tab(store: RunStore) -> pn.viewable.Viewable:
    """The run summary from ``manifest.json``: counts, per-stage throughput, config."""
    m = store.manifest
    counts = m.get("counts") or {}

    def n(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else "?"

    head = [
        f"## Run `{html.escape(str(m.get('run_dir', store.root)))}`",
        f"status **{m.get('status')}**, started {m.get('started_at', '?')}, wall {float(m.get('wall_s') or 0):.1f} s",
        f"documents in **{n(counts.get('input'))}**, kept {n(counts.get('accepted'))}, "
        f"rejected {n(counts.get('rejected'))}",
        f"map coordinates: {store.projection}",
    ]
    rejected = counts.get("rejected_by_reason") or {}
    # formatted here, not by the table: counts as integers (a stage without rows, a fit, would make the column
    # float: "3,812.0"), seconds and rates to one decimal
    stages = pd.DataFrame(
        [
            {
                "stage": name,
                "docs": format_count(s.get("rows")),
                "wall_s": format_decimal(s.get("wall_s")),
                "docs_per_s": format_decimal(s.get("docs_per_s")),
                "docs_per_busy_s": format_decimal(s.get("docs_per_busy_s")),
            }
            for name, s in (m.get("stages") or {}).items()
        ],
        columns=["stage", "docs", "wall_s", "docs_per_s", "docs_per_busy_s"],
    )
    flags = pd.DataFrame(
        [{"flag": k, **{c: format_count(n) for c, n in v.items()}} for k, v in (m.get("flags") or {}).items()]
    )
    right = {c: "right" for c in [*stages.columns[1:], *flags.columns[1:]]}
    parts = [pn.pane.Markdown("\n\n".join(head))]
    if rejected:
        parts.append(pn.pane.Markdown("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in rejected.items())))
    parts += [
        pn.pane.Markdown("### Stages"),
        pn.widgets.Tabulator(
            stages, disabled=True, show_index=False, width=700, text_align=right, css_classes=["dq-stages"]
        ),
        pn.pane.Markdown("### Flags"),
        pn.widgets.Tabulator(flags, disabled=True, show_index=False, width=700, text_align=right),
        pn.pane.Markdown("### Config"),
        pn.pane.JSON(m.get("config") or {}, depth=2, width=700),
    ]
    return pn.Column(*parts, name="Run summary")


def document_table(css_class: str, snippet_width: str = "40%", **options: Any) -> pn.widgets.Tabulator:
    """An empty, read-only table of documents (id, signals, a wrapped snippet) as wide as the page leaves it,
    its columns fitted to that width so none ends up off-screen."""
    return pn.widgets.Tabulator(
        pd.DataFrame(),
        disabled=True,
        show_index=False,
        layout="fit_columns",
        sizing_mode="stretch_width",
        widths={"id": 120, "snippet": snippet_width},
        formatters={"snippet": {"type": "textarea"}},
        css_classes=[css_class],
        **options,
    )


def format_count(v: Any) -> str:
    """An integer count with thousands separators (``3,812``, also for ``3812.0``); empty for none."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return ""
    return f"{int(round(v)):,}"


def format_decimal(v: Any) -> str:
    """A time or a rate to one decimal (``1.1``, ``1,794.9``); empty for none."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return ""
    return f"{float(v):,.1f}"


def topics_tab(store: RunStore) -> pn.viewable.Viewable:
    """Topic sizes, keywords and labels from ``RUN/artifacts/topics.parquet``."""
    table = store.topics()
    if table is None:
        return pn.Column(
            pn.pane.Markdown("No topics in this run (add the `topics` stage to write `artifacts/topics.parquet`)."),
            name="Topics",
        )
    df = table.to_pandas()
    keep = [c for c in ("level", "topic_id", "topic_coarse_id", "topic_label", "size", "share", "keywords") if c in df]
    df = df[keep].copy()
    if "keywords" in df:
        df["keywords"] = df["keywords"].map(lambda k: ", ".join(list(k)[:8]) if k is not None else "")
    if {"level", "topic_coarse_id", "size"} <= set(df):
        # fine topics nested under their coarse topic: each coarse row, then its fine topics by size
        df["_coarse_size"] = df["topic_coarse_id"].map(df[df["level"] == "coarse"].set_index("topic_id")["size"])
        df["_fine"] = df["level"] == "fine"
        df = df.sort_values(["_coarse_size", "topic_coarse_id", "_fine", "size"], ascending=[False, True, True, False])
        df = df.drop(columns=["_coarse_size", "_fine"])
        df["level"] = df["level"].map({"coarse": "coarse", "fine": "  └ fine"}).fillna(df["level"])
    elif "size" in df:
        df = df.sort_values("size", ascending=False)
    return pn.Column(
        pn.pane.Markdown(f"### {len(df)} topics"),
        pn.widgets.Tabulator(
            df,
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=25,
            layout="fit_columns",
            sizing_mode="stretch_width",
        ),
        name="Topics",
    )
