"""The transformers engine for LLM judges: batched forward passes, logits only where they are read.

Prompts of one group are left-padded to the same length (with explicit position ids, so every prompt sees the
positions it would see alone) and run in one forward pass. Without spans it keeps only the last position's
logits (``logits_to_keep=1``: the vocabulary projection is not computed for the other positions). With spans
(the document inside the prompt, for its perplexity) the same pass runs the model's body once, and the output
head is applied to the last position and to the positions that predict the span's tokens, in chunks (never a
``(batch, length, vocabulary)`` tensor). A model whose head does more than the output projection (logit
soft-capping, scaling) is detected on a probe prompt at load and scored through the whole model with the last
positions' logits kept instead. Prompts are sorted by length first, so a group pads little; results come back
in input order.
"""

from __future__ import annotations

import logging

import numpy as np

from dq_ray.backends import LLM_DTYPES

#: span positions sent through the output head at once (bounds the logits held: this many x vocabulary)
HEAD_CHUNK = 1024

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
        self.split_head = self._head_is_projection()

    def _head_is_projection(self) -> bool:
        """Whether the model's logits are its output projection of the body's last hidden state (checked on a
        probe prompt), so span positions can go through the head alone."""
        import torch

        body, head = getattr(self.lm, "get_decoder", lambda: None)(), self.lm.get_output_embeddings()
        if body is None or head is None:
            return False
        probe = self.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
        probe = torch.tensor([probe], device=self.device)
        with torch.inference_mode():
            want = self.lm(input_ids=probe, use_cache=False).logits[0].float()
            got = head(body(input_ids=probe, use_cache=False).last_hidden_state)[0].float()
        tol = 1e-3 * float(want.abs().max())
        same = got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-3, atol=tol))
        if not same:
            log.info("the head of %s is not a plain projection: span log-likelihoods from whole logits", self.model)
        return same

    def logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        return self.score(prompts, token_ids)[0]

    def score(
        self, prompts: list[list[int]], token_ids: list[int], spans: list[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(prompts), len(token_ids)), -np.inf, dtype=np.float64)
        span_logprob = np.full(len(prompts), np.nan, dtype=np.float64)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            group_spans = None if spans is None else [spans[i] for i in rows]
            out[rows], span_logprob[rows] = self._group([prompts[i] for i in rows], token_ids, group_spans)
        return out, span_logprob

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        """Greedy continuations (``model.generate``, ``max_new_tokens=max_tokens``, no sampling), in groups of
        ``batch_size`` left-padded prompts sorted by length; each cut at its first end-of-sequence token,
        decoded without special tokens and stripped. Results come back in input order."""
        import torch

        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        for p in prompts:
            if not p:
                raise ValueError("an empty prompt has no continuation")
            if len(p) + max_tokens > self.max_length:
                raise ValueError(
                    f"a prompt of {len(p)} tokens and {max_tokens} new tokens do not fit the context "
                    f"({self.max_length})"
                )
        eos = self.lm.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        stop.discard(None)
        out = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: every prompt continues from the last position
                ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                mask[r, width - len(prompts[i]) :] = 1
            with torch.inference_mode():
                generated = self.lm.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.pad_id,
                )
            for i, seq in zip(rows, generated[:, width:].tolist()):
                cut = next((k for k, t in enumerate(seq) if t in stop), len(seq))
                out[i] = self.tokenizer.decode(seq[:cut], skip_special_tokens=True).strip()
        return out

    def _group(
        self, prompts: list[list[int]], token_ids: list[int], spans: list[tuple[int, int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
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
        inputs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": False,
        }
        span_logprob = np.full(len(prompts), np.nan, dtype=np.float64)
        # (row, position predicting the token, the token) of every scored span token, in left-padded coordinates
        rows, at = [], []
        for row, (p, (start, end)) in enumerate(zip(prompts, spans or [])):
            first = max(start, 1)
            if end > first:
                offset = width - len(p)
                rows.extend([row] * (end - first))
                at.extend(range(offset + first - 1, offset + end - 1))
        shift = 0  # position of hidden[:, 0]
        with torch.inference_mode():
            if spans is None:
                last = self.lm(**inputs, logits_to_keep=1).logits[:, -1, :]
                hidden, head = None, None
            elif self.split_head:
                hidden = self.lm.get_decoder()(**inputs).last_hidden_state
                head = self.lm.get_output_embeddings()
                last = head(hidden[:, -1, :])
            else:  # the whole model's logits for every position from the earliest span start
                keep = width - min(at) if at else 1
                hidden, head, shift = self.lm(**inputs, logits_to_keep=keep).logits, None, width - keep
                last = hidden[:, -1, :]
            logp = torch.log_softmax(last.float(), dim=-1)[:, token_ids].double().cpu().numpy()
            if at:
                sums = torch.zeros(len(prompts), dtype=torch.float64, device=self.device)
                r = torch.tensor(rows, device=self.device)
                a = torch.tensor(at, device=self.device)
                for c in range(0, len(at), HEAD_CHUNK):
                    rc, ac = r[c : c + HEAD_CHUNK], a[c : c + HEAD_CHUNK]
                    z = hidden[rc, ac - shift]
                    z = (head(z) if head is not None else z).float()
                    target = inputs["input_ids"][rc, ac + 1]
                    token_lp = z.gather(-1, target[:, None])[:, 0] - torch.logsumexp(z, dim=-1)
                    sums.index_add_(0, rc, token_lp.double())
                scored = sorted(set(rows))
                span_logprob[scored] = sums.cpu().numpy()[scored]
        return logp, span_logprob
