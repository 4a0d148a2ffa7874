"""The dashboard's views: the map with linked filters, histograms, counts, what-if and drill-down; the tabs.

One :class:`MapExplorer` per browser session, all sharing the process-wide :class:`~dashboards.data_store.RunStore`.
The browser receives images (the map is rasterized on the server) and small tables, never raw points or bulk
text: the drill-down table holds at most :data:`TABLE_ROWS` documents and reads their snippets on demand.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from dashboards.data_store import NONE_LABEL, Filters, RunStore
from dashboards.export_panel import ExportPanel
from dashboards.find import FindPanel
from dashboards.hover import hover_signals, tooltips, wrap_tooltip
from dashboards.probes_layer import ProbeLayer
from dashboards.render import Frame, render
from dashboards.tabs import (  # noqa: F401 (the app's tabs)
    document_table,
    format_count,
    format_decimal,
    summary_tab,
    topics_tab,
)
from dashboards.whatif import Policy, build_policy, evaluate_policy

log = logging.getLogger(__name__)

#: Rows of the drill-down table (and of snippets read per selection).
TABLE_ROWS = 50
#: The map's height, and its width before the browser reports the size it stretched to (the map fills the width
#: left by the sidebar and the legend: the page fits 1280 px with no horizontal scrolling).
MAP_WIDTH, MAP_HEIGHT = 760, 520
SIDEBAR_WIDTH = 290
WHATIF_WIDTH = 350
#: Numeric signals offered as the first sliders, in this order of preference.
KEY_SIGNALS = ("askllm_score", "density_score", "heur_n_words", "heur_mean_word_length", "semdedup_max_sim")
#: A column with a value for fewer than this share of documents is never a default (filter, colour, what-if).
SPARSE_BELOW = 0.5
#: A sparse column -> the filled one that stands in for it by default: the demo scores a sample with the LLM
#: (``askllm_score``, null elsewhere) and predicts ``askllm_pred`` for every document.
STAND_INS = {"askllm_score": "askllm_pred"}
CATEGORY_PICKERS = ("topic_id", "topic_coarse_id", "source")

hv.extension("bokeh", logo=False)


class _Version(param.Parameterized):
    version = param.Integer(default=0)


class MapExplorer:
    """The map tab of one session: widgets, the map, histograms, counts, what-if and the selection table."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        cols = store.columns
        self.state = _Version()
        self.colour = pn.widgets.Select(
            label="Colour by",
            options=["count", *cols.colour_choices],
            value=_default_colour(store),
            width=260,
            css_classes=["dq-colour"],
        )
        # range sliders: the filled key signals first; more can be added from the picker
        self.ranges: dict[str, pn.widgets.RangeSlider] = {}
        self.range_box = pn.Column(sizing_mode="stretch_width")
        self.keep_null = pn.widgets.Checkbox(
            label="Keep documents without a value (null) in range filters", value=True, css_classes=["dq-keep-null"]
        )
        self.keep_null.param.watch(self._bump, "value")
        self.nulls = pn.pane.Markdown("", width=260, css_classes=["dq-nulls"], styles={"font-size": "12px"})
        first = default_signals(store, KEY_SIGNALS, 3)
        self.more = pn.widgets.MultiChoice(
            label="Filter on", options=list(cols.numeric), value=first, width=260, css_classes=["dq-more"]
        )
        self.more.param.watch(self._sync_sliders, "value")
        self._sync_sliders()
        self.flags = {
            f: pn.widgets.RadioButtonGroup(
                label=f, options=["any", "true", "false"], value="any", css_classes=["dq-flag", f"dq-flag-{f}"]
            )
            for f in cols.flags
        }
        self.pickers = {}
        for c in CATEGORY_PICKERS:
            if c in cols.categorical:
                cat = store.category(c)
                options = self._category_options(c, cat.labels)
                self.pickers[c] = pn.widgets.MultiChoice(label=f"{c} (empty: all)", options=options, width=260)
        for w in [*self.flags.values(), *self.pickers.values()]:
            w.param.watch(self._bump, "value")
        self.colour.param.watch(self._rebuild_map, "value")
        self.find = FindPanel(store, self.show_selection)
        self.probes = ProbeLayer(store)  # the probes of a dq-ray gaps report, when the run has one

        self.map_pane = pn.pane.HoloViews(
            self._make_map(), sizing_mode="stretch_width", height=MAP_HEIGHT, min_width=360, css_classes=["dq-map"]
        )
        self.legend = pn.pane.HTML("", width=170, css_classes=["dq-legend-pane"])
        self.source = pn.pane.Markdown("", styles={"font-size": "12px"})
        self.counts = pn.pane.Markdown("", css_classes=["dq-counts"])
        self.hists = pn.GridBox(ncols=2, css_classes=["dq-histograms"])
        # as wide as the page leaves it, columns fitted to that width (the snippet second, wrapped): no column
        # ends up off-screen
        self.table = document_table("dq-table", pagination="local", page_size=10)
        self._rows: Any = None  # the table's documents (pa.Table), for a click on a row
        self.table.on_click(self._on_row_click)
        self.table_title = pn.pane.Markdown(
            "**Selection**: drag a box or lasso on the map, or click a point; click a row for its neighbours.",
            css_classes=["dq-selection"],
        )
        self.whatif = WhatIfPanel(store, self.current_filters)
        self.area: dict[str, Any] | None = None  # the last box or lasso selection, for the Export
        self.export = ExportPanel(store, self.current_filters, lambda: self.area)
        self.state.param.watch(self._refresh_side, "version")
        self._refresh_side()

    # -- state ---------------------------------------------------------------------------------------------

    def _category_options(self, name: str, labels: list[str]) -> list[str]:
        return sorted(labels, key=lambda s: (len(s), s)) + [NONE_LABEL]

    def _sync_sliders(self, *_: Any) -> None:
        for name in list(self.ranges):
            if name not in self.more.value:
                del self.ranges[name]
        for name in self.more.value:
            if name not in self.ranges:
                v = self.store.values(name)
                finite = v[np.isfinite(v)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
                if hi <= lo:
                    hi = lo + 1.0
                s = pn.widgets.RangeSlider(
                    label=name,
                    start=lo,
                    end=hi,
                    value=(lo, hi),
                    step=(hi - lo) / 200,
                    width=260,
                    css_classes=["dq-filter", f"dq-filter-{name}"],
                )
                s.param.watch(self._bump, "value_throttled")
                self.ranges[name] = s
        self.range_box.objects = list(self.ranges.values())
        self._bump()

    def current_filters(self) -> Filters:
        f = Filters(keep_null=bool(self.keep_null.value))
        for name, s in self.ranges.items():
            lo, hi = s.value
            if lo > s.start or hi < s.end:
                f.ranges[name] = (float(lo), float(hi))
        for name, w in self.flags.items():
            if w.value != "any":
                f.flags[name] = w.value == "true"
        for name, w in self.pickers.items():
            if w.value:
                f.categories[name] = tuple(w.value)
        return f

    def _bump(self, *_: Any) -> None:
        self.state.version += 1

    # -- the map -------------------------------------------------------------------------------------------

    def colour_by(self) -> str | None:
        return None if self.colour.value == "count" else self.colour.value

    def _frame(self, x_range, y_range, width, height) -> Frame:
        # few documents: coarser pixels, so that a point is visible (a 4x4 screen block per datum below 20k)
        n = self.store.num_rows
        block = 4 if n < 20_000 else 2 if n < 200_000 else 1
        return render(
            self.store,
            x_range=x_range,
            y_range=y_range,
            width=max(1, (width or MAP_WIDTH) // block),
            height=max(1, (height or MAP_HEIGHT) // block),
            colour_by=self.colour_by(),
            filters=self.current_filters(),
            hover=True,
        )

    def _make_map(self) -> hv.DynamicMap:
        xr, yr = self.store.bounds()
        colour_by = self.colour_by()
        kind = "count" if colour_by is None else self.store.columns.kind(colour_by)
        hover = tooltips(colour_by or "documents", hover_signals(self.store.key_columns()))

        def frame(x_range=None, y_range=None, width=None, height=None, version=0, **_):
            f = self._frame(x_range, y_range, width, height)
            self._last_frame = f
            if hasattr(self, "legend"):
                self._show_frame_info(f)
            el = f.element
            common = dict(
                responsive=True,
                height=MAP_HEIGHT,
                tools=["hover", "box_select", "lasso_select", "tap"],
                hover_tooltips=hover,
                hooks=[wrap_tooltip],
                selector_in_hovertool=False,
                active_tools=["wheel_zoom"],
                xlim=xr,
                ylim=yr,
                xlabel=self.store.axes[0],
                ylabel=self.store.axes[1],
                title=f"{self.store.num_rows:,} documents — colour: {self.colour.value}",
            )
            if isinstance(el, hv.ImageStack):
                cmap = [f.legend[str(v)] for v in el.vdims] if f.legend else None
                return el.opts(cmap=cmap, cnorm="eq_hist", **common)
            if kind == "count":
                return el.opts(
                    cmap="viridis",
                    cnorm="eq_hist",
                    colorbar=True,
                    clabel="documents",
                    clipping_colors={"NaN": "white"},
                    **common,
                )
            return el.opts(cmap="plasma", colorbar=True, clabel=colour_by, clipping_colors={"NaN": "white"}, **common)

        streams = [hv.streams.RangeXY(), hv.streams.PlotSize(), hv.streams.Params(self.state, ["version"])]
        dmap = hv.DynamicMap(frame, streams=streams)
        hv.streams.BoundsXY(source=dmap).add_subscriber(self._on_box)
        hv.streams.Lasso(source=dmap).add_subscriber(self._on_lasso)
        hv.streams.Tap(source=dmap).add_subscriber(self._on_tap)
        return dmap * self.find.overlay() * self.probes.overlay()

    def _rebuild_map(self, *_: Any) -> None:
        # ImageStack and Image cannot share one DynamicMap: a new map for a new kind of colouring
        self.map_pane.object = self._make_map()
        self._refresh_side()

    def _show_frame_info(self, f: Frame) -> None:
        if f.legend:
            # only the categories with documents passing the filters in view (the map keeps every layer)
            shown = f.shown if f.shown is not None else dict.fromkeys(f.legend, None)
            names = self.store.topic_names(self.colour.value)  # topics by name, not by id
            items = "".join(
                f'<div><span style="display:inline-block;width:12px;height:12px;background:{f.legend[k]};'
                f'margin-right:6px"></span>{html.escape(names.get(k, k))}'
                + (f' <small style="color:#777">{n:,}</small>' if n is not None else "")
                + "</div>"
                for k, n in shown.items()
            )
            if not shown:
                items = "<div><small>no documents in view</small></div>"
            self.legend.object = f'<div class="dq-legend"><b>{html.escape(self.colour.value)}</b>{items}</div>'
        else:
            self.legend.object = ""
        self.source.object = f"frame from **{f.source}**, {f.documents:,} documents in view"

    # -- selection -----------------------------------------------------------------------------------------

    def _on_box(self, bounds=None, **_: Any) -> None:
        if bounds:
            self.area = {"bounds": bounds}
            self.show_selection(*self.store.select(self.current_filters(), bounds=bounds, limit=TABLE_ROWS))

    def _on_lasso(self, geometry=None, **_: Any) -> None:
        if geometry is not None and len(geometry) >= 3:
            self.area = {"polygon": geometry}
            self.show_selection(*self.store.select(self.current_filters(), polygon=geometry, limit=TABLE_ROWS))

    def _on_tap(self, x=None, y=None, **_: Any) -> None:
        if x is None or y is None:
            return
        xr, _ = self.store.bounds()
        radius = (xr[1] - xr[0]) / 150
        probe = self.probes.pick(x, y, 2 * radius)
        if probe is not None:  # a click on a probe lists its nearest documents
            self.probes.show_probe(probe)
            return
        total, rows = self.store.nearest(x, y, radius, self.current_filters())
        self.show_selection(total, rows)
        if rows.num_rows:  # the document nearest the click: its neighbours
            dx = rows.column("map_x").to_numpy(zero_copy_only=False) - x
            dy = rows.column("map_y").to_numpy(zero_copy_only=False) - y
            self.find.show_neighbours(rows.slice(int(np.argmin(dx * dx + dy * dy)), 1).to_pylist()[0])

    def _on_row_click(self, event) -> None:
        if self._rows is not None and event.row is not None and 0 <= event.row < self._rows.num_rows:
            self.find.show_neighbours(self._rows.slice(event.row, 1).to_pylist()[0])

    def show_selection(self, total: int, rows, title: str = "Selection", snippets: list | None = None) -> None:
        """Fill the table with up to :data:`TABLE_ROWS` documents and their snippets (read now unless given)."""
        rows = rows.slice(0, TABLE_ROWS)
        self._rows = rows
        drop = ("row", "source_file", "map_x", "map_y")
        df = rows.drop_columns([c for c in drop if c in rows.column_names]).to_pandas()
        snippets = snippets[: rows.num_rows] if snippets is not None else None
        if snippets is None:
            try:
                snippets = self.store.snippets(rows)
            except Exception as exc:  # an input that moved: show the table without text
                log.warning("snippets unavailable: %s", exc)
                snippets = None
        df.insert(min(1, len(df.columns)), "snippet", snippets)  # after the id: the text is what people read
        self.table.value = df
        self.table_title.object = f"**{title}**: {total:,} documents; showing {len(df)}."

    # -- side panels ---------------------------------------------------------------------------------------

    def _refresh_side(self, *_: Any) -> None:
        filters = self.current_filters()
        mask = self.store.mask(filters)
        shown = self.store.count(filters)
        total = self.store.num_rows
        estimate = " (estimated from the prepared sample)" if self.store.prepared else ""
        lines = [f"**{shown:,}** of {total:,} documents pass the filters ({shown / max(total, 1):.1%}){estimate}"]
        self.counts.object = "\n\n".join(lines)
        missing = {name: self.store.missing(name) for name in self.ranges}
        missing = {name: n for name, n in missing.items() if n}
        if missing:
            how = "kept by" if self.keep_null.value else "dropped by a narrowed"
            self.nulls.object = f"Without a value ({how} range filter): " + ", ".join(
                f"{html.escape(name)} **{n:,}**" for name, n in missing.items()
            )
        else:
            self.nulls.object = "Every filtered signal has a value for every document."
        self.hists.objects = [pn.pane.HoloViews(p) for p in self._histograms(mask)]
        self.whatif.refresh()

    def _histograms(self, mask: np.ndarray | None) -> list[hv.Overlay]:
        """Histograms of the filtered signals and the colour signal: all documents (grey) and those shown."""
        names = list(self.ranges)
        c = self.colour_by()
        if c and c in self.store.columns.numeric and c not in names:
            names.append(c)
        plots = []
        for name in names[:4]:
            v = self.store.values(name)
            finite = np.isfinite(v)
            if not finite.any():
                continue
            lo, hi = float(v[finite].min()), float(v[finite].max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
            all_counts, _ = np.histogram(v[finite], edges)
            sel = finite if mask is None else finite & mask
            sel_counts, _ = np.histogram(v[sel], edges)
            plots.append(
                (
                    hv.Histogram((edges, all_counts), kdims=[name], vdims=["documents"]).opts(color="#dddddd")
                    * hv.Histogram((edges, sel_counts), kdims=[name], vdims=["documents"]).opts(color="#1f77b4")
                ).opts(width=280, height=170, title=name, toolbar=None)
            )
        return plots

    def panel(self) -> pn.viewable.Viewable:
        flag_widgets = [
            pn.Column(pn.pane.HTML(f"<small>{html.escape(n)}</small>", margin=(0, 5)), w, margin=(0, 0, 4, 0))
            for n, w in self.flags.items()
        ]
        sidebar = pn.Column(
            self.find.panel(),
            self.colour,
            self.probes.sidebar(),
            pn.pane.Markdown("### Filters"),
            self.more,
            self.range_box,
            self.keep_null,
            self.nulls,
            *self.pickers.values(),
            *flag_widgets,
            self.export.panel(),
            width=SIDEBAR_WIDTH,
            css_classes=["dq-sidebar"],
        )
        whatif = pn.Column(
            pn.pane.Markdown("### What if"), self.whatif.panel(), width=WHATIF_WIDTH, css_classes=["dq-whatif"]
        )
        # the sidebar has a fixed width; the map, the histograms and the table stretch over the rest, and the
        # what-if sits beside the histograms (beside the map it would push the page past a laptop's width)
        main = pn.Column(
            pn.Row(self.map_pane, self.legend, sizing_mode="stretch_width"),
            self.source,
            self.counts,
            pn.Row(self.hists, whatif, sizing_mode="stretch_width"),
            self.table_title,
            self.table,
            self.find.neighbours_title,
            self.find.neighbours_table,
            self.probes.main,
            sizing_mode="stretch_width",
            css_classes=["dq-main"],
        )
        return pn.Row(sidebar, main, sizing_mode="stretch_width")


def default_signals(store: RunStore, candidates: tuple[str, ...], n: int) -> list[str]:
    """Up to ``n`` numeric signals of ``candidates`` (in order) that have a value for most documents.

    A sparse candidate (filled below :data:`SPARSE_BELOW`) gives way to its stand-in (:data:`STAND_INS`) when that
    is filled, else is skipped. Without any, the best-filled numeric signals of the run.
    """
    cols = store.columns
    out: list[str] = []
    for name in candidates:
        if name not in cols.numeric:
            continue
        if store.filled(name) < SPARSE_BELOW:
            alt = STAND_INS.get(name)
            if not (alt in cols.numeric and store.filled(alt) >= SPARSE_BELOW):
                continue
            name = alt
        if name not in out:
            out.append(name)
    if not out and n > 1:
        filled = [(store.filled(c), i, c) for i, c in enumerate(cols.numeric)]
        out = [c for f, _, c in sorted(filled, key=lambda t: (-t[0], t[1])) if f > 0][:2]
    return out[:n]


def _default_colour(store: RunStore) -> str:
    for c in ("topic_id", "source"):
        if c in store.columns.colour_choices and store.filled(c) >= SPARSE_BELOW:
            return c
    return next(iter(default_signals(store, ("askllm_score", "density_score"), 1)), "count")


def _numeric_options(store: RunStore) -> dict[str, str]:
    """The numeric signals as select options, sparse ones labelled with their share of documents with a value."""
    out = {}
    for name in store.columns.numeric:
        filled = store.filled(name)
        out[name if filled >= SPARSE_BELOW else f"{name} ({filled:.0%} have a value)"] = name
    return out


# -- what if -----------------------------------------------------------------------------------------------


class WhatIfPanel:
    """How many documents, and which topics (or sources), a selection policy would keep, before writing.

    The policy is built from the widgets (required flags, a top fraction by a score, density sampling, a topic
    quota) or pasted as YAML (the ``rules:`` of ``dq-ray select``), and evaluated with ``dq_ray.select``.
    """

    def __init__(self, store: RunStore, filters_fn) -> None:
        self.store = store
        self.filters_fn = filters_fn
        cols = store.columns
        dedup = [f for f in cols.flags if f.endswith("_keep")]
        self.require = pn.widgets.MultiChoice(label="Require true", options=list(cols.flags), value=dedup, width=320)
        score = next(iter(default_signals(store, ("askllm_score", "density_score"), 1)), None)
        self.score = pn.widgets.Select(
            label="Keep the top fraction by",
            options={"(none)": "(none)", **_numeric_options(store)},
            value=score or "(none)",
            width=320,
            css_classes=["dq-whatif-score"],
        )
        self.fraction = pn.widgets.FloatSlider(
            label="Top fraction", start=0.05, end=1.0, step=0.05, value=1.0, css_classes=["dq-whatif-fraction"]
        )
        self.density = pn.widgets.FloatSlider(
            label="Density sample fraction", start=0.05, end=1.0, step=0.05, value=1.0
        )
        self.density.visible = "density_weight" in cols.numeric
        topic = next((c for c in ("topic_id", "topic_coarse_id") if c in cols.categorical), None)
        self.topic_column = topic or "topic_id"
        self.quota = pn.widgets.FloatSlider(label="Max share per topic", start=0.01, end=1.0, step=0.01, value=1.0)
        self.quota.visible = topic is not None
        self.yaml = pn.widgets.TextAreaInput(
            label="or a policy (YAML rules, as for dq-ray select)", placeholder="rules:\n  - {kind: ...}", height=90
        )
        self.within = pn.widgets.Checkbox(label="Only documents passing the map filters", value=False)
        self.result = pn.pane.Markdown("", css_classes=["dq-whatif-result"])
        # fitted to the panel's width: no column cut off
        fit = dict(disabled=True, show_index=False, layout="fit_columns", sizing_mode="stretch_width")
        self.steps = pn.widgets.Tabulator(pd.DataFrame(), css_classes=["dq-whatif-steps"], **fit)
        self.groups = pn.widgets.Tabulator(pd.DataFrame(), height=260, css_classes=["dq-whatif-groups"], **fit)
        for w in (self.require, self.score, self.fraction, self.density, self.quota, self.yaml, self.within):
            w.param.watch(lambda *_: self.refresh(), "value")

    def policy(self) -> Policy:
        if self.yaml.value.strip():
            import yaml

            from dq_ray.select.policy import parse_policy

            data = yaml.safe_load(self.yaml.value)
            if isinstance(data, dict) and "selection" in data:
                data = data["selection"]
            return parse_policy(data, where="what-if policy")
        return build_policy(
            require=tuple(self.require.value),
            top_by=None if self.score.value == "(none)" else self.score.value,
            top_fraction=float(self.fraction.value),
            density_fraction=float(self.density.value) if self.density.visible else None,
            topic_max_share=float(self.quota.value) if self.quota.visible else None,
            topic_column=self.topic_column,
        )

    def refresh(self) -> None:
        try:
            policy = self.policy()
            mask = self.store.mask(self.filters_fn()) if self.within.value else None
            result = evaluate_policy(self.store, policy, within=mask)
        except Exception as exc:  # a bad YAML policy: say why, keep the panel alive
            self.result.object = f"**policy error**: {html.escape(str(exc))}"
            return
        self.result.object = (
            f"**{result.kept:,}** of {result.considered:,} documents kept ({result.kept_share:.1%})"
            + (" — estimated from the sample" if self.store.prepared else "")
        )
        self.steps.value = pd.DataFrame(result.steps)
        self.groups.value = result.by_group

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(
            self.require,
            self.score,
            self.fraction,
            self.density,
            self.quota,
            self.yaml,
            self.within,
            self.result,
            self.steps,
            self.groups,
            sizing_mode="stretch_width",
        )


# -- the other tabs ----------------------------------------------------------------------------------------


def preference_tab(store: RunStore) -> pn.viewable.Viewable:
    """Preference-pair signals of the ``pairs`` stage: see :func:`dashboards.preference_views.preference_tab`
    (margin histogram, chosen-vs-rejected judge scores, margin vs length difference, the prompt map coloured by
    margin, flagged pairs side by side)."""
    from dashboards.preference_views import preference_tab as _preference_tab

    return _preference_tab(store)


def document_view(store: RunStore, doc_id: str | None) -> pn.viewable.Viewable | None:
    """One document's text by id (``?doc=ID``); the id is looked up, never used as a path."""
    if not doc_id:
        return None
    text = store.document_text(doc_id)
    body = "no document with this id" if text is None else html.escape(text)
    return pn.pane.HTML(f"<h3>Document {html.escape(doc_id)}</h3><pre style='white-space:pre-wrap'>{body}</pre>")
