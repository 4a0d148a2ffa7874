"""Prompt text for LLM judges: template fields, truncation on token boundaries, answer tokens, and where a field
sits inside the prompt (characters, then tokens). Pure functions over a Hugging Face tokenizer; the judge that
uses them is :class:`dq_ray.stages.askllm.AskLLMJudge`."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: A token is at most this many characters in practice: text beyond ``token_budget * this`` is never tokenised.
CHARS_PER_TOKEN_BOUND = 16


def template_fields(template: str) -> list[str]:
    """The named ``{field}`` placeholders of a template, in order of first use. Raises ``ValueError`` on
    positional, attribute or formatted fields, or on unbalanced braces."""
    fields: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name like {{document}}")
        if name not in fields:
            fields.append(name)
    if not fields:
        raise ValueError("the template has no {field} placeholder for the document")
    return fields


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def truncate(tokenizer: Any, texts: Sequence[str], budget: int) -> tuple[list[str], np.ndarray]:
    """Each text cut to its first ``budget`` tokens, on a token boundary, and whether it was cut.

    The cut is made in the original string at the end offset of the last kept token, so the kept text is an
    exact prefix. Text beyond ``budget * CHARS_PER_TOKEN_BOUND`` characters is never tokenised (and counts as
    cut).
    """
    limit = budget * CHARS_PER_TOKEN_BOUND
    heads = [t[:limit] for t in texts]
    try:
        enc = tokenizer(heads, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # a slow tokenizer: decode the kept tokens instead
        enc, offsets = tokenizer(heads, add_special_tokens=False), None
    out, cut = [], np.zeros(len(texts), dtype=bool)
    for i, (text, head) in enumerate(zip(texts, heads)):
        ids = enc["input_ids"][i]
        if len(ids) > budget:
            end = offsets[i][budget - 1][1] if offsets is not None else None
            out.append(head[:end] if end is not None else tokenizer.decode(ids[:budget]).rstrip("\ufffd"))
            cut[i] = True
        else:
            out.append(head)
            cut[i] = len(head) < len(text)
    return out, cut


def candidate_ids(tokenizer: Any, variants: Sequence[str]) -> tuple[list[int], list[str]]:
    """Token ids of the single-token variants (deduplicated, in order), and the variants that are not one token."""
    ids: list[int] = []
    skipped: list[str] = []
    for v in variants:
        enc = tokenizer.encode(v, add_special_tokens=False)
        if len(enc) != 1:
            skipped.append(v)
        elif enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids, skipped


def render(template: str, values: Mapping[str, str], field: str) -> tuple[str, tuple[int, int]]:
    """``template`` filled with ``values`` (as ``str.format``), and the character span of ``field``'s first use."""
    parts: list[str] = []
    at, span = 0, (0, 0)
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        at += len(literal)
        if name is not None:
            value = values[name]
            if name == field and span == (0, 0):
                span = (at, at + len(value))
            parts.append(value)
            at += len(value)
    return "".join(parts), span


def token_span(offsets: Sequence[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int]:
    """The tokens ``[start, end)`` lying wholly inside the character span ``chars`` (from a fast tokenizer's
    offsets; a token straddling the span's edge is not counted); ``(0, 0)`` when there is none."""
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= chars[0] and b <= chars[1]]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)
