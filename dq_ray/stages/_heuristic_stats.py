"""The statistics behind datatrove's four quality filters, computed once per document, and the filters' verdicts.

datatrove's ``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter`` and ``FineWebQualityFilter``
each split the same document again (words, lines, paragraphs, n-grams). Here a document is split once:

* one word tokenization (:func:`tokenize`: datatrove's ``split_into_words`` for the language; when C4 will split
  the whole text into sentences, those come from the same spaCy pass),
* one ``str.splitlines`` (Gopher quality's bullets and ellipses, C4's lines, the line count),
* one paragraph split and one split on runs of newlines (Gopher repetition),
* one ``str.split("\\n")`` (FineWeb's non-blank lines),
* one pass per n-gram size, with ``Counter`` and sets doing the counting in C (:func:`measure`),

and the ``*_verdict`` functions read datatrove's thresholds, in datatrove's order of checks, from those numbers:
the reason is the first failing check's, with datatrove's wording. Where datatrove divides by a count that can
be zero, the same division here raises the same ``ZeroDivisionError`` at the same check, so a caller that turns
exceptions into ``error:<name>`` verdicts (as the heuristics stage does) records the same thing for both.

C4 needs more than counts (it looks at every line, after removing citations); :func:`c4_verdict` walks the lines
as datatrove does, but splits kept lines into sentences only while the count could still fall short of
``min_num_sentences`` (every kept line is at least one sentence), and a line that is the whole text uses the
sentences :func:`tokenize` already has. Nothing here changes the text: C4's rewrite of the document is datatrove's
filtering, not a signal.

Most of the remaining time is spaCy's (datatrove's tokenizer); :func:`tokenize` explains how its vocabulary is
kept warm.

The thresholds come from datatrove's own filter objects (:func:`settings_from_filter`), so defaults and the
handling of each constructor argument are datatrove's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from operator import add, itemgetter
from typing import Any

from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer, strip_strings

log = logging.getLogger(__name__)

#: A verdict: (passes, datatrove's reason for the failure or None).
Verdict = tuple[bool, "str | None"]
PASS: Verdict = (True, None)

#: Every character of datatrove's punctuation set, for ``str.strip``: a word is a Gopher word when something is
#: left after stripping them, i.e. when it has a character outside the set.
_PUNCTUATION_CHARS = "".join(sorted(PUNCTUATION_SET))
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINE_RUNS = re.compile("\n+")
_BULLETS = ("•", "-")
_LINE_ELLIPSES = ("...", "…")


# -- settings: datatrove's constructor arguments, as its filter objects hold them ----------------------------


@dataclass(frozen=True)
class GopherQualitySettings:
    """``GopherQualityFilter``'s arguments (falsy thresholds switch their check off, as in datatrove)."""

    min_doc_words: Any
    max_doc_words: Any
    min_avg_word_length: Any
    max_avg_word_length: Any
    max_symbol_word_ratio: Any
    max_bullet_lines_ratio: Any
    max_ellipsis_lines_ratio: Any
    max_non_alpha_words_ratio: Any
    min_stop_words: Any
    stop_words: frozenset


@dataclass(frozen=True)
class GopherRepetitionSettings:
    """``GopherRepetitionFilter``'s arguments; ``top_n_grams`` and ``dup_n_grams`` are ``(n, max fraction)``."""

    dup_line_frac: Any
    dup_para_frac: Any
    dup_line_char_frac: Any
    dup_para_char_frac: Any
    top_n_grams: tuple
    dup_n_grams: tuple


@dataclass(frozen=True)
class C4Settings:
    """``C4QualityFilter``'s arguments (-1 switches a count check off, as in datatrove)."""

    split_paragraph: Any
    remove_citations: Any
    filter_no_terminal_punct: Any
    min_num_sentences: Any
    min_words_per_line: Any
    max_word_length: Any
    filter_lorem_ipsum: Any
    filter_javascript: Any
    filter_curly_bracket: Any
    filter_policy: Any


@dataclass(frozen=True)
class FineWebSettings:
    """``FineWebQualityFilter``'s arguments (its ``short_line_thr`` is held as ``short_line_threshold``)."""

    line_punct_thr: Any
    line_punct_exclude_zero: Any
    stop_chars: Any
    short_line_threshold: Any
    short_line_length: Any
    char_duplicates_ratio: Any
    new_line_ratio: Any


#: The settings class of each filter, by dq-ray's filter name.
SETTINGS = {
    "gopher_quality": GopherQualitySettings,
    "gopher_repetition": GopherRepetitionSettings,
    "c4": C4Settings,
    "fineweb": FineWebSettings,
}


def settings_from_filter(name: str, flt: Any) -> Any:
    """The settings of dq-ray filter ``name`` read from a constructed datatrove filter object ``flt``."""
    cls = SETTINGS[name]
    values = {f.name: getattr(flt, f.name) for f in dataclasses.fields(cls)}
    if name == "gopher_quality":
        values["stop_words"] = frozenset(values["stop_words"])
    elif name == "gopher_repetition":
        values["top_n_grams"] = tuple(tuple(pair) for pair in values["top_n_grams"])
        values["dup_n_grams"] = tuple(tuple(pair) for pair in values["dup_n_grams"])
    return cls(**values)


@dataclass(frozen=True)
class MeasureConfig:
    """What :func:`measure` needs besides the text: the stage's constants, fixed in its ``setup()``.

    Attributes:
        stop_words: Gopher's stop words (counted as distinct words present).
        stop_chars: FineWeb's line-ending punctuation (as given to ``str.endswith``).
        short_line_length: FineWeb's short-line length.
        top_ngrams: n-gram sizes whose most frequent n-gram is measured.
        dup_ngrams: n-gram sizes whose duplicated characters are measured.
    """

    stop_words: frozenset
    stop_chars: Any
    short_line_length: Any
    top_ngrams: tuple[int, ...]
    dup_ngrams: tuple[int, ...]


# -- the word tokenizer ----------------------------------------------------------------------------------------

#: Characters of text, per language, whose words become permanent entries of spaCy's vocabulary (see :func:`tokenize`).
WARM_CHARS = 1_000_000
#: ... unless the vocabulary already holds this many entries.
WARM_MAX_VOCAB = 200_000
_warmed: dict[str, int] = {}


def tokenize(text: str, language: str, sentences: bool = False) -> tuple[list[str], list[str] | None]:
    """datatrove's word tokens of ``text`` and, with ``sentences``, its sentences, from one tokenizer pass.

    The words are what ``split_into_words(text, language)`` returns and the sentences what
    ``split_into_sentences(text, language)`` returns (None without ``sentences``). With a spaCy tokenizer both come
    from one call of datatrove's own spaCy pipeline (the one both functions run, sentencizer included), read the
    way both functions read it; otherwise they are those two functions.

    Speed: datatrove tokenizes each text inside a spaCy memory zone, so every word becomes a new vocabulary entry
    again for every document, and that dominates the time. The first ``WARM_CHARS`` characters this process sees
    (per language) also go through spaCy's tokenizer outside a memory zone: their words and chunks stay in the
    vocabulary and the tokenizer's cache (bounded by that budget), and later documents find most of their words
    there. spaCy's cache only memoizes its own tokenization: the tokens are the same either way.
    """
    tokenizer = load_word_tokenizer(language)
    spacy_tokenizer = isinstance(tokenizer, SpaCyTokenizer)
    warm(text, language)
    if not sentences:
        return split_into_words(text, language), None
    if not spacy_tokenizer:
        return split_into_words(text, language), split_into_sentences(text, language)
    nlp = tokenizer.tokenizer
    with nlp.memory_zone():  # as SpaCyTokenizer.word_tokenize and .span_tokenize do
        nlp.max_length = len(text) + 10
        docs = tokenizer._do_tokenize(text)
        words = strip_strings([token.text for doc in docs for token in doc])
        spans: list[tuple[int, int]] = []
        for doc in docs:
            start = spans[-1][1] if spans else 0
            for sent in doc.sents:
                spans.append((start + sent.start_char, start + sent.end_char))
    # split_into_sentences: each sentence runs to the next one's end (the last one to the end of the text)
    ends = [end for _, end in spans]
    return words, [text[a:b] for a, b in zip([0, *ends[:-1]], [*ends[:-1], len(text)])]


def load_tokenizer(language: str) -> None:
    """Load datatrove's word tokenizer for ``language`` now, so a worker pays for it in its set-up and not inside
    its first batch.

    For spaCy that is its import. spaCy imports thinc, and thinc imports torch when it is installed (for its
    torch model shims, which a blank tokenizer never uses): about 3 of the 5-6 CPU-seconds of the import, paid by
    every Ray worker process that runs this stage. When torch is not imported yet in this process, spaCy is
    imported with torch hidden (thinc then records that it has no torch); torch imports normally afterwards for
    anything that needs it. The tokens are the same either way (tested).
    """
    tokenizer = load_word_tokenizer(language)
    if not isinstance(tokenizer, SpaCyTokenizer):
        return
    if "spacy" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
        try:
            import spacy  # noqa: F401
        finally:
            del sys.modules["torch"]
    tokenizer.tokenizer  # noqa: B018 - the property builds spaCy's pipeline


def warm(text: str, language: str) -> None:
    """Let the words of ``text`` warm spaCy's vocabulary of ``language`` while this process's budget lasts (see
    :func:`tokenize`); anything that tokenizes with datatrove's ``load_word_tokenizer(language)`` (MinHash's
    shingles too) gets faster, with the same tokens."""
    if _warmed.get(language, 0) < WARM_CHARS:
        tokenizer = load_word_tokenizer(language)
        _warm(tokenizer if isinstance(tokenizer, SpaCyTokenizer) else None, text, language)


def _warm(tokenizer: SpaCyTokenizer | None, text: str, language: str) -> None:
    """Put the words of ``text`` into spaCy's vocabulary for good, within the budget (see :func:`tokenize`)."""
    used = _warmed.get(language, 0)
    if tokenizer is None or tokenizer.config is not None or len(tokenizer.tokenizer.vocab) >= WARM_MAX_VOCAB:
        _warmed[language] = WARM_CHARS  # nothing to warm (another tokenizer, a configured one, or full)
        return
    piece = text[: WARM_CHARS - used]
    _warmed[language] = used + len(piece)
    try:
        tokenizer.tokenizer.tokenizer(piece)  # spaCy's tokenizer alone, outside any memory zone
    except Exception as exc:  # only a speed-up: the document is tokenized as datatrove does right after
        log.debug("spaCy vocabulary warm-up skipped a text: %r", exc)


def c4_wants_sentences(text: str, c: C4Settings) -> bool:
    """Whether C4 will split the whole ``text`` into sentences: when it splits documents into sentences rather
    than lines, or when ``text`` is a single line as C4 keeps it (then counting its sentences may need them)."""
    if not c.split_paragraph:
        return True
    if c.min_num_sentences == -1 or text != text.strip() or len(text.splitlines()) != 1:
        return False
    return not (c.remove_citations and "[" in text)


# -- the statistics -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DocStats:
    """Everything the four filters count in one document (see :func:`measure`)."""

    n_chars: int
    n_words: int  # word tokens (datatrove's split_into_words)
    word_count: int  # tokens with a character outside datatrove's punctuation set (Gopher's words)
    word_chars: int  # their total length
    alpha_words: int  # tokens with an alphabetic character
    stop_words: int  # distinct stop words present
    hashes: int
    ellipses: int  # "..." and "…" occurrences
    lines: list[str]  # str.splitlines
    bullet_lines: int
    ellipsis_lines: int
    paragraphs: int  # parts of the stripped text split on 2+ newlines
    dup_paragraphs: int
    dup_paragraph_chars: int
    line_runs: int  # parts of the text split on runs of newlines
    dup_line_runs: int
    dup_line_run_chars: int
    newlines: int
    fw_lines: list[str]  # non-blank lines of str.split("\n")
    fw_punct_lines: int  # of those, ending in FineWeb's stop characters
    fw_short_lines: int  # of those, at most short_line_length long
    fw_dup_chars: int  # characters in repeated non-blank lines
    top_chars: dict[int, int | None]  # n -> characters of the top n-gram times its count (None: no n-gram)
    dup_chars: dict[int, int]  # n -> characters in duplicated n-grams
    sentences: list[str] | None  # the text's sentences (datatrove's split), when C4 asked for them

    @property
    def mean_word_length(self) -> float:
        """Mean length of Gopher's words (nan without any), the value numpy's mean gives."""
        return self.word_chars / self.word_count if self.word_count else math.nan


def count_duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their total length (datatrove's ``find_duplicates``)."""
    counts = Counter(items)
    if len(counts) == len(items):
        return 0, 0
    chars = sum(len(item) * (k - 1) for item, k in counts.items() if k > 1)
    return len(items) - len(counts), chars


def _windows(words: list[str], n: int) -> zip:
    """The n-grams of ``words`` as tuples, in order."""
    return zip(*(words[i:] for i in range(n)))


def top_ngram_chars(words: list[str], n: int, spaced: bool) -> int | None:
    """Length of the most frequent space-joined n-gram times its count (None when there is no n-gram).

    Ties go to the n-gram seen first, as with ``Counter.most_common(1)``. The n-grams are counted as tuples,
    which is the same as counting the joined strings when no word holds a space (``spaced`` False); otherwise
    they are joined first.
    """
    if len(words) < n:
        return None
    grams: Any = _windows(words, n) if not spaced else map(" ".join, _windows(words, n))
    counts = Counter(grams)
    if len(counts) == len(words) - n + 1:  # every n-gram once: the first one is the top one
        top, k = next(iter(counts)), 1
    else:
        top, k = max(counts.items(), key=itemgetter(1))
    if spaced:
        return len(top) * k
    return (sum(map(len, top)) + n - 1) * k


def joined_ngrams(words: list[str], sizes: tuple[int, ...]) -> dict[int, list[str]]:
    """For each n in ``sizes``, the n-grams of ``words`` joined without a separator (datatrove's keys for
    duplicated n-grams), built by extending the (n-1)-grams one word at a time."""
    out: dict[int, list[str]] = {}
    grams = words
    for n in range(1, max(sizes, default=0) + 1):
        if n > 1:
            grams = list(map(add, grams, words[n - 1 :]))
        if n in sizes:
            out[n] = grams
    return out


def duplicated_ngram_chars(grams: list[str], n: int) -> int:
    """Characters in duplicated n-grams (``grams``: the joined n-grams in order), as datatrove's
    ``find_all_duplicate`` counts them.

    Scanning left to right, an n-gram already seen counts its characters and the scan jumps past it (its words
    are not counted again); any other is remembered and the scan moves one word on.
    """
    if len(set(grams)) == len(grams):
        return 0
    seen: set[str] = set()
    chars, i, end = 0, 0, len(grams)
    while i < end:
        gram = grams[i]
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def measure(text: str, words: list[str], cfg: MeasureConfig, sentences: list[str] | None = None) -> DocStats:
    """Every statistic of ``text`` the four filters look at; ``words``: its datatrove word tokens; ``sentences``:
    its datatrove sentences where already split (see :func:`tokenize`)."""
    counts = Counter(words)
    word_count = word_chars = alpha_words = 0
    for word, k in counts.items():
        if word.isalpha():  # most words; no alphabetic character is in datatrove's punctuation set
            word_count += k
            word_chars += len(word) * k
            alpha_words += k
            continue
        if word.strip(_PUNCTUATION_CHARS):
            word_count += k
            word_chars += len(word) * k
        if any(map(str.isalpha, word)):
            alpha_words += k

    lines = text.splitlines()
    paragraphs = _PARAGRAPHS.split(text.strip())
    line_runs = _LINE_RUNS.split(text)
    fw_lines = [line for line in text.split("\n") if line.strip()]
    dup_paragraphs, dup_paragraph_chars = count_duplicates(paragraphs)
    dup_line_runs, dup_line_run_chars = count_duplicates(line_runs)
    short = cfg.short_line_length
    spaced = " " in "".join(words)
    return DocStats(
        n_chars=len(text),
        n_words=len(words),
        word_count=word_count,
        word_chars=word_chars,
        alpha_words=alpha_words,
        stop_words=len(cfg.stop_words.intersection(counts)),
        hashes=text.count("#"),
        ellipses=text.count("...") + text.count("…"),
        lines=lines,
        bullet_lines=sum(1 for line in lines if line.lstrip().startswith(_BULLETS)),
        ellipsis_lines=sum(1 for line in lines if line.rstrip().endswith(_LINE_ELLIPSES)),
        paragraphs=len(paragraphs),
        dup_paragraphs=dup_paragraphs,
        dup_paragraph_chars=dup_paragraph_chars,
        line_runs=len(line_runs),
        dup_line_runs=dup_line_runs,
        dup_line_run_chars=dup_line_run_chars,
        newlines=text.count("\n"),
        fw_lines=fw_lines,
        fw_punct_lines=sum(1 for line in fw_lines if line.endswith(cfg.stop_chars)),
        fw_short_lines=sum(1 for line in fw_lines if len(line) <= short),
        fw_dup_chars=count_duplicates(fw_lines)[1],
        top_chars={n: top_ngram_chars(words, n, spaced) for n in cfg.top_ngrams},
        dup_chars={n: duplicated_ngram_chars(grams, n) for n, grams in joined_ngrams(words, cfg.dup_ngrams).items()},
        sentences=sentences,
    )


# -- the verdicts, in datatrove's order of checks --------------------------------------------------------------


def gopher_quality_verdict(s: DocStats, g: GopherQualitySettings) -> Verdict:
    """``GopherQualityFilter.filter`` on the document measured in ``s``."""
    if g.min_doc_words and s.word_count < g.min_doc_words:
        return False, "gopher_short_doc"
    if g.max_doc_words and s.word_count > g.max_doc_words:
        return False, "gopher_long_doc"
    mean = s.mean_word_length
    if g.min_avg_word_length and mean < g.min_avg_word_length:
        return False, "gopher_below_avg_threshold"
    if g.max_avg_word_length and mean > g.max_avg_word_length:
        return False, "gopher_above_avg_threshold"
    if g.max_symbol_word_ratio and s.hashes / s.n_words > g.max_symbol_word_ratio:
        return False, "gopher_too_many_hashes"
    if g.max_symbol_word_ratio and s.ellipses / s.n_words > g.max_symbol_word_ratio:
        return False, "gopher_too_many_ellipsis"
    if g.max_bullet_lines_ratio and s.bullet_lines / len(s.lines) > g.max_bullet_lines_ratio:
        return False, "gopher_too_many_bullets"
    if g.max_ellipsis_lines_ratio and s.ellipsis_lines / len(s.lines) > g.max_ellipsis_lines_ratio:
        return False, "gopher_too_many_end_ellipsis"
    if g.max_non_alpha_words_ratio and s.alpha_words / s.n_words < g.max_non_alpha_words_ratio:
        return False, "gopher_below_alpha_threshold"
    if g.min_stop_words and s.stop_words < g.min_stop_words:
        return False, "gopher_enough_stop_words"
    return PASS


def gopher_repetition_verdict(s: DocStats, g: GopherRepetitionSettings) -> Verdict:
    """``GopherRepetitionFilter.filter``; the n-gram sizes it names must have been measured."""
    if not s.n_chars:
        return False, "empty"
    if g.dup_para_frac and s.dup_paragraphs / s.paragraphs > g.dup_para_frac:
        return False, "dup_para_frac"
    if g.dup_para_char_frac and s.dup_paragraph_chars / s.n_chars > g.dup_para_char_frac:
        return False, "dup_para_char_frac"
    if g.dup_line_frac and s.dup_line_runs / s.line_runs > g.dup_line_frac:
        return False, "dup_line_frac"
    if g.dup_line_char_frac and s.dup_line_run_chars / s.n_chars > g.dup_line_char_frac:
        return False, "dup_line_char_frac"
    for n, frac in g.top_n_grams:
        top = s.top_chars[n]
        if top is not None and top / s.n_chars > frac:
            return False, f"top_{n}_gram"
    for n, frac in g.dup_n_grams:
        if s.dup_chars[n] / s.n_chars > frac:
            return False, f"duplicated_{n}_n_grams"
    return PASS


def fineweb_verdict(s: DocStats, f: FineWebSettings, cfg: MeasureConfig) -> Verdict:
    """``FineWebQualityFilter.filter``; lines are recounted where ``f`` differs from what ``cfg`` measured."""
    lines = s.fw_lines
    if not lines:
        return False, "empty"
    punct = s.fw_punct_lines
    if f.stop_chars != cfg.stop_chars:
        punct = sum(1 for line in lines if line.endswith(f.stop_chars))
    ratio = punct / len(lines)
    if ratio < f.line_punct_thr and not (ratio == 0 and f.line_punct_exclude_zero):
        return False, "line_punct_ratio"
    short = s.fw_short_lines
    if f.short_line_length != cfg.short_line_length:
        short = sum(1 for line in lines if len(line) <= f.short_line_length)
    if short / len(lines) > f.short_line_threshold:
        return False, "short_line_ratio"
    if s.fw_dup_chars / (s.n_chars - s.newlines) > f.char_duplicates_ratio:
        return False, "char_dup_ratio"
    if s.newlines / s.n_words > f.new_line_ratio:
        return False, "list_ratio"
    return PASS


def c4_verdict(text: str, s: DocStats, c: C4Settings, language: str) -> Verdict:
    """``C4QualityFilter.filter`` (without rewriting the text): line by line, as datatrove walks them."""
    if c.split_paragraph:
        lines = s.lines
    else:
        lines = s.sentences if s.sentences is not None else split_into_sentences(text, language)
    kept = []
    for raw in lines:
        line = raw.strip()
        words = line.split()
        if c.max_word_length != -1 and words and max(map(len, words)) > c.max_word_length:
            continue
        if c.remove_citations and "[" in line:
            line = CITATION_REGEX.sub("", line)
        if c.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
            continue
        if len(words) < c.min_words_per_line:
            continue
        lowered = line.lower()
        if c.filter_lorem_ipsum and "lorem ipsum" in lowered:
            return False, "lorem_ipsum"
        if c.filter_javascript and "javascript" in lowered:
            continue
        if c.filter_curly_bracket and "{" in line:
            return False, "curly_bracket"
        if c.filter_policy and any(p in lowered for p in POLICY_SUBSTRINGS):
            continue
        kept.append(line)
    if c.min_num_sentences != -1 and not _enough_sentences(kept, c, language, text, s.sentences):
        return False, "too_few_sentences"
    return PASS


def _enough_sentences(kept: list[str], c: C4Settings, language: str, text: str, sentences: list[str] | None) -> bool:
    """Whether the kept lines hold at least ``min_num_sentences`` sentences, splitting as few as needed.

    With ``split_paragraph`` every kept line counts its sentences (datatrove's sentence split, which always
    returns at least one part; a line that is the whole ``text`` counts ``sentences`` when given); otherwise
    every kept line is one sentence.
    """
    total = len(kept)  # a lower bound: one sentence per line
    if total >= c.min_num_sentences or not c.split_paragraph:
        return total >= c.min_num_sentences
    for line in kept:
        parts = sentences if sentences is not None and line == text else split_into_sentences(line, language)
        total += len(parts) - 1
        if total >= c.min_num_sentences:
            return True
    return False
