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

Models load lazily on the first batch, so the grouping step (which needs none) never loads them.
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
        if self.judge:
            import dq_ray.stages._pair_judge as _pair_judge

            _pair_judge.judge_params(self.judge_params, self.judge_template)  # validates (ConfigError)


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
        if p.judge:
            import dq_ray.stages._pair_judge as _pair_judge

            self.judge = _pair_judge.load(p.judge_params, p.judge_template)

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
        if self.judge is not None:
            self._judge(prompts, sides, cols)

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
        """With the judge on a cluster with GPUs, the judge's GPU resources (as the ``askllm`` stage's)."""
        p: PairsParams = self.params
        if not p.judge:
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
        if p.judge:
            import dq_ray.stages._pair_judge as _pair_judge

            info["judge"] = _pair_judge.describe(p.judge_params, p.judge_template)
            if getattr(self, "judge", None) is not None:
                info["judge"].update(self.judge.describe())
        return info
