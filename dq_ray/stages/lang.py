"""Language identification: the language of each document, how sure the model is, and the runners-up.

The model is py3langid's (langid.py's multinomial naive Bayes over byte n-grams, 97 languages plus a few
script variants and ``zxx``, "no linguistic content"), shipped inside the ``py3langid`` wheel: nothing is
downloaded. Its probabilities are normalised with a temperature of ``sqrt(bytes)``, so a score means about the same
for a tweet and for an article. Chosen over ``lingua-language-detector`` by a measurement on real text
(``benchmarks/lang_id.py``, table in benchmarks/README.md): as accurate on documents (99%+ on English, Spanish,
French, German and Dutch Wikipedia leads and parliamentary speeches), ~10x faster per core, weaker only on
one-line texts.

Outputs: ``lang`` (the model's code: ISO 639-1 such as ``en``, ``de`` for the major languages, ISO 639-3 for a
few), ``lang_score`` (its probability), ``lang_top`` (the ``top_k`` best ``{lang, score}``), ``lang_reason`` (null,
or what to know about the value, comma separated: ``short`` (fewer than ``min_letters`` letters: an unreliable
guess), ``mixed`` (the runner-up scores at least ``mixed_score``: likely two languages), ``capped`` (only the first
``max_chars`` characters were read); or why there is no value: ``no text``, ``empty``, ``no letters``, ``low
score``, ``error: <ExceptionType>``) and ``lang_heur_mismatch``: true when the language is not the one the
heuristic filters were built for (``heuristics_language``, English: datatrove's Gopher, C4 and FineWeb rules count
English stop words and English punctuation habits), i.e. their verdicts on this document are not to be trusted;
null without a language.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register

log = logging.getLogger(__name__)

TOP_TYPE = pa.list_(pa.struct([("lang", pa.string()), ("score", pa.float32())]))


@functools.cache
def _identifier() -> Any:
    """py3langid's packaged model with probabilities (loaded once per process, ~1 s)."""
    from py3langid import langid

    return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    """The codes the packaged model can answer."""
    return list(_identifier().labels)


@dataclass(frozen=True)
class LangParams:
    """Settings of the ``lang`` stage.

    Attributes:
        languages: restrict the answers to these codes (e.g. ``[en, de, fr, es]``); empty: every language the
            model knows.
        max_chars: characters of each text the model reads (a longer text gets ``capped`` in ``lang_reason``).
        top_k: runners-up kept in ``lang_top`` (0: an empty list).
        min_letters: below this many letters the answer is kept but marked ``short``.
        mixed_score: a runner-up at or above this probability marks the document ``mixed``.
        min_score: below this probability ``lang`` is null (``low score``); 0 keeps every answer.
        heuristics_language: the language the heuristic filters were built for (``lang_heur_mismatch``).
    """

    languages: tuple[str, ...] = ()
    max_chars: int = 2000
    top_k: int = 3
    min_letters: int = 20
    mixed_score: float = 0.25
    min_score: float = 0.0
    heuristics_language: str = "en"

    def __post_init__(self) -> None:
        if self.max_chars < 1 or self.top_k < 0 or self.min_letters < 0:
            raise ConfigError("lang: max_chars must be >= 1, top_k and min_letters >= 0")
        if not (0 <= self.mixed_score <= 1 and 0 <= self.min_score <= 1):
            raise ConfigError("lang: mixed_score and min_score must be in [0, 1]")
        if self.languages:
            bad = sorted(set(self.languages) - set(known_languages()))
            if bad:
                raise ConfigError(f"lang.languages: unknown code(s) {bad}; valid: {', '.join(known_languages())}")


@register
class Lang(Stage):
    """The language of each document (py3langid), its probability, the runners-up and a heuristics mismatch flag."""

    name = "lang"
    inputs = ("text",)
    outputs = {
        "lang": pa.string(),
        "lang_score": pa.float32(),
        "lang_top": TOP_TYPE,
        "lang_reason": pa.string(),
        "lang_heur_mismatch": pa.bool_(),
    }
    Params = LangParams
    default_resources = Resources(num_cpus=1, batch_size=512)

    def setup(self) -> None:
        # a shallow copy per stage: set_languages rebinds the copy's tables, never the shared model's
        self._model = copy.copy(_identifier())
        if self.params.languages:
            self._model.set_languages(list(self.params.languages))

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**super().describe(), "model": f"py3langid {version('py3langid')} (langid.py model, in the wheel)"}

    def document(self, text: str | None) -> tuple[str | None, float | None, list[dict], str | None]:
        """``(lang, score, top, reason)`` of one text; never raises."""
        p = self.params
        if text is None:
            return None, None, [], "no text"
        if not text.strip():
            return None, None, [], "empty"
        head = text[: p.max_chars]
        letters = sum(ch.isalpha() for ch in head)
        if letters == 0:
            return None, None, [], "no letters"
        try:
            ranked = self._model.rank(head)
        except Exception as exc:  # a model failure must not fail the batch
            log.warning("lang: the model failed on one document (%s)", type(exc).__name__)
            return None, None, [], f"error: {type(exc).__name__}"
        top = [{"lang": code, "score": float(score)} for code, score in ranked[: p.top_k]]
        best, score = ranked[0][0], float(ranked[0][1])
        reasons = []
        if letters < p.min_letters:
            reasons.append("short")
        if len(ranked) > 1 and float(ranked[1][1]) >= p.mixed_score:
            reasons.append("mixed")
        if len(text) > p.max_chars:
            reasons.append("capped")
        if score < p.min_score:
            return None, score, top, ",".join(["low score", *reasons])
        return best, score, top, ",".join(reasons) or None

    def process(self, batch: pa.Table) -> pa.Table:
        langs, scores, tops, reasons = [], [], [], []
        for text in batch.column("text").to_pylist():
            lang, score, top, reason = self.document(text)
            langs.append(lang)
            scores.append(score)
            tops.append(top)
            reasons.append(reason)
        mismatch = [None if lang is None else lang != self.params.heuristics_language for lang in langs]
        return append_columns(
            batch,
            {
                "lang": pa.array(langs, pa.string()),
                "lang_score": pa.array(scores, pa.float32()),
                "lang_top": pa.array(tops, TOP_TYPE),
                "lang_reason": pa.array(reasons, pa.string()),
                "lang_heur_mismatch": pa.array(mismatch, pa.bool_()),
            },
        )
