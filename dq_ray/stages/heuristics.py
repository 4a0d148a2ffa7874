"""Heuristic quality signals through datatrove's own filters.

For every document, each configured datatrove filter (Gopher quality, Gopher repetition, C4 quality,
FineWeb quality) is run on its own copy of the text, and its verdict is recorded as
``heur_<filter>_pass`` and ``heur_<filter>_reason`` (datatrove's reason string, null when it passes).
Signals are recorded, never used to drop rows: dropping is selection's job.

Next to the verdicts the stage records the numbers those filters threshold on, computed with datatrove's
own tokenizer and helper functions (``split_into_words``, ``find_duplicates``, ``find_top_duplicate``,
``find_all_duplicate``), so a user can pick other thresholds later without recomputing anything.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register

log = logging.getLogger(__name__)

FILTER_NAMES = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)
# C4 splits every line into sentences, which evicts the document's words from datatrove's small tokenizer
# cache; running it last lets the other three filters reuse one tokenization of the document.
_EVALUATION_ORDER = ("gopher_quality", "gopher_repetition", "fineweb", "c4")

#: The numeric signals, with what each one measures (documented in docs/schema.md).
NUMBERS: dict[str, str] = {
    "heur_n_chars": "characters in the text",
    "heur_n_lines": "lines (str.splitlines)",
    "heur_n_words": "word tokens (datatrove's word tokenizer, punctuation tokens included)",
    "heur_word_count": "words with at least one non-punctuation character (Gopher's word count)",
    "heur_mean_word_length": "mean length of those words",
    "heur_hash_word_ratio": "'#' count / word tokens",
    "heur_ellipsis_word_ratio": "'...' and '…' count / word tokens",
    "heur_bullet_lines_ratio": "share of lines starting with a bullet ('•' or '-')",
    "heur_ellipsis_lines_ratio": "share of lines ending with an ellipsis",
    "heur_alpha_words_ratio": "share of word tokens with an alphabetic character",
    "heur_stop_word_count": "distinct Gopher stop words present",
    "heur_dup_para_frac": "duplicate paragraphs / paragraphs",
    "heur_dup_para_char_frac": "characters in duplicate paragraphs / characters",
    "heur_dup_line_frac": "duplicate lines / lines",
    "heur_dup_line_char_frac": "characters in duplicate lines / characters",
    **{f"heur_top_{n}gram_char_frac": f"characters of the most frequent {n}-gram / characters" for n in TOP_NGRAMS},
    **{f"heur_dup_{n}gram_char_frac": f"characters in duplicated {n}-grams / characters" for n in DUP_NGRAMS},
    "heur_line_punct_ratio": "share of non-empty lines ending in terminal punctuation (FineWeb)",
    "heur_short_line_ratio": "share of non-empty lines of at most 30 characters (FineWeb)",
    "heur_char_dup_ratio": "characters in duplicate lines / non-newline characters (FineWeb)",
    "heur_newline_word_ratio": "newlines / word tokens (FineWeb's list ratio)",
}
_INT_NUMBERS = {"heur_n_chars", "heur_n_lines", "heur_n_words", "heur_word_count", "heur_stop_word_count"}


def _filter_classes() -> dict[str, type]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_quality": GopherQualityFilter,
        "gopher_repetition": GopherRepetitionFilter,
        "c4": C4QualityFilter,
        "fineweb": FineWebQualityFilter,
    }


@dataclass(frozen=True)
class HeuristicsParams:
    """Settings of the ``heuristics`` stage.

    Attributes:
        language: datatrove language code for word and sentence splitting.
        filters: which datatrove filters to run (``gopher_quality``, ``gopher_repetition``, ``c4``,
            ``fineweb``); columns of filters not run are null.
        gopher_quality, gopher_repetition, c4, fineweb: keyword arguments for that datatrove filter's
            constructor (e.g. ``{min_doc_words: 30}``); defaults are datatrove's.
    """

    language: str = "en"
    filters: tuple[str, ...] = FILTER_NAMES
    gopher_quality: dict = field(default_factory=dict)
    gopher_repetition: dict = field(default_factory=dict)
    c4: dict = field(default_factory=dict)
    fineweb: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.filters if f not in FILTER_NAMES]
        if unknown:
            raise ConfigError(f"heuristics.filters: unknown {unknown}; valid: {', '.join(FILTER_NAMES)}")
        classes = _filter_classes()
        for name in FILTER_NAMES:
            kwargs = getattr(self, name)
            accepted = set(inspect.signature(classes[name].__init__).parameters) - {
                "self",
                "exclusion_writer",
                "language",
            }
            bad = sorted(set(kwargs) - accepted)
            if bad:
                raise ConfigError(
                    f"heuristics.{name}: unknown argument(s) {bad} for datatrove's {classes[name].__name__}; "
                    f"valid: {', '.join(sorted(accepted))}"
                )


def _outputs() -> dict[str, pa.DataType]:
    cols: dict[str, pa.DataType] = {}
    for name in FILTER_NAMES:
        cols[f"heur_{name}_pass"] = pa.bool_()
        cols[f"heur_{name}_reason"] = pa.string()
    for col in NUMBERS:
        cols[col] = pa.int32() if col in _INT_NUMBERS else pa.float32()
    return cols


@register
class Heuristics(Stage):
    """datatrove's Gopher quality, Gopher repetition, C4 and FineWeb filters, as recorded signals."""

    name = "heuristics"
    inputs = ("text",)
    outputs = _outputs()
    Params = HeuristicsParams
    default_resources = Resources(num_cpus=1, batch_size=128)

    def setup(self) -> None:
        from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS

        p: HeuristicsParams = self.params
        classes = _filter_classes()
        self.filters = {name: classes[name](language=p.language, **getattr(p, name)) for name in p.filters}
        stop_words = p.gopher_quality.get("stop_words")
        self.stop_words = set(STOP_WORDS if stop_words is None else stop_words)  # as datatrove does
        self.short_line_length = int(p.fineweb.get("short_line_length", 30))
        fineweb = self.filters.get("fineweb") or classes["fineweb"](language=p.language)
        self.stop_chars = tuple(fineweb.stop_chars)

    def process(self, batch: pa.Table) -> pa.Table:
        from datatrove.data import Document

        texts = batch.column("text").to_pylist()
        ids = batch.column("id").to_pylist() if "id" in batch.column_names else [""] * len(texts)
        verdicts: dict[str, list] = {f"heur_{n}_{k}": [] for n in FILTER_NAMES for k in ("pass", "reason")}
        numbers: dict[str, list] = {col: [] for col in NUMBERS}
        for doc_id, text in zip(ids, texts):
            words = self._words(text)
            for col, value in self.numbers(text, words).items():
                numbers[col].append(value)
            for name in _EVALUATION_ORDER:
                flt = self.filters.get(name)
                if flt is None:
                    ok, reason = None, None
                else:
                    ok, reason = _verdict(flt, Document(text=text, id=str(doc_id)), name)
                verdicts[f"heur_{name}_pass"].append(ok)
                verdicts[f"heur_{name}_reason"].append(reason)
        columns = {}
        for col, dtype in self.outputs.items():
            values = verdicts[col] if col in verdicts else numbers[col]
            columns[col] = pa.array(values, type=dtype)
        return append_columns(batch, columns)

    def _words(self, text: str) -> list[str]:
        from datatrove.utils.text import split_into_words

        # datatrove caches this call, so the filters below reuse the same tokenization
        return split_into_words(text, self.params.language)

    def numbers(self, text: str, words: list[str]) -> dict[str, Any]:
        """The numbers datatrove's filters threshold on, for one document (None where undefined)."""
        from datatrove.pipeline.filters.gopher_repetition_filter import (
            find_all_duplicate,
            find_duplicates,
            find_top_duplicate,
            get_n_grams,
        )
        from datatrove.utils.text import PUNCTUATION_SET

        n_chars = len(text)
        n_words = len(words)
        lines = text.splitlines()
        non_symbol = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]

        def ratio(num: float, den: float) -> float | None:
            return float(num) / den if den else None

        out: dict[str, Any] = {
            "heur_n_chars": n_chars,
            "heur_n_lines": len(lines),
            "heur_n_words": n_words,
            "heur_word_count": len(non_symbol),
            "heur_mean_word_length": float(np.mean([len(w) for w in non_symbol])) if non_symbol else None,
            "heur_hash_word_ratio": ratio(text.count("#"), n_words),
            "heur_ellipsis_word_ratio": ratio(text.count("...") + text.count("…"), n_words),
            "heur_bullet_lines_ratio": ratio(sum(s.lstrip().startswith(("•", "-")) for s in lines), len(lines)),
            "heur_ellipsis_lines_ratio": ratio(sum(s.rstrip().endswith(("...", "…")) for s in lines), len(lines)),
            "heur_alpha_words_ratio": ratio(sum(any(c.isalpha() for c in w) for w in words), n_words),
            "heur_stop_word_count": len(self.stop_words.intersection(words)),
        }
        paragraphs = _PARAGRAPH.split(text.strip())
        dup_paras, dup_para_chars = find_duplicates(paragraphs)
        out["heur_dup_para_frac"] = ratio(dup_paras, len(paragraphs))
        out["heur_dup_para_char_frac"] = ratio(dup_para_chars, n_chars)
        rep_lines = _LINES.split(text)
        dup_lines, dup_line_chars = find_duplicates(rep_lines)
        out["heur_dup_line_frac"] = ratio(dup_lines, len(rep_lines))
        out["heur_dup_line_char_frac"] = ratio(dup_line_chars, n_chars)
        for n in TOP_NGRAMS:
            grams = get_n_grams(words, n)
            out[f"heur_top_{n}gram_char_frac"] = ratio(find_top_duplicate(grams), n_chars) if grams else 0.0
        for n in DUP_NGRAMS:
            out[f"heur_dup_{n}gram_char_frac"] = ratio(find_all_duplicate(words, n), n_chars)
        fw_lines = [line for line in text.split("\n") if line.strip()]
        out["heur_line_punct_ratio"] = ratio(sum(line.endswith(self.stop_chars) for line in fw_lines), len(fw_lines))
        out["heur_short_line_ratio"] = ratio(
            sum(len(line) <= self.short_line_length for line in fw_lines), len(fw_lines)
        )
        out["heur_char_dup_ratio"] = ratio(find_duplicates(fw_lines)[1], len(text.replace("\n", "")))
        out["heur_newline_word_ratio"] = ratio(text.count("\n"), n_words)
        return out


_PARAGRAPH = re.compile(r"\n{2,}")
_LINES = re.compile("\n+")


def _verdict(flt: Any, doc: Any, name: str) -> tuple[bool, str | None]:
    """Run one datatrove filter; a filter that raises counts as a failure with the error as reason."""
    try:
        result = flt.filter(doc)
    except Exception as exc:  # datatrove filters divide by word counts that can be 0
        log.debug("datatrove %s raised on %s: %r", name, doc.id, exc)
        return False, f"error:{type(exc).__name__}"
    if isinstance(result, tuple):
        ok, reason = result
        return bool(ok), None if ok else str(reason)
    return bool(result), None if result else "failed"
