"""The data store on a real pipeline run: schema discovery, lazy columns, projection, filters, snippets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from dashboards.data_store import Filters, RunStore, discover_columns, get_store
from dq_ray.config import InputConfig
from dq_ray.io import ShardResult, discover_inputs, read_shard

from .conftest import write_synthetic_run


@pytest.fixture(scope="module")
def docs(dash_run):
    return pads.dataset(dash_run / "docs", format="parquet").to_table()


def test_columns_are_discovered_from_the_schema(dash_run, docs):
    cols = discover_columns(docs.schema)
    assert {"heur_n_words", "heur_mean_word_length", "exact_dup_count"} <= set(cols.numeric)
    assert {"exact_dup_keep", "heur_c4_pass"} <= set(cols.flags)
    assert {"source", "heur_c4_reason"} <= set(cols.categorical)
    assert not {"id", "source_file", "source_index", "embedding", "exact_dup_group"} & set(cols.colour_choices)
    assert cols.has_embedding and not cols.has_map and not cols.has_text


def test_one_store_per_process_and_columns_load_on_demand(dash_run, docs):
    store = get_store(dash_run)
    assert get_store(str(dash_run) + "/") is store
    fresh = RunStore(dash_run)
    assert fresh.cached_columns() == []  # nothing is read until a view asks
    v = fresh.values("heur_n_words")
    assert fresh.cached_columns() == ["heur_n_words"] and v.dtype == np.float32
    np.testing.assert_array_equal(v, docs.column("heur_n_words").to_numpy().astype(np.float32))
    flags = fresh.values("exact_dup_keep")
    assert flags.dtype == np.int8 and int((flags == 0).sum()) == int(pc.sum(pc.invert(docs["exact_dup_keep"])).as_py())


def test_memory_budget_evicts_least_recently_used_columns(dash_run):
    n = RunStore(dash_run).num_rows
    store = RunStore(dash_run, memory_budget=3 * 4 * n)  # room for the map and about one float column
    store.xy()
    for name in ("heur_n_words", "heur_n_chars", "heur_n_lines", "heur_mean_word_length"):
        store.values(name)
    assert store.cache_bytes <= 3 * 4 * n
    assert "__xy__" in store.cached_columns() and "heur_mean_word_length" in store.cached_columns()
    assert "heur_n_words" not in store.cached_columns()
    np.testing.assert_array_equal(store.values("heur_n_words"), RunStore(dash_run).values("heur_n_words"))


def test_without_map_columns_the_store_projects_embeddings_with_pca(dash_run, docs):
    store = RunStore(dash_run)
    assert "PCA" in store.projection
    x, y = store.xy()
    emb = np.asarray(docs.column("embedding").to_pylist(), dtype=np.float64)
    centred = emb - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T
    for got, ref in ((x, want[:, 0]), (y, want[:, 1])):
        sign = np.sign(np.dot(got, ref))  # a principal axis is defined up to its sign
        np.testing.assert_allclose(got, sign * ref, atol=1e-4)
    assert x.var() >= y.var()


def test_filters_match_arrow_compute(dash_run, docs):
    store = RunStore(dash_run)
    f = Filters(
        ranges={"heur_n_words": (50, 400)}, flags={"exact_dup_keep": True}, categories={"source": ("wikipedia", "news")}
    )
    want = pc.and_(
        pc.and_(
            pc.and_(pc.greater_equal(docs["heur_n_words"], 50), pc.less_equal(docs["heur_n_words"], 400)),
            docs["exact_dup_keep"],
        ),
        pc.is_in(docs["source"], pa.array(["wikipedia", "news"])),
    )
    assert store.count(f) == int(pc.sum(want).as_py()) > 0
    np.testing.assert_array_equal(store.mask(f), want.to_numpy(zero_copy_only=False))


def test_selection_and_snippets_come_from_the_original_inputs(dash_run, docs, tiny_corpus):
    store = RunStore(dash_run)
    x, y = store.xy()
    box = (
        float(np.percentile(x, 20)),
        float(np.percentile(y, 20)),
        float(np.percentile(x, 80)),
        float(np.percentile(y, 80)),
    )
    total, rows = store.select(bounds=box, limit=10)
    inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    assert total == int(inside.sum()) and rows.num_rows == min(10, total)
    assert rows.column("id").to_pylist() == docs.column("id").take(np.flatnonzero(inside)[:10]).to_pylist()
    # the snippets equal the texts the reader gives for those records (every format of the tiny corpus)
    texts = {}
    cfg = InputConfig(paths=(str(tiny_corpus),))
    for shard in discover_inputs(cfg):
        for t in read_shard(shard, cfg, ShardResult(shard.path)):
            texts.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    _, everything = store.select(limit=10_000)
    snippets = store.snippets(everything)
    assert len(snippets) == everything.num_rows == store.num_rows
    for doc_id, snip in zip(everything.column("id").to_pylist(), snippets):
        assert snip is not None and snip.rstrip("…") == " ".join(texts[doc_id].split())[: len(snip.rstrip("…"))]
    some_id = everything.column("id")[5].as_py()
    assert store.document_text(some_id).startswith(" ".join(texts[some_id].split())[:50])


def test_a_run_without_map_or_embedding_plots_two_signals(tmp_path):
    t = pa.table(
        {"id": ["a", "b"], "source_file": ["f", "f"], "source_index": [1, 2], "s1": [1.0, 2.0], "s2": [3.0, 5.0]}
    )
    store = RunStore(write_synthetic_run(tmp_path / "r", t))
    assert "s1 against s2" in store.projection
    np.testing.assert_array_equal(store.xy()[1], [3.0, 5.0])
    with pytest.raises(FileNotFoundError):
        RunStore(tmp_path)


def test_the_dashboard_command_refuses_a_directory_without_a_run(tmp_path):
    from click.testing import CliRunner

    from dq_ray.cli import main

    result = CliRunner().invoke(main, ["dashboard", str(tmp_path), "--port", "0"])
    assert result.exit_code != 0 and "not a dq-ray run directory" in result.output
