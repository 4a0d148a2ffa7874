"""Pair-level quality signals of preference and instruction data (``input.shape: dpo | kto | sft``).

For every row (see :mod:`dq_ray.preference` for how a record becomes one: ``pref_prompt``, ``pref_chosen``,
``pref_rejected``) the stage computes:

* **lengths**: words and tokens of the prompt and of each answer; for pairs, chosen - rejected in words and
  tokens and the word ratio chosen / rejected;
* **similarity**: embedding cosine between chosen and rejected and between the prompt and each answer (the
  ``embed`` stage's engines, :func:`dq_ray.backends.load_encoder`), the Jaccard similarity of the two
  answers' word 3-gram sets, and the containment of rejected in chosen (the share of rejected's 3-grams that
  occur in chosen);
* **style and tone** of each answer (:mod:`dq_ray.stages._style`): Flesch-Kincaid grade, hedging rate,
  apology, refusal, list / heading / code formatting, exclamation and second-person rates;
* **judge** (``judge: true``): P("yes") of an Ask-LLM style judge asked whether each answer is helpful,
  correct and appropriate for the prompt (``judge_template``), and the margin chosen - rejected;
* **aspects** (``aspects: [...]``): UltraFeedback-style aspects (Cui et al. 2023): instruction-following,
  truthfulness, honesty and helpfulness, each a P("yes") of each answer from its own template
  (:data:`ASPECT_TEMPLATES`, overridable with ``aspect_templates``), and the margin chosen - rejected per aspect;
* **rationale** (``rationale: true``): a short greedy text per answer saying how well it answers the prompt
  (at most ``rationale_max_tokens`` tokens);
* **flags** (null where they do not apply: a KTO or SFT row has no pair):

  - ``pair_identical``: the two answers have the same normalised text (the ``exact_dedup`` normalisation:
    NFKC, casefold, punctuation removed, whitespace collapsed);
  - ``pair_near_identical``: not identical, of about the same length (the longer has at most
    ``near_max_ratio`` times the words of the shorter), and word 3-gram Jaccard >= ``near_jaccard`` or
    embedding cosine >= ``near_cosine``;
  - ``pair_rejected_preferred``: the judge prefers the rejected answer: margin <= -``rejected_margin``
    (null without the judge);
  - ``pair_length_driven``: chosen wins mostly by length. Precisely: the pair is not (near-)identical, chosen
    has at least ``length_ratio`` times the words of rejected and at least ``min_length_diff`` more words, and
    apart from length the answers look alike: chosen contains rejected (at least ``length_containment`` of
    rejected's word 3-grams occur in chosen), or they say much the same (cosine >= ``length_similarity``), or,
    with the judge, it scores them within ``judge_tie`` of each other;
  - ``pair_prompt_dup``: the normalised prompt occurs in more than one row (a Ray groupby on
    ``pair_prompt_dup_group``, as ``exact_dedup`` does for documents).

The judge, the aspects and the rationales share one language model engine (``judge_params``: model,
``backend: auto | transformers | vllm``, device...), loaded once per actor; every aspect's prompts of a batch
go to it in one call. Models load lazily on the first batch, so the grouping step (which needs none) never
loads them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dq_ray.stages._style as _style
from dq_ray import backends
from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register
from dq_ray.stages.exact_dedup import normalise, text_hash
from dq_ray.vectors import unit_rows

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")

#: The judge's question (``{prompt}`` and ``{response}`` are filled in); the score is P("yes").
DEFAULT_JUDGE_TEMPLATE = (
    "###\nQuestion: {prompt}\n###\nResponse: {response}\n###\n\n"
    "Is the response helpful, correct and appropriate for the question? Answer with yes or no."
)

#: UltraFeedback's four aspects, each a yes/no question about one answer (``{prompt}`` and ``{response}``).
ASPECT_TEMPLATES: dict[str, str] = {
    "instruction_following": (
        "###\nInstruction: {prompt}\n###\nResponse: {response}\n###\n\n"
        "Does the response follow the instruction, doing what was asked in the way it was asked? "
        "Answer with yes or no."
    ),
    "truthfulness": (
        "###\nQuestion: {prompt}\n###\nResponse: {response}\n###\n\n"
        "Is the response truthful, free of false or made-up facts? Answer with yes or no."
    ),
    "honesty": (
        "###\nQuestion: {prompt}\n###\nResponse: {response}\n###\n\n"
        "Is the response honest, admitting uncertainty where it is unsure instead of pretending to know? "
        "Answer with yes or no."
    ),
    "helpfulness": (
        "###\nQuestion: {prompt}\n###\nResponse: {response}\n###\n\n"
        "Is the response helpful, informative and relevant to the question? Answer with yes or no."
    ),
}
ASPECTS = tuple(ASPECT_TEMPLATES)
#: The rationale's request (``{prompt}`` and ``{response}``); the answer is generated greedily.
DEFAULT_RATIONALE_TEMPLATE = (
    "###\nQuestion: {prompt}\n###\nResponse: {response}\n###\n\n"
    "In one or two sentences, explain how well the response answers the question."
)
#: The most tokens a rationale may have (``rationale_max_tokens``): rationales are short notes, not essays.
MAX_RATIONALE_TOKENS = 256

_SIDE_COLUMNS: dict[str, pa.DataType] = {
    "words": pa.int32(),
    "tokens": pa.int32(),
    "fk_grade": pa.float32(),
    "hedge_rate": pa.float32(),
    "apology": pa.bool_(),
    "refusal": pa.bool_(),
    "list_ratio": pa.float32(),
    "headings": pa.int32(),
    "code": pa.bool_(),
    "exclaim_rate": pa.float32(),
    "second_person_rate": pa.float32(),
    "cos_prompt": pa.float32(),
    "judge": pa.float32(),
}
_STYLE_FIELDS = [f.name for f in dataclasses.fields(_style.Style) if f.name != "words"]

MAP_OUTPUTS: dict[str, pa.DataType] = {
    "pair_prompt_words": pa.int32(),
    "pair_prompt_tokens": pa.int32(),
    **{f"pair_{side}_{name}": t for side in SIDES for name, t in _SIDE_COLUMNS.items()},
    "pair_length_diff_words": pa.int32(),
    "pair_length_diff_tokens": pa.int32(),
    "pair_length_ratio": pa.float32(),
    "pair_cos": pa.float32(),
    "pair_jaccard": pa.float32(),
    "pair_containment": pa.float32(),
    "pair_judge_margin": pa.float32(),
    "pair_identical": pa.bool_(),
    "pair_near_identical": pa.bool_(),
    "pair_rejected_preferred": pa.bool_(),
    "pair_length_driven": pa.bool_(),
    "pair_prompt_dup_group": pa.string(),
    **{f"pair_{a}_{part}": pa.float32() for a in ASPECTS for part in (*SIDES, "margin")},
    **{f"pair_rationale_{side}": pa.string() for side in SIDES},
}
GROUP_OUTPUTS: dict[str, pa.DataType] = {"pair_prompt_dup_count": pa.int64(), "pair_prompt_dup": pa.bool_()}
# the flags whose share the run's summary reports: dq_ray.stages._pair_summary.FLAGS


@dataclass(frozen=True)
class PairsParams:
    """Settings of the ``pairs`` stage.

    Attributes:
        backend: embedding engine, as in ``embed`` (``auto``, ``sentence-transformers``, ``onnx``, ``vllm``).
        device: ``auto``, ``cpu`` or ``cuda``.
        model: sentence-transformers folder; null: the packaged all-MiniLM-L6-v2.
        onnx_file: the ONNX file of the ``onnx`` backend; null: the packaged int8 export.
        num_threads: CPU threads of the embedding engine; null: the actor's CPUs.
        tokenizer: a ``tokenizer.json`` that counts ``*_tokens``; null: the embedding model's tokenizer.
        shingle_size: words per shingle of the Jaccard similarity.
        near_jaccard: Jaccard at or above which two answers are near-identical.
        near_cosine: embedding cosine at or above which two answers are near-identical.
        near_max_ratio: the most words the longer answer of a near-identical pair has per word of the shorter.
        length_ratio: chosen / rejected words at or above which a pair can be length-driven.
        min_length_diff: fewest extra words of chosen for a length-driven pair.
        length_containment: containment of rejected in chosen at or above which a longer chosen says
            "the same and more".
        length_similarity: cosine at or above which a longer chosen says "the same" as rejected.
        judge: score each answer with the Ask-LLM judge (a language model; slow on CPU).
        judge_template: the judge's prompt, with ``{prompt}`` and ``{response}``.
        judge_params: settings of the judge (the ``askllm`` stage's params: model, backend, ...).
        rejected_margin: judge margin at or below ``-rejected_margin`` sets ``pair_rejected_preferred``.
        judge_tie: judge scores closer than this count as a tie (for ``pair_length_driven``).
        aspects: the UltraFeedback aspects to score (any of ``instruction_following``, ``truthfulness``,
            ``honesty``, ``helpfulness``); empty (the default): none. Each costs one more language-model
            prompt per answer, as much as the judge itself, so they are off unless asked for.
        aspect_templates: replacement templates for named aspects (``{prompt}`` and ``{response}``).
        rationale: generate a short rationale per answer (``pair_rationale_chosen`` / ``_rejected``).
        rationale_max_tokens: the most tokens of a rationale (1 to 256).
        rationale_template: the rationale's request, with ``{prompt}`` and ``{response}``.
        keep_texts: keep ``pref_prompt`` / ``pref_chosen`` / ``pref_rejected`` in ``docs/`` (the dashboard
            shows flagged pairs from them); false drops them after this stage.
    """

    backend: str = "auto"
    device: str = "auto"
    model: str | None = None
    onnx_file: str | None = None
    num_threads: int | None = None
    tokenizer: str | None = None
    shingle_size: int = 3
    near_jaccard: float = 0.7
    near_cosine: float = 0.97
    near_max_ratio: float = 1.25
    length_ratio: float = 1.5
    min_length_diff: int = 20
    length_containment: float = 0.8
    length_similarity: float = 0.75
    judge: bool = False
    judge_template: str = DEFAULT_JUDGE_TEMPLATE
    judge_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    rejected_margin: float = 0.1
    judge_tie: float = 0.05
    aspects: tuple[str, ...] = ()
    aspect_templates: dict[str, str] = dataclasses.field(default_factory=dict)
    rationale: bool = False
    rationale_max_tokens: int = 64
    rationale_template: str = DEFAULT_RATIONALE_TEMPLATE
    keep_texts: bool = True

    def __post_init__(self) -> None:
        if self.backend not in backends.EMBED_BACKENDS:
            raise ConfigError(f"pairs.backend: {self.backend!r} is not one of {', '.join(backends.EMBED_BACKENDS)}")
        if self.device not in backends.DEVICES:
            raise ConfigError(f"pairs.device: {self.device!r} is not one of {', '.join(backends.DEVICES)}")
        for key in (
            "near_jaccard",
            "near_cosine",
            "length_containment",
            "length_similarity",
            "rejected_margin",
            "judge_tie",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"pairs.{key} must be in [0, 1]")
        if self.length_ratio < 1.0 or self.near_max_ratio < 1.0:
            raise ConfigError("pairs.length_ratio and pairs.near_max_ratio must be >= 1")
        if self.shingle_size < 1 or self.min_length_diff < 0:
            raise ConfigError("pairs.shingle_size must be >= 1 and pairs.min_length_diff >= 0")
        if "{prompt}" not in self.judge_template or "{response}" not in self.judge_template:
            raise ConfigError("pairs.judge_template must contain {prompt} and {response}")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise ConfigError(f"pairs.tokenizer: {self.tokenizer!r} is not a tokenizer.json file")
        for key, names in (("aspects", self.aspects), ("aspect_templates", self.aspect_templates)):
            unknown = sorted(set(names) - set(ASPECTS))
            if unknown:
                raise ConfigError(f"pairs.{key}: {unknown} not among the aspects {', '.join(ASPECTS)}")
        if len(set(self.aspects)) != len(self.aspects):
            raise ConfigError("pairs.aspects: an aspect is listed twice")
        if not 1 <= self.rationale_max_tokens <= MAX_RATIONALE_TOKENS:
            raise ConfigError(f"pairs.rationale_max_tokens must be in [1, {MAX_RATIONALE_TOKENS}]")
        if self.uses_llm:
            import dq_ray.stages._pair_judge as _pair_judge

            # the engine settings and every template, checked as the judge's are (ConfigError naming the key)
            _pair_judge.judge_params(self.judge_params, self.judge_template)
            for key, template in self.templates().items():
                if "{prompt}" not in template or "{response}" not in template:
                    raise ConfigError(f"pairs.{key} must contain {{prompt}} and {{response}}")
                try:
                    _pair_judge.judge_params(self.judge_params, template)
                except ConfigError as exc:
                    raise ConfigError(f"pairs.{key}: {exc}") from None

    @property
    def uses_llm(self) -> bool:
        """Whether the stage loads the language model (judge, aspects or rationale)."""
        return self.judge or bool(self.aspects) or self.rationale

    def templates(self) -> dict[str, str]:
        """The templates in use other than the judge's: ``aspect_templates.<name>`` and ``rationale_template``."""
        out = {f"aspect_templates.{a}": self.aspect_templates.get(a, ASPECT_TEMPLATES[a]) for a in self.aspects}
        if self.rationale:
            out["rationale_template"] = self.rationale_template
        return out


@register
class Pairs(Stage):
    """Pair-level signals of preference / instruction data: lengths, similarity, style, judge margin, flags."""

    name = "pairs"
    inputs = ("pref_prompt", "pref_chosen", "pref_rejected")
    outputs = {**MAP_OUTPUTS, **GROUP_OUTPUTS}
    Params = PairsParams
    default_resources = Resources(num_cpus=1, batch_size=128)
    group_key = "pair_prompt_dup_group"
    stateful = True

    def setup(self) -> None:
        self.encoder = None
        self.tokenizer = None
        self.judge = None
        self.llm = None  # the judge holding the engine (also with judge: false, for aspects or rationales)
        self.aspect_judges: dict = {}
        self.rationale = None

    def _load(self) -> None:
        """The models, loaded on the first batch (grouping tasks never need them)."""
        if self.encoder is not None:
            return
        p: PairsParams = self.params
        self.encoder = backends.load_encoder(
            p.backend, p.device, p.model, onnx_file=p.onnx_file, num_threads=p.num_threads
        )
        from tokenizers import Tokenizer

        path = p.tokenizer or str(Path(p.model or backends.default_model()) / "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        if p.uses_llm:  # one engine for the judge, the aspects and the rationales
            import dq_ray.stages._pair_judge as _pair_judge

            judge = self.llm = _pair_judge.load(p.judge_params, p.judge_template)
            self.judge = judge if p.judge else None
            templates = {a: p.aspect_templates.get(a, ASPECT_TEMPLATES[a]) for a in p.aspects}
            self.aspect_judges = _pair_judge.aspect_judges(p.judge_params, templates, judge.engine)
            if p.rationale:
                self.rationale = _pair_judge.RationaleWriter(
                    p.judge_params, p.rationale_template, p.rationale_max_tokens, judge.engine
                )

    # -- per batch ---------------------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        self._load()
        p: PairsParams = self.params
        prompts = batch.column("pref_prompt").to_pylist()
        sides = {s: batch.column(f"pref_{s}").to_pylist() for s in SIDES}
        n = len(prompts)
        cols: dict[str, list] = {name: [None] * n for name in MAP_OUTPUTS}

        vectors, tokens = self._embed_and_count(prompts, sides)
        cols["pair_prompt_words"] = [len(_style.words(t or "")) for t in prompts]
        cols["pair_prompt_tokens"] = [tokens.get(t) for t in prompts]
        cols["pair_prompt_dup_group"] = [text_hash(t or "") for t in prompts]
        shingles: dict[str, list] = {}
        for side, texts in sides.items():
            shingles[side] = [None] * n
            for i, text in enumerate(texts):
                if text is None:
                    continue
                st = _style.style(text)
                cols[f"pair_{side}_words"][i] = st.words
                cols[f"pair_{side}_tokens"][i] = tokens[text]
                for name in _STYLE_FIELDS:
                    cols[f"pair_{side}_{name}"][i] = getattr(st, name)
                cols[f"pair_{side}_cos_prompt"][i] = float(vectors[prompts[i]] @ vectors[text])
                shingles[side][i] = _style.shingles(text, p.shingle_size)
        try:
            if self.judge is not None:
                self._judge(prompts, sides, cols)
            if self.aspect_judges:
                self._aspects(prompts, sides, cols)
            if self.rationale is not None:
                self._rationales(prompts, sides, cols)
        except backends.EngineDead:
            from dq_ray.stages.askllm import end_actor_for_restart

            end_actor_for_restart("pairs")  # inside a Ray actor: Ray restarts it with a fresh engine
            raise

        for i in range(n):
            chosen, rejected = sides["chosen"][i], sides["rejected"][i]
            if chosen is None or rejected is None:
                continue  # KTO / SFT rows: no pair terms
            wc, wr = cols["pair_chosen_words"][i], cols["pair_rejected_words"][i]
            cols["pair_length_diff_words"][i] = wc - wr
            cols["pair_length_diff_tokens"][i] = cols["pair_chosen_tokens"][i] - cols["pair_rejected_tokens"][i]
            cols["pair_length_ratio"][i] = wc / max(wr, 1)
            cos = float(vectors[chosen] @ vectors[rejected])
            jac = _style.jaccard(shingles["chosen"][i], shingles["rejected"][i])
            contained = _style.containment(shingles["rejected"][i], shingles["chosen"][i])
            identical = normalise(chosen) == normalise(rejected)
            same_length = max(wc, wr) <= p.near_max_ratio * max(min(wc, wr), 1)
            near = not identical and same_length and (jac >= p.near_jaccard or cos >= p.near_cosine)
            cols["pair_cos"][i], cols["pair_jaccard"][i], cols["pair_containment"][i] = cos, jac, contained
            cols["pair_identical"][i], cols["pair_near_identical"][i] = identical, near
            margin = None
            sc, sr = cols["pair_chosen_judge"][i], cols["pair_rejected_judge"][i]
            if sc is not None and sr is not None:
                margin = sc - sr
                cols["pair_judge_margin"][i] = margin
                cols["pair_rejected_preferred"][i] = margin <= -p.rejected_margin
            longer = wc >= p.length_ratio * max(wr, 1) and wc - wr >= p.min_length_diff
            alike = contained >= p.length_containment or cos >= p.length_similarity
            alike = alike or (margin is not None and abs(margin) < p.judge_tie)
            cols["pair_length_driven"][i] = bool(longer and alike and not identical and not near)
            for a in self.aspect_judges:
                ac, ar = cols[f"pair_{a}_chosen"][i], cols[f"pair_{a}_rejected"][i]
                if ac is not None and ar is not None:
                    cols[f"pair_{a}_margin"][i] = ac - ar

        batch = append_columns(batch, {k: pa.array(v, MAP_OUTPUTS[k]) for k, v in cols.items()})
        if not p.keep_texts:
            batch = batch.drop_columns(["pref_prompt", "pref_chosen", "pref_rejected"])
        return batch

    def _embed_and_count(self, prompts: list, sides: dict[str, list]) -> tuple[dict[str, np.ndarray], dict]:
        """Unit vectors and token counts of every distinct text in the batch (each encoded once)."""
        texts = list(dict.fromkeys(t for t in [*prompts, *sides["chosen"], *sides["rejected"]] if t is not None))
        if not texts:
            return {}, {}
        vecs = unit_rows(np.asarray(self.encoder.encode(texts), dtype=np.float32))
        counts = [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        return dict(zip(texts, vecs)), dict(zip(texts, counts))

    def _judge(self, prompts: list, sides: dict[str, list], cols: dict[str, list]) -> None:
        """Judge every answer given its prompt (one batched call; the judge truncates each field)."""
        where = [(side, i) for side in SIDES for i, t in enumerate(sides[side]) if t is not None]
        if not where:
            return
        records = [{"prompt": prompts[i], "response": sides[side][i]} for side, i in where]
        scores = np.asarray(self.judge.score(records).score, dtype=np.float64)
        for (side, i), score in zip(where, scores):
            cols[f"pair_{side}_judge"][i] = None if np.isnan(score) else float(score)

    def _aspects(self, prompts: list, sides: dict[str, list], cols: dict[str, list]) -> None:
        """Every aspect's P(yes) of every answer given its prompt (one engine call for all aspects)."""
        import dq_ray.stages._pair_judge as _pair_judge

        where = [(side, i) for side in SIDES for i, t in enumerate(sides[side]) if t is not None]
        records = [{"prompt": prompts[i], "response": sides[side][i]} for side, i in where]
        for aspect, scores in _pair_judge.score_aspects(self.aspect_judges, records).items():
            for (side, i), score in zip(where, scores):
                cols[f"pair_{aspect}_{side}"][i] = None if np.isnan(score) else float(score)

    def _rationales(self, prompts: list, sides: dict[str, list], cols: dict[str, list]) -> None:
        """A short rationale per answer (one generation call)."""
        where = [(side, i) for side in SIDES for i, t in enumerate(sides[side]) if t is not None]
        records = [{"prompt": prompts[i], "response": sides[side][i]} for side, i in where]
        for (side, i), text in zip(where, self.rationale.write(records)):
            cols[f"pair_rationale_{side}"][i] = text

    # -- per prompt group --------------------------------------------------------------------------------
    def process_groups(self, rows: pa.Table) -> pa.Table:
        keys = rows.column("pair_prompt_dup_group")
        if rows.num_rows == 0:
            counts = pa.array([], pa.int64())
        else:
            vc = pc.value_counts(keys)
            size = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
            counts = pa.array([size[k] for k in keys.to_pylist()], pa.int64())
        return append_columns(
            rows, {"pair_prompt_dup_count": counts, "pair_prompt_dup": pc.greater(counts, pa.scalar(1, pa.int64()))}
        )

    # -- the run's summary ---------------------------------------------------------------------------------
    def summarise_run(self, run: Any) -> dict[str, Any]:
        """Dataset-level summary (manifest ``summaries.pairs``); also writes ``artifacts/pairs/summary.md``."""
        from dq_ray.stages._pair_summary import summarise, to_markdown

        summary = summarise(run, self.params)
        run.fs.makedirs(f"{run.root}/artifacts/pairs", exist_ok=True)
        with run.fs.open(f"{run.root}/artifacts/pairs/summary.md", "w") as fh:
            fh.write(to_markdown(summary))
        return summary

    def resources_for(self, resources: Resources, cluster_gpus: float) -> Resources:
        """With the language model (judge, aspects or rationale) on a cluster with GPUs, the judge's GPU
        resources (as the ``askllm`` stage's)."""
        p: PairsParams = self.params
        if not p.uses_llm:
            return resources
        import dq_ray.stages._pair_judge as _pair_judge
        from dq_ray.stages.askllm import gpu_resources

        judge = _pair_judge.judge_params(p.judge_params, p.judge_template)
        return gpu_resources(judge, resources, cluster_gpus, "pairs")

    def describe(self) -> dict[str, Any]:
        p: PairsParams = self.params
        info: dict[str, Any] = {
            "params": dataclasses.asdict(p),
            "embedding_model": p.model or backends.DEFAULT_MODEL_NAME,
            "embedding_backend": p.backend,
        }
        if p.uses_llm:
            import dq_ray.stages._pair_judge as _pair_judge

            info["judge"] = _pair_judge.describe(p.judge_params, p.judge_template)
            info["judge"]["judge_on"] = p.judge
            if getattr(self, "llm", None) is not None:
                info["judge"].update(self.llm.describe())
            if p.aspects:
                info["aspects"] = {a: p.aspect_templates.get(a, ASPECT_TEMPLATES[a]) for a in p.aspects}
            if p.rationale:
                info["rationale"] = {"template": p.rationale_template, "max_tokens": p.rationale_max_tokens}
        return info
