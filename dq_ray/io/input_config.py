"""The ``input:`` section of a job config: where documents come from and how the reader reads them.

It lives with the readers (which are its only consumers besides the job config): :mod:`dq_ray.config` imports
and re-exports it, so ``from dq_ray.config import InputConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dq_ray.errors import ConfigError
from dq_ray.io.shapes import check_shape, shape_columns

__all__ = ["INPUT_FORMATS", "READER_COLUMNS", "InputConfig"]

#: Columns every document has when it leaves the reader.
READER_COLUMNS = ("id", "text", "source_file", "source_index")

INPUT_FORMATS = ("auto", "jsonl", "parquet")


@dataclass(frozen=True)
class InputConfig:
    """Where documents come from.

    Attributes:
        paths: files, directories or globs; local paths or any fsspec URL (``s3://``, ``gs://``...).
        format: ``jsonl`` (also ``.jsonl.gz`` / ``.jsonl.zst``), ``parquet``, or ``auto`` (by file suffix).
        text_field: the field holding the document text.
        id_field: the field holding the document id; a record without one gets a deterministic id.
        keep_fields: extra input fields copied (as strings) into ``docs/`` (e.g. ``url``, ``source``).
        max_text_bytes: documents whose UTF-8 text is longer are rejected with reason ``text_too_large``.
        max_raw_bytes: how much of a rejected record's raw content ``rejected/`` keeps.
        batch_rows: rows per batch emitted by a reader.
        shape: the record shape: ``text`` (documents), or the preference / instruction shapes ``dpo``
            (prompt, chosen, rejected), ``kto`` (prompt, completion, label) and ``sft`` (instruction,
            response); see :mod:`dq_ray.io.shapes`.
        fields: field names of the shape's roles where they differ from the defaults
            (e.g. ``{prompt: question, chosen: answer_a}``).
    """

    paths: tuple[str, ...] = ()
    format: str = "auto"
    text_field: str = "text"
    id_field: str = "id"
    keep_fields: tuple[str, ...] = ()
    max_text_bytes: int = 1_048_576
    max_raw_bytes: int = 65_536
    batch_rows: int = 500
    shape: str = "text"
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_shape(self.shape, self.fields)
        if self.format not in INPUT_FORMATS:
            raise ConfigError(f"input.format: {self.format!r} is not one of {', '.join(INPUT_FORMATS)}")
        for key in ("max_text_bytes", "max_raw_bytes", "batch_rows"):
            if getattr(self, key) < 1:
                raise ConfigError(f"input.{key} must be >= 1")
        clash = set(self.keep_fields) & (set(READER_COLUMNS) | set(shape_columns(self.shape)))
        if clash:
            raise ConfigError(f"input.keep_fields may not name reader columns: {sorted(clash)}")
