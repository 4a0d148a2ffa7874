"""Exact duplicates: a hash of normalised text, grouped across the whole corpus by a Ray shuffle.

Normalisation folds what does not change the content: Unicode compatibility forms (NFKC), case
(``casefold``), punctuation (every Unicode ``P*`` character removed) and whitespace (runs collapsed,
ends trimmed). The 128-bit xxHash of the result, in hex, is ``exact_dup_group``.

The pipeline then shuffles rows into hash buckets of ``exact_dup_group`` (a Ray groupby, never on the driver)
and, inside each group, records its size as ``exact_dup_count`` and marks exactly one member
``exact_dup_keep = true``: the first occurrence in input order, i.e. the smallest ``(source_file, source_index)``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dq_ray.stage import Resources, Stage, append_columns, register

_SPACE = re.compile(r"\s+")


#: Planes 0 and 1: every Unicode punctuation character lies there (planes 2-3 hold CJK ideographs, 14 tags and
#: variation selectors, 15-16 private use); scanning them only is 10x faster than scanning all of Unicode.
_PUNCTUATION_PLANES = 0x20000


@functools.cache
def _punctuation_table() -> dict[int, None]:
    """``str.translate`` table deleting every character of a Unicode ``P*`` category (computed once per worker)."""
    return dict.fromkeys(i for i in range(_PUNCTUATION_PLANES) if unicodedata.category(chr(i))[0] == "P")


def normalise(text: str) -> str:
    """The form two texts must share to count as exact duplicates."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table())
    return _SPACE.sub(" ", text).strip()


def text_hash(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalise(text).encode("utf-8", errors="surrogatepass"))


@dataclass(frozen=True)
class ExactDedupParams:
    """Settings of the ``exact_dedup`` stage (none yet: the normalisation is fixed and documented)."""


@register
class ExactDedup(Stage):
    """Groups documents whose normalised text is identical; keeps the first of each group."""

    name = "exact_dedup"
    inputs = ("text", "source_file", "source_index")
    outputs = {
        "exact_dup_group": pa.string(),
        "exact_dup_count": pa.int64(),
        "exact_dup_keep": pa.bool_(),
    }
    Params = ExactDedupParams
    default_resources = Resources(num_cpus=1, batch_size=1024)
    group_key = "exact_dup_group"

    def process(self, batch: pa.Table) -> pa.Table:
        hashes = [text_hash(t) for t in batch.column("text").to_pylist()]
        return append_columns(batch, {"exact_dup_group": pa.array(hashes, pa.string())})

    def process_groups(self, rows: pa.Table) -> pa.Table:
        n = rows.num_rows
        if n == 0:
            return append_columns(
                rows, {"exact_dup_count": pa.array([], pa.int64()), "exact_dup_keep": pa.array([], pa.bool_())}
            )
        order = pc.sort_indices(
            rows,
            sort_keys=[("exact_dup_group", "ascending"), ("source_file", "ascending"), ("source_index", "ascending")],
        ).to_numpy()
        keys = rows.column("exact_dup_group").take(order).to_numpy(zero_copy_only=False)
        starts = np.ones(n, dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]  # first row of each group in sorted order = the one kept
        group_of = np.cumsum(starts) - 1
        sizes = np.bincount(group_of)
        keep = np.zeros(n, dtype=bool)
        keep[order[starts]] = True
        count = np.empty(n, dtype=np.int64)
        count[order] = sizes[group_of]
        return append_columns(
            rows, {"exact_dup_count": pa.array(count, pa.int64()), "exact_dup_keep": pa.array(keep, pa.bool_())}
        )
