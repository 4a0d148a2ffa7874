"""The ``pii`` detectors on the real text of the demo sources: what they flag, and documents/s on one core.

Nothing is planted here: every flag is a value that occurs in the published text (news articles quote press
contacts, tweets give help lines), or a false positive. For phone numbers it also runs libphonenumber alone
(``Leniency.VALID``) and a plain North-American regular expression, and prints, for hand-labelling, the matches
the stage's phone filters (URLs and paths, ``/``-split numbers, bare digit runs without a cue) take away.

    .venv/bin/python benchmarks/pii_scan.py

Results: benchmarks/README.md, "Personal data on real text".
"""

from __future__ import annotations

import argparse
import collections
import logging
import re
import sys
import time

log = logging.getLogger("pii_scan")

#: A plain phone pattern of the kind regex-only PII tools use (North-American 10 digits, optional country code).
NAIVE_PHONE = re.compile(r"(?<!\d)(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}(?!\d)")


def main(argv: list[str] | None = None) -> None:
    import phonenumbers

    from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs
    from dq_ray.stages.pii import find_spans

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", action="store_true", help="print every phone match the filters remove (context)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    sources = {"wikipedia": wikipedia_docs(), "news": news_docs(), "speeches": speech_docs(), "tweets": tweet_docs()}
    rows = []
    for name, docs in sources.items():
        texts = [d["text"] for d in docs]
        t0 = time.perf_counter()
        spans = [find_spans(t) for t in texts]
        seconds = time.perf_counter() - t0
        kinds = collections.Counter(s.kind for doc in spans for s in doc)
        raw = naive = 0
        kept = {(i, s.start) for i, doc in enumerate(spans) for s in doc if s.kind == "phone"}
        removed = []
        for i, t in enumerate(texts):
            naive += sum(1 for _ in NAIVE_PHONE.finditer(t))
            for m in phonenumbers.PhoneNumberMatcher(t, "US", leniency=phonenumbers.Leniency.VALID):
                raw += 1
                if (i, m.start) not in kept:
                    removed.append(t[max(0, m.start - 30) : m.end + 10].replace("\n", " "))
        rows.append((name, len(texts), sum(map(len, texts)), kinds, raw, naive, len(texts) / seconds))
        if args.show:
            for r in removed:
                log.info("%s: removed by the phone filters: %s", name, r)
    out = [
        "| source | docs | chars | flagged (stage) | phone: libphonenumber alone | phone: plain regex "
        "| docs/s, one core |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, n, chars, kinds, raw, naive, rate in rows:
        flagged = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
        out.append(f"| {name} | {n:,} | {chars:,} | {flagged} | {raw} | {naive} | {rate:,.0f} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
