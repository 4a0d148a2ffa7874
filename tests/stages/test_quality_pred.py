"""The fast quality classifier (``quality_pred``) of ``askllm_distill``: the hashed n-gram ridge on real text, its
bad-input handling, and one small pipeline run with the packaged LLM judging the sample."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from dq_ray.config import load_config
from dq_ray.demo.corpus import news_docs, speech_docs, tweet_docs, wikipedia_docs
from dq_ray.errors import ConfigError
from dq_ray.pipeline import run_job
from dq_ray.select.policy import evaluate, parse_policy
from dq_ray.stages._quality_text import fit_text_ridge, text_features, text_logit, text_reasons
from dq_ray.stages.askllm_distill import AskLLMDistill, AskLLMDistillParams
from tests.helpers import write_jsonl


def test_the_text_ridge_learns_a_real_distinction_on_held_out_documents():
    """Target: which source a real document comes from (Wikipedia lead +2, health tweet -2): a linear signal in
    the words that the hashed 1-2-grams must carry to unseen documents."""
    rng = random.Random(0)
    wiki = rng.sample([d["text"] for d in wikipedia_docs()], 150)
    tweets = rng.sample([d["text"] for d in tweet_docs()], 150)
    texts, y = wiki + tweets, np.r_[np.full(150, 2.0), np.full(150, -2.0)]
    order = np.random.default_rng(0).permutation(300)
    train, test = order[:200], order[200:]
    x = text_features(texts, 2**18, 10000)
    coef, b, alpha = fit_text_ridge(x[train], y[train], (0.1, 1.0, 10.0))
    assert alpha in (0.1, 1.0, 10.0) and coef.dtype == np.float32 and coef.shape == (2**18,)
    auc = roc_auc_score(y[test] > 0, text_logit(x[test], coef, b))
    assert auc > 0.95, auc
    # features are per document: a document's row does not depend on the batch around it
    alone = text_features([texts[0]], 2**18, 10000)
    assert (alone != x[0]).nnz == 0


def test_reasons_for_bad_input():
    long = speech_docs()[0]["text"] * 100
    why, valid = text_reasons([None, "", " \n", "1234 -- 56 %", "Hello", "A real sentence here.", long], 10000)
    assert why == ["no text", "empty", "empty", "no letters", "short", None, "capped"]
    assert valid.tolist() == [False, False, False, False, True, True, True]


def test_params_are_validated():
    with pytest.raises(ConfigError, match="quality_features"):
        AskLLMDistillParams(quality_features=10)
    with pytest.raises(ConfigError, match="quality_alphas"):
        AskLLMDistillParams(quality_alphas=(0.0,))
    demo = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    distill = next(s for s in demo.stages if s.name == "askllm_distill")
    assert distill.params.quality is True  # where askllm_distill runs, the classifier runs


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    """embed + askllm_distill over 60 real documents of the four demo sources; SmolLM2 judges a 32-doc sample."""
    rng = random.Random(1)
    docs = []
    for fn in (wikipedia_docs, news_docs, tweet_docs, speech_docs):
        docs += [{"id": d["id"], "text": d["text"]} for d in rng.sample(fn(), 15)]
    inp = tmp_path_factory.mktemp("quality_in")
    write_jsonl(inp / "docs.jsonl", docs)
    out = tmp_path_factory.mktemp("quality") / "run"
    distill = {"sample_size": 32, "holdout_fraction": 0.25, "token_budget": 16, "num_threads": 1}
    cfg = load_config(
        {
            "input": {"paths": [str(inp)], "batch_rows": 30},
            "output": {"path": str(out)},
            "stages": [{"name": "embed", "params": {"backend": "onnx"}}, {"name": "askllm_distill", "params": distill}],
        }
    )
    return run_job(cfg), {d["id"]: d["text"] for d in docs}


def test_pipeline_fits_and_applies_the_classifier(run):
    result, texts = run
    docs = pq.read_table(f"{result.run_dir}/docs")
    got = docs.to_pydict()
    pred = np.array(got["quality_pred"], dtype=float)
    assert len(pred) == 60 and ((pred > 0) & (pred < 1)).all() and pred.std() > 0
    assert set(got["quality_reason"]) <= {None, "short", "capped"}

    fit = result.manifest["stage_info"]["askllm_distill"]["fit"]
    q = fit["quality"]
    assert q["held_out"]["n"] == fit["held_out"]["n"] == 8  # the same held-out documents as the embedding ridge
    assert -1 <= q["held_out"]["spearman"] <= 1 and q["nonzero_features"] > 100
    art = Path(result.run_dir) / "artifacts" / "askllm_distill"
    with np.load(art / "quality.npz") as z:
        assert int(z["n_features"]) == 2**18 and float(z["alpha"]) == q["alpha"]

    # apply = the saved model on the text, in this process (the artifacts are signed by the run)
    stage = AskLLMDistill(AskLLMDistillParams())
    stage.artifacts_dir = str(art)
    stage.ensure_setup()
    again, _ = stage.predict_quality([texts[i] for i in got["id"]])
    np.testing.assert_allclose(np.asarray(again.to_pylist(), dtype=float), pred, atol=1e-6)

    # a selection rule on it: keep the better half by the classifier
    policy = parse_policy({"rules": [{"kind": "top_fraction", "column": "quality_pred", "fraction": 0.5}]})
    kept = evaluate(policy, docs).kept
    assert kept.sum() == 30 and pred[kept].min() >= pred[~kept].max()


def test_bad_input_in_a_batch_gets_nulls_with_reasons(run):
    result, texts = run
    art = str(Path(result.run_dir) / "artifacts" / "askllm_distill")
    docs = pq.read_table(f"{result.run_dir}/docs").slice(0, 6)
    bad = [None, "", "12 34 %%", "Hello", next(iter(texts.values())) * 50, "A proper sentence of several words."]
    batch = docs.select(["embedding", "source_file", "source_index"]).append_column("text", pa.array(bad, pa.string()))
    stage = AskLLMDistill(AskLLMDistillParams())
    stage.artifacts_dir = art
    out = stage(batch).to_pydict()
    assert out["quality_reason"] == ["no text", "empty", "no letters", "short", "capped", None]
    assert out["quality_pred"][:3] == [None] * 3 and all(0 < v < 1 for v in out["quality_pred"][3:])
    assert all(0 < v < 1 for v in out["askllm_pred"])  # the embedding ridge is untouched by the text
    off = AskLLMDistill(AskLLMDistillParams(quality=False))
    off.artifacts_dir = art
    assert off(batch).column("quality_pred").null_count == 6
