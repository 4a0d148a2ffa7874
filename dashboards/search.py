"""Full-text search over a run's documents, on the server: the map's search box.

A query is words (documents holding every one of them, in any order) or a phrase in double quotes (documents
holding every consecutive word pair of the phrase, in order: exact for two-word phrases, and for longer ones a
document holding each pair somewhere also matches). Words are Unicode ``\\w+`` runs, compared in lower case.

Two ways to answer, the same answers (the tests check it):

- **the index** that ``dq-ray dashboard-prepare`` writes into ``RUN/dashboard/search/``: sorted postings
  ``(term, row)`` in Parquet, one file per ``docs/`` file (terms are the words and adjacent word pairs of each
  document; ``row`` is the document's position in ``docs/``). A query reads only the row groups whose term range
  holds its terms and intersects their rows: no text is read;
- **a scan** of every document's text (from ``docs/`` when the run kept it, else from the verified input files),
  for runs of at most :data:`SCAN_MAX_ROWS` documents without an index.

The browser never receives text in bulk: a search returns the number of matches, the rows of up to
:data:`MAX_HITS` of them (their points are highlighted on the map) and the view lists the first few with
snippets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dashboards.data_store import RunPathError, RunStore
from dashboards.pyramid import PREPARED_DIR, run_started_at

log = logging.getLogger(__name__)

#: The index's folder under ``RUN/dashboard/``.
SEARCH_DIR = "search"
#: Without an index, runs of at most this many documents are searched by reading every text (a scan reads about
#: 5,000 documents a second on a 2-core machine: 50,000 took 8-10 s, the index answers in 20-60 ms).
SCAN_MAX_ROWS = 20_000
#: The most matching rows a search returns (and the map highlights); the count covers every match.
MAX_HITS = 5_000
#: Words of a query beyond this are ignored.
MAX_QUERY_WORDS = 16
#: Characters of a document read for the scan and the index (longer documents are searched in their start).
MAX_TEXT_CHARS = 200_000
_ROW_GROUP = 65_536
_WORD = re.compile(r"\w+")


def words(text: str | None) -> list[str]:
    """The lower-cased words of ``text``, in order."""
    return _WORD.findall(text.lower()) if text else []


def document_terms(text: str | None) -> set[str]:
    """What the index holds for one document: its distinct words and adjacent word pairs (``"a b"``)."""
    w = words(text)
    return {*w, *(f"{a} {b}" for a, b in zip(w, w[1:]))}


@dataclass(frozen=True)
class Query:
    """A parsed query: the terms a matching document holds, all of them."""

    text: str
    terms: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.terms


def parse_query(text: str) -> Query:
    """Words, or a phrase in double quotes (see the module docstring)."""
    text = (text or "").strip()
    phrase = len(text) >= 2 and text[0] == text[-1] == '"'
    w = words(text)[:MAX_QUERY_WORDS]
    if phrase and len(w) >= 2:
        terms = [f"{a} {b}" for a, b in zip(w, w[1:])]
    else:
        terms = w
    return Query(text, tuple(dict.fromkeys(terms)))


def keyword_snippet(text: str | None, query: Query, chars: int = 300) -> str | None:
    """About ``chars`` characters of ``text`` around the first word of ``query`` it holds (so a listed result
    shows why it matched), marked ``…`` where cut; the start of ``text`` when no word is found."""
    if not text:
        return text
    text = " ".join(text.split())
    first = None
    for w in dict.fromkeys(" ".join(query.terms).split()):
        m = re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE)
        if m and (first is None or m.start() < first):
            first = m.start()
    start = max(0, (first or 0) - chars // 3)
    cut = text[start : start + chars]
    return ("…" if start else "") + cut + ("…" if start + chars < len(text) else "")


@dataclass
class SearchResult:
    """``total`` documents match; ``rows`` holds up to :data:`MAX_HITS` of them (``docs/`` positions, sorted)."""

    query: Query
    total: int
    rows: np.ndarray
    method: str  # "index" or "scan"
    message: str = ""


class Searcher:
    """Answers queries over one run, from its index when ``dashboard-prepare`` wrote a current one, else by a
    scan when the run is small enough (:data:`SCAN_MAX_ROWS`)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.index_dir = store.path(PREPARED_DIR, SEARCH_DIR)
        self.info = _current_index(store.root, self.index_dir)
        self.method = "index" if self.info else ("scan" if self._docs_rows() <= SCAN_MAX_ROWS else None)

    def _docs_rows(self) -> int:
        return self.store.dataset.count_rows()

    def available(self) -> str | None:
        """None when searches can be answered, else why not (shown in the search box's place)."""
        if self.method is None:
            return (
                f"search needs an index for runs over {SCAN_MAX_ROWS:,} documents: run `dq-ray dashboard-prepare RUN`"
            )
        return None

    def search(self, text: str, max_hits: int = MAX_HITS) -> SearchResult:
        query = parse_query(text)
        if query.empty:
            return SearchResult(query, 0, np.zeros(0, np.int64), self.method or "none", "type words to search")
        if self.method is None:
            return SearchResult(query, 0, np.zeros(0, np.int64), "none", self.available() or "")
        started = time.perf_counter()
        rows = self._from_index(query) if self.method == "index" else self._scan(query)
        log.info(
            "search %r: %d documents by %s in %.3f s", query.text, rows.size, self.method, time.perf_counter() - started
        )
        return SearchResult(query, int(rows.size), rows[:max_hits], self.method)

    def _from_index(self, query: Query) -> np.ndarray:
        expr = None
        for t in query.terms:
            e = pc.field("term") == t
            expr = e if expr is None else expr | e
        parts = sorted(os.path.join(self.index_dir, f) for f in os.listdir(self.index_dir) if f.endswith(".parquet"))
        found = pads.dataset(parts, format="parquet").to_table(columns=["term", "row"], filter=expr)
        terms = found.column("term").to_numpy(zero_copy_only=False)
        rows = found.column("row").to_numpy()
        out: np.ndarray | None = None
        for t in query.terms:
            hits = np.unique(rows[terms == t])
            out = hits if out is None else np.intersect1d(out, hits, assume_unique=True)
            if out.size == 0:
                break
        return out if out is not None else np.zeros(0, np.int64)

    def _scan(self, query: Query) -> np.ndarray:
        want = set(query.terms)
        hits = []
        for offset, texts in iter_texts(self.store):
            for i, text in enumerate(texts):
                if want <= document_terms(text):
                    hits.append(offset + i)
        return np.asarray(hits, np.int64)


def iter_texts(store: RunStore, batch_rows: int = 4_096):
    """``(first row, texts)`` for every batch of ``docs/``, in row order; None for a document whose text cannot
    be read (an input file that changed since the run, or that no receipt names)."""
    has_text = store.columns.has_text
    cols = ["text"] if has_text else ["id", "source_file", "source_index"]
    offset = 0
    for batch in store.dataset.to_batches(columns=cols, batch_size=batch_rows):
        yield offset, _texts(store, pa.Table.from_batches([batch]), has_text)
        offset += batch.num_rows


def _texts(store: RunStore | None, table: pa.Table, has_text: bool) -> list[str | None]:
    if has_text:
        return [t[:MAX_TEXT_CHARS] if t else t for t in table.column("text").to_pylist()]
    try:
        return store.snippets(table, chars=MAX_TEXT_CHARS)
    except RunPathError as exc:  # a docs row naming a file no receipt names: no text for this batch
        log.warning("search: no text for %d documents: %s", table.num_rows, exc)
        return [None] * table.num_rows


def _current_index(root: str, index_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(index_dir, "search.json")) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    if info.get("run_started_at") != run_started_at(root):
        log.warning("%s was built from an earlier run; ignored (run dq-ray dashboard-prepare again)", index_dir)
        return None
    return info


# -- building the index (dq-ray dashboard-prepare) -----------------------------------------------------------


def build_index(run_dir: str, out_dir: str) -> dict[str, Any] | None:
    """Write the search index of ``run_dir`` into ``out_dir``: one Ray task per ``docs/`` file (Ray must be
    initialised), each writing the sorted postings of its documents. Returns what ``search.json`` records (None
    for a run whose text cannot be read: no ``text`` column and no input receipts)."""
    import ray

    started = time.perf_counter()
    root = os.path.realpath(run_dir)
    dataset = pads.dataset(os.path.join(root, "docs"), format="parquet")
    has_text = "text" in dataset.schema.names
    if not has_text and not RunStore(root).allowed_inputs():
        log.info("no search index for %s: no text in docs/ and no input receipts", root)
        return None
    os.makedirs(out_dir, exist_ok=True)
    task = ray.remote(_index_file)
    pending, offset = [], 0
    for i, frag in enumerate(dataset.get_fragments()):
        rows = frag.count_rows()
        out = os.path.join(out_dir, f"part-{i:05d}.parquet")
        pending.append(task.remote(root, frag.path, offset, out, has_text))
        offset += rows
    postings = sum(ray.get(pending))
    info = {
        "documents": offset,
        "postings": int(postings),
        "text_from": "docs" if has_text else "input files",
        "run_started_at": run_started_at(root),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    with open(os.path.join(out_dir, "search.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    log.info("search index of %s: %d documents, %d postings", root, offset, postings)
    return info


def _index_file(root: str, path: str, offset: int, out: str, has_text: bool) -> int:
    """The postings of one ``docs/`` file (its rows numbered from ``offset``), sorted by term, into ``out``."""
    store = None if has_text else RunStore(root)
    cols = ["text"] if has_text else ["id", "source_file", "source_index"]
    terms: list[str] = []
    rows: list[np.ndarray] = []
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(columns=cols, batch_size=4_096):
        for i, text in enumerate(_texts(store, pa.Table.from_batches([batch]), has_text)):
            found = document_terms(text)
            terms.extend(found)
            rows.append(np.full(len(found), offset + i, np.int64))
        offset += batch.num_rows
    table = pa.table(
        {"term": pa.array(terms, pa.string()), "row": np.concatenate(rows) if rows else np.zeros(0, np.int64)}
    )
    table = table.sort_by([("term", "ascending"), ("row", "ascending")])
    pq.write_table(table, out, row_group_size=_ROW_GROUP)
    return table.num_rows
