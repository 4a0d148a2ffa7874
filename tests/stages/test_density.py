"""The density stage on real embeddings of real documents (int8 all-MiniLM-L6-v2, packaged, one load)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from dq_ray.artifacts import SIGNATURE, sign_artifacts, verify_artifacts
from dq_ray.config import ConfigError
from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs
from dq_ray.stage import Resources, TableFitData
from dq_ray.stages._fit import fetched, local_dir
from dq_ray.stages.density import Density, DensityParams
from dq_ray.stages.embed import Embed, EmbedParams
from dq_ray.vectors import to_matrix as embeddings_to_numpy

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_DOCS = 2000


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def exact_kde(x: np.ndarray, bandwidth: float) -> np.ndarray:
    """Brute force: the Gaussian kernel summed over every other document."""
    d2 = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    k = np.exp(-d2 / (2 * bandwidth**2))
    np.fill_diagonal(k, 0.0)
    return k.sum(axis=1)


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    """N_DOCS real documents (tweets, Wikipedia leads, news, speeches) and their embeddings.

    A cluster of near-identical documents is planted: one Wikipedia lead and 7 lightly edited copies.
    """
    rng = np.random.default_rng(0)
    base = wikipedia_docs()[5]["text"]
    words = base.split()
    copies = [base]
    for _ in range(7):
        w = list(words)
        for i in rng.choice(len(w), size=3, replace=False):
            w[i] = w[i].upper()
        copies.append(" ".join(w))
    others = [
        d["text"] for d in tweet_docs()[:1200] + wikipedia_docs()[100:620] + news_docs()[:150] + speech_docs()[:130]
    ]
    texts = copies + others[: N_DOCS - len(copies)]
    n = len(texts)
    table = pa.table(
        {"id": [f"doc{i}" for i in range(n)], "text": texts, "source_file": ["c.jsonl"] * n, "source_index": range(n)}
    )
    embed = Embed(EmbedParams(backend="onnx", max_seq_length=32, batch_size=128))
    embed.ensure_setup()
    return embed.process(table).drop_columns(["text"])


def _fitted(table: pa.Table, tmp_path, params: DensityParams) -> tuple[Density, dict]:
    info = Density(params).fit(TableFitData(table, str(tmp_path)))
    sign_artifacts(str(tmp_path))  # what the pipeline does after every fit
    stage = Density(params)
    stage.artifacts_dir = str(tmp_path)
    stage.ensure_setup()
    return stage, info


def test_knn_matches_exact_kde(ray_local, corpus, tmp_path):
    stage, info = _fitted(corpus, tmp_path, DensityParams())
    assert info["index"] == "flat" and info["n"] == N_DOCS and info["bandwidth_estimated"]
    assert info["tail_anchors"] == DensityParams().tail_sample
    assert sorted(os.listdir(tmp_path)) == [SIGNATURE, "anchors.npz", "density.json", "doc_keys.npy", "index.faiss"]
    out = stage.process(corpus)
    assert out.column_names == ["id", "source_file", "source_index", "embedding", "density_score", "density_weight"]
    assert out.schema.field("density_score").type == pa.float32()
    score = out.column("density_score").to_numpy()
    x = embeddings_to_numpy(corpus.column("embedding"))
    exact = exact_kde(x, info["bandwidth"])
    assert spearman(score, exact) >= 0.97, spearman(score, exact)
    # the anchors are what makes a kernel this wide rankable from 32 neighbours
    knn_only, _ = _fitted(corpus, tmp_path / "knn-only", DensityParams(tail_sample=0, bandwidth=info["bandwidth"]))
    without = knn_only.process(corpus).column("density_score").to_numpy()
    assert spearman(without, exact) < spearman(score, exact) - 0.02, (spearman(without, exact), spearman(score, exact))

    # the 8 planted near-copies each count the other 7 (kernel ~1 each), and are among the densest
    assert score[:8].min() > 6.0, score[:8]
    assert score[:8].min() > np.quantile(score, 0.9)
    weight = out.column("density_weight").to_numpy()
    assert weight[:8].max() < np.quantile(weight, 0.1)
    assert 0.9 < weight.mean() < 1.1
    assert weight.max() <= DensityParams().max_weight
    # coverage: the crowded source (1200 short tweets) is down-weighted against the Wikipedia leads
    tweets, wiki = weight[8:1208], weight[1208:1728]
    assert np.median(tweets) < np.median(wiki), (np.median(tweets), np.median(wiki))


def test_ivf_and_pq_indexes_approximate_flat(ray_local, corpus, tmp_path):
    flat, info = _fitted(corpus, tmp_path / "flat", DensityParams())
    reference = flat.process(corpus).column("density_score").to_numpy()
    for kind in ("ivf_flat", "ivf_pq"):
        params = DensityParams(index=kind, nlist=16, nprobe=4, pq_m=32, bandwidth=info["bandwidth"])
        stage, fitted = _fitted(corpus, tmp_path / kind, params)
        assert fitted["index"] == kind and fitted["nlist"] == 16
        score = stage.process(corpus).column("density_score").to_numpy()
        assert spearman(score, reference) > (0.9 if kind == "ivf_flat" else 0.6), kind


def test_sketch_correlates_with_exact_kde(ray_local, corpus, tmp_path):
    stage, info = _fitted(corpus, tmp_path, DensityParams(method="sketch"))
    assert info["method"] == "sketch" and os.path.exists(tmp_path / "sketch.npz")
    score = stage.process(corpus).column("density_score").to_numpy()
    x = embeddings_to_numpy(corpus.column("embedding"))
    assert spearman(score, exact_kde(x, 0.3)) > 0.8
    assert score[:8].min() > np.median(score)
    weight = stage.process(corpus).column("density_weight").to_numpy()
    assert 0.9 < weight.mean() < 1.1


class _DensityActor:
    """What the pipeline does with a stateful stage: set up once in a Ray actor, then map batches."""

    def __init__(self, stage: Density) -> None:
        self.stage = stage
        stage.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process(batch)


PARAMS_SMALL = DensityParams(k=8)


def test_density_runs_in_ray_actors(ray_local, corpus, tmp_path):
    """The stage pickles un-set-up, loads its artifacts in a Ray actor and scores rows as on the driver."""
    import ray.data

    sample = corpus.slice(0, 300)
    local, _ = _fitted(sample, tmp_path, PARAMS_SMALL)
    worker_stage = Density(PARAMS_SMALL)
    worker_stage.artifacts_dir = str(tmp_path)
    worker_stage.artifact_digests = verify_artifacts(str(tmp_path))  # as the pipeline hands them to workers
    ds = ray.data.from_arrow(sample).map_batches(
        _DensityActor,
        fn_constructor_kwargs={"stage": worker_stage},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=64,
        batch_format="pyarrow",
    )
    out = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None)).sort_by("id")
    expected = local.process(sample).sort_by("id")
    # equal up to float32 rounding (BLAS sums in a different order for a 64-row batch)
    for col in ("density_score", "density_weight"):
        np.testing.assert_allclose(out.column(col).to_numpy(), expected.column(col).to_numpy(), rtol=1e-5)


class _UrlFitData(TableFitData):
    """TableFitData whose artifacts_dir is an fsspec URL (as on a cluster with object storage)."""

    def __init__(self, table: pa.Table, url: str) -> None:
        self.table, self.artifacts_dir = table, url


@pytest.mark.parametrize("method", ["knn", "sketch"])
def test_artifacts_on_an_fsspec_url(ray_local, corpus, tmp_path, method):
    sample = corpus.slice(0, 300)
    params = DensityParams(method=method, k=8, sketch_rows=8, sketch_bits=8)
    local, _ = _fitted(sample, tmp_path, params)
    url = f"memory://dq-density-test/{method}/artifacts/density"
    Density(params).fit(_UrlFitData(sample, url))
    sign_artifacts(url)
    remote = Density(params)
    remote.artifacts_dir = url
    remote.ensure_setup()
    with fetched(url) as src:
        assert sorted(os.listdir(src)) == sorted(os.listdir(tmp_path))
    np.testing.assert_array_equal(
        remote.process(sample).column("density_score"), local.process(sample).column("density_score")
    )
    with local_dir(str(tmp_path / "plain")) as out:  # a local path is written in place
        assert out == str(tmp_path / "plain") and os.path.isdir(out)


def test_tiny_corpus_and_exact_duplicates(ray_local, corpus, tmp_path):
    """Fewer documents than k, and exact copies: a copy counts as a neighbour, the document itself never."""
    rows = corpus.slice(10, 5)
    twin = rows.slice(0, 1)
    twin = twin.set_column(twin.schema.get_field_index("source_index"), "source_index", pa.array([10**6]))
    twins = pa.concat_tables([rows, twin])
    stage, _ = _fitted(twins, tmp_path, DensityParams(bandwidth=0.3))
    score = stage.process(twins).column("density_score").to_numpy()
    assert score[0] == pytest.approx(score[-1]) and score[0] >= 1.0  # each other's exact copy: K(0) = 1
    assert np.all(score[1:5] < 1.0)


def test_params_are_validated():
    with pytest.raises(ConfigError, match="knn, sketch"):
        DensityParams(method="exact")
    with pytest.raises(ConfigError, match="gaussian, laplace"):
        DensityParams(kernel="cosine")
    with pytest.raises(ConfigError, match="bandwidth_neighbour"):
        DensityParams(k=4, bandwidth_neighbour=10)
    with pytest.raises(ConfigError, match="sketch_bits"):
        DensityParams(method="sketch", sketch_bits=40)
    with pytest.raises(RuntimeError, match="fitted"):
        Density().setup()


def test_knn_asks_for_a_gpu_when_the_cluster_has_one():
    cpu = Resources(num_cpus=1, batch_size=2048)
    assert Density().resources_for(cpu, cluster_gpus=0) == cpu
    assert Density().resources_for(cpu, cluster_gpus=2) == Resources(
        num_cpus=1, num_gpus=1, concurrency=2, batch_size=2048
    )
    assert Density(DensityParams(device="cpu")).resources_for(cpu, cluster_gpus=2) == cpu
    assert Density(DensityParams(method="sketch")).resources_for(cpu, cluster_gpus=2) == cpu


@pytest.mark.gpu
def test_gpu_index_matches_cpu(ray_local, corpus, tmp_path):
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("no GPU for faiss")
    stage, _ = _fitted(corpus, tmp_path, DensityParams())
    assert "Gpu" in type(stage.index).__name__
    cpu_index = faiss.read_index(str(tmp_path / "index.faiss"))
    on_gpu = stage.process(corpus).column("density_score").to_numpy()
    stage.index = cpu_index
    np.testing.assert_allclose(on_gpu, stage.process(corpus).column("density_score").to_numpy(), rtol=1e-3)
