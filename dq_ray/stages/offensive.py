"""Offensive language: a trained classifier's probability, a flag, and a word-list count that explains it.

Two signals, both from installed packages (nothing is downloaded):

* ``offensive_score``: the probability of ``alt-profanity-check``'s model (a TF-IDF vectorizer over English word
  uni-grams and a linear SVM calibrated to probabilities, trained on ~200k labelled comments and tweets; the
  ``profanity_check/data/*.joblib`` files of the wheel, released with, and pinned to, the scikit-learn version that
  trained them), on the first ``max_chars`` characters. The model was trained on short texts and its TF-IDF
  features are L2-normalised, so one abusive sentence in a long article weighs little; ``window_chars`` scores
  windows of that many characters (cut at whitespace) and keeps the highest probability instead. Measured
  (``benchmarks/offensive.py``): 200-character windows find a third of the offensive tweets planted in news
  articles, and flag 5% of the (clean) articles themselves instead of 0.1%; the default reads the text whole.
* ``offensive_words``: how many words and phrases of ``better-profanity``'s word list (916 entries, with
  leetspeak spellings) the text holds, counted on whole tokens, case-insensitively. The list as shipped flags
  medical, legal and identity vocabulary (``sex``, ``hiv``, ``stroke``, ``murder``, ``gay``...) and surnames
  (``wang``); ``exclude_words`` (default :data:`NEUTRAL_SENSES`) drops the entries that have an ordinary sense in
  edited English text: the entries that occur in the demo's Wikipedia leads, news articles, Commons speeches and
  health tweets, read one by one (``benchmarks/offensive.py``).

``offensive_flag`` is ``offensive_score >= threshold``. ``offensive_reason`` is null, or what to know about the
value, comma separated: ``short`` (fewer than ``min_words`` words: the model sees almost nothing), ``capped`` (only
the first ``max_chars`` characters were read); or why there is no score: ``no text``, ``empty``, ``no letters``,
``error: <ExceptionType>``. Both signals are English-only: on other languages the classifier sees unknown words
(a low score) and the list rarely matches.

Measured on 297 hand-labelled health tweets (``benchmarks/offensive.py``, table in benchmarks/README.md).
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register

log = logging.getLogger(__name__)

#: Entries of better-profanity's list that the stage does not count by default: words whose everyday sense in
#: news, encyclopedic or health text is not offensive (anatomy and medicine, drugs, crime and history, religion,
#: sexual and gender identity, surnames and first names, ordinary words). Each one occurs in the demo sources in
#: such a sense; slurs, swear words and insults stay counted.
NEUTRAL_SENSES: tuple[str, ...] = (
    # anatomy, medicine, sexual health
    "anal", "anus", "breasts", "clitoris", "ejaculation", "enlargement", "erect", "erection", "erotic", "facial",
    "g-spot", "gonad", "gonads", "herpes", "hiv", "masturbate", "masturbating", "masturbation", "menstruation",
    "naked", "nipple", "nipples", "nude", "oral", "orally", "organ", "orgasm", "orgasms", "ovary", "ovum", "pee",
    "penetrate", "penetration", "penile", "penis", "pms", "poop", "potty", "pubic", "rectal", "rectum", "semen",
    "sex", "sexual", "sperm", "stroke", "tampon", "testicle", "urine", "uterus", "vagina", "viagra", "virgin",
    "vomit", "vulva", "womb", "transsexual", "undies",
    # drugs and drink
    "drunk", "heroin", "hemp", "hookah", "meth", "opiate", "opium", "pcp", "pot", "rum", "stoned", "valium",
    "vodka", "weed",
    # crime, war, history, religion
    "god", "hell", "hitler", "incest", "kill", "kkk", "klan", "murder", "napalm", "nazi", "nazism", "pedophile",
    "pornography", "prostitute", "rape", "raped", "raping", "rapist", "reich", "slave", "sniper", "thug",
    # sexual and gender identity (flagging them is a known bias of word lists)
    "gay", "gays", "homo", "lesbians", "lesbos", "queer",
    # names
    "dong", "fanny", "guido", "len", "paddy", "pollock", "wang", "weiner", "willy", "woody", "yury",
    # ordinary words
    "bondage", "dummy", "fat", "fingering", "hump", "loin", "lust", "omg", "panties", "pawn", "playboy", "revue",
    "rump", "sandbar", "screw", "seaman", "seduce", "slope", "snatch", "steamy", "strip", "suck", "sucked",
    "sucking", "thrust", "tramp", "tush", "ugly", "vulgar", "whiz",
)  # fmt: skip

#: characters stripped from both ends of a whitespace-separated token before it is looked up
_PUNCT = "\"'`.,;:!?()[]{}<>«»“”‘’…*_-/\\|#~"
_WORD = re.compile(r"[a-z0-9$@]+(?:['-][a-z0-9$@]+)*")


@functools.cache
def _classifier() -> tuple[Any, Any]:
    """alt-profanity-check's ``(vectorizer, model)``, read from the wheel's data files (once per process)."""
    from importlib import resources

    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    data = resources.files("profanity_check") / "data"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        vectorizer = joblib.load(data / "vectorizer.joblib")
        model = joblib.load(data / "model.joblib")
    for w in caught:
        if issubclass(w.category, InconsistentVersionWarning):
            log.warning("offensive: %s (install the alt-profanity-check release of this scikit-learn)", w.message)
    return vectorizer, model


@functools.cache
def package_word_list() -> tuple[str, ...]:
    """better-profanity's word list as shipped (lower case, sorted, unique)."""
    from importlib import resources

    text = (resources.files("better_profanity") / "profanity_wordlist.txt").read_text(encoding="utf-8")
    return tuple(sorted({line.strip().lower() for line in text.splitlines() if line.strip()}))


def _tokens(text: str) -> list[str]:
    """Lower-case tokens: whitespace-separated pieces without surrounding punctuation."""
    return [t for t in (piece.strip(_PUNCT) for piece in text.lower().split()) if t]


class WordCounter:
    """Counts the entries of a word list in a text, on whole tokens (phrases: consecutive tokens)."""

    def __init__(self, words: tuple[str, ...]) -> None:
        words = tuple(" ".join(_tokens(w)) for w in words)  # as the text's tokens are: "s.h.i.t." -> "s.h.i.t"
        self.words = frozenset(w for w in words if w and " " not in w)
        self.phrases = frozenset(w for w in words if " " in w)
        self.phrase_lengths = sorted({len(p.split()) for p in self.phrases})
        self.phrase_starts = frozenset(p.split()[0] for p in self.phrases)

    def count(self, text: str) -> int:
        toks = _tokens(text)
        n = sum(map(self.words.__contains__, toks))
        for tok in toks:
            if not tok.isalnum() and tok not in self.words:  # "shit/crap", "f***ing," -> the words inside
                n += sum(part in self.words for part in _WORD.findall(tok) if part != tok)
        for i, tok in enumerate(toks):
            if tok in self.phrase_starts:
                n += sum(" ".join(toks[i : i + k]) in self.phrases for k in self.phrase_lengths)
        return n


def windows(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most about ``size`` characters, at whitespace where there is some."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        out.append(text[start:end])
        start = end
    return out


@dataclass(frozen=True)
class OffensiveParams:
    """Settings of the ``offensive`` stage.

    Attributes:
        threshold: ``offensive_flag`` is ``offensive_score >= threshold`` (the model's calibrated probability).
        max_chars: characters of each text read by both signals (a longer text gets ``capped`` in the reason).
        window_chars: the classifier scores windows of this many characters and keeps the highest (more found
            in long texts, more false flags); 0: the whole (capped) text at once.
        min_words: below this many words the score is kept but marked ``short``.
        exclude_words: entries of the package's word list that are not counted (default: :data:`NEUTRAL_SENSES`;
            ``[]`` counts the list as shipped).
        extra_words: words or phrases counted in addition to the package's list.
    """

    threshold: float = 0.5
    max_chars: int = 20000
    window_chars: int = 0
    min_words: int = 3
    exclude_words: tuple[str, ...] = NEUTRAL_SENSES
    extra_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError("offensive.threshold must be in (0, 1]")
        if self.max_chars < 1 or self.window_chars < 0 or self.min_words < 0:
            raise ConfigError("offensive: max_chars must be >= 1, window_chars and min_words >= 0")
        if self.window_chars and self.window_chars < 50:
            raise ConfigError("offensive.window_chars must be 0 (no windows) or >= 50")

    def word_list(self) -> tuple[str, ...]:
        """The words and phrases ``offensive_words`` counts."""
        drop = {w.lower() for w in self.exclude_words}
        kept = [w for w in package_word_list() if w not in drop]
        return tuple(sorted(set(kept) | {w.strip().lower() for w in self.extra_words if w.strip()}))


@register
class Offensive(Stage):
    """Offensive language: alt-profanity-check's probability (windowed), a flag, and a word-list count."""

    name = "offensive"
    inputs = ("text",)
    outputs = {
        "offensive_score": pa.float32(),
        "offensive_flag": pa.bool_(),
        "offensive_words": pa.int32(),
        "offensive_reason": pa.string(),
    }
    Params = OffensiveParams
    default_resources = Resources(num_cpus=1, batch_size=512)

    def setup(self) -> None:
        self._vectorizer, self._model = _classifier()
        self._counter = WordCounter(self.params.word_list())

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        info = super().describe()
        info["model"] = (
            f"alt-profanity-check {version('alt-profanity-check')} (TF-IDF + calibrated linear SVM, in the wheel; "
            f"scikit-learn {version('scikit-learn')})"
        )
        info["word_list"] = (
            f"better-profanity {version('better-profanity')}: {len(package_word_list())} entries, "
            f"{len(self.params.word_list())} counted"
        )
        return info

    def _reason(self, text: str | None) -> str | None:
        """Why ``text`` gets no score (or None when it gets one)."""
        if text is None:
            return "no text"
        if not text.strip():
            return "empty"
        if not any(ch.isalpha() for ch in text[: self.params.max_chars]):
            return "no letters"
        return None

    def _probabilities(self, pieces: list[str]) -> np.ndarray:
        if not pieces:
            return np.zeros(0)
        return self._model.predict_proba(self._vectorizer.transform(pieces))[:, 1]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        texts = batch.column("text").to_pylist()
        n = len(texts)
        scores: list[float | None] = [None] * n
        counts: list[int | None] = [None] * n
        reasons: list[str | None] = [self._reason(t) for t in texts]
        owner, pieces = [], []
        for i, (text, why) in enumerate(zip(texts, reasons)):
            if text is None:
                continue
            head = text[: p.max_chars]
            counts[i] = self._counter.count(head) if why is None else 0
            if why is None:
                parts = windows(head, p.window_chars) if p.window_chars else [head]
                pieces.extend(parts)
                owner.extend([i] * len(parts))
        try:
            prob = self._probabilities(pieces)
        except Exception as exc:  # a model failure must not fail the batch: score document by document
            log.warning("offensive: the model failed on a batch (%s); scoring documents one by one", type(exc).__name__)
            prob = self._one_by_one(pieces, owner, reasons)
        best = np.full(n, -1.0)
        np.maximum.at(best, np.asarray(owner, dtype=np.int64), prob)
        for i, text in enumerate(texts):
            if reasons[i] is not None or best[i] < 0:
                continue
            scores[i] = float(best[i])
            notes = []
            if len(text[: p.max_chars].split()) < p.min_words:
                notes.append("short")
            if len(text) > p.max_chars:
                notes.append("capped")
            reasons[i] = ",".join(notes) or None
        flags = [None if s is None else s >= p.threshold for s in scores]
        return append_columns(
            batch,
            {
                "offensive_score": pa.array(scores, pa.float32()),
                "offensive_flag": pa.array(flags, pa.bool_()),
                "offensive_words": pa.array(counts, pa.int32()),
                "offensive_reason": pa.array(reasons, pa.string()),
            },
        )

    def _one_by_one(self, pieces: list[str], owner: list[int], reasons: list[str | None]) -> np.ndarray:
        """Probabilities piece by piece; a piece that fails gets -1 and its document an ``error`` reason."""
        out = np.full(len(pieces), -1.0)
        for j, piece in enumerate(pieces):
            try:
                out[j] = self._probabilities([piece])[0]
            except Exception as exc:
                reasons[owner[j]] = f"error: {type(exc).__name__}"
        return out
