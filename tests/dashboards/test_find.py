"""Search, neighbours and text on hover over a real tiny run (the pipeline's map_run), checked against brute force:
every document's text read and matched word by word, every embedding compared with every other."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from dashboards import hover
from dashboards.data_store import RunStore
from dashboards.neighbours import NEIGHBOURS_DIR, NeighbourIndex
from dashboards.pyramid import PREPARED_DIR
from dashboards.render import render
from dashboards.search import Searcher, keyword_snippet, parse_query
from dashboards.views import MapExplorer
from dq_ray.vectors import embedding_matrix

from .conftest import matching_rows, sample_queries


@pytest.fixture(scope="module")
def prepared(ray_local, map_run, tmp_path_factory):
    """A copy of map_run with RUN/dashboard/ written by dashboard-prepare (search and neighbour indexes)."""
    from dashboards.prepare import prepare

    root = tmp_path_factory.mktemp("find") / "run"
    shutil.copytree(map_run, root)
    info = prepare(str(root))
    return root, info


def test_the_scan_finds_exactly_the_documents_holding_the_words(map_run, doc_texts):
    store = RunStore(map_run)
    searcher = Searcher(store)
    assert searcher.method == "scan"  # no index: a tiny run is scanned
    for query in sample_queries(doc_texts):
        result = searcher.search(query)
        want = matching_rows(doc_texts, query)
        assert result.total == len(want), query
        assert result.rows.tolist() == want, query
    assert any(searcher.search(q).total for q in sample_queries(doc_texts)[:2])
    assert parse_query("   ").empty and searcher.search("").total == 0


def test_a_listed_result_shows_the_text_around_its_match():
    text = "alpha beta " * 100 + "The Harbour closed.  " + "gamma " * 100
    snippet = keyword_snippet(text, parse_query("harbour"), chars=60)
    assert "The Harbour closed." in snippet and snippet.startswith("…") and snippet.endswith("…")
    assert len(snippet) <= 62
    assert keyword_snippet("no match here", parse_query("harbour")) == "no match here"
    assert keyword_snippet("harbours only", parse_query("harbour")) == "harbours only"  # whole words


def test_prepare_writes_an_index_that_answers_like_the_scan(prepared, map_run, doc_texts):
    root, info = prepared
    assert info["search"]["documents"] == len(doc_texts) and info["search"]["postings"] > len(doc_texts)
    indexed = Searcher(RunStore(root))
    scanned = Searcher(RunStore(map_run))
    assert indexed.method == "index"
    for query in sample_queries(doc_texts):
        a, b = indexed.search(query), scanned.search(query)
        assert (a.total, a.rows.tolist()) == (b.total, b.rows.tolist()), query
    # the rows the index returns are the documents: their coordinates are the docs/ ones
    rows = indexed.search(sample_queries(doc_texts)[0]).rows
    got = RunStore(root).take_rows(rows)
    docs = RunStore(map_run).dataset.take(pa.array(rows), columns=["id", "map_x"])
    assert got.column("id").to_pylist() == docs.column("id").to_pylist()
    np.testing.assert_allclose(got.column("map_x").to_numpy(), docs.column("map_x").to_numpy())


def _brute_force(store: RunStore, row: int, k: int) -> tuple[list[int], np.ndarray]:
    e = embedding_matrix(store.dataset.to_table(columns=["embedding"]).column(0))
    sims = e @ e[row]
    sims[row] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order.tolist(), sims[order]


def test_neighbours_are_the_most_similar_embeddings(map_run, prepared):
    store = RunStore(map_run)
    doc = store.take_rows([7]).to_pylist()[0]
    want_rows, want_sims = _brute_force(store, 7, 10)
    for s in (store, RunStore(prepared[0])):
        index = NeighbourIndex(s)
        assert index.available() is None
        near = index.neighbours(doc["source_file"], doc["source_index"], 10)
        assert near.num_rows == 10
        np.testing.assert_allclose(near.column("similarity").to_numpy(), want_sims, rtol=1e-4, atol=1e-5)
        assert set(near.column("row").to_pylist()) == set(want_rows)  # ties may swap places, not members
        assert 7 not in near.column("row").to_pylist()
    assert NeighbourIndex(RunStore(prepared[0])).index() is not None


def test_a_changed_neighbour_index_is_not_loaded(prepared, tmp_path, caplog):
    root = tmp_path / "run"
    shutil.copytree(prepared[0], root)
    path = root / PREPARED_DIR / NEIGHBOURS_DIR / "index.faiss"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    index = NeighbourIndex(RunStore(root))
    index.index()
    assert index.source == "exact index in memory"  # rebuilt from the embeddings, the changed file refused
    assert "not loaded" in caplog.text


def _pixel_of(data, x: float, y: float) -> tuple[int, int]:
    xs, ys = data.coords["x"].values, data.coords["y"].values
    return int(np.argmin(np.abs(ys - y))), int(np.argmin(np.abs(xs - x)))


def test_hover_carries_the_document_under_each_pixel(map_run):
    store = RunStore(map_run)
    frame = render(store, width=60, height=40, colour_by="topic_id", hover=True)
    data = frame.element.data
    docs = store.take_rows(range(store.num_rows))
    snippets = store.snippets(docs, hover.HOVER_CHARS)
    under: dict[tuple[int, int], set[str]] = {}
    for d in docs.to_pylist():
        under.setdefault(_pixel_of(data, d["map_x"], d["map_y"]), set()).add(d["id"])
    ids = data["id"].values
    for (iy, ix), names in under.items():
        assert ids[iy, ix] in names  # one of the documents drawn in that pixel
    assert (ids != hover.EMPTY).sum() == len(under)  # and nothing where there is no document
    by_id = dict(zip(docs.column("id").to_pylist(), snippets))
    (iy, ix), _ = next(iter(under.items()))
    assert data["snippet"].values[iy, ix] == by_id[ids[iy, ix]] and len(by_id[ids[iy, ix]]) > 20
    assert str(data["topic_id"].values[iy, ix]) == str(
        docs.column("topic_id")[docs.column("id").to_pylist().index(ids[iy, ix])]
    )


def test_hover_asks_to_zoom_in_when_the_frame_holds_many_documents(map_run, monkeypatch):
    store = RunStore(map_run)
    monkeypatch.setattr(hover, "HOVER_DOCS", 5)
    data = render(store, width=60, height=40, hover=True).element.data
    shown = data["id"].values[data["id"].values != hover.EMPTY]
    assert shown.size and set(shown) == {hover.ZOOM_IN}
    assert set(data["snippet"].values.ravel()) == {hover.EMPTY}
    x, y = store.xy()  # zoomed in on one document: few documents, their text
    cx, cy = float(x[0]), float(y[0])
    view = {"x_range": (cx - 0.01, cx + 0.01), "y_range": (cy - 0.01, cy + 0.01), "width": 20, "height": 20}
    near = set(render(store, hover=True, **view).element.data["id"].values.ravel()) - {hover.EMPTY}
    assert near and hover.ZOOM_IN not in near


def test_a_prepared_run_hovers_on_tiles_and_keeps_the_tooltip_columns_on_the_pyramid(prepared):
    store = RunStore(prepared[0])
    far = render(store, width=400, height=300, hover=True)  # the pyramid: no document rows, the same columns
    assert far.source.startswith("pyramid")
    data = far.element.data
    assert {"id", "snippet", "__index__"} <= set(data.data_vars)
    has_docs = np.isfinite(data["documents"].values)
    assert has_docs.sum() and (data["id"].values[has_docs] == hover.ZOOM_IN).all()  # where there are documents
    assert (data["id"].values[~has_docs] == hover.EMPTY).all()
    assert (data["__index__"].values[has_docs] >= 0).all() and (data["__index__"].values[~has_docs] == -1).all()
    assert set(data["snippet"].values.ravel()) == {hover.EMPTY}
    tiles = render(store, width=60, height=40, colour_by="topic_id", hover=True)
    assert tiles.source == "tiles"
    ids = set(tiles.element.data["id"].values.ravel()) - {hover.EMPTY}
    assert ids and ids <= set(store.dataset.to_table(columns=["id"]).column(0).to_pylist())


def test_the_explorer_marks_search_hits_and_a_clicked_documents_neighbours(map_run, doc_texts):
    explorer = MapExplorer(RunStore(map_run))
    word = sample_queries(doc_texts)[0]
    explorer.find.search(word)
    n = len(matching_rows(doc_texts, word))
    assert explorer.find.marked()["search"] == n
    assert f"**{n:,}** documents match" in explorer.find.status.object
    assert len(explorer.table.value) == n and "Search" in explorer.table_title.object
    assert all(word in s.lower() for s in explorer.table.value["snippet"])  # the text around the match
    doc = explorer.store.take_rows([3]).to_pylist()[0]
    explorer._on_tap(x=doc["map_x"], y=doc["map_y"])
    assert explorer.find.marked() == {"search": n, "neighbours": 10, "document": 1}
    assert len(explorer.find.neighbours_table.value) == 10
    explorer.find.reset()
    assert explorer.find.marked() == {"search": 0, "neighbours": 0, "document": 0}
