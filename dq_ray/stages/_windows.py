"""Token windows of long documents, and the pooling of their vectors: the ``embed`` stage's ``chunking: windows``.

A document is tokenised once by the embedding model's own (fast) tokenizer, without special tokens, and cut into
windows of ``window`` tokens (the model's ``max_seq_length`` minus its special tokens), ``overlap`` tokens shared by
neighbours. A window ends on a word boundary (a word is never split between two windows unless it alone fills a
window), so the window's text, cut from the document by the tokens' character offsets, tokenises back to the same
tokens and fits the model: every engine (sentence-transformers, ONNX, vLLM) embeds the same window texts.

When a document has more windows than ``max_chunks``, ``max_chunks`` of them are taken evenly spread over the
document (the first and the last included), not the first ``max_chunks``: the vector is meant to describe the
whole document, and taking its first windows only would judge a long document by its opening again, just a longer
one. A document that fits one window is passed on as it is, so its vector is the one without chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dq_ray.vectors import unit_rows


@dataclass(frozen=True)
class Windows:
    """The windows of a list of documents, in document order.

    Attributes:
        texts: the window texts (a document that fits one window: its text unchanged).
        doc: the index of the document of each window (non-decreasing).
        used: windows embedded per document.
        total: windows the document has before the ``max_chunks`` cap (``total > used``: truncated).
    """

    texts: list[str]
    doc: np.ndarray
    used: np.ndarray
    total: np.ndarray


def window_tokenizer(tokenizer: Any) -> Any:
    """A copy of an engine's tokenizer as a ``tokenizers.Tokenizer`` without truncation or padding.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (the ONNX engine's) or a Hugging Face fast tokenizer
    (sentence-transformers', vLLM's), whose ``backend_tokenizer`` is one. A slow tokenizer has no character
    offsets to cut windows by: :class:`ValueError`.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"chunking: windows needs a fast tokenizer (tokenizers.Tokenizer), got {type(tokenizer)}")
    clone = Tokenizer.from_str(backend.to_str())
    clone.no_truncation()
    clone.no_padding()
    return clone


def _word_start(word_ids: Sequence[int | None], i: int, floor: int) -> int:
    """The first token (above ``floor``) of the word that token ``i`` belongs to."""
    while i > floor and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]:
        i -= 1
    return i


def token_spans(word_ids: Sequence[int | None], window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans tiling ``len(word_ids)`` tokens: at most ``window`` tokens each, ending on a
    word boundary when one is inside the span, the next starting at most ``overlap`` tokens before the end (on the
    first word boundary from there, and always after the previous start)."""
    n = len(word_ids)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + window, n)
        if end < n:
            snapped = _word_start(word_ids, end, start)
            end = snapped if snapped > start else end  # one word longer than a window: cut inside it
        spans.append((start, end))
        if end >= n:
            return spans
        nxt = max(end - overlap, start + 1)
        while nxt < end and word_ids[nxt] is not None and word_ids[nxt] == word_ids[nxt - 1]:
            nxt += 1  # forward to a word's first token: the overlap is at most ``overlap`` tokens
        start = nxt


def spread(total: int, cap: int) -> np.ndarray:
    """``cap`` of ``range(total)`` evenly spread, first and last included (all of them when ``total <= cap``)."""
    if total <= cap:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, cap)).astype(np.int64))


def split_windows(tokenizer: Any, texts: list[str], window: int, max_chunks: int, overlap: int = 0) -> Windows:
    """Cut ``texts`` into token windows (see the module's docstring); ``tokenizer`` from :func:`window_tokenizer`."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"window must be >= 1 and 0 <= overlap < window; got window={window}, overlap={overlap}")
    out: list[str] = []
    doc: list[int] = []
    used = np.zeros(len(texts), np.int32)
    total = np.zeros(len(texts), np.int32)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    for i, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
        if len(enc.ids) <= window:
            chosen = [text]
            total[i] = 1
        else:
            spans = token_spans(enc.word_ids, window, overlap)
            total[i] = len(spans)
            offsets = enc.offsets
            picked = [spans[k] for k in spread(len(spans), max_chunks)]
            chosen = [text[offsets[s][0] : offsets[e - 1][1]] for s, e in picked]
        used[i] = len(chosen)
        out.extend(chosen)
        doc.extend([i] * len(chosen))
    return Windows(out, np.asarray(doc, np.int64), used, total)


def pool_windows(vectors: np.ndarray, doc: np.ndarray, n_docs: int) -> np.ndarray:
    """One unit vector per document: the mean of its windows' unit vectors, L2-normalised.

    ``doc`` gives each row's document (non-decreasing, every document present)."""
    if n_docs == 0:
        return np.zeros((0, vectors.shape[1]), np.float32)
    rows = unit_rows(np.asarray(vectors, dtype=np.float32))
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    return unit_rows(np.add.reduceat(rows, starts, axis=0))
