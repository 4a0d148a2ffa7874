"""The transformers engine for LLM judges: batched forward passes, the last position's logits only.

Prompts of one group are left-padded to the same length (with explicit position ids, so every prompt sees the
positions it would see alone) and run in one forward pass that keeps only the last position's logits
(``logits_to_keep=1``: the vocabulary projection is not computed for the other positions). Prompts are sorted
by length first, so a group pads little; results come back in input order.
"""

from __future__ import annotations

import logging

import numpy as np

from dq_ray.backends import LLM_DTYPES

log = logging.getLogger(__name__)


class TransformersEngine:
    """A Hugging Face causal LM in PyTorch, on ``cpu`` or ``cuda``.

    Args:
        model: a local checkpoint folder or model name (nothing is downloaded when offline).
        device: ``cpu`` or ``cuda``.
        batch_size: prompts per forward pass.
        num_threads: torch CPU threads (None: leave torch's setting, which follows ``$OMP_NUM_THREADS``).
        dtype: ``auto`` (float32 on CPU, the checkpoint's on CUDA) or a torch dtype name.
    """

    name = "transformers"

    def __init__(
        self, model: str, device: str = "cpu", batch_size: int = 8, num_threads: int | None = None, dtype: str = "auto"
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in LLM_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(LLM_DTYPES)}")
        if num_threads:
            torch.set_num_threads(num_threads)
        torch_dtype = (torch.float32 if device == "cpu" else "auto") if dtype == "auto" else getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        self.model, self.device, self.batch_size = str(model), device, batch_size
        self.max_length = int(getattr(self.lm.config, "max_position_embeddings", None) or 2048)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    def logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        out = np.full((len(prompts), len(token_ids)), -np.inf, dtype=np.float64)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._group([prompts[i] for i in rows], token_ids)
        return out

    def _group(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        import torch

        if any(not p for p in prompts):
            raise ValueError("an empty prompt has no next token to score")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the last position
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.lm(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                logits_to_keep=1,
                use_cache=False,
            ).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)[:, token_ids]
        return logp.double().cpu().numpy()
