"""Shared fixtures: one local Ray for the whole session, and a tiny corpus of real text."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from dq_ray.demo import DemoSizes, build_demo_corpus

# dq-ray's home (the artifact signing key) for this test session: a fresh folder, never the real ~/.dq-ray. Set at
# import time, before any Ray starts, so local Ray workers and `ray start` nodes (tests/test_cluster.py copies
# os.environ) inherit it; removed at exit.
if "DQ_RAY_HOME" not in os.environ:
    os.environ["DQ_RAY_HOME"] = tempfile.mkdtemp(prefix="dq-ray-home-")
    atexit.register(shutil.rmtree, os.environ["DQ_RAY_HOME"], ignore_errors=True)

TINY = DemoSizes(wikipedia=40, news=12, tweets=30, speeches=15, duplicates=6, other_languages=0)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs), started once for the session."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """~100 real documents in every input format, planted duplicates and broken records."""
    out = tmp_path_factory.mktemp("corpus")
    build_demo_corpus(out, TINY, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_summary(tiny_corpus) -> dict:
    return json.loads((tiny_corpus / "_corpus.json").read_text())


@pytest.fixture(scope="session")
def smollm_engine():
    """The packaged SmolLM2-135M-Instruct judge on the CPU (transformers engine), loaded once per session."""
    from dq_ray.backends.llm import load_engine

    return load_engine("transformers", "cpu", batch_size=8, num_threads=2)
