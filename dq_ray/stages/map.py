"""Map coordinates: a 2-D projection of every document's embedding (``map_x``, ``map_y``) for the map dashboard.

**Fit** on a deterministic sample of ``embedding`` (the vectors L2-normalised, as everywhere in dq-ray):

* ``umap`` (umap-learn): UMAP with ``random_state = seed`` (single-threaded, so it is reproducible), cosine
  metric. Documents outside the sample are placed with UMAP's ``transform`` (their nearest sample points and a
  short optimisation against the fixed fitted layout).
* ``pca``: the two leading principal components of the sample (numpy SVD, the sign of each component fixed so
  its largest loading is positive). A matrix product per batch: the fast fallback for very large corpora.
* ``auto``: ``umap`` when umap-learn is installed, else ``pca``.

The fitted model goes to ``RUN/artifacts/map/`` (``map.json`` + ``umap.pkl`` or ``pca.npz``). ``model_from``
names such a directory (or a run directory holding one) to place new documents on an earlier run's map without
refitting: the model is copied into this run's artifacts and applied as is. The source must be a folder signed by
dq-ray with this machine's key (or ``$DQ_RAY_ARTIFACT_KEY``, see :mod:`dq_ray.artifacts`): it is verified before
anything is copied, only its signed model files are copied (each checked again as it is read), and anything else
is refused with :class:`~dq_ray.artifacts.UntrustedArtifactError`. The UMAP model is a pickle, so it is only ever
loaded through :func:`~dq_ray.artifacts.load_pickle_trusted`, from the signed bytes.

**Apply** runs in a pool of Ray actors (the UMAP model and numba's compiled code are loaded once per actor).
A UMAP transform's result for a document can depend slightly on the other documents of its batch (the
optimisation draws negative samples in sequence); for a fixed batching and model it is reproducible.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import pickle
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.artifacts import (
    UntrustedArtifactError,
    load_json_trusted,
    load_npz_trusted,
    load_pickle_trusted,
    read_trusted,
    trusted_digests,
    verify_artifacts,
)
from dq_ray.stage import FitData, Resources, Stage, append_columns, register
from dq_ray.stages._fit import embedding_sample, rows_to_fit
from dq_ray.vectors import embedding_matrix

log = logging.getLogger(__name__)

METHODS = ("auto", "umap", "pca")
MODEL_INFO = "map.json"
UMAP_MODEL = "umap.pkl"
PCA_MODEL = "pca.npz"
#: Below this many sampled rows UMAP is not meaningful; the fit falls back to PCA (and records it).
MIN_UMAP_ROWS = 10


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


@dataclass(frozen=True)
class MapParams:
    """Settings of the ``map`` stage.

    Attributes:
        method: ``umap``, ``pca`` or ``auto`` (UMAP when umap-learn is installed, else PCA).
        sample_rows: embeddings the projection is fitted on (a seeded uniform sample).
        n_neighbors: UMAP's neighbourhood size (local vs global structure).
        min_dist: UMAP's minimum distance between points in the layout.
        metric: UMAP's metric on the embeddings.
        n_epochs: UMAP's optimisation epochs (null: umap-learn's default for the sample size).
        seed: seed of the sample and of UMAP (``random_state``).
        model_from: a saved map (``RUN/artifacts/map`` of an earlier run, or that run's directory) to apply
            instead of fitting a new one.
    """

    method: str = "auto"
    sample_rows: int = 10_000
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    n_epochs: int | None = None
    seed: int = 0
    model_from: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        if self.method == "umap" and self.model_from is None and not umap_available():
            raise ValueError("method umap needs umap-learn: pip install 'umap-learn>=0.5.7' (or use method: pca)")
        if self.sample_rows < 2 or self.n_neighbors < 2:
            raise ValueError("sample_rows and n_neighbors must be >= 2")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ValueError("n_epochs must be >= 1 or null")


def fit_pca(x: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and the two leading principal axes of ``x`` (rows), signs fixed for reproducibility."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = np.zeros((2, x.shape[1]), dtype=np.float32)
    comps[: min(2, len(vt))] = vt[:2]
    for row in comps:
        if row.any() and row[np.argmax(np.abs(row))] < 0:
            row *= -1
    return {"mean": mean.astype(np.float32), "components": comps}


def fit_umap(x: np.ndarray, p: MapParams) -> Any:
    """A UMAP model fitted on ``x`` (deterministic for ``p.seed``)."""
    import umap

    model = umap.UMAP(
        n_components=2,
        n_neighbors=min(p.n_neighbors, len(x) - 1),
        min_dist=p.min_dist,
        metric=p.metric,
        n_epochs=p.n_epochs,
        random_state=p.seed,
        n_jobs=1,
    )
    model.fit(x)
    return model


def resolve_model_dir(path: str) -> str:
    """The directory holding ``map.json``: ``path`` itself, or ``path/artifacts/map`` for a run directory."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    for cand in (root.rstrip("/"), f"{root.rstrip('/')}/artifacts/map"):
        if fs.exists(f"{cand}/{MODEL_INFO}"):
            return fs.unstrip_protocol(cand)
    raise FileNotFoundError(f"map.model_from: no {MODEL_INFO} in {path!r} or {path!r}/artifacts/map")


@register
class Map(Stage):
    """Map coordinates: a 2-D UMAP (or PCA) projection of the embeddings, fitted on a sample."""

    name = "map"
    inputs = ("embedding",)
    outputs = {"map_x": pa.float32(), "map_y": pa.float32()}
    Params = MapParams
    default_resources = Resources(num_cpus=1, batch_size=4096)
    stateful = True

    # -- fit ----------------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        """Fit (or copy from ``model_from``) the projection; write it into ``data.artifacts_dir``."""
        import fsspec

        p, art = self.params, data.artifacts_dir
        if p.model_from:
            src = resolve_model_dir(p.model_from)
            info = copy_signed_model(src, art)
            log.info("map: reusing the %s projection from %s", info["method"], src)
            return {**info, "model_from": src, "documents": data.num_rows()}
        documents = rows_to_fit(data, "map")
        x = embedding_sample(data, p.sample_rows, p.seed)
        method = p.method if p.method != "auto" else ("umap" if umap_available() else "pca")
        if method == "umap" and len(x) < MIN_UMAP_ROWS:
            log.warning("map: %d sampled rows are too few for UMAP; using PCA", len(x))
            method = "pca"
        if method == "umap":
            model = fit_umap(x, p)
            with fsspec.open(posixpath.join(art, UMAP_MODEL), "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
            fitted = np.asarray(model.embedding_, dtype=np.float32)
        else:
            pca = fit_pca(x)
            with fsspec.open(posixpath.join(art, PCA_MODEL), "wb") as f:
                np.savez(f, **pca)
            fitted = (x - pca["mean"]) @ pca["components"].T
        info = {
            "method": method,
            "dim": int(x.shape[1]),
            "sample_rows": len(x),
            "bounds": [float(v) for v in (*fitted.min(axis=0), *fitted.max(axis=0))],
            "params": dataclasses.asdict(p),
        }
        with fsspec.open(posixpath.join(art, MODEL_INFO), "w") as f:
            json.dump(info, f, indent=2)
        log.info("map: %s fitted on %d sampled rows", method, len(x))
        return {**info, "documents": documents}

    # -- apply --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the fitted model from the signed artifacts (``artifact_digests``, else verified here)."""
        art = self.artifacts_dir
        if art is None:
            raise RuntimeError("map runs after its fit: artifacts_dir is not set")
        digests = trusted_digests(art, self.artifact_digests)
        self.info = load_json_trusted(art, MODEL_INFO, digests)
        if self.info["method"] == "umap":
            self.model = load_pickle_trusted(art, UMAP_MODEL, digests)
        else:
            npz = load_npz_trusted(art, PCA_MODEL, digests)
            self.mean, self.components = npz["mean"], npz["components"]

    def project(self, x: np.ndarray) -> np.ndarray:
        """2-D coordinates of unit-norm embeddings ``x`` under the fitted model."""
        if len(x) == 0:
            return np.zeros((0, 2), dtype=np.float32)
        if x.shape[1] != self.info["dim"]:
            raise ValueError(f"map: embeddings have {x.shape[1]} dims, the projection was fitted on {self.info['dim']}")
        if self.info["method"] == "umap":
            return np.asarray(self.model.transform(x), dtype=np.float32)
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def process(self, batch: pa.Table) -> pa.Table:
        xy = self.project(embedding_matrix(batch.column("embedding")))
        return append_columns(
            batch, {"map_x": pa.array(xy[:, 0], pa.float32()), "map_y": pa.array(xy[:, 1], pa.float32())}
        )


def copy_signed_model(src: str, art: str) -> dict[str, Any]:
    """Copy the saved map in ``src`` into ``art`` after verifying its signature; return its ``map.json``.

    ``src`` is verified (:func:`~dq_ray.artifacts.verify_artifacts`) before anything is copied; only the model
    files it lists are copied, each read through :func:`~dq_ray.artifacts.read_trusted` (the bytes written are the
    bytes checked). Raises :class:`~dq_ray.artifacts.UntrustedArtifactError` for an unsigned, forged or changed
    folder, or one whose signature does not list the files its method needs.
    """
    import fsspec

    try:
        digests = verify_artifacts(src)
    except UntrustedArtifactError as exc:
        raise UntrustedArtifactError(f"map.model_from: refusing to load the saved map: {exc}") from None
    info_bytes = read_trusted(src, MODEL_INFO, digests) if MODEL_INFO in digests else b"{}"
    info = json.loads(info_bytes)
    needed = {"umap": UMAP_MODEL, "pca": PCA_MODEL}.get(info.get("method"))
    if needed is None or needed not in digests:
        raise UntrustedArtifactError(
            f"map.model_from: the signature of {src!r} does not list a saved map ({MODEL_INFO} and "
            f"{needed or UMAP_MODEL + ' or ' + PCA_MODEL}); re-fit it"
        )
    # only the signed model files are copied, and the bytes written are the bytes checked
    model = read_trusted(src, needed, digests)
    for name, data in ((MODEL_INFO, info_bytes), (needed, model)):
        with fsspec.open(posixpath.join(art, name), "wb") as fo:
            fo.write(data)
    return info
