"""Rendering on known points (counts, means, per-category counts, filters) and the views around the map."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pyarrow.parquet as pq
import pytest

from dashboards.data_store import Filters, RunStore
from dashboards.render import render
from dashboards.views import MapExplorer, preference_tab, summary_tab, topics_tab
from dashboards.whatif import build_policy, evaluate_policy
from dq_ray.select import evaluate

from .conftest import write_synthetic_run


@pytest.fixture
def store(tmp_path, grid_table):
    return RunStore(write_synthetic_run(tmp_path / "run", grid_table))


def _grid(frame, name=None):
    """The frame's values as a (y, x) array with y increasing upwards, as the map shows it."""
    el = frame.element
    name = name or el.vdims[0].name
    arr = np.asarray(el.dimension_values(name, flat=False), dtype=float)
    ys = el.dimension_values(1, expanded=False)
    return arr if ys[0] < ys[-1] else arr[::-1]


def test_counts_per_pixel_on_known_points(store):
    two = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2)
    assert isinstance(two.element, hv.Image) and two.source == "memory"
    np.testing.assert_array_equal(_grid(two), [[4, 4], [4, 4]])
    four = render(store, x_range=(0, 2), y_range=(0, 2), width=4, height=4)
    np.testing.assert_array_equal(_grid(four), np.ones((4, 4)))
    # zoomed on one unit cell: 4 documents, one per pixel of a 2x2 frame
    zoom = render(store, x_range=(1, 2), y_range=(0, 1), width=2, height=2)
    np.testing.assert_array_equal(_grid(zoom), np.ones((2, 2)))
    assert float(np.nansum(_grid(render(store, x_range=(5, 6), y_range=(5, 6), width=3, height=3)))) == 0


def test_colour_by_numeric_is_the_mean_per_pixel(store):
    frame = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="score")
    # cells (0,0), (1,0), (0,1), (1,1) hold scores 10 i + (0, 1, 2, 3)
    np.testing.assert_allclose(_grid(frame, "score"), [[1.5, 11.5], [21.5, 31.5]])


def test_colour_by_category_counts_each_category(store):
    frame = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="source")
    assert isinstance(frame.element, hv.ImageStack)
    assert set(frame.legend) == {"a", "b"}
    for label in ("a", "b"):
        np.testing.assert_array_equal(_grid(frame, label), [[2, 2], [2, 2]])
    flags = render(store, x_range=(0, 2), y_range=(0, 2), width=1, height=1, colour_by="ok_keep")
    assert float(_grid(flags, "true")[0, 0]) == 12 and float(_grid(flags, "false")[0, 0]) == 4


def test_filters_change_what_is_aggregated(store):
    f = Filters(ranges={"score": (10.0, 21.0)})  # cell 1 (10..13) and the first two of cell 2 (20, 21)
    frame = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, filters=f)
    np.testing.assert_array_equal(np.nan_to_num(_grid(frame)), [[0, 4], [2, 0]])
    assert frame.documents == 6 and store.count(f) == 6
    f = Filters(flags={"ok_keep": False}, categories={"source": ("b",)})
    assert store.count(f) == 4  # j == 3 is category b and not kept
    mean = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="score", filters=f)
    np.testing.assert_allclose(_grid(mean, "score"), [[3, 13], [23, 33]])


def test_explorer_filters_colour_and_selection(store):
    ex = MapExplorer(store)
    assert ex.current_filters().active() is False
    slider = ex.ranges["score"]
    slider.value = (10.0, slider.end)
    f = ex.current_filters()
    assert f.ranges == {"score": (10.0, 33.0)}
    hist = ex._histograms(store.mask(f))[0]
    shown = hist.get(1)  # the coloured layer: documents passing the filters
    assert int(shown.dimension_values("documents").sum()) == store.count(f) == 12
    ex.flags["ok_keep"].value = "true"
    assert ex.current_filters().flags == {"ok_keep": True}
    ex.colour.value = "source"  # a categorical colour: the map is rebuilt for ImageStack frames
    assert ex._frame(None, None, 40, 40).legend is not None
    ex._on_box(bounds=(0.0, 0.0, 1.0, 1.0))  # cell 0: scores 0..3, excluded by the score filter
    assert len(ex.table.value) == 0
    ex._on_box(bounds=(1.0, 0.0, 2.0, 1.0))  # cell 1: 3 documents kept by both filters
    table = ex.table.value
    assert list(table["id"]) == ["d4", "d5", "d6"]
    assert all(s.startswith(f"document 1-{j}") for j, s in enumerate(table["snippet"]))
    ex._on_lasso(geometry=np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]]))  # the triangle below the diagonal
    assert list(ex.table.value["id"]) == ["d4"]


def test_whatif_matches_the_selection_engine(store, grid_table):
    policy = build_policy(require=("ok_keep",), top_by="score", top_fraction=0.5)
    result = evaluate_policy(store, policy)
    direct = evaluate(policy, grid_table)
    assert result.kept == int(direct.kept.sum()) == 6 and result.considered == 16
    groups = result.by_group.set_index("source")
    assert groups.loc["a", "documents"] == 8 and groups["kept"].sum() == 6
    within = store.mask(Filters(categories={"source": ("a",)}))
    assert evaluate_policy(store, policy, within=within).considered == 8


def test_tabs(store, tmp_path, grid_table):
    assert summary_tab(store).name == "Run summary"
    assert "No topics" in topics_tab(store).objects[0].object
    assert "No preference pairs" in preference_tab(store).objects[0].object
    # a topic table and pair columns make the tabs show them
    import pyarrow as pa

    run = tmp_path / "run"
    (run / "artifacts").mkdir()
    pq.write_table(
        pa.table({"level": ["fine"], "topic_id": [0], "size": [16], "keywords": [["alpha", "beta"]]}),
        run / "artifacts" / "topics.parquet",
    )
    t = grid_table.append_column("pair_margin", pa.array(np.linspace(-1, 1, 16), pa.float32()))
    other = RunStore(write_synthetic_run(tmp_path / "pairs", t))
    assert "1 topics" in topics_tab(RunStore(run)).objects[0].object
    tab = preference_tab(other)  # filled in by dashboards.preference_views (issue 7)
    assert "No preference pairs" not in str(tab.objects[0].object)


def test_a_categorical_colour_keeps_every_layer_under_any_filter(store):
    full = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="ok_keep")
    layers = [d.name for d in full.element.vdims]
    for want in (True, False):
        f = Filters(flags={"ok_keep": want})
        frame = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="ok_keep", filters=f)
        assert [d.name for d in frame.element.vdims] == layers and frame.legend == full.legend
        assert frame.shown == {"true" if want else "false": 12 if want else 4}
        assert float(np.nansum(_grid(frame, "false" if want else "true"))) == 0
    empty = Filters(flags={"ok_keep": True}, ranges={"score": (3.0, 3.0)})  # score 3 is never kept
    frame = render(store, x_range=(0, 2), y_range=(0, 2), width=2, height=2, colour_by="source", filters=empty)
    assert [d.name for d in frame.element.vdims] == ["a", "b"] and frame.shown == {}


def test_range_filters_keep_documents_without_a_value_when_asked(tmp_path, grid_table):
    import pyarrow as pa

    sparse = pa.array([1.0 if i % 4 == 0 else None for i in range(16)], pa.float32())  # 4 of 16 have a value
    pred = pa.array(np.linspace(0, 1, 16), pa.float32())
    store = RunStore(
        write_synthetic_run(
            tmp_path / "run", grid_table.append_column("askllm_score", sparse).append_column("askllm_pred", pred)
        )
    )
    assert store.filled("askllm_score") == 0.25 and store.missing("askllm_score") == 12
    assert store.count(Filters(ranges={"askllm_score": (0.5, 1.0)})) == 4
    assert store.count(Filters(ranges={"askllm_score": (0.5, 1.0)}, keep_null=True)) == 16
    assert store.count(Filters(ranges={"askllm_score": (2.0, 3.0)}, keep_null=True)) == 12
    ex = MapExplorer(store)
    assert "askllm_pred" in ex.more.value and "askllm_score" not in ex.more.value
    assert ex.whatif.score.value == "askllm_pred" and ex.current_filters().keep_null is True


def test_summary_numbers_are_formatted():
    from dashboards.views import format_count, format_decimal

    assert format_count(3812.0) == "3,812" and format_count(None) == "" and format_count(float("nan")) == ""
    assert format_decimal(1.142349) == "1.1" and format_decimal(1794.9) == "1,794.9" and format_decimal(None) == ""


def test_topics_show_names_nested_under_coarse_topics(tmp_path, grid_table):
    """The legend names topics (``3: harbour · tides``), and the topics tab lists fine topics under their coarse
    topic."""
    import pyarrow as pa

    run = write_synthetic_run(tmp_path / "run", grid_table)
    art = run / "artifacts"
    art.mkdir(exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "level": ["fine", "fine", "fine", "coarse", "coarse"],
                "topic_id": [0, 1, 2, 0, 1],
                "topic_coarse_id": [1, 0, 1, 0, 1],
                "size": [5, 4, 7, 4, 12],
                "keywords": [["a"], ["b"], ["c"], ["b"], ["a", "c"]],
                "topic_label": ["harbour tides", "court cases", "ship news", "law", "sea"],
            }
        ),
        art / "topics.parquet",
    )
    store = RunStore(run)
    assert store.topic_names("topic_id") == {"0": "0: harbour tides", "1": "1: court cases", "2": "2: ship news"}
    assert store.topic_names("topic_coarse_id")["1"] == "1: sea" and store.topic_names("source") == {}
    df = topics_tab(store).objects[1].value
    assert list(df["topic_label"]) == ["sea", "ship news", "harbour tides", "law", "court cases"]
    assert list(df["level"]) == ["coarse", "  └ fine", "  └ fine", "coarse", "  └ fine"]
