"""Small helpers shared by tests."""

from __future__ import annotations

import json
from pathlib import Path

from dq_ray.demo import wikipedia_docs


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def wiki_texts(n: int) -> list[str]:
    """The first n real Wikipedia leads that are long enough to pass Gopher's 50-word minimum."""
    return [d["text"] for d in wikipedia_docs() if len(d["text"].split()) > 80][:n]
