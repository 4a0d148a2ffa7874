"""The preference tab: views of the ``pairs`` stage's signals (margins, judge scores, lengths, flagged pairs).

Everything reads the process-wide :class:`~dashboards.data_store.RunStore` column by column. Scatters are
rasterized on the server (HoloViews ``rasterize`` over Datashader), so the browser receives images, and the
flagged-pairs table holds at most :data:`TABLE_ROWS` pairs with answers clipped to :data:`ANSWER_CHARS`.

Views:

* :func:`margin_histogram`: the judge margin (chosen - rejected) over every judged pair;
* :func:`judge_scatter`: chosen vs rejected judge score, one point per pair, counts per pixel;
* :func:`margin_vs_length`: judge margin against the length difference (words), counts per pixel; without
  the judge, the chosen-vs-rejected cosine takes the margin's place;
* :func:`aspect_view` (when the run scored UltraFeedback-style aspects, ``pair_<aspect>_margin``): per aspect
  the mean margin and the agreement with the label (share of pairs where chosen scores higher), and an aspect
  picker over the margin's histogram (:func:`aspect_histogram`);
* :func:`flagged_pairs`: the pairs with a chosen flag, prompt and both answers side by side (and their
  rationales, when the run generated them);
* :func:`prompt_map`: the map of the prompts (``map_x``/``map_y``, or PCA of ``embedding``) coloured by the
  mean margin per pixel.
"""

from __future__ import annotations

import html
from typing import Any

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pyarrow.compute as pc
from holoviews.operation.datashader import rasterize, spread

from dashboards.data_store import RunStore

TABLE_ROWS = 50
ANSWER_CHARS = 600
PAIR_FLAGS = (
    "pair_identical",
    "pair_near_identical",
    "pair_rejected_preferred",
    "pair_length_driven",
    "pair_prompt_dup",
)
SIZE = dict(width=420, height=340)
#: Below this many points, each is drawn 2 pixels wide (single pixels are hard to see on a sparse plot).
SPREAD_BELOW = 100_000

hv.extension("bokeh", logo=False)


def _has(store: RunStore, name: str) -> bool:
    """The run has the column with at least one value (a judge column without the judge is all null)."""
    if name in store.columns.numeric:
        return bool(np.isfinite(store.values(name)).any())
    return name in store.columns.flags and bool((store.values(name) >= 0).any())


def _finite_pairs(store: RunStore, x: str, y: str) -> pd.DataFrame:
    a, b = store.values(x), store.values(y)
    keep = np.isfinite(a) & np.isfinite(b)
    return pd.DataFrame({x: a[keep], y: b[keep]})


def _note(text: str) -> pn.pane.Markdown:
    return pn.pane.Markdown(text, width=SIZE["width"])


def margin_histogram(store: RunStore, bins: int = 40) -> Any:
    """Histogram of ``pair_judge_margin``."""
    if not _has(store, "pair_judge_margin"):
        return _note("No judge margins in this run (run `pairs` with `judge: true`).")
    v = store.values("pair_judge_margin")
    v = v[np.isfinite(v)]
    if not v.size:
        return _note("No judged pairs.")
    counts, edges = np.histogram(np.clip(v, -1, 1), bins=bins, range=(-1, 1))
    return hv.Histogram((edges, counts), kdims=["pair_judge_margin"], vdims=["pairs"]).opts(
        title=f"Judge margin, chosen - rejected ({v.size:,} pairs)", tools=["hover"], **SIZE
    )


def aspects(store: RunStore) -> list[str]:
    """The aspects scored in this run: ``pair_<aspect>_margin`` columns with at least one value."""
    names = [
        c[len("pair_") : -len("_margin")]
        for c in store.columns.numeric
        if c.startswith("pair_") and c.endswith("_margin") and c != "pair_judge_margin"
    ]
    return [a for a in names if _has(store, f"pair_{a}_margin")]


def aspect_table(store: RunStore) -> pd.DataFrame:
    """Per scored aspect: pairs, mean chosen / rejected P(yes), mean margin, agreement with the label."""
    rows = []
    for a in aspects(store):
        m = store.values(f"pair_{a}_margin")
        keep = np.isfinite(m)
        rows.append(
            {
                "aspect": a,
                "pairs": int(keep.sum()),
                "mean chosen": round(float(np.nanmean(store.values(f"pair_{a}_chosen")[keep])), 4),
                "mean rejected": round(float(np.nanmean(store.values(f"pair_{a}_rejected")[keep])), 4),
                "mean margin": round(float(m[keep].mean()), 4),
                "agreement": round(float((m[keep] > 0).mean()), 4),
            }
        )
    return pd.DataFrame(rows)


def aspect_histogram(store: RunStore, aspect: str, bins: int = 40) -> Any:
    """Histogram of one aspect's margin (chosen - rejected)."""
    name = f"pair_{aspect}_margin"
    v = store.values(name) if _has(store, name) else np.zeros(0)
    v = v[np.isfinite(v)]
    if not v.size:
        return _note(f"No `{name}` values in this run.")
    counts, edges = np.histogram(np.clip(v, -1, 1), bins=bins, range=(-1, 1))
    agree = float((v > 0).mean())
    return hv.Histogram((edges, counts), kdims=[name], vdims=["pairs"]).opts(
        title=f"{aspect}: margin, chosen - rejected ({v.size:,} pairs, {100 * agree:.0f}% agree)",
        tools=["hover"],
        **SIZE,
    )


def aspect_view(store: RunStore) -> pn.viewable.Viewable:
    """The aspects' table and a picker over their margin histograms (a note when the run has none)."""
    names = aspects(store)
    if not names:
        return _note("No aspects in this run (run `pairs` with `aspects: [helpfulness, ...]`).")
    pick = pn.widgets.Select(label="Aspect", options=names, value=names[0], width=260)
    table = pn.widgets.Tabulator(aspect_table(store), disabled=True, show_index=False, width=700)
    return pn.Column(table, pick, pn.bind(lambda a: pn.panel(aspect_histogram(store, a)), pick))


def _rasterize(points: hv.Points, agg) -> hv.Image:
    """Aggregate on the server (an Image of counts or means); sparse plots get 2-pixel points."""
    image = rasterize(points, aggregator=agg, dynamic=False)
    return spread(image, px=2) if len(points) < SPREAD_BELOW else image


def _raster(df: pd.DataFrame, x: str, y: str, title: str, agg=None) -> Any:
    points = hv.Points(df, kdims=[x, y], vdims=[c for c in df.columns if c not in (x, y)])
    return _rasterize(points, agg or ds.count()).opts(
        title=title, cmap="viridis", colorbar=True, cnorm="eq_hist", tools=["hover"], **SIZE
    )


def judge_scatter(store: RunStore) -> Any:
    """Chosen vs rejected judge score, rasterized (pairs per pixel)."""
    if not (_has(store, "pair_chosen_judge") and _has(store, "pair_rejected_judge")):
        return _note("No judge scores in this run.")
    df = _finite_pairs(store, "pair_rejected_judge", "pair_chosen_judge")
    if df.empty:
        return _note("No judged pairs.")
    diagonal = hv.Curve([(0, 0), (1, 1)]).opts(color="grey", line_dash="dashed")
    return _raster(df, "pair_rejected_judge", "pair_chosen_judge", "Judge: chosen vs rejected") * diagonal


def margin_vs_length(store: RunStore) -> Any:
    """Judge margin (or, without a judge, chosen-vs-rejected cosine) against the length difference."""
    y = "pair_judge_margin" if _has(store, "pair_judge_margin") else "pair_cos"
    if not (_has(store, y) and _has(store, "pair_length_diff_words")):
        return _note("No pair lengths in this run.")
    df = _finite_pairs(store, "pair_length_diff_words", y)
    if df.empty:
        return _note(f"No pairs with {y}.")
    return _raster(df, "pair_length_diff_words", y, f"{y} vs length difference (words)")


def flag_counts(store: RunStore) -> pd.DataFrame:
    """Rows, true count and share of every pair flag in the run."""
    rows = []
    for f in PAIR_FLAGS:
        if f in store.columns.flags:
            v = store.values(f)
            applies = int((v >= 0).sum())
            true = int((v == 1).sum())
            if applies:
                rows.append({"flag": f, "rows": applies, "true": true, "share": round(true / applies, 4)})
    return pd.DataFrame(rows)


def flagged_rows(store: RunStore, flag: str, limit: int = TABLE_ROWS) -> pd.DataFrame:
    """Up to ``limit`` pairs with ``flag`` true: id, key signals, prompt and both answers (clipped, escaped)."""
    if flag not in store.dataset.schema.names:
        return pd.DataFrame()
    wanted = ["id", "pref_prompt", "pref_chosen", "pref_rejected", "pair_judge_margin", "pair_length_diff_words"]
    wanted += ["pair_rationale_chosen", "pair_rationale_rejected"]
    cols = [c for c in wanted if c in store.dataset.schema.names]
    table = store.dataset.to_table(columns=cols, filter=pc.field(flag) == True).slice(0, limit)  # noqa: E712
    df = table.to_pandas()
    for c in ("pair_rationale_chosen", "pair_rationale_rejected"):
        if c in df and df[c].isna().all():  # declared, but the run generated no rationales
            df = df.drop(columns=c)
    for c in ("pref_prompt", "pref_chosen", "pref_rejected", "pair_rationale_chosen", "pair_rationale_rejected"):
        if c in df:
            df[c] = df[c].map(lambda t: None if t is None else html.escape(t[:ANSWER_CHARS]))
    names = {"pref_prompt": "prompt", "pref_chosen": "chosen", "pref_rejected": "rejected"}
    names.update({"pair_rationale_chosen": "rationale chosen", "pair_rationale_rejected": "rationale rejected"})
    return df.rename(columns=names)


def flagged_pairs(store: RunStore) -> pn.viewable.Viewable:
    """A flag picker and the table of flagged pairs, answers side by side."""
    flags = [f for f in PAIR_FLAGS if f in store.columns.flags]
    if not flags:
        return _note("No pair flags in this run.")
    pick = pn.widgets.Select(label="Flag", options=flags, value=flags[0], width=260)
    note = ""
    if "pref_chosen" not in store.dataset.schema.names:
        note = "The answers are not in docs/ (`pairs.keep_texts: false`); showing ids and signals."

    def table(flag: str) -> pn.viewable.Viewable:
        df = flagged_rows(store, flag)
        widths = {"prompt": 220, "chosen": 380, "rejected": 380, "rationale chosen": 260, "rationale rejected": 260}
        return pn.widgets.Tabulator(
            df,
            disabled=True,
            show_index=False,
            layout="fit_data_table",
            widths={k: v for k, v in widths.items() if k in df},
            formatters={k: {"type": "textarea"} for k in widths if k in df},
            pagination="local",
            page_size=10,
            width=1250,
        )

    return pn.Column(pn.Row(pick, pn.pane.Markdown(note)), pn.bind(table, pick))


def prompt_map(store: RunStore) -> Any:
    """The prompts' map coloured by the mean judge margin (or cosine without a judge) per pixel."""
    colour = "pair_judge_margin" if _has(store, "pair_judge_margin") else "pair_cos"
    if not _has(store, colour):
        return _note("No pair signal to colour the prompt map by.")
    x, y = store.xy()
    df = pd.DataFrame({"x": x, "y": y, colour: store.values(colour)})
    df = df[np.isfinite(df["x"]) & np.isfinite(df["y"])]
    raster = _rasterize(hv.Points(df, kdims=["x", "y"], vdims=[colour]), ds.mean(colour))
    return raster.opts(
        title=f"Prompts ({store.projection}) coloured by mean {colour}",
        cmap="RdBu",
        colorbar=True,
        symmetric=True,
        tools=["hover"],
        width=640,
        height=480,
    )


def preference_tab(store: RunStore) -> pn.viewable.Viewable:
    """The whole preference tab (what the dashboard shows when the run has ``pair_*`` columns)."""
    if not store.has_pairs():
        return pn.Column(pn.pane.Markdown("No preference pairs in this run (no `pair_*` columns)."), name="Preference")
    summary = (store.manifest.get("summaries") or {}).get("pairs") or {}
    lb = summary.get("length_bias") or {}
    head = ["## Preference pairs"]
    if summary:
        head.append(
            f"{summary.get('pairs', 0):,} pairs of {summary.get('rows', 0):,} rows; chosen longer in "
            f"{100 * (lb.get('chosen_longer_share') or 0):.1f}% of pairs"
            + (
                f"; Spearman(margin, length difference) = {lb['margin_vs_diff_spearman']}"
                if lb.get("margin_vs_diff_spearman") is not None
                else ""
            )
        )
    return pn.Column(
        pn.pane.Markdown("\n\n".join(head)),
        pn.widgets.Tabulator(flag_counts(store), disabled=True, show_index=False, width=520),
        pn.Row(pn.panel(margin_histogram(store)), pn.panel(judge_scatter(store))),
        pn.Row(pn.panel(margin_vs_length(store)), pn.panel(prompt_map(store))),
        *([pn.pane.Markdown("### Aspects"), aspect_view(store)] if aspects(store) else []),
        pn.pane.Markdown("### Flagged pairs"),
        flagged_pairs(store),
        name="Preference",
    )
