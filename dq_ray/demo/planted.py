"""Planted near-duplicates in real text: the ground truth of the near-duplicate tests and benchmarks.

:func:`planted_corpus` takes real documents (Wikipedia leads, news articles, Commons speeches from
:mod:`dq_ray.demo.corpus`), picks some as *originals* and adds copies of them changed in the ways near-duplicates
on the web differ (:data:`KINDS`); every other document is background. Each document carries ``family``: the index
of its original for the originals and their copies, -1 for background. Seeded, so a test always sees the same set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

HEADERS = (
    "Share this article: Facebook Twitter Email Print",
    "Skip to main content. Subscribe to our newsletter for the latest updates.",
    "Home > News > World",
)
FOOTERS = (
    "Copyright 2017 The Associated Press. All rights reserved. This material may not be published or rewritten.",
    "Click here to read more stories like this one and sign up for our daily briefing.",
    "Comments are closed for this article.",
)
FILLERS = ("also", "very", "however", "reportedly", "still", "new", "local", "recent", "major", "other")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def edit_words(text: str, rng: random.Random, k: int) -> str:
    """``k`` word edits (substitute, insert or delete) at random positions; line breaks are kept."""
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(i, j) for i, line in enumerate(lines) for j in range(len(line)) if line[j]]
    for i, j in sorted(rng.sample(slots, min(k, len(slots))), reverse=True):
        op = rng.choice(("substitute", "insert", "delete"))
        if op == "substitute":
            lines[i][j] = rng.choice(FILLERS)
        elif op == "insert":
            lines[i].insert(j, rng.choice(FILLERS))
        else:
            del lines[i][j]
    return "\n".join(" ".join(line) for line in lines)


def edited(text: str, rng: random.Random) -> str:
    """A few (1 to 5) words changed, inserted or deleted."""
    return edit_words(text, rng, rng.randint(1, 5))


def boilerplate_added(text: str, rng: random.Random) -> str:
    """A header or footer line added (or both)."""
    choice = rng.randint(0, 2)
    head = rng.choice(HEADERS) + "\n\n" if choice in (0, 2) else ""
    foot = "\n\n" + rng.choice(FOOTERS) if choice in (1, 2) else ""
    return head + text + foot


def boilerplate_removed(text: str, rng: random.Random) -> str:
    """The first line (a news headline, a lead's first sentence) removed, like a stripped header."""
    lines = text.split("\n\n", 1)
    if len(lines) == 2:
        return lines[1]
    sentences = _SENTENCE.split(text)
    return " ".join(sentences[1:]) if len(sentences) > 2 else text


def reordered(text: str, rng: random.Random) -> str:
    """Paragraphs in another order. A body without paragraph breaks is cut into paragraphs of 2-3 sentences
    first (the news articles of the demo data are a headline plus one body paragraph)."""
    head, _, body = text.rpartition("\n\n")
    sentences = _SENTENCE.split(body)
    paragraphs = [" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    if len(paragraphs) < 2:
        return edited(text, rng)
    moved = paragraphs[:]
    while moved == paragraphs:
        rng.shuffle(moved)
    return (head + "\n\n" if head else "") + "\n\n".join(moved)


KINDS: dict[str, Callable[[str, random.Random], str]] = {
    "exact": lambda text, rng: text,
    "edited": edited,
    "boilerplate_added": boilerplate_added,
    "boilerplate_removed": boilerplate_removed,
    "reordered": reordered,
}


@dataclass(frozen=True)
class PlantedDoc:
    """One document of a planted corpus."""

    id: str
    text: str
    family: int  # index of the original for originals and copies, -1 for background
    kind: str  # "background", "original" or a key of KINDS


def planted_corpus(
    docs: list[dict], originals: int, copies_per_original: int = 2, min_words: int = 100, seed: int = 0
) -> list[PlantedDoc]:
    """``docs`` (dicts with ``id`` and ``text``) plus copies of ``originals`` of them, shuffled.

    Originals are drawn among documents with at least ``min_words`` words; each gets ``copies_per_original``
    copies of different kinds (cycling through :data:`KINDS`). Documents whose text is an exact duplicate of an
    earlier one (after ``exact_dedup``'s normalisation: the sources repeat short speeches such as "Will the hon.
    Gentleman give way?") are left out, so the only duplicates are the planted ones.
    """
    from dq_ray.stages.exact_dedup import normalise

    seen: set[str] = set()
    docs = [d for d in docs if not (normalise(d["text"]) in seen or seen.add(normalise(d["text"])))]
    rng = random.Random(seed)
    candidates = [i for i, d in enumerate(docs) if len(d["text"].split()) >= min_words]
    picked = set(rng.sample(candidates, min(originals, len(candidates))))
    kinds = list(KINDS)
    out: list[PlantedDoc] = []
    n_copy = 0
    for i, d in enumerate(docs):
        if i not in picked:
            out.append(PlantedDoc(str(d["id"]), d["text"], -1, "background"))
            continue
        out.append(PlantedDoc(str(d["id"]), d["text"], i, "original"))
        for c in range(copies_per_original):
            kind = kinds[n_copy % len(kinds)]
            n_copy += 1
            out.append(PlantedDoc(f"{d['id']}~{kind}{c}", KINDS[kind](d["text"], rng), i, kind))
    rng.shuffle(out)
    return out
