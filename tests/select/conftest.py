"""A small finished run shared by the selection-output and export tests (heuristics, exact dedup, an ONNX
embedding and a PCA map, so it has map_x / map_y; text not kept, so it is re-read from the inputs), with the
policy below applied at the end of the run (RUN/selected/, relative source paths by default)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main

POLICY = {
    "seed": 0,
    "rules": [
        {"kind": "filter", "column": "exact_dup_keep", "op": "is_true"},
        {"kind": "filter", "column": "heur_n_words", "op": ">=", "value": 15},
    ],
}


@pytest.fixture(scope="session")
def finished_run(tiny_corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = {
        "input": {"paths": [str(tiny_corpus)], "keep_fields": ["source"]},
        "output": {"path": str(out)},
        "stages": [
            {"name": "heuristics", "params": {"filters": ["gopher_quality"]}},
            {"name": "exact_dedup"},
            {"name": "embed", "params": {"backend": "onnx"}},
            {"name": "map", "params": {"method": "pca"}},
        ],
        "selection": POLICY,
    }
    path = out.parent / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out
