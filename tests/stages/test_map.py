import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dq_ray.artifacts import SIGNATURE, UntrustedArtifactError, sign_artifacts, verify_artifacts
from dq_ray.stage import TableFitData
from dq_ray.stages.map import Map, MapParams, fit_pca, resolve_model_dir


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
    sign_artifacts(art)  # what the pipeline does after every fit
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
    # one changed byte of the signed pickle: the folder no longer verifies, and a worker holding the digests
    # verified before the change refuses the bytes it reads
    digests = verify_artifacts(str(tmp_path / "c"))
    _flip_last_byte(tmp_path / "c" / "umap.pkl")
    with pytest.raises(UntrustedArtifactError, match="umap.pkl changed"):
        verify_artifacts(str(tmp_path / "c"))
    worker = Map(MapParams(method="pca"))
    worker.artifacts_dir, worker.artifact_digests = str(tmp_path / "c"), digests
    with pytest.raises(UntrustedArtifactError, match="umap.pkl: changed"):
        worker.ensure_setup()


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


# -- loading only signed artifacts (a planted pickle must never run) ------------------------------------------


class _Planted:
    """A pickle payload that, when unpickled, creates ``marker`` (standing in for ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _planted_map(folder: Path, marker: Path) -> Path:
    """A saved-map folder as an attacker would plant it: ``map.json`` (umap) and a ``umap.pkl`` payload."""
    folder.mkdir(parents=True)
    (folder / "map.json").write_text(json.dumps({"method": "umap", "dim": 32, "sample_rows": 90, "bounds": [0] * 4}))
    (folder / "umap.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    return folder


def test_the_planted_payload_is_live(tmp_path):
    """Control: unpickling the payload does create the marker (so its absence below means it never ran)."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Planted(marker)))
    assert marker.exists()


def test_model_from_refuses_an_unsigned_planted_pickle(tmp_path):
    table, _ = _table(n_per=5)
    marker = tmp_path / "pwned"
    evil = _planted_map(tmp_path / "evil", marker)
    art = tmp_path / "run" / "artifacts" / "map"
    with pytest.raises(UntrustedArtifactError, match="not written by dq-ray on this machine.*DQ_RAY_ARTIFACT_KEY"):
        Map(MapParams(method="pca", model_from=str(evil))).fit(TableFitData(table, str(art)))
    assert not marker.exists()
    assert list(art.iterdir()) == []  # nothing copied
    # a planted RUN/artifacts/map (as a hostile run folder would hand to --resume): setup refuses it too
    stage = Map(MapParams(method="pca"))
    stage.artifacts_dir = str(evil)
    with pytest.raises(UntrustedArtifactError, match="not written by dq-ray"):
        stage.ensure_setup()
    stage.artifact_digests = {}  # digests from the driver that do not list the pickle
    with pytest.raises(UntrustedArtifactError, match="map.json: not listed"):
        stage.ensure_setup()
    assert not marker.exists()


def test_model_from_refuses_a_forged_signature(tmp_path, monkeypatch):
    table, _ = _table(n_per=5)
    marker = tmp_path / "pwned"
    evil = _planted_map(tmp_path / "evil", marker)
    files = {name: hashlib.sha256((evil / name).read_bytes()).hexdigest() for name in ("map.json", "umap.pkl")}
    forged = {"format": "dq-ray-artifacts/1", "algorithm": "HMAC-SHA256", "files": files, "mac": "0" * 64}
    (evil / SIGNATURE).write_text(json.dumps(forged))
    art = str(tmp_path / "run" / "artifacts" / "map")
    with pytest.raises(UntrustedArtifactError, match="does not match"):
        Map(MapParams(method="pca", model_from=str(evil))).fit(TableFitData(table, art))
    # a well-formed signature made with another key (the attacker's) is refused the same way
    with monkeypatch.context() as m:
        m.setenv("DQ_RAY_ARTIFACT_KEY", "ab" * 32)
        sign_artifacts(str(evil))
    with pytest.raises(UntrustedArtifactError, match="does not match"):
        Map(MapParams(method="pca", model_from=str(evil))).fit(TableFitData(table, art))
    assert not marker.exists()


def test_model_from_copies_only_signed_files(tmp_path, monkeypatch):
    table, _ = _table(n_per=5)
    marker = tmp_path / "pwned"
    genuine, _ = _fit(table, str(tmp_path / "a" / "artifacts" / "map"), method="pca")
    src = tmp_path / "a" / "artifacts" / "map"
    # a pickle dropped next to a genuine signed PCA map is not listed, so it is neither copied nor loaded
    (src / "umap.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    reused, _ = _fit(table, str(tmp_path / "b"), method="pca", model_from=str(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [SIGNATURE, "map.json", "pca.npz"]
    assert np.array_equal(_xy(reused.process(table)), _xy(genuine.process(table)))
    # the genuine map checked with another key (a machine without the team's shared key): refused
    with monkeypatch.context() as m:
        m.setenv("DQ_RAY_ARTIFACT_KEY", "cd" * 32)
        with pytest.raises(UntrustedArtifactError, match="does not match the key in .DQ_RAY_ARTIFACT_KEY"):
            Map(MapParams(model_from=str(src))).fit(TableFitData(table, str(tmp_path / "c")))
    # switching the signed map.json to umap (to reach the pickle) breaks the signature
    info = json.loads((src / "map.json").read_text())
    (src / "map.json").write_text(json.dumps({**info, "method": "umap"}))
    with pytest.raises(UntrustedArtifactError, match="map.json changed since it was signed"):
        Map(MapParams(model_from=str(src))).fit(TableFitData(table, str(tmp_path / "d")))
    assert not marker.exists()
