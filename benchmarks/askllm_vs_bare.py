"""dq-ray's ``askllm`` stage against the bare judge loop, side by side, on identical documents; and the
held-out agreement of the distilled Ask-LLM.

One run measures, over the same documents (a spread of the demo corpus read through dq-ray's reader):

* **dq-ray**: ``run_job`` with only the ``askllm`` stage (SmolLM2-135M-Instruct, transformers on the CPU, one
  Ray actor with ``--threads`` torch threads): read JSONL, score in the actor, write ``docs/`` (Parquet) and the
  manifest, on an embedded Ray started beforehand (not timed). The actor's model load is inside this time; the
  stage's own busy time (from the manifest, load excluded) is reported too;
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
import orjson
from _common import QUIET, Interference, Row, log, report_header, save_report, time_run_job, wait_quiet

PACKAGES = ("dq-ray", "ray", "torch", "transformers", "tokenizers", "scikit-learn", "onnxruntime", "numpy")
BATCH_ROWS = 32


def prepare_input(input_path: str, n: int, out_dir: Path) -> list[tuple[str, str]]:
    """``n`` documents spread evenly over the corpus (read through dq-ray's reader), written as one JSONL file."""
    from dq_ray.config import InputConfig
    from dq_ray.io import ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(input_path,))
    docs: list[tuple[str, str]] = []
    for shard in discover_inputs(cfg):
        for table in read_shard(shard, cfg, ShardResult(shard.path)):
            docs.extend(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    picked = [docs[i] for i in np.linspace(0, len(docs) - 1, min(n, len(docs))).astype(int)]
    out_dir.mkdir(parents=True)
    with open(out_dir / "docs.jsonl", "wb") as fh:
        for doc_id, text in picked:
            fh.write(orjson.dumps({"id": doc_id, "text": text}) + b"\n")
    return picked


def run_dq_ray(input_dir: Path, run_dir: Path, params: dict, threads: int, row: Row) -> tuple[dict, dict]:
    """Time ``run_job`` with only the askllm stage; return {id: (score, tokens)} from docs/ and the manifest."""
    import pyarrow.parquet as pq

    from dq_ray.config import load_config

    cfg = load_config(
        {
            "input": {"paths": [str(input_dir)]},
            "output": {"path": str(run_dir)},
            "ray": {"num_cpus": threads},
            "stages": [
                {
                    "name": "askllm",
                    "params": params,
                    "resources": {"num_cpus": 1, "concurrency": 1, "batch_size": BATCH_ROWS},
                }
            ],
        }
    )
    result = time_run_job(cfg, row, threads)
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

    params = {"backend": "transformers", "device": "cpu", "token_budget": args.token_budget}
    params.update(num_threads=args.threads, batch_size=8)
    rows = {
        "dq": Row(f"dq-ray end to end, 1 actor x {args.threads} threads (Ray start excluded, model load included)"),
        "bare": Row(f"bare judge loop, {args.threads} threads (model load excluded)"),
    }
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-askllm-"))
    stage_busy: list[float] = []
    try:
        docs = prepare_input(args.input, args.docs, tmp / "input")
        ids, texts = [d[0] for d in docs], [d[1] for d in docs]
        judge = AskLLMJudge(AskLLMParams(**params))
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            got, manifest = run_dq_ray(tmp / "input", tmp / f"run-{r}", params, args.threads, rows["dq"])
            stage_busy.append(manifest["stages"]["askllm"]["busy_s"])
            parts = run_bare(judge, texts, rows["bare"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bare_score = np.concatenate([p.score for p in parts])
    bare_tokens = np.concatenate([p.tokens for p in parts])
    logit = np.concatenate([p.logp_yes - p.logp_no for p in parts])
    dq_score = np.array([got[i][0] for i in ids], dtype=np.float64)
    tokens = int(bare_tokens.sum())
    max_diff = float(np.nanmax(np.abs(dq_score - bare_score)))
    problems = []
    if max_diff > 1e-3:
        problems.append(f"dq-ray's scores differ from the bare loop's by up to {max_diff:.2e}")
    if sum(got[i][1] for i in ids) != tokens:
        problems.append("dq-ray's askllm_tokens differ from the bare loop's")

    encoder = OnnxEncoder(default_model(), default_onnx_file(), "cpu", 32, 256, num_threads=args.threads)
    x = encoder.encode(texts).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    distill = distill_agreement(x, logit, args.folds, 0.3)

    base = rows["bare"]
    busy_rate = len(ids) / min(stage_busy)
    lines = [
        "| system | docs | prompt tokens | wall s | docs/s | tokens/s | ratio vs bare loop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        ratio = row.docs_per_s / base.docs_per_s
        lines.append(
            f"| {row.system} | {row.docs} | {tokens} | {row.wall_s:.2f} | {row.docs_per_s:.2f} | "
            f"{tokens / row.wall_s:.0f} | {ratio:.2f}x |"
        )
    lines.append(
        f"| dq-ray stage busy time (manifest `busy_s`: scoring only, load excluded) | {len(ids)} | {tokens} | "
        f"{min(stage_busy):.2f} | {busy_rate:.2f} | {tokens / min(stage_busy):.0f} | "
        f"{busy_rate / base.docs_per_s:.2f}x |"
    )
    report = report_header("Ask-LLM: dq-ray's askllm stage vs the bare judge loop", PACKAGES, load_average=load_before)
    report += [
        f"- documents: {len(ids)} spread evenly over `{args.input}`; token budget {args.token_budget} document tokens "
        f"(prompt with template and chat markup: mean {bare_tokens.mean():.0f} tokens); model SmolLM2-135M-Instruct "
        f"(Q4_1 GGUF dequantised to float32), transformers on the CPU, {args.threads} torch threads, 8 prompts per "
        f"forward pass, {BATCH_ROWS} documents per batch; fastest of {args.rounds} round(s)",
        f"- dq-ray's fixed cost (end-to-end wall minus the stage's busy time: Ray Data start, actor start and "
        f"model load, Parquet write): {rows['dq'].wall_s - min(stage_busy):.1f} s",
        "",
        *lines,
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
