"""dq-ray's ``askllm`` stage against the bare judge loop, side by side, on identical documents; and the
held-out agreement of the distilled Ask-LLM.

One run measures, over the same documents (a spread of the demo corpus read through dq-ray's reader):

* **dq-ray**: ``run_job`` with only the ``askllm`` stage (SmolLM2-135M-Instruct, transformers on the CPU) in
  two layouts, ``--threads`` actors of one torch thread each and one actor with ``--threads`` threads: read
  JSONL, score in the actors, write ``docs/`` (Parquet) and the manifest, on an embedded Ray started beforehand
  (not timed). Two rates: end to end (the actors' start and model load inside) and in the stage (documents /
  the stage's span in the manifest, first batch in to last batch out: the rate once the actors are up);
* **bare loop**: the same judge (:class:`dq_ray.stages.askllm.AskLLMJudge`, same engine, threads and template)
  called in this process over the same texts in batches of the same size, model loaded beforehand (not timed):
  the baseline, ratio 1.00.

docs/s and prompt tokens/s (tokens the model read, template included) of each, the ratio, and a cross-check that
dq-ray's scores equal the bare loop's. Then the distillation: the bare loop's LLM scores are regressed on the
documents' embeddings (all-MiniLM-L6-v2, int8 ONNX) exactly as ``askllm_distill`` does (ridge on the log-odds,
alpha by leave-one-out), with ``--folds``-fold cross-validation so every document is predicted by a model that
did not see it; reported: Spearman and the AUC for the LLM's top 30 %.

    .venv/bin/python benchmarks/askllm_vs_bare.py [--input data/demo] [--docs 200] [--token-budget 64]
        [--threads 2] [--rounds 1] [--out benchmarks/results/askllm_vs_bare.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    QUIET,
    Interference,
    Row,
    log,
    one_stage_config,
    read_accepted,
    report_header,
    save_report,
    time_run_job,
    wait_quiet,
    write_shards,
)

PACKAGES = ("dq-ray", "ray", "torch", "transformers", "tokenizers", "scikit-learn", "onnxruntime", "numpy")
BATCH_ROWS = 32


def prepare_input(input_path: str, n: int, out_dir: Path) -> list[tuple[str, str]]:
    """``n`` documents spread evenly over the corpus (read through dq-ray's reader), written as one JSONL file."""
    docs = read_accepted(input_path)
    picked = [docs[i] for i in np.linspace(0, len(docs) - 1, min(n, len(docs))).astype(int)]
    return write_shards(picked, 1, out_dir)


def run_dq_ray(input_dir: Path, run_dir: Path, params: dict, cpus: int, actors: int, row: Row) -> tuple[dict, dict]:
    """Time ``run_job`` with only the askllm stage; return {id: (score, tokens)} from docs/ and the manifest."""
    import pyarrow.parquet as pq

    stage = {
        "name": "askllm",
        "params": params,
        "resources": {"num_cpus": 1, "concurrency": actors, "batch_size": BATCH_ROWS},
    }
    cfg = one_stage_config(input_dir, run_dir, cpus, stage)
    result = time_run_job(cfg, row, cpus, stage="askllm")
    t = pq.read_table(run_dir / "docs", columns=["id", "askllm_score", "askllm_tokens"]).to_pydict()
    return {i: (s, n) for i, s, n in zip(t["id"], t["askllm_score"], t["askllm_tokens"])}, result.manifest


def run_bare(judge, texts: list[str], row: Row):
    busy = wait_quiet(row.system)
    with Interference() as other:
        t0 = time.perf_counter()
        parts = [judge.score(texts[i : i + BATCH_ROWS]) for i in range(0, len(texts), BATCH_ROWS)]
        wall = time.perf_counter() - t0
    row.add(len(texts), wall, busy, other.others)
    return parts


def distill_agreement(x: np.ndarray, logit: np.ndarray, folds: int, top_fraction: float) -> dict:
    """Cross-validated predictions of the distillation regressor and their agreement with the LLM."""
    from dq_ray.stages.askllm_distill import AskLLMDistillParams, agreement, fit_ridge, sigmoid

    alphas = AskLLMDistillParams.__dataclass_fields__["alphas"].default
    order = np.random.default_rng(0).permutation(len(x))
    pred = np.empty(len(x))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        coef, intercept, _ = fit_ridge(x[train], logit[train], alphas)
        pred[test] = sigmoid(x[test] @ coef + intercept)
    return agreement(pred, sigmoid(logit), top_fraction)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="corpus read through dq-ray's reader")
    parser.add_argument("--docs", type=int, default=200, help="documents, spread evenly over the corpus")
    parser.add_argument("--token-budget", type=int, default=64, help="document tokens the judge reads")
    parser.add_argument("--threads", type=int, default=2, help="Ray CPUs and torch threads")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the distillation check")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--out", default="benchmarks/results/askllm_vs_bare.md", help="markdown report")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="most seconds to wait for idle CPUs")
    args = parser.parse_args(argv)
    QUIET["max_wait_s"] = args.quiet_wait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_before = os.getloadavg()[0]

    from dq_ray.backends import default_model, default_onnx_file
    from dq_ray.backends.onnx import OnnxEncoder
    from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams

    params = {"backend": "transformers", "device": "cpu", "token_budget": args.token_budget, "batch_size": 8}
    w = args.threads
    rows = {
        "bare": Row(f"bare judge loop, {w} threads (model load excluded)"),
        "dq": Row(f"dq-ray, {w} actors x 1 thread"),
        "dq_1": Row(f"dq-ray, 1 actor x {w} threads"),
    }
    layouts = {"dq": (w, 1), "dq_1": (1, w)}  # actors, threads per actor
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-askllm-"))
    got: dict[str, dict] = {}
    try:
        docs = prepare_input(args.input, args.docs, tmp / "input")
        ids, texts = [d[0] for d in docs], [d[1] for d in docs]
        judge = AskLLMJudge(AskLLMParams(**params, num_threads=w))
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            for key, row in rows.items():
                if key == "bare":
                    parts = run_bare(judge, texts, row)
                    continue
                actors, threads = layouts[key]
                got[key], _ = run_dq_ray(
                    tmp / "input", tmp / f"run-{key}-{r}", {**params, "num_threads": threads}, w, actors, row
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bare_score = np.concatenate([p.score for p in parts])
    bare_tokens = np.concatenate([p.tokens for p in parts])
    logit = np.concatenate([p.logp_yes - p.logp_no for p in parts])
    tokens = int(bare_tokens.sum())
    problems = []
    max_diff = 0.0
    for key in layouts:
        dq_score = np.array([got[key][i][0] for i in ids], dtype=np.float64)
        max_diff = max(max_diff, float(np.nanmax(np.abs(dq_score - bare_score))))
        if sum(got[key][i][1] for i in ids) != tokens:
            problems.append(f"{rows[key].system}: askllm_tokens differ from the bare loop's")
    if max_diff > 1e-3:
        problems.append(f"dq-ray's scores differ from the bare loop's by up to {max_diff:.2e}")

    encoder = OnnxEncoder(default_model(), default_onnx_file(), "cpu", 32, 256, num_threads=args.threads)
    x = encoder.encode(texts).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    distill = distill_agreement(x, logit, args.folds, 0.3)

    base = rows["bare"]
    lines = [
        "| system | docs | prompt tokens | wall s | docs/s end to end | tokens/s end to end | stage span s "
        "| docs/s in the stage | fixed s | end to end / bare | in the stage / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {base.system} | {base.docs} | {tokens} | {base.wall_s:.2f} | {base.docs_per_s:.2f} | "
        f"{tokens / base.wall_s:.0f} | | | | 1.00x | |",
    ]
    for key in layouts:
        row = rows[key]
        lines.append(
            f"| {row.system} | {row.docs} | {tokens} | {row.wall_s:.2f} | {row.docs_per_s:.2f} | "
            f"{tokens / row.wall_s:.0f} | {row.span_s:.2f} | {row.stage_docs_per_s:.2f} | {row.fixed_s:.1f} | "
            f"{row.docs_per_s / base.docs_per_s:.2f}x | {row.stage_docs_per_s / base.docs_per_s:.2f}x |"
        )
    report = report_header("Ask-LLM: dq-ray's askllm stage vs the bare judge loop", PACKAGES, load_average=load_before)
    report += [
        f"- documents: {len(ids)} spread evenly over `{args.input}`; token budget {args.token_budget} document tokens "
        f"(prompt with template and chat markup: mean {bare_tokens.mean():.0f} tokens); model SmolLM2-135M-Instruct "
        f"(Q4_1 GGUF dequantised to float32), transformers on the CPU, {w} Ray CPUs, 8 prompts per forward pass, "
        f"{BATCH_ROWS} documents per batch; {args.rounds} round(s) interleaved, fastest kept",
        "",
        *lines,
        "",
        "End to end = documents / `run_job` wall (embedded Ray already started; actor start and model load, reads, "
        "scoring, Parquet write and manifest included). In the stage = documents / the stage's span (first batch "
        "in to last batch out). Fixed = end-to-end wall minus the span. The bare loop times the scoring calls "
        "alone (model already loaded).",
        "",
        f"Scores: dq-ray vs bare loop, max |difference| {max_diff:.2e}; mean LLM score {np.nanmean(bare_score):.4f}, "
        f"std {np.nanstd(bare_score):.4f}.",
        "",
        "## Distillation (held-out agreement)",
        "",
        f"Ridge on the all-MiniLM-L6-v2 embeddings (int8 ONNX) predicting the LLM's log-odds, {args.folds}-fold "
        "cross-validated (each document predicted by a model that did not see it), as `askllm_distill` fits it:",
        "",
        "| documents | Spearman (prediction vs LLM score) | AUC for the LLM's top 30 % |",
        "|---:|---:|---:|",
        f"| {distill['n']} | {distill['spearman']} | {distill['auc_top']} |",
        "",
        "Rounds: " + "; ".join(row.rounds_line() for row in rows.values()),
    ]
    if problems:
        report += ["", "**Problems:** " + "; ".join(problems)]
    save_report(args.out, report)
    print("\n".join(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
