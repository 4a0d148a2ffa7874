"""Whole-document embeddings (``embed`` with ``chunking: windows``) against the first-window embedding.

Long documents are built from real text in installed packages (:mod:`dq_ray.demo`): ``--join`` Wikipedia leads,
or ``--join`` news articles, joined by blank lines (``--docs`` of them, half each source). Each gets three planted
copies: its halves swapped (the second half of its paragraphs first), 2% of its words edited (substituted,
inserted or deleted) and a boilerplate header and/or footer added (:func:`dq_ray.demo.planted.boilerplate_added`).
All 4 x ``--docs`` texts are embedded by the ``embed`` stage on the ``onnx`` backend (the packaged int8
all-MiniLM-L6-v2, 256 tokens) with ``chunking: none`` and ``chunking: windows`` (``--max-chunks``), in batches of
the stage's default 256 rows, on ``--threads`` onnxruntime threads. Reported: documents per second of each (the
same texts), windows per document, and for each kind of copy its cosine to the original and how many copies reach
SemDeDup's default ``threshold`` (a pair at or above it in one cluster is a duplicate; read from
:class:`dq_ray.stages.semdedup.SemDedupParams`).

    .venv/bin/python benchmarks/embed_chunks.py --docs 200
    .venv/bin/python benchmarks/embed_chunks.py --purity

prints a Markdown table (benchmarks/README.md, "Whole-document embeddings"). ``--purity`` measures topics instead:
the four English sources of the demo corpus, sampled at its sizes (seeded: 1,500 Wikipedia leads, 900 news articles, 900
tweets, 500 speeches) embedded both ways, then the ``topics`` stage's spherical k-means (FAISS; ``--topics`` fine
topics, several seeds) on each; reported: each source's windows per document, and the source purity and adjusted
Rand index of the topics, overall and for the long documents (more than one window).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

import numpy as np
import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is packaged

from dq_ray.demo import DemoSizes, news_docs, speech_docs, tweet_docs, wikipedia_docs  # noqa: E402
from dq_ray.demo.planted import boilerplate_added, edit_words  # noqa: E402
from dq_ray.stages.embed import Embed, EmbedParams  # noqa: E402
from dq_ray.stages.semdedup import SemDedupParams  # noqa: E402
from dq_ray.vectors import to_matrix  # noqa: E402

log = logging.getLogger("bench")

BATCH_ROWS = 256  # the embed stage's default resources.batch_size


def long_documents(n: int, join: int, seed: int, min_words: int = 60, max_words: int = 250) -> list[str]:
    """``n`` texts, each ``join`` real documents of one source (Wikipedia leads or news articles) joined."""
    rng = random.Random(seed)
    out: list[str] = []
    for k, source in enumerate((wikipedia_docs, news_docs)):
        pool = [d["text"] for d in source() if min_words <= len(d["text"].split()) <= max_words]
        rng.shuffle(pool)
        want = n // 2 + (n % 2 if k == 0 else 0)
        if len(pool) < want * join:
            raise SystemExit(f"{source.__name__}: {len(pool)} documents, {want * join} needed")
        out += ["\n\n".join(pool[i * join : (i + 1) * join]) for i in range(want)]
    return out


def halves_swapped(text: str) -> str:
    """The second half of the paragraphs first."""
    paragraphs = text.split("\n\n")
    half = len(paragraphs) // 2
    return "\n\n".join(paragraphs[half:] + paragraphs[:half])


def words_edited(text: str, rng: random.Random, share: float = 0.02) -> str:
    """``share`` of the words substituted, inserted before or deleted, at random places (line breaks kept)."""
    return edit_words(text, rng, max(1, round(share * len(text.split()))))


def embed_all(stage: Embed, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Unit vectors of ``texts`` (batches of :data:`BATCH_ROWS`), windows used per text (None: no chunking), and
    the wall time."""
    vectors, chunks = [], []
    start = time.perf_counter()
    for lo in range(0, len(texts), BATCH_ROWS):
        out = stage.process(pa.table({"text": texts[lo : lo + BATCH_ROWS]}))
        vectors.append(to_matrix(out.column("embedding")))
        if "embed_chunks" in out.column_names:
            chunks.append(out.column("embed_chunks").to_numpy())
    wall = time.perf_counter() - start
    return np.concatenate(vectors), (np.concatenate(chunks) if chunks else None), wall


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of documents in their topic's majority source."""
    return sum(np.unique(truth[labels == c], return_counts=True)[1].max() for c in np.unique(labels)) / len(truth)


def topic_purity(args: argparse.Namespace) -> None:
    """``--purity``: the demo corpus's sources against topics fitted on each embedding."""
    from sklearn.metrics import adjusted_rand_score

    from dq_ray.stages.topics import spherical_kmeans
    from dq_ray.vectors import nearest_centroid

    sizes, rng = DemoSizes(), random.Random(args.seed)
    docs = []
    for name, read, n in (
        ("wikipedia", wikipedia_docs, sizes.wikipedia),
        ("news", news_docs, sizes.news),
        ("tweets", tweet_docs, sizes.tweets),
        ("speeches", speech_docs, sizes.speeches),
    ):
        pool = read()
        docs += [(name, pool[i]["text"]) for i in sorted(rng.sample(range(len(pool)), min(n, len(pool))))]
    truth = np.array([s for s, _ in docs])
    texts = [t for _, t in docs]
    out = {}
    for mode in ("none", "windows"):
        stage = Embed(EmbedParams(backend="onnx", device="cpu", num_threads=args.threads, chunking=mode))
        stage.ensure_setup()
        out[mode] = embed_all(stage, texts)
        log.info("chunking %s: %.1f s", mode, out[mode][2])
    chunks = out["windows"][1]
    long = chunks > 1
    lines = [
        f"{len(texts)} demo documents; windows per document: "
        + ", ".join(f"{s} {chunks[truth == s].mean():.2f}" for s in dict.fromkeys(truth))
        + f"; {int(long.sum())} longer than one window; {args.topics} topics, seeds 0-{args.seeds - 1}",
        "",
        "| | chunking: none | chunking: windows |",
        "|---|---:|---:|",
    ]
    rows: dict[str, dict[str, list[float]]] = {}
    for mode, (vectors, _, _) in out.items():
        for seed in range(args.seeds):
            centroids = spherical_kmeans(vectors, args.topics, 25, seed)
            labels = nearest_centroid(vectors, centroids)[0]
            for key, value in (
                ("source purity, all documents", purity(labels, truth)),
                ("adjusted Rand index, all documents", adjusted_rand_score(truth, labels)),
                (f"source purity, the {int(long.sum())} long documents", purity(labels[long], truth[long])),
            ):
                rows.setdefault(key, {}).setdefault(mode, []).append(float(value))
    for key, by_mode in rows.items():
        cells = [f"{np.mean(v):.3f} (+/- {np.std(v):.3f})" for v in (by_mode["none"], by_mode["windows"])]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=200, help="long documents (each gets 3 copies)")
    ap.add_argument("--join", type=int, default=3, help="real documents joined into one long document")
    ap.add_argument("--max-chunks", type=int, default=EmbedParams().max_chunks, help="embed.max_chunks")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1: the demo's one thread per actor)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--purity", action="store_true", help="topic purity on the demo sources instead of copies")
    ap.add_argument("--topics", type=int, default=44, help="--purity: fine topics (the demo run fits 44)")
    ap.add_argument("--seeds", type=int, default=5, help="--purity: k-means seeds averaged")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.purity:
        topic_purity(args)
        return

    rng = random.Random(args.seed)
    originals = long_documents(args.docs, args.join, args.seed)
    kinds = {
        "halves swapped": [halves_swapped(t) for t in originals],
        "2% word edits": [words_edited(t, rng) for t in originals],
        "boilerplate added": [boilerplate_added(t, rng) for t in originals],
    }
    texts = originals + [t for copies in kinds.values() for t in copies]
    n = len(originals)
    log.info("%d long documents (%d texts with the copies), load average %.1f", n, len(texts), os.getloadavg()[0])

    threshold = SemDedupParams().threshold
    results = {}
    window = 0
    for mode in ("none", "windows"):
        params = EmbedParams(
            backend="onnx", device="cpu", num_threads=args.threads, chunking=mode, max_chunks=args.max_chunks
        )
        stage = Embed(params)
        stage.ensure_setup()
        window = stage.window or window
        stage.process(pa.table({"text": originals[:8]}))  # warm-up
        vectors, chunks, wall = embed_all(stage, texts)
        results[mode] = (vectors, chunks, wall)
        log.info("chunking %s: %.1f s, %.1f docs/s", mode, wall, len(texts) / wall)

    _, chunks, _ = results["windows"]
    lines = [
        f"{n} long documents ({args.join} Wikipedia leads or news articles of 60-250 words joined; "
        f"{np.mean(chunks[:n]):.1f} windows of {window} tokens per document on average, "
        f"{int((chunks[:n] == args.max_chunks).sum())} at the cap of {args.max_chunks}), 3 copies each; "
        f"int8 ONNX all-MiniLM-L6-v2, {args.threads} threads; SemDeDup threshold {threshold}",
        "",
        "| | chunking: none | chunking: windows |",
        "|---|---:|---:|",
    ]
    walls = {m: results[m][2] for m in results}
    lines.append(
        f"| docs/s ({len(texts)} texts) | {len(texts) / walls['none']:.1f} | {len(texts) / walls['windows']:.1f} |"
    )
    for k, (kind, _) in enumerate(kinds.items()):
        rows = slice((k + 1) * n, (k + 2) * n)
        cos = {m: (results[m][0][rows] * results[m][0][:n]).sum(axis=1) for m in results}
        lines.append(
            f"| {kind}: median cosine to the original (min) | {np.median(cos['none']):.3f} ({cos['none'].min():.3f}) "
            f"| {np.median(cos['windows']):.3f} ({cos['windows'].min():.3f}) |"
        )
        lines.append(
            f"| {kind}: copies >= {threshold} | {int((cos['none'] >= threshold).sum())}/{n} "
            f"| {int((cos['windows'] >= threshold).sum())}/{n} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
