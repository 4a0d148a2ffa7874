"""The fast quality classifier (``quality_pred``) against the embedding ridge (``askllm_pred``) on the same sample.

Both are what ``askllm_distill`` fits on the LLM's log-odds (``askllm_logp_yes - askllm_logp_no``): a ridge on the
all-MiniLM-L6-v2 embedding (int8 ONNX, the demo's embed backend) and a ridge on hashed word 1- and 2-grams of the
text (:mod:`dq_ray.stages._quality_text`, with the stage's defaults). The sample: ``--docs`` documents drawn evenly
from the demo's four sources (Wikipedia leads, news articles, health tweets, Commons speeches: real text in
installed packages), scored by the packaged judge (SmolLM2-135M-Instruct, transformers on the CPU, the paper's
prompt, ``--token-budget`` tokens). Agreement: ``--folds``-fold cross-validation with the same folds for both
models (every document predicted by models that did not see it), then the stage's own metrics
(:func:`dq_ray.stages.askllm_distill.agreement`): Spearman correlation with the LLM's score and ROC AUC for the
LLM's top 30%. Throughput on one thread: the text classifier on ``--speed-docs`` documents of the same sources, the
embedding model plus its ridge on the sample, and the LLM itself.

    .venv/bin/python benchmarks/quality_pred.py --docs 400

prints a Markdown table (benchmarks/README.md, "Fast quality classifier"). ``--cache FILE`` keeps the LLM's
scores in a Parquet file and reuses them on the next run with the same documents.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

log = logging.getLogger("quality_pred")


def draw(n: int, seed: int) -> list[dict]:
    """``n`` documents, an even share from each demo source (seeded), in a fixed order."""
    from dq_ray.demo.corpus import news_docs, speech_docs, tweet_docs, wikipedia_docs

    rng = random.Random(seed)
    out = []
    for fn in (wikipedia_docs, news_docs, tweet_docs, speech_docs):
        docs = fn()
        out += rng.sample(docs, min(n // 4, len(docs)))
    return out


def llm_logits(texts: list[str], ids: list[str], budget: int, threads: int, cache: str | None) -> tuple:
    """The judge's log-odds and scores for ``texts``, and its docs/s (from ``cache`` when it holds these ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if cache and Path(cache).exists():
        t = pq.read_table(cache)
        if t.column("id").to_pylist() == ids:
            log.info("LLM scores from %s", cache)
            return np.asarray(t.column("logit")), np.asarray(t.column("score")), float("nan")
    from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams

    judge = AskLLMJudge(
        AskLLMParams(backend="transformers", device="cpu", token_budget=budget, batch_size=8, num_threads=threads)
    )
    judge.score(texts[:8])  # load and warm up
    t0 = time.perf_counter()
    s = judge.score(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    logit = np.asarray(s.logp_yes, np.float64) - np.asarray(s.logp_no, np.float64)
    if cache:
        pq.write_table(pa.table({"id": ids, "logit": logit, "score": np.asarray(s.score, np.float64)}), cache)
    return logit, np.asarray(s.score, np.float64), rate


def cross_validated(predict_fold, n: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions: ``predict_fold(train, test)`` for each of ``folds`` seeded folds."""
    order = np.random.default_rng(seed).permutation(n)
    pred = np.zeros(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        pred[test] = predict_fold(train, test)
    return pred


def main(argv: list[str] | None = None) -> None:
    from dq_ray.backends import default_model, default_onnx_file
    from dq_ray.backends.onnx import OnnxEncoder
    from dq_ray.stages._quality_text import fit_text_ridge, text_features, text_logit
    from dq_ray.stages.askllm_distill import LOGIT_CLIP, AskLLMDistillParams, agreement, fit_ridge, sigmoid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400, help="documents the LLM scores (a quarter per source)")
    ap.add_argument("--token-budget", type=int, default=64, help="document tokens the LLM reads")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the LLM (its docs/s is for these)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--speed-docs", type=int, default=8000, help="documents the text classifier is timed on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="Parquet file keeping the LLM's scores between runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    p = AskLLMDistillParams()
    docs = draw(args.docs, args.seed)
    texts, ids = [d["text"] for d in docs], [d["id"] for d in docs]
    logit, llm_score, llm_rate = llm_logits(texts, ids, args.token_budget, args.threads, args.cache)
    y = np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP)
    truth = sigmoid(y)
    log.info("LLM scores: mean %.3f, std %.3f", llm_score.mean(), llm_score.std())

    encoder = OnnxEncoder(default_model(), default_onnx_file(), "cpu", 32, 256, num_threads=1)
    encoder.encode(texts[:8])
    t0 = time.perf_counter()
    emb = encoder.encode(texts).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb_rate = len(texts) / (time.perf_counter() - t0)
    x_text = text_features(texts, p.quality_features, p.quality_max_chars)

    def emb_fold(train, test):
        coef, b, _ = fit_ridge(emb[train], y[train], p.alphas)
        return sigmoid(emb[test] @ coef + b)

    def text_fold(train, test):
        coef, b, _ = fit_text_ridge(x_text[train], y[train], p.quality_alphas, seed=args.seed)
        return sigmoid(text_logit(x_text[test], coef, b))

    results = {
        "embedding ridge (askllm_pred)": agreement(cross_validated(emb_fold, len(y), args.folds, 1), truth, 0.3),
        "hashed 1-2-gram ridge (quality_pred)": agreement(
            cross_validated(text_fold, len(y), args.folds, 1), truth, 0.3
        ),
    }

    # throughput of the text classifier alone: features + a sparse dot product, on real documents
    coef, b, _ = fit_text_ridge(x_text, y, p.quality_alphas, seed=args.seed)
    speed = [d["text"] for d in draw(args.speed_docs, args.seed + 1)]
    t0 = time.perf_counter()
    for i in range(0, len(speed), 1024):
        sigmoid(text_logit(text_features(speed[i : i + 1024], p.quality_features, p.quality_max_chars), coef, b))
    text_rate = len(speed) / (time.perf_counter() - t0)
    chars = sorted(len(t) for t in speed)[len(speed) // 2]

    lines = [
        f"Sample: {len(y)} documents ({len(y) // 4} per source), SmolLM2-135M-Instruct, token budget "
        f"{args.token_budget}: LLM score mean {llm_score.mean():.3f}, std {llm_score.std():.3f}. "
        f"{args.folds}-fold cross-validation, the same folds for both models.",
        "",
        "| model | Spearman vs LLM | AUC, LLM's top 30% | needs | docs/s, one core |",
        "|---|---:|---:|---|---:|",
    ]
    needs = {
        "embedding ridge (askllm_pred)": ("the embed stage", f"{emb_rate:,.0f} (int8 MiniLM + ridge)"),
        "hashed 1-2-gram ridge (quality_pred)": ("the text", f"{text_rate:,.0f} ({chars:,} chars median)"),
    }
    for name, r in results.items():
        lines.append(f"| {name} | {r['spearman']} | {r['auc_top']} | {needs[name][0]} | {needs[name][1]} |")
    if np.isfinite(llm_rate):
        lines.append(f"| the LLM itself (SmolLM2-135M, {args.threads} threads) | 1 | 1 | a model | {llm_rate:,.1f} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
