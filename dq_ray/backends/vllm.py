"""The vLLM engine: vLLM's pooling runner, for embedding on GPU clusters (``pip install -e ".[gpu]"``).

vllm is imported only when this engine is built. Texts are tokenised with the model's own tokenizer and cut on
the right to ``max_seq_length`` tokens (as sentence-transformers does; vLLM's own ``truncate_prompt_tokens``
keeps the *last* tokens), then handed to ``LLM.embed`` as token prompts. vLLM applies the pooling (and
normalisation) that the model's sentence-transformers config declares.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class VllmEncoder:
    """An embedding model served by ``vllm.LLM`` in pooling mode on the GPU(s) of this worker.

    Args:
        model: a model name or local folder vLLM can load (sentence-transformers folders included).
        batch_size: texts handed to ``LLM.embed`` at once (vLLM schedules them itself).
        max_seq_length: tokens kept per text; None keeps the model's maximum length.
        gpu_memory_utilization: the share of GPU memory vLLM may take (small embedding models need little).
    """

    name = "vllm"
    device = "cuda"

    def __init__(
        self,
        model: str,
        batch_size: int = 256,
        max_seq_length: int | None = None,
        gpu_memory_utilization: float = 0.5,
    ) -> None:
        import vllm

        kwargs = {"model": str(model), "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": False}
        try:
            self.llm = vllm.LLM(runner="pooling", **kwargs)  # vLLM >= 0.10
        except TypeError:
            self.llm = vllm.LLM(task="embed", **kwargs)  # older releases
        self.tokenizer = self.llm.get_tokenizer()
        limit = getattr(getattr(self.llm.llm_engine, "model_config", None), "max_model_len", None)
        self.max_seq_length = min(max_seq_length or limit or 512, limit or 1 << 30)
        self.batch_size = batch_size
        self.dim = len(self._embed(["dimension probe"])[0])

    def _embed(self, texts: list[str]) -> list[list[float]]:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)["input_ids"]
        outputs = self.llm.embed([{"prompt_token_ids": list(x)} for x in ids], use_tqdm=False)
        return [o.outputs.embedding for o in outputs]

    def encode(self, texts: list[str]) -> np.ndarray:
        chunks = [self._embed(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        rows = [row for chunk in chunks for row in chunk]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
