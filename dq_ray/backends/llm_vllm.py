"""The vLLM engine for LLM judges on GPU clusters (``pip install -e ".[gpu]"``).

vllm is imported only when this engine is built, inside the Ray actor that holds the GPUs (``num_gpus`` =
``tensor_parallel_size``; with more than one, vLLM's workers are processes of that actor, so one engine spans
exactly the GPUs Ray gave it). Scoring generates one token greedily (``max_tokens=1``, ``temperature=0``) and
asks for log-probabilities: vLLM reports *raw* log-probabilities (the model's full-vocabulary log-softmax,
before any sampling processors), the candidate tokens through ``logprob_token_ids`` where this vLLM has it, and
the top ``top_logprobs`` tokens otherwise (a candidate outside the top k then reads ``-inf``). Prompts arrive
as token ids (the judge tokenised and truncated them), so vLLM does no tokenisation of its own. Prefix caching
is on: every Ask-LLM prompt starts with the same chat header, so its KV blocks are computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class VllmEngine:
    """An instruction model served by ``vllm.LLM`` on the GPU(s) of this worker.

    Args:
        model: a model name or local folder vLLM can load.
        tensor_parallel_size: GPUs the engine spans (the Ray actor holds this many).
        gpu_memory_utilization: the share of each GPU's memory vLLM may take (weights + KV cache).
        max_model_len: the context to reserve KV cache for (None: the model's own).
        top_logprobs: top-k log-probabilities per request (also the fallback for candidates).
        batch_size: prompts per ``LLM.generate`` call (None: all prompts of a call at once; vLLM schedules
            them into GPU batches itself).
        dtype: ``auto`` or a dtype name vLLM accepts.
    """

    name = "vllm"
    device = "cuda"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        top_logprobs: int = 20,
        batch_size: int | None = None,
        dtype: str = "auto",
    ) -> None:
        import vllm

        kwargs: dict[str, Any] = {
            "model": str(model),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "max_logprobs": max(20, top_logprobs),
            "seed": 0,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "mp"  # worker processes of this actor, on its GPUs
        self.llm = vllm.LLM(**kwargs)
        try:  # the same Hugging Face (fast) tokenizer the transformers engine uses: identical prompts
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        except (OSError, ValueError):
            self.tokenizer = self.llm.get_tokenizer()
        config = getattr(self.llm.llm_engine, "model_config", None)
        self.max_length = int(getattr(config, "max_model_len", None) or max_model_len or 4096)
        self.model, self.top_logprobs, self.batch_size = str(model), top_logprobs, batch_size
        self._params: dict[tuple[int, ...], Any] = {}

    def sampling_params(self, token_ids: list[int]) -> Any:
        """``SamplingParams`` for one greedy token with log-probabilities of ``token_ids`` (cached per id set)."""
        key = tuple(token_ids)
        if key not in self._params:
            from vllm import SamplingParams

            base = {"max_tokens": 1, "temperature": 0.0, "logprobs": self.top_logprobs, "detokenize": False}
            try:
                self._params[key] = SamplingParams(**base, logprob_token_ids=list(token_ids))
            except TypeError:  # a vLLM without logprob_token_ids: the top-k only
                log.warning(
                    "this vLLM has no logprob_token_ids; yes/no tokens outside the top %d read -inf", self.top_logprobs
                )
                self._params[key] = SamplingParams(**base)
        return self._params[key]

    def logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        params = self.sampling_params(token_ids)
        step = self.batch_size or max(len(prompts), 1)
        out = np.full((len(prompts), len(token_ids)), -np.inf, dtype=np.float64)
        for start in range(0, len(prompts), step):
            chunk = [{"prompt_token_ids": list(p)} for p in prompts[start : start + step]]
            results = self.llm.generate(chunk, params, use_tqdm=False)
            for row, result in enumerate(results, start):
                out[row] = candidate_logprobs(result.outputs[0].logprobs, token_ids)
        return out


def candidate_logprobs(sample_logprobs: Any, token_ids: list[int]) -> np.ndarray:
    """The first generated position's log-probabilities of ``token_ids`` from a vLLM ``SampleLogprobs``
    (a list of ``{token_id: Logprob}`` per position, or vLLM's flat form); ``-inf`` where absent."""
    values = np.full(len(token_ids), -np.inf, dtype=np.float64)
    if not sample_logprobs:
        return values
    first = sample_logprobs[0]
    found: Mapping[int, Any] = first if isinstance(first, Mapping) else dict(first.items())
    for j, tid in enumerate(token_ids):
        entry = found.get(tid)
        if entry is not None:
            values[j] = float(getattr(entry, "logprob", entry))
    return values
