"""Preference and instruction data: the record shapes dq-ray reads, and how a record becomes a row.

``input.shape`` picks the shape of every input record (JSONL or Parquet):

=========  =====================================  =============================================
shape      fields (default names)                 meaning
=========  =====================================  =============================================
``text``   ``text``                               plain documents (the default; nothing here)
``dpo``    ``prompt``, ``chosen``, ``rejected``   a preference pair
``kto``    ``prompt``, ``completion``, ``label``  one answer with a binary desirable / undesirable label
``sft``    ``instruction``, ``response``          an instruction and its demonstrated answer
=========  =====================================  =============================================

``input.fields`` renames them (``{prompt: question, chosen: answer_a}``). The prompt and the answers may each
be a string or a chat-message list (``[{"role": ..., "content": ...}]``).

**A record is one row.** Besides the reader's ``id, text, source_file, source_index``, a row of a preference
shape carries the columns of :data:`PREF_COLUMNS`:

* ``pref_prompt``: the prompt (``instruction`` for SFT) as text; ``text`` is a copy of it, so stages that read
  ``text`` (embed, topics, the map) describe the prompts.
* ``pref_chosen`` / ``pref_rejected``: the two answers of a DPO pair. KTO puts its completion in
  ``pref_chosen`` when ``label`` is true (desirable) and in ``pref_rejected`` when it is false, the other side
  null; SFT puts its response in ``pref_chosen``. Pair-level signals exist only where both sides do.
* ``pref_label``: the KTO label (null for the other shapes).

**Chat lists are rendered to text.** A prompt list of one ``user`` message is its content; a longer prompt list
is rendered as ``role: content`` blocks separated by blank lines. An answer list keeps its trailing run of
``assistant`` messages (their contents joined by blank lines): the turns before them repeat the conversation,
as in UltraFeedback-style data where ``chosen`` holds the whole dialogue. A message's ``content`` may be a
string or a list of ``{"type": "text", "text": ...}`` parts.

A record that does not fit its shape is rejected with one of :data:`SHAPE_REJECT_REASONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dq_ray.errors import ConfigError

#: Every record shape, and its roles -> default field names.
SHAPES: dict[str, dict[str, str]] = {
    "text": {},
    "dpo": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "kto": {"prompt": "prompt", "completion": "completion", "label": "label"},
    "sft": {"instruction": "instruction", "response": "response"},
}

#: The columns a row of a preference shape carries besides the reader's own.
PREF_COLUMNS: dict[str, pa.DataType] = {
    "pref_prompt": pa.string(),
    "pref_chosen": pa.string(),
    "pref_rejected": pa.string(),
    "pref_label": pa.bool_(),
}

#: Rejection reasons of records that do not fit their shape (added to ``dq_ray.io.REJECT_REASONS``).
SHAPE_REJECT_REASONS = {
    "missing_field": "a field of input.shape is missing or null",
    "field_not_text": "a prompt or answer field is neither a string nor a chat-message list",
    "bad_messages": "a chat-message list is empty or malformed (not role/content objects, no assistant turn)",
    "empty_field": "a prompt or answer is empty or only whitespace",
    "bad_label": "a KTO label is not a boolean (true/false or 0/1)",
}


def check_shape(shape: str, fields: Mapping[str, Any]) -> None:
    """Validate ``input.shape`` and ``input.fields`` (raises ``ConfigError`` naming the valid choices)."""
    if shape not in SHAPES:
        raise ConfigError(f"input.shape: {shape!r} is not one of {', '.join(SHAPES)}")
    roles = SHAPES[shape]
    unknown = sorted(set(fields) - set(roles))
    if unknown:
        valid = ", ".join(roles) or "(none: shape text uses text_field)"
        raise ConfigError(f"input.fields: unknown role(s) {unknown} for shape {shape!r}; valid roles: {valid}")
    for role, name in fields.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"input.fields.{role}: expected a field name, got {name!r}")


def shape_columns(shape: str) -> tuple[str, ...]:
    """The columns the reader adds for ``shape`` (none for ``text``)."""
    return () if shape == "text" else tuple(PREF_COLUMNS)


@dataclass(frozen=True)
class Rejection:
    """Why a record does not fit its shape."""

    reason: str
    detail: str


class ShapeReader:
    """Turns one record of a preference shape into the row's prompt text and ``pref_*`` values."""

    def __init__(self, shape: str, fields: Mapping[str, str] | None = None, max_bytes: int | None = None) -> None:
        check_shape(shape, fields or {})
        self.shape = shape
        self.fields = {**SHAPES[shape], **(fields or {})}
        self.max_bytes = max_bytes

    def input_fields(self) -> list[str]:
        """The record fields this shape reads (Parquet reads only these columns)."""
        return list(self.fields.values())

    def parse(self, record: Mapping[str, Any]) -> dict[str, Any] | Rejection:
        """The row values (``text`` plus :data:`PREF_COLUMNS`), or a :class:`Rejection`."""
        f = self.fields
        if self.shape == "dpo":
            prompt = self._text(record, "prompt", prompt=True)
            if isinstance(prompt, Rejection):
                return prompt
            chosen = self._text(record, "chosen")
            if isinstance(chosen, Rejection):
                return chosen
            rejected = self._text(record, "rejected")
            if isinstance(rejected, Rejection):
                return rejected
            row = {"pref_prompt": prompt, "pref_chosen": chosen, "pref_rejected": rejected, "pref_label": None}
        elif self.shape == "kto":
            prompt = self._text(record, "prompt", prompt=True)
            if isinstance(prompt, Rejection):
                return prompt
            completion = self._text(record, "completion")
            if isinstance(completion, Rejection):
                return completion
            label = record.get(f["label"])
            if label is None:
                return Rejection("missing_field", f"no non-null field {f['label']!r} (label)")
            if isinstance(label, bool):
                pass
            elif isinstance(label, int) and label in (0, 1):
                label = bool(label)
            else:
                return Rejection("bad_label", f"{f['label']!r} is {label!r}; expected true/false or 0/1")
            row = {
                "pref_prompt": prompt,
                "pref_chosen": completion if label else None,
                "pref_rejected": None if label else completion,
                "pref_label": label,
            }
        else:  # sft
            prompt = self._text(record, "instruction", prompt=True)
            if isinstance(prompt, Rejection):
                return prompt
            response = self._text(record, "response")
            if isinstance(response, Rejection):
                return response
            row = {"pref_prompt": prompt, "pref_chosen": response, "pref_rejected": None, "pref_label": None}
        if self.max_bytes is not None:
            for key in ("pref_prompt", "pref_chosen", "pref_rejected"):
                size = len((row[key] or "").encode("utf-8", errors="surrogatepass"))
                if size > self.max_bytes:
                    return Rejection("text_too_large", f"{key} is {size} bytes > input.max_text_bytes={self.max_bytes}")
        row["text"] = row["pref_prompt"]
        return row

    def _text(self, record: Mapping[str, Any], role: str, prompt: bool = False) -> str | Rejection:
        name = self.fields[role]
        value = record.get(name)
        if value is None:
            return Rejection("missing_field", f"no non-null field {name!r} ({role})")
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                return Rejection("invalid_utf8", f"{name!r}: {exc}")
        if isinstance(value, str):
            text = value
        elif isinstance(value, (list, tuple)):
            rendered = render_messages(value, prompt=prompt)
            if isinstance(rendered, Rejection):
                return Rejection(rendered.reason, f"{name!r}: {rendered.detail}")
            text = rendered
        else:
            return Rejection("field_not_text", f"{name!r} ({role}) is a {type(value).__name__}")
        if not text.strip():
            return Rejection("empty_field", f"{name!r} ({role}) is empty")
        return text


def _content(message: Any, i: int) -> tuple[str, str] | Rejection:
    if not isinstance(message, Mapping):
        return Rejection("bad_messages", f"message {i} is a {type(message).__name__}, not a role/content object")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not role:
        return Rejection("bad_messages", f"message {i} has no role")
    if isinstance(content, (list, tuple)):  # content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        if any(not isinstance(p, str) for p in parts):
            return Rejection("bad_messages", f"message {i} has a text part without a string 'text'")
        content = "\n".join(parts)
    if not isinstance(content, str):
        return Rejection("bad_messages", f"message {i} ({role}) has no string content")
    return role, content


def render_messages(messages: Any, prompt: bool) -> str | Rejection:
    """A chat-message list as text (see the module docstring for the rule), or a :class:`Rejection`."""
    if not messages:
        return Rejection("bad_messages", "an empty message list")
    turns = []
    for i, m in enumerate(messages):
        parsed = _content(m, i)
        if isinstance(parsed, Rejection):
            return parsed
        turns.append(parsed)
    if prompt:
        if len(turns) == 1 and turns[0][0] == "user":
            return turns[0][1]
        return "\n\n".join(f"{role}: {content}" for role, content in turns)
    tail = []
    for role, content in reversed(turns):
        if role != "assistant":
            break
        tail.append(content)
    if not tail:
        return Rejection("bad_messages", "an answer list without a trailing assistant message")
    return "\n\n".join(reversed(tail))
