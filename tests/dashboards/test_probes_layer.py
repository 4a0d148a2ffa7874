"""The map's probes layer: the probes of ``dq-ray gaps`` placed on the map, a probe's nearest documents listed with
their coverage and marked."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from dashboards.data_store import RunStore
from dashboards.probes_layer import COVERAGE, OFF, ProbeLayer, gaps_folders

from .conftest import write_synthetic_run


def test_no_gaps_report_no_layer(tmp_path, grid_table):
    layer = ProbeLayer(RunStore(write_synthetic_run(tmp_path / "run", grid_table)))
    assert layer.folders == [] and not layer.select.visible
    assert layer.xy()[0].size == 0


def test_probes_are_placed_and_list_their_neighbours(update_run):
    from dashboards.views import MapExplorer

    store = RunStore(update_run)
    assert gaps_folders(store) == ["gaps-probes"]
    explorer = MapExplorer(store)
    layer = explorer.probes
    assert layer.select.visible and layer.select.options == [OFF, "gaps-probes"]
    layer.select.value = "gaps-probes"
    written = pq.read_table(update_run / "gaps-probes" / "probes.parquet")
    x, y = layer.xy()
    assert x.size == written.num_rows == 5 and np.isfinite(x).all() and np.isfinite(y).all()
    assert len(layer.probe_table.value) == 5 and layer.main.visible

    # a click on the map at a probe lists its nearest documents (as gaps found them), marked on the map
    px, py = written.column("map_x")[2].as_py(), written.column("map_y")[2].as_py()
    explorer._on_tap(x=px, y=py)
    assert layer.current == 2
    df = layer.neighbours_table.value
    assert list(df["id"]) == written.column("neighbour_ids")[2].as_py()
    assert df[COVERAGE].between(0, 100).all() and df["cosine"].notna().all()
    assert df["snippet"].notna().all()
    assert len(layer.xy()[0]) == 5 and layer.neighbours.num_rows == len(df)
    assert np.isfinite(layer.neighbours.column("map_x").to_numpy()).all()

    layer.select.value = OFF
    assert layer.xy()[0].size == 0 and not layer.main.visible
