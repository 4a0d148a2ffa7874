"""Fit / apply through the pipeline: materialized segments, deterministic samples, artifacts, manifest."""

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dq_ray.config import load_config
from dq_ray.pipeline import ParquetFitData, phases_of, run_job
from dq_ray.stage import Stage, append_columns, register


@dataclass(frozen=True)
class LengthParams:
    sample_size: int = 40


@register
class RelativeLength(Stage):
    """Test stage: a document's length relative to the mean length of a fitted sample."""

    name = "test_relative_length"
    inputs = ("heur_n_chars",)
    outputs = {"test_relative_length": pa.float64()}
    Params = LengthParams

    def fit(self, data):
        sample = data.sample(["heur_n_chars", "id"], self.params.sample_size, seed=7)
        again = data.sample(["heur_n_chars", "id"], self.params.sample_size, seed=7)
        assert sample.equals(again), "samples must be deterministic"
        total = data.dataset(["heur_n_chars"]).sum("heur_n_chars")  # a distributed pass over every row
        mean = pc.mean(sample.column("heur_n_chars")).as_py()
        with open(f"{data.artifacts_dir}/fit.json", "w") as fh:
            json.dump({"mean": mean, "ids": sample.column("id").to_pylist()}, fh)
        return {"sample_rows": sample.num_rows, "mean": mean, "rows": data.num_rows(), "total_chars": total}

    def setup(self):
        with open(f"{self.artifacts_dir}/fit.json") as fh:
            self.mean = json.load(fh)["mean"]

    def process(self, batch):
        ratio = pc.divide(pc.cast(batch.column("heur_n_chars"), pa.float64()), self.mean)
        return append_columns(batch, {"test_relative_length": ratio})


def test_segments_split_before_fit_stages():
    cfg = load_config({"input": {"paths": ["x"]}, "stages": ["heuristics", "test_relative_length", "exact_dedup"]})
    phases = phases_of([sc.build() for sc in cfg.stages])
    assert [ph.fit for ph in phases] == [None, 1, None]  # cut right before the stage with a fit
    assert [ph.stages for ph in phases] == [[0], [1, 2], []]  # the last: exact_dedup's groupby (no map stage)


@pytest.fixture(scope="module")
def fitted(ray_local, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    cfg = load_config(
        {
            "input": {"paths": [str(tiny_corpus)], "batch_rows": 20},
            "output": {"path": str(out)},
            "stages": ["heuristics", "test_relative_length", "exact_dedup"],
        }
    )
    return run_job(cfg)


def test_fit_runs_on_materialized_upstream_and_apply_uses_the_artifact(fitted, tiny_summary):
    m = fitted.manifest
    n_docs = sum(tiny_summary["documents"].values())
    info = m["stage_info"]["test_relative_length"]["fit"]
    assert info["sample_rows"] == 40 and info["rows"] == n_docs
    docs = pq.read_table(f"{fitted.run_dir}/docs").to_pylist()
    assert len(docs) == n_docs and m["counts"]["consistent"]
    assert info["total_chars"] == sum(d["heur_n_chars"] for d in docs)
    for d in docs:
        assert d["test_relative_length"] == pytest.approx(d["heur_n_chars"] / info["mean"])
    assert "exact_dup_keep" in docs[0]  # stages after the fit still run
    assert m["stages"]["test_relative_length.fit"]["wall_s"] > 0
    artifact = json.loads(open(f"{fitted.run_dir}/artifacts/test_relative_length/fit.json").read())
    assert len(artifact["ids"]) == 40
    import os

    assert not os.path.exists(f"{fitted.run_dir}/_work")  # intermediates are removed after success


def test_sample_is_uniform_and_independent_of_file_layout(ray_local, tmp_path):
    rows = 500
    table = pa.table({"source_file": ["f"] * rows, "source_index": list(range(rows)), "v": list(range(rows))})
    pq.write_table(table.slice(0, 200), tmp_path / "a.parquet")
    pq.write_table(table.slice(200), tmp_path / "b.parquet")
    one = ParquetFitData(str(tmp_path), str(tmp_path / "art"), rows).sample(["v"], 100, seed=3)
    (tmp_path / "c").mkdir()
    pq.write_table(table, tmp_path / "c" / "all.parquet")
    other = ParquetFitData(str(tmp_path / "c"), str(tmp_path / "art"), rows).sample(["v"], 100, seed=3)
    assert one.equals(other) and one.num_rows == 100
    values = one.column("v").to_pylist()
    assert values == sorted(values) and 150 < sum(values) / 100 < 350  # spread over the whole range
    assert ParquetFitData(str(tmp_path / "c"), "", rows).sample(["v"], 1000).num_rows == rows
