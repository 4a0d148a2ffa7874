"""One real tiny run for the pipeline tests (progress lines, cost block), on the session's shared Ray."""

from __future__ import annotations

import logging

import pytest

from dq_ray.config import load_config
from dq_ray.pipeline import run_job


class _Lines(logging.Handler):
    """Keeps the messages of the records it gets."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="package")
def progress_run(ray_local, tiny_corpus, tmp_path_factory):
    """The tiny corpus through heuristics and exact_dedup (two phases), progress as plain lines every 0.3 s.

    Returns the run and the progress messages it logged."""
    cfg = load_config(
        {
            "input": {"paths": [str(tiny_corpus)], "keep_fields": ["source"], "batch_rows": 20},
            "output": {"path": str(tmp_path_factory.mktemp("runs") / "progress")},
            "ray": {"shuffle_partitions": 3},
            "stages": [{"name": "heuristics", "resources": {"batch_size": 16}}, {"name": "exact_dedup"}],
        }
    )
    logger = logging.getLogger("dq_ray.pipeline.progress")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = run_job(cfg, progress="log", progress_every=0.3)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, handler.messages
