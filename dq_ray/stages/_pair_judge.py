"""The language model of the ``pairs`` stage: the judge, the UltraFeedback-style aspects and the rationales.

The ``askllm`` stage owns the method (:class:`~dq_ray.stages.askllm.AskLLMJudge`: template filling, per-field
truncation to ``token_budget`` tokens, the chat template, P(yes) / (P(yes) + P(no)) over the answer-token
variants) and the engines behind it (``backend``: ``auto``, ``transformers`` or ``vllm``, through
:func:`dq_ray.backends.llm.load_engine`); this module builds its settings for pairs (the ``pairs`` stage's
``judge_params``, any ``askllm`` param except the template, with a ``{prompt}`` / ``{response}`` template) and
puts every use of the model on **one engine**, loaded once per actor:

* the judge (``judge_template``): one P(yes) per answer;
* the aspects (:func:`score_aspects`): one P(yes) per aspect and answer, every aspect's prompt of a batch in
  one engine call;
* the rationales (:class:`RationaleWriter`): a short greedy text per answer, at most ``max_tokens`` tokens
  (:meth:`~dq_ray.backends.llm.NextTokenEngine.generate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dq_ray.errors import ConfigError
from dq_ray.stages._writer import GreedyWriter
from dq_ray.stages.askllm import AskLLMJudge, JudgeParams, judge_info
from dq_ray.typed import build_dataclass


@dataclass(frozen=True)
class PairJudgeParams(JudgeParams):
    """An Ask-LLM judge whose template has exactly ``{prompt}`` and ``{response}``."""

    required_fields: ClassVar[tuple[str, ...] | None] = ("prompt", "response")
    where: ClassVar[str] = "pairs.judge_params"


def judge_params(params: Mapping[str, Any], template: str) -> PairJudgeParams:
    """The judge's settings: ``params`` (askllm keys) with ``template`` (raises ``ConfigError``)."""
    data = dict(params)
    clash = sorted({"template", "template_file"} & set(data))
    if clash:
        raise ConfigError(f"pairs.judge_params: set the prompt with pairs.judge_template, not {clash}")
    return build_dataclass(PairJudgeParams, {**data, "template": template}, "pairs.judge_params")


def load(params: Mapping[str, Any], template: str) -> AskLLMJudge:
    """Build the judge (loads the language model)."""
    return AskLLMJudge(judge_params(params, template))


def describe(params: Mapping[str, Any], template: str) -> dict[str, Any]:
    """What the manifest records about the judge (model, template and its hash...), without loading it."""
    return judge_info(judge_params(params, template))


# -- aspects -------------------------------------------------------------------------------------------------


def aspect_judges(params: Mapping[str, Any], templates: Mapping[str, str], engine: Any) -> dict[str, AskLLMJudge]:
    """One judge per aspect (``{name: template}``), all on ``engine`` (loaded once, by the first judge)."""
    return {name: AskLLMJudge(judge_params(params, t), engine=engine) for name, t in templates.items()}


def score_aspects(judges: Mapping[str, AskLLMJudge], records: Sequence[Mapping[str, str]]) -> dict[str, np.ndarray]:
    """P(yes) of every record under every aspect's template (NaN where the engine reported neither answer):
    each aspect's judge fills and truncates its own prompts, and all of them go to the engine in one call."""
    names = list(judges)
    if not names or not records:
        return {name: np.zeros(0) for name in names}
    prompts: list[str] = []
    for name in names:
        prompts += judges[name].fill(records)[0]
    scores = np.asarray(judges[names[0]].score_prompts(prompts).score, dtype=np.float64)
    n = len(records)
    return {name: scores[k * n : (k + 1) * n] for k, name in enumerate(names)}


# -- rationales ---------------------------------------------------------------------------------------------


class RationaleWriter(GreedyWriter):
    """A short greedy text per answer, from ``template`` (``{prompt}`` and ``{response}``) on ``engine``: a
    :class:`~dq_ray.stages._writer.GreedyWriter` with the pair judge's settings. ``write`` takes records
    ``{"prompt": ..., "response": ...}``."""

    def __init__(self, params: Mapping[str, Any], template: str, max_tokens: int, engine: Any) -> None:
        super().__init__(AskLLMJudge(judge_params(params, template), engine=engine), max_tokens, "pairs.rationale")
