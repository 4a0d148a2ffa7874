"""Heuristic quality signals: the verdicts of datatrove's quality filters, and the numbers behind them.

For every document the stage records the verdict of each configured datatrove filter (Gopher quality, Gopher
repetition, C4 quality, FineWeb quality) as ``heur_<filter>_pass`` and ``heur_<filter>_reason`` (datatrove's
reason string, null when it passes), and the numbers those filters threshold on, so a user can pick other
thresholds later without recomputing anything. Signals are recorded, never used to drop rows (selection's job),
and the text is never changed (datatrove's C4 filter rewrites the documents it keeps; here it only judges).

Two engines give the same verdicts and reasons:

* ``fast`` (the default): the document is tokenized once with datatrove's ``split_into_words`` and split once
  into lines, paragraphs and n-grams (``_heuristic_stats.measure``); all four verdicts and the numbers are
  derived from those counts, with datatrove's thresholds, arguments and order of checks;
* ``datatrove``: each datatrove filter object's ``filter()`` runs on its own copy of the document, as a
  reference for checking any disagreement (several times slower).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register

log = logging.getLogger(__name__)

FILTER_NAMES = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
ENGINES = ("fast", "datatrove")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)
# engine "datatrove": C4 splits every line into sentences, which evicts the document's words from datatrove's
# small tokenizer cache; running it last lets the other three filters reuse one tokenization of the document.
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


def _check_ngram_sizes(kwargs: dict) -> None:
    """``top_n_grams`` / ``dup_n_grams`` must be ``[n, fraction]`` pairs with a whole ``n >= 1`` (datatrove loops
    forever on ``dup_n_grams`` sizes below 1)."""
    for key in ("top_n_grams", "dup_n_grams"):
        for pair in kwargs.get(key, ()):
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2
            if not ok or isinstance(pair[0], bool) or not isinstance(pair[0], int) or pair[0] < 1:
                raise ConfigError(
                    f"heuristics.gopher_repetition.{key}: expected [n, fraction] pairs, n >= 1; got {pair!r}"
                )


@dataclass(frozen=True)
class HeuristicsParams:
    """Settings of the ``heuristics`` stage.

    Attributes:
        language: datatrove language code for word and sentence splitting.
        filters: which datatrove filters to run (``gopher_quality``, ``gopher_repetition``, ``c4``,
            ``fineweb``); columns of filters not run are null.
        gopher_quality, gopher_repetition, c4, fineweb: keyword arguments for that datatrove filter's
            constructor (e.g. ``{min_doc_words: 30}``); defaults are datatrove's. A list given for FineWeb's
            ``stop_chars`` is passed on as a tuple (datatrove needs one for ``str.endswith``).
        engine: ``fast`` (default) derives every verdict from one tokenization and one split of each document
            into lines, paragraphs and n-grams; ``datatrove`` calls each datatrove filter's ``filter()`` on its
            own copy of the document (slower; the reference, to check any disagreement). Both give the same
            verdicts, reasons and numbers.
    """

    language: str = "en"
    filters: tuple[str, ...] = FILTER_NAMES
    gopher_quality: dict = field(default_factory=dict)
    gopher_repetition: dict = field(default_factory=dict)
    c4: dict = field(default_factory=dict)
    fineweb: dict = field(default_factory=dict)
    engine: str = "fast"

    def __post_init__(self) -> None:
        unknown = [f for f in self.filters if f not in FILTER_NAMES]
        if unknown:
            raise ConfigError(f"heuristics.filters: unknown {unknown}; valid: {', '.join(FILTER_NAMES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"heuristics.engine: unknown {self.engine!r}; valid: {', '.join(ENGINES)}")
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
        _check_ngram_sizes(self.gopher_repetition)

    def filter_kwargs(self, name: str) -> dict[str, Any]:
        """The keyword arguments for datatrove filter ``name`` (a list of FineWeb ``stop_chars`` as a tuple)."""
        kwargs = dict(getattr(self, name))
        if name == "fineweb" and isinstance(kwargs.get("stop_chars"), list):
            kwargs["stop_chars"] = tuple(kwargs["stop_chars"])
        return kwargs


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
    # spaCy's tokenizer takes seconds to load and its vocabulary warms over the first documents: one actor per
    # CPU keeps both for the whole run (benchmarks/README.md, "heuristics_vs_datatrove.py")
    cpu_pool = True

    def setup(self) -> None:
        from dq_ray.stages import _heuristic_stats as hs

        p: HeuristicsParams = self.params
        classes = _filter_classes()
        # every filter object is built (cheap): its attributes are datatrove's resolved settings
        objects = {name: classes[name](language=p.language, **p.filter_kwargs(name)) for name in FILTER_NAMES}
        self.filters = {name: objects[name] for name in p.filters}
        self.settings = {name: hs.settings_from_filter(name, objects[name]) for name in p.filters}
        repetition = hs.settings_from_filter("gopher_repetition", objects["gopher_repetition"])
        self.measure_config = hs.MeasureConfig(
            stop_words=frozenset(objects["gopher_quality"].stop_words),  # as datatrove does
            stop_chars=tuple(objects["fineweb"].stop_chars),
            short_line_length=int(p.fineweb.get("short_line_length", 30)),
            top_ngrams=tuple(dict.fromkeys([*TOP_NGRAMS, *(n for n, _ in repetition.top_n_grams)])),
            dup_ngrams=tuple(dict.fromkeys([*DUP_NGRAMS, *(n for n, _ in repetition.dup_n_grams)])),
        )
        hs.load_tokenizer(p.language)  # both engines tokenize with it; its import belongs to the set-up

    def process(self, batch: pa.Table) -> pa.Table:
        from dq_ray.stages._heuristic_stats import c4_wants_sentences, measure, tokenize

        texts = batch.column("text").to_pylist()
        ids = batch.column("id").to_pylist() if "id" in batch.column_names else [""] * len(texts)
        language = self.params.language
        judge = self._verdicts_datatrove if self.params.engine == "datatrove" else self._verdicts_fast
        # engine "fast": C4 may split a whole text into sentences; that comes from the words' tokenizer pass.
        # engine "datatrove": its filters find these words in datatrove's tokenizer cache.
        c4 = self.settings.get("c4") if self.params.engine == "fast" else None
        verdicts: dict[str, list] = {f"heur_{n}_{k}": [] for n in FILTER_NAMES for k in ("pass", "reason")}
        numbers: dict[str, list] = {col: [] for col in NUMBERS}
        for doc_id, text in zip(ids, texts):
            words, sentences = tokenize(text, language, sentences=c4 is not None and c4_wants_sentences(text, c4))
            stats = measure(text, words, self.measure_config, sentences)
            for col, value in self.numbers(stats).items():
                numbers[col].append(value)
            judged = judge(text, str(doc_id), stats)
            for name in FILTER_NAMES:
                ok, reason = judged.get(name, (None, None))
                verdicts[f"heur_{name}_pass"].append(ok)
                verdicts[f"heur_{name}_reason"].append(reason)
        columns = {}
        for col, dtype in self.outputs.items():
            values = verdicts[col] if col in verdicts else numbers[col]
            columns[col] = pa.array(values, type=dtype)
        return append_columns(batch, columns)

    def _verdicts_fast(self, text: str, doc_id: str, stats: Any) -> dict[str, tuple[bool, str | None]]:
        """Every configured filter's verdict, from the document's statistics."""
        from dq_ray.stages import _heuristic_stats as hs

        out = {}
        for name, settings in self.settings.items():
            try:
                if name == "gopher_quality":
                    out[name] = hs.gopher_quality_verdict(stats, settings)
                elif name == "gopher_repetition":
                    out[name] = hs.gopher_repetition_verdict(stats, settings)
                elif name == "c4":
                    out[name] = hs.c4_verdict(text, stats, settings, self.params.language)
                else:
                    out[name] = hs.fineweb_verdict(stats, settings, self.measure_config)
            except Exception as exc:  # the divisions datatrove makes by counts that can be 0 fail here too
                log.debug("heuristics %s raised on %s: %r", name, doc_id, exc)
                out[name] = (False, f"error:{type(exc).__name__}")
        return out

    def _verdicts_datatrove(self, text: str, doc_id: str, stats: Any) -> dict[str, tuple[bool, str | None]]:
        """Every configured filter's verdict from datatrove's own ``filter()``, each on its own Document."""
        from datatrove.data import Document

        out = {}
        for name in _EVALUATION_ORDER:
            if name in self.filters:
                out[name] = _verdict(self.filters[name], Document(text=text, id=doc_id), name)
        return out

    @staticmethod
    def numbers(s: Any) -> dict[str, Any]:
        """The numeric signals (:data:`NUMBERS`) of one measured document (None where undefined)."""

        def ratio(num: float, den: float) -> float | None:
            return float(num) / den if den else None

        n_chars, n_words = s.n_chars, s.n_words
        out: dict[str, Any] = {
            "heur_n_chars": n_chars,
            "heur_n_lines": len(s.lines),
            "heur_n_words": n_words,
            "heur_word_count": s.word_count,
            "heur_mean_word_length": s.word_chars / s.word_count if s.word_count else None,
            "heur_hash_word_ratio": ratio(s.hashes, n_words),
            "heur_ellipsis_word_ratio": ratio(s.ellipses, n_words),
            "heur_bullet_lines_ratio": ratio(s.bullet_lines, len(s.lines)),
            "heur_ellipsis_lines_ratio": ratio(s.ellipsis_lines, len(s.lines)),
            "heur_alpha_words_ratio": ratio(s.alpha_words, n_words),
            "heur_stop_word_count": s.stop_words,
            "heur_dup_para_frac": ratio(s.dup_paragraphs, s.paragraphs),
            "heur_dup_para_char_frac": ratio(s.dup_paragraph_chars, n_chars),
            "heur_dup_line_frac": ratio(s.dup_line_runs, s.line_runs),
            "heur_dup_line_char_frac": ratio(s.dup_line_run_chars, n_chars),
        }
        for n in TOP_NGRAMS:
            top = s.top_chars[n]
            out[f"heur_top_{n}gram_char_frac"] = ratio(top, n_chars) if top is not None else 0.0
        for n in DUP_NGRAMS:
            out[f"heur_dup_{n}gram_char_frac"] = ratio(s.dup_chars[n], n_chars)
        n_fw = len(s.fw_lines)
        out["heur_line_punct_ratio"] = ratio(s.fw_punct_lines, n_fw)
        out["heur_short_line_ratio"] = ratio(s.fw_short_lines, n_fw)
        out["heur_char_dup_ratio"] = ratio(s.fw_dup_chars, n_chars - s.newlines)
        out["heur_newline_word_ratio"] = ratio(s.newlines, n_words)
        return out


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
