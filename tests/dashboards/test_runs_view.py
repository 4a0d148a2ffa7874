"""The map of an update (a run made with ``--baseline``): the run's and its baselines' documents as one corpus, with
a categorical ``run`` column; a run without a baseline is shown as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from dashboards.data_store import RunStore
from dashboards.runs_view import RUN_COLUMN, run_labels

from .conftest import write_synthetic_run

OWNER = {"dq_ray_version": "test", "run_id": "r"}


def _counts(store: RunStore) -> dict[str, int]:
    cat = store.category(RUN_COLUMN)
    return {label: int(np.count_nonzero(cat.codes == i)) for i, label in enumerate(cat.labels)}


@pytest.fixture
def synthetic_update(tmp_path, grid_table):
    """``old``: the 16 grid documents; ``new`` (baseline ``old``): 4 more at (5, 5)."""
    old = write_synthetic_run(tmp_path / "old", grid_table, manifest=OWNER)
    new_rows = grid_table.slice(0, 4)
    new_rows = new_rows.set_column(0, "id", pa.array([f"n{i}" for i in range(4)]))
    for name in ("map_x", "map_y"):
        new_rows = new_rows.set_column(new_rows.schema.get_field_index(name), name, pa.array([5.0] * 4, pa.float32()))
    manifest = {**OWNER, "baseline": {"path": str(old)}}
    return write_synthetic_run(tmp_path / "new", new_rows, manifest=manifest), old


def test_an_update_shows_its_baseline_with_a_run_column(synthetic_update):
    new, old = synthetic_update
    store = RunStore(new)
    assert store.view.is_update and store.view.labels == ("new", "old")
    assert store.num_rows == 20 and RUN_COLUMN in store.columns.categorical
    assert _counts(store) == {"new": 4, "old": 16}
    # the run's own rows come first (their positions as in its own docs/), then the baseline's
    assert store.take_rows([0, 4]).column("id").to_pylist() == ["n0", "d0"]
    total, rows = store.select(bounds=(4.5, 4.5, 5.5, 5.5))
    assert total == 4 and set(rows.column("id").to_pylist()) == {f"n{i}" for i in range(4)}
    from dashboards.data_store import Filters

    assert store.count(Filters(categories={RUN_COLUMN: ("old",)})) == 16
    assert store.document_text("d3").startswith("document 0-3")  # a baseline document's text


def test_a_run_without_baseline_or_with_a_lost_one_shows_its_own_documents(synthetic_update, grid_table, tmp_path):
    alone = RunStore(write_synthetic_run(tmp_path / "alone", grid_table))
    assert not alone.view.is_update and RUN_COLUMN not in alone.dataset.schema.names
    assert RUN_COLUMN not in alone.columns.categorical and alone.num_rows == 16
    new, old = synthetic_update
    shutil.rmtree(old)
    store = RunStore(new)  # the baseline is gone: the update alone, logged
    assert not store.view.is_update and store.num_rows == 4


def test_labels_are_folder_names_made_distinct():
    assert run_labels(["/r/2026-12", "/r/2026-11"]) == ["2026-12", "2026-11"]
    assert run_labels(["/a/run", "/b/run"]) == ["a/run", "b/run"]


def test_a_real_update_is_coloured_by_run(update_run):
    from dashboards.render import render
    from dashboards.views import MapExplorer

    base = json.loads((update_run / "manifest.json").read_text())["baseline"]["path"]
    own = pads.dataset(update_run / "docs", format="parquet").count_rows()
    old = pads.dataset(f"{base}/docs", format="parquet").count_rows()
    store = RunStore(update_run)
    assert _counts(store) == {"update": own, "base": old}
    assert store.num_rows == own + old
    explorer = MapExplorer(store)
    assert RUN_COLUMN in explorer.colour.options
    frame = render(store, store.bounds()[0], store.bounds()[1], 80, 60, colour_by=RUN_COLUMN)
    assert set(frame.legend) == {"update", "base"}
    assert sum(frame.shown.values()) == own + old
    # a baseline document's snippet is read from the baseline's inputs, checked against its receipts
    rows = store.take_rows([own])
    assert rows.column(RUN_COLUMN if RUN_COLUMN in rows.column_names else "id").to_pylist()
    assert store.snippets(rows)[0]
