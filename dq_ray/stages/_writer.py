"""Short greedy texts from a judge's prompt: pairs' rationales and topics' names.

:class:`GreedyWriter` fills a template through an :class:`~dq_ray.stages.askllm.AskLLMJudge` (per-field
truncation, the chat template) and asks its engine for at most ``max_tokens`` new tokens per record
(:meth:`~dq_ray.backends.llm.NextTokenEngine.generate`: transformers or vLLM, whichever the judge loaded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dq_ray.stages.askllm import FIT_MARGIN, AskLLMJudge


class GreedyWriter:
    """A short greedy text per record (a mapping of the template's fields), from ``judge``'s template and engine.

    The fields are cut so that the prompt and ``max_tokens`` new tokens fit the model's context (the judge's
    ``token_budget``, lowered when needed). ``where`` names the config key in errors.
    """

    def __init__(self, judge: AskLLMJudge, max_tokens: int, where: str) -> None:
        self.judge, self.engine, self.max_tokens = judge, judge.engine, max_tokens
        if not callable(getattr(self.engine, "generate", None)):
            raise ValueError(f"the {self.engine.name} engine cannot generate text ({where})")
        empty = judge.template.format(**{f: "" for f in judge.fields})
        overhead = len(judge.encode([empty])[0][0])
        room = (self.engine.max_length - max_tokens - overhead) // len(judge.fields) - FIT_MARGIN
        if room < 1:
            raise ValueError(
                f"{where}: the template ({overhead} tokens) and {max_tokens} new tokens leave no room "
                f"in the model's context ({self.engine.max_length})"
            )
        judge.token_budget = min(judge.token_budget, room)

    def write(self, records: Sequence[Mapping[str, str]]) -> list[str]:
        """One text per record, in order."""
        if not records:
            return []
        prompts, _ = self.judge.fill(records)
        ids, _ = self.judge.encode(prompts)
        return list(self.engine.generate(ids, self.max_tokens))
