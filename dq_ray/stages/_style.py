"""Style and tone measures of one answer, computed here without outside libraries (used by the ``pairs`` stage).

Every measure is a plain function of the text, so its definition is what the code says:

* ``words``: whitespace-separated tokens that contain a letter or digit.
* ``fk_grade``: Flesch-Kincaid grade, ``0.39 * words/sentences + 11.8 * syllables/words - 15.59``; sentences
  are runs ending in ``.``, ``!`` or ``?`` (at least one per text), syllables are groups of vowels (``y``
  included) per word, less a silent final ``e``, at least one per word.
* ``hedge_rate``: hedging markers (:data:`HEDGES`: "might", "perhaps", "I think", "it depends"...) per 100 words.
* ``apology``: the text apologises ("sorry", "apologise", "my apologies"...).
* ``refusal``: the text declines the request ("I can't help with", "I cannot", "as an AI"...; :data:`REFUSALS`).
* ``list_ratio``: share of non-empty lines that are list items (``-``, ``*``, ``•``, ``1.``, ``1)``).
* ``headings``: markdown heading lines (``#`` to ``######`` and a space).
* ``code``: the text holds a fenced code block (`````) or an indented (4 spaces / tab) code line.
* ``exclaim_rate``: ``!`` per sentence.
* ``second_person_rate``: "you", "your", "yours", "yourself", "yourselves" per 100 words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\S*[^\W_]\S*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_VOWELS = re.compile(r"[aeiouy]+")
_LETTERS = re.compile(r"[^a-z]")

HEDGES = (
    "might",
    "may",
    "perhaps",
    "possibly",
    "probably",
    "likely",
    "unlikely",
    "maybe",
    "somewhat",
    "arguably",
    "apparently",
    "seemingly",
    "presumably",
    "i think",
    "i believe",
    "i guess",
    "i suppose",
    "it seems",
    "it appears",
    "could be",
    "not sure",
    "it depends",
    "in general",
    "generally",
    "to some extent",
)
_HEDGE = re.compile(r"\b(?:" + "|".join(re.escape(h) for h in HEDGES) + r")\b", re.IGNORECASE)
_APOLOGY = re.compile(r"\b(?:sorry|apologi[sz]e[sd]?|apologies|apologising|apologizing)\b", re.IGNORECASE)
REFUSALS = (
    r"i(?:'m| am) (?:sorry,? )?(?:but )?(?:not able|unable) to",
    r"i can(?:no|')t (?:help|assist|provide|do|answer|comply|fulfil|fulfill|support|share|create|write|give)",
    r"i cannot (?:help|assist|provide|do|answer|comply|fulfil|fulfill|support|share|create|write|give)",
    r"i won'?t be able to",
    r"i(?:'m| am) not (?:going|willing|allowed|permitted) to",
    r"i must (?:decline|refuse)",
    r"as an ai\b",
    r"as a language model",
    r"against my (?:guidelines|policy|policies|programming)",
)
_REFUSAL = re.compile("|".join(REFUSALS), re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+\S")
_HEADING = re.compile(r"^#{1,6}\s+\S", re.MULTILINE)
_CODE = re.compile(r"```|^(?: {4}|\t)\S", re.MULTILINE)
_SECOND_PERSON = re.compile(r"\b(?:you|your|yours|yourself|yourselves)\b", re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def syllables(word: str) -> int:
    w = _LETTERS.sub("", word.lower())
    if not w:
        return 1
    n = len(_VOWELS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee")) and n > 1:
        n -= 1
    return max(n, 1)


def sentences(text: str) -> int:
    return max(1, len(_SENTENCE_END.findall(text)))


@dataclass(frozen=True)
class Style:
    """The style and tone measures of one text (see the module docstring)."""

    words: int
    fk_grade: float | None
    hedge_rate: float | None
    apology: bool
    refusal: bool
    list_ratio: float | None
    headings: int
    code: bool
    exclaim_rate: float
    second_person_rate: float | None


def style(text: str) -> Style:
    ws = words(text)
    n, s = len(ws), sentences(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    per100 = (lambda c: 100.0 * c / n) if n else (lambda c: None)
    grade = 0.39 * n / s + 11.8 * sum(syllables(w) for w in ws) / n - 15.59 if n else None
    return Style(
        words=n,
        fk_grade=grade,
        hedge_rate=per100(len(_HEDGE.findall(text))),
        apology=bool(_APOLOGY.search(text)),
        refusal=bool(_REFUSAL.search(text)),
        list_ratio=sum(bool(_LIST_ITEM.match(ln)) for ln in lines) / len(lines) if lines else None,
        headings=len(_HEADING.findall(text)),
        code=bool(_CODE.search(text)),
        exclaim_rate=text.count("!") / s,
        second_person_rate=per100(len(_SECOND_PERSON.findall(text))),
    )


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of the lower-cased words (the whole text as one shingle when it has fewer words)."""
    ws = [w.lower() for w in words(text)]
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def containment(part: set[str], whole: set[str]) -> float:
    """The share of ``part``'s shingles found in ``whole`` (1.0 for an empty ``part``)."""
    return len(part & whole) / len(part) if part else 1.0
