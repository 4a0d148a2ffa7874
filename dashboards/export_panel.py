"""The map's Export: the documents on screen, written as a dataset with its card, the way ``dq-ray export`` does.

The user names the export; it is written to ``RUN/exports/<name>/`` (``data/``, ``README.md``, ``export.json``)
by :func:`dq_ray.select.export.export_run`, limited by key to the documents passing the map's filters, or to the
last box or lasso selection. The name is checked (letters, digits, ``-``, ``_``, ``.``), so the browser can never
choose where on the server the files go, and an existing export is never overwritten.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import panel as pn

from dashboards.data_store import Filters, RunPathError, RunStore

log = logging.getLogger(__name__)

#: Where exports go, inside the run directory.
EXPORTS_DIR = "exports"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def export_path(store: RunStore, name: str) -> str:
    """``RUN/exports/<name>`` for a valid, unused ``name``; ``ValueError`` saying what is wrong otherwise."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise ValueError("name the export with letters, digits, '-', '_' or '.' (at most 64 characters)")
    try:
        path = store.path(EXPORTS_DIR, name)
    except RunPathError as exc:
        raise ValueError(str(exc)) from exc
    if os.path.exists(path):
        raise ValueError(f"{EXPORTS_DIR}/{name} exists already: choose another name")
    return path


class ExportPanel:
    """Name, format, scope and an Export button; the status line says what was written, or why not.

    ``filters_fn`` returns the map's filters; ``area_fn`` the last box or lasso selection as keyword arguments of
    :meth:`RunStore.keys_of` (``{"bounds": ...}`` or ``{"polygon": ...}``), or None when there is none.
    """

    def __init__(
        self, store: RunStore, filters_fn: Callable[[], Filters], area_fn: Callable[[], dict[str, Any] | None]
    ) -> None:
        self.store, self.filters_fn, self.area_fn = store, filters_fn, area_fn
        self.name = pn.widgets.TextInput(
            label="Export as", placeholder="a name, e.g. high-quality", width=260, css_classes=["dq-export-name"]
        )
        self.format = pn.widgets.RadioButtonGroup(options=["parquet", "jsonl"], value="parquet", width=260)
        self.scope = pn.widgets.Select(
            label="Documents", options=["passing the filters", "in the last box / lasso selection"], width=260
        )
        self.text = pn.widgets.Checkbox(label="with the text (re-read from the inputs when the run did not keep it)")
        self.button = pn.widgets.Button(label="Export", width=120, css_classes=["dq-export"])
        self.status = pn.pane.Markdown("", css_classes=["dq-export-status"], width=260)
        self.button.on_click(self._export)

    def _export(self, *_: Any) -> None:
        from dq_ray.select.export import export_run

        try:
            out = export_path(self.store, self.name.value.strip())
            area = self.area_fn() if self.scope.value.startswith("in the last") else {}
            if area is None:
                raise ValueError("draw a box or a lasso on the map first")
            keys = self.store.keys_of(self.filters_fn(), **area)
            label = "the map's box / lasso selection" if area else "the map's filters"
            info = export_run(
                self.store.root, out, fmt=self.format.value, text=self.text.value, keys=keys, keys_label=label
            )
        except Exception as exc:  # shown to the user: a bad name, no selection, a prepared run, moved inputs
            log.warning("export from the map failed: %s", exc)
            self.status.object = f"Not exported: {exc}"
            return
        rel = os.path.relpath(out, self.store.root)
        self.status.object = f"Exported {info['rows_exported']:,} documents to `{rel}/` (card: `{rel}/README.md`)."

    def panel(self) -> pn.viewable.Viewable:
        return pn.Card(
            self.name,
            self.format,
            self.scope,
            self.text,
            self.button,
            self.status,
            title="Export",
            width=280,
        )
