"""The prepare step (a Ray Data job): tiles, pyramid levels, the sample, and frames rendered from them."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dashboards.data_store import Filters, RunStore
from dashboards.prepare import prepare, tile_passes
from dashboards.pyramid import base_level_for, grid_index, tile_level_for, zorder
from dashboards.render import render

from .conftest import write_synthetic_run

N = 20_000
BASE = 5  # a 32 x 32 base grid


def test_zorder_interleaves_bits():
    ix = np.array([0, 1, 0, 1, 2, 3, 65535])
    iy = np.array([0, 0, 1, 1, 0, 3, 65535])
    assert zorder(ix, iy).tolist() == [0, 1, 2, 3, 4, 15, 2**32 - 1]
    assert (
        tile_level_for(100) == 0
        and tile_level_for(10**9) == 6
        and tile_level_for(10**12) == 8
        and tile_level_for(4_000_000) == 2
    )
    sizes = (10, 25 * 10**6, 25 * 10**6 + 1, 10**8, 10**8 + 1, 10**9, 10**12)
    assert [base_level_for(n) for n in sizes] == [10, 10, 11, 11, 12, 12, 12]


def test_tile_passes_cover_every_tile_once_within_the_budget():
    per_tile = np.array([5, 0, 3, 9, 1, 1, 0, 2])
    passes = tile_passes(per_tile, 6)
    assert passes == [(0, 1, 5), (2, 2, 3), (3, 3, 9), (4, 7, 4)]  # tile 3 alone exceeds the budget: own pass
    assert tile_passes(per_tile, 100) == [(0, 7, 21)]


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    rng = np.random.default_rng(0)
    centres = rng.uniform(-5, 5, size=(6, 2))
    pick = rng.integers(0, 6, N)
    xy = centres[pick] + rng.normal(0, 0.8, size=(N, 2))
    score = (xy[:, 0] + rng.normal(0, 0.1, N)).astype(np.float32)
    score[::97] = np.nan  # nulls are left out of means
    t = pa.table(
        {
            "id": [f"p{i}" for i in range(N)],
            "source_file": ["/nonexistent.jsonl"] * N,
            "source_index": pa.array(np.arange(N), pa.int64()),
            "source": pa.array(np.array(["a", "b", "c"])[pick % 3]),
            "score": pa.array(score, from_pandas=True),
            "ok_keep": pa.array(pick != 0),
            "map_x": pa.array(xy[:, 0].astype(np.float32)),
            "map_y": pa.array(xy[:, 1].astype(np.float32)),
        }
    )
    base = tmp_path_factory.mktemp("pyr")
    plain = write_synthetic_run(base / "plain", t)
    prepared = base / "prepared"
    shutil.copytree(plain, prepared)
    info = prepare(str(prepared), base_level=BASE, sample_rows=5_000, tile_level=2)
    return t, RunStore(plain), RunStore(prepared), info


def test_pyramid_levels_hold_exact_counts_and_means(runs):
    t, _, store, info = runs
    assert info["num_rows"] == N and info["tile_level"] == 2 and 4_000 < info["sample_rows"] < 6_000
    x, y = t["map_x"].to_numpy(), t["map_y"].to_numpy()
    ix = grid_index(x, *info["x_range"], BASE)
    iy = grid_index(y, *info["y_range"], BASE)
    want = np.zeros((32, 32))
    np.add.at(want, (iy, ix), 1)
    np.testing.assert_array_equal(store.prepared.grid(BASE, "count"), want)
    s = t["score"].to_numpy(zero_copy_only=False)
    ok = np.isfinite(s)
    sums = np.zeros((32, 32))
    np.add.at(sums, (iy[ok], ix[ok]), s[ok])
    np.testing.assert_allclose(store.prepared.grid(BASE, "score__sum"), sums, rtol=1e-9, atol=1e-6)
    for level in range(BASE + 1):
        g = store.prepared.grid(level, "count")
        assert g.shape == (2**level, 2**level) and g.sum() == N
        assert store.prepared.grid(level, "score__n").sum() == ok.sum()
    assert store.prepared.grid(0, "score__sum")[0, 0] == pytest.approx(float(s[ok].astype(np.float64).sum()), rel=1e-9)


def test_tiles_partition_every_row_spatially_sorted(runs):
    t, _, store, info = runs
    root = store.path("dashboard", "points")
    ds = store.prepared.points_dataset()
    rows = ds.to_table(columns=["id", "map_x", "map_y", "tile", "zkey"])
    assert rows.num_rows == N and sorted(rows["id"].to_pylist()) == sorted(t["id"].to_pylist())
    fx = grid_index(rows["map_x"].to_numpy(), *info["x_range"], BASE)
    fy = grid_index(rows["map_y"].to_numpy(), *info["y_range"], BASE)
    np.testing.assert_array_equal(rows["tile"].to_numpy(), zorder(fx >> 3, fy >> 3).astype(np.int64))
    for frag in pads.dataset(root, format="parquet", partitioning="hive").get_fragments():
        z = pq.read_table(frag.path, columns=["zkey"])["zkey"].to_numpy()
        assert (np.diff(z) >= 0).all(), frag.path  # sorted by the fine key inside each tile file


def test_frames_from_the_pyramid_and_the_tiles_match_memory(runs):
    _, plain, store, info = runs
    full = render(store, width=32, height=32)
    assert full.source == f"pyramid level {BASE}" and full.documents == N
    np.testing.assert_array_equal(
        np.nan_to_num(full.element.dimension_values("documents", flat=False)),  # rows: y ascending
        store.prepared.grid(BASE, "count"),
    )
    mean = render(store, width=8, height=8, colour_by="score")
    assert mean.source == "pyramid level 3"
    # a zoom to about 1% of the area: the tiles in view, rasterized exactly as the in-memory store does
    xr = (info["x_range"][0] + 2.0, info["x_range"][0] + 3.5)
    yr = (info["y_range"][0] + 5.0, info["y_range"][0] + 6.5)
    for colour in (None, "score", "source"):
        zoom = render(store, xr, yr, 200, 200, colour_by=colour)
        ref = render(plain, xr, yr, 200, 200, colour_by=colour)
        assert zoom.source == "tiles" and ref.source == "memory"
        in_view = {vd.name for vd in zoom.element.vdims}  # categories: only those present in the view
        for vd in ref.element.vdims:
            want = ref.element.dimension_values(vd.name)
            if vd.name in in_view:
                np.testing.assert_allclose(zoom.element.dimension_values(vd.name), want, equal_nan=True)
            else:
                assert np.nansum(want) == 0
    px, py = plain.xy()
    inside = plain.values("score")[(px >= xr[0]) & (px <= xr[1]) & (py >= yr[0]) & (py <= yr[1])]
    lo, hi = np.nanpercentile(inside, [20, 70])
    f = Filters(flags={"ok_keep": True}, ranges={"score": (float(lo), float(hi))})
    zf, rf = render(store, xr, yr, 100, 100, filters=f), render(plain, xr, yr, 100, 100, filters=f)
    assert zf.source == "tiles" and 0 < zf.documents == rf.documents < len(inside)
    box = (xr[0], yr[0], xr[1], yr[1])
    assert store.select(f, bounds=box)[0] == plain.select(f, bounds=box)[0] > 0


def test_counts_on_a_prepared_run_are_estimated_from_the_sample(runs):
    _, plain, store, _ = runs
    f = Filters(flags={"ok_keep": True})
    assert store.rows_in_memory < N and store.num_rows == N
    assert store.count(f) == pytest.approx(plain.count(f), rel=0.05)


def test_prepared_data_of_an_overwritten_run_is_ignored(runs, tmp_path):
    import json

    _, _, store, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    assert RunStore(copy).prepared is not None
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "started_at": "2030-01-01T00:00:00+00:00"}))
    fresh = RunStore(copy)  # a new run in the same directory: the old tiles and pyramid must not be shown
    assert fresh.prepared is None and fresh.num_rows == N


def test_tiles_written_in_several_passes_equal_one_pass(runs, tmp_path):
    """A budget of a few thousand rows per pass: the same tiles, rows and frames as the one-pass prepare."""
    _, _, one, _ = runs
    copy = tmp_path / "passes"
    shutil.copytree(one.root, copy)
    info = prepare(str(copy), base_level=BASE, sample_rows=5_000, tile_level=2, pass_rows=4_000, search=False)
    assert info["tile_passes"] > 2
    many = RunStore(copy)
    cols = ["id", "tile", "zkey"]
    a = one.prepared.points_dataset().to_table(columns=cols).sort_by("id")
    b = many.prepared.points_dataset().to_table(columns=cols).sort_by("id")
    assert a.equals(b)
    xr = (info["x_range"][0] + 2.0, info["x_range"][0] + 3.5)
    yr = (info["y_range"][0] + 5.0, info["y_range"][0] + 6.5)
    fa, fb = render(one, xr, yr, 200, 200, colour_by="score"), render(many, xr, yr, 200, 200, colour_by="score")
    assert fa.source == fb.source == "tiles" and fa.documents == fb.documents > 0


def test_crowded_zoom_takes_the_base_level_or_the_sample(runs, monkeypatch):
    """More documents in view than the tiles' budget: counts from the base level with cells up to 16 px wide,
    categories from the sample; within the budget the same view reads the tiles."""
    import dashboards.render as render_mod

    _, _, store, info = runs
    monkeypatch.setattr(render_mod, "MAX_TILE_POINTS", 100)
    (x0, x1), (y0, y1) = info["x_range"], info["y_range"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) / 4, (y1 - y0) / 4
    view = (cx - w, cx + w), (cy - h, cy + h)  # half of each side: 16 base cells over 128 px = 8 px per cell
    assert store.prepared.rows_in_view(*view) > 100
    counts = render(store, *view, 128, 128)
    assert counts.source == f"pyramid level {BASE}" and counts.documents == store.prepared.rows_in_view(*view)
    assert render(store, *view, 128, 128, colour_by="source").source == "sample"
    monkeypatch.setattr(render_mod, "MAX_TILE_POINTS", 10**9)
    assert render(store, *view, 128, 128).source == "tiles"
