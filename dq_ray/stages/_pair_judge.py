"""The judge of the ``pairs`` stage: the Ask-LLM stage's reusable judge, with a ``{prompt}`` / ``{response}`` template.

The ``askllm`` stage owns the method (:class:`~dq_ray.stages.askllm.AskLLMJudge`: template filling, per-field
truncation to ``token_budget`` tokens, the chat template, P(yes) / (P(yes) + P(no)) over the answer-token
variants) and the engines behind it; this module only builds its settings for pairs: the ``pairs`` stage's
``judge_params`` (any ``askllm`` param except the template) with ``judge_template`` as the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dq_ray.errors import ConfigError
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
