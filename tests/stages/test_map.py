import numpy as np
import pyarrow as pa
import pytest

from dq_ray.stage import TableFitData
from dq_ray.stages.projection import Map, MapParams, fit_pca, resolve_model_dir


def _table(n_per: int = 60, dim: int = 32, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """Three well separated clusters of unit vectors, with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    x = np.concatenate([c + 0.15 * rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(3), n_per)
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
            "source_file": ["f.jsonl"] * len(x),
            "source_index": np.arange(len(x)),
        }
    )
    return table, labels


def _fit(table: pa.Table, art: str, **params) -> tuple[Map, dict]:
    stage = Map(MapParams(**params))
    info = stage.fit(TableFitData(table, art))
    stage.artifacts_dir = art
    stage.ensure_setup()
    return stage, info


def _xy(out: pa.Table) -> np.ndarray:
    return np.stack([out.column("map_x").to_numpy(), out.column("map_y").to_numpy()], axis=1)


def _knn_agreement(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


def test_pca_map_is_deterministic_separates_clusters_and_is_reusable(tmp_path):
    table, labels = _table()
    a, info = _fit(table, str(tmp_path / "a" / "artifacts" / "map"), method="pca", sample_rows=100)
    b, _ = _fit(table, str(tmp_path / "b" / "artifacts" / "map"), method="pca", sample_rows=100)
    xa, xb = _xy(a.process(table)), _xy(b.process(table))
    assert info["method"] == "pca" and info["sample_rows"] == 100
    assert np.array_equal(xa, xb)
    assert _knn_agreement(xa, labels) >= 0.95
    # a later run places documents on the same map without refitting (given the run dir or the map dir)
    reused, rinfo = _fit(table, str(tmp_path / "c"), method="pca", model_from=str(tmp_path / "a"))
    assert rinfo["model_from"].endswith("artifacts/map")
    assert np.array_equal(_xy(reused.process(table)), xa)
    # the principal axes are those of numpy's SVD, signs fixed
    x = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(labels), -1)
    pca = fit_pca(x)
    centred = x - x.mean(axis=0)
    var = (centred @ pca["components"].T).var(axis=0)
    assert var[0] >= var[1] and np.isclose(
        var.sum(), (np.linalg.svd(centred, compute_uv=False)[:2] ** 2).sum() / len(x)
    )


def test_umap_map_is_deterministic_and_reusable(tmp_path):
    pytest.importorskip("umap")
    table, labels = _table(n_per=40)
    params = dict(method="umap", n_neighbors=10, n_epochs=60, sample_rows=90, seed=3)
    a, info = _fit(table, str(tmp_path / "a" / "artifacts" / "map"), **params)
    assert info["method"] == "umap" and info["sample_rows"] == 90
    xa = _xy(a.process(table))
    assert np.isfinite(xa).all()
    assert np.array_equal(xa, _xy(a.process(table)))  # same model, same batch: same coordinates
    assert _knn_agreement(xa, labels) >= 0.9
    # refitting with the same seed reproduces the layout; reusing the saved model reproduces the coordinates
    b, _ = _fit(table, str(tmp_path / "b" / "artifacts" / "map"), **params)
    assert np.allclose(_xy(b.process(table)), xa, atol=1e-4)
    reused, rinfo = _fit(table, str(tmp_path / "c"), method="pca", model_from=str(tmp_path / "a"))
    assert rinfo["method"] == "umap"  # the saved model wins over the method given
    assert np.array_equal(_xy(reused.process(table)), xa)


def test_errors(tmp_path):
    table, _ = _table(n_per=5)
    stage, _ = _fit(table, str(tmp_path / "m"), method="pca")
    wrong = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(16, np.float32)), 8)})
    with pytest.raises(ValueError, match="fitted on 32"):
        stage.process(wrong)
    with pytest.raises(FileNotFoundError, match="map.json"):
        resolve_model_dir(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="method"):
        MapParams(method="tsne")
    # too few rows for UMAP: PCA, recorded
    _, info = _fit(table.slice(0, 6), str(tmp_path / "few"), method="auto")
    assert info["method"] == "pca"
