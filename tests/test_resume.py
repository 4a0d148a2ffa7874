"""Kill the driver mid-run (a real SIGKILL of a real `dq-ray run` process), resume, compare with an uninterrupted run.

The killed driver joins the session's local Ray (``RAY_ADDRESS``), so no second Ray starts; Ray cleans up the
dead job's workers, as it would on a cluster.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dq_ray.config import load_config
from dq_ray.io import RunExistsError
from dq_ray.pipeline import run_job
from dq_ray.pipeline.faults import ENV

REPO = Path(__file__).resolve().parents[1]

STREAMING = [{"name": "heuristics", "resources": {"batch_size": 16}}, {"name": "exact_dedup"}]
WITH_FIT = [{"name": "heuristics", "resources": {"batch_size": 16}}, {"name": "minhash"}]


def config_data(corpus, out, stages):
    return {
        "input": {"paths": [str(corpus)], "keep_fields": ["source"], "batch_rows": 20},
        "output": {"path": str(out), "rows_per_file": 10},  # small files: shards are committed one by one
        "ray": {"shuffle_partitions": 3},
        "stages": stages,
    }


def killed_run(ray_local, corpus, out, stages, faults, tmp_path):
    """Run `dq-ray run` in a new process that SIGKILLs itself as the fault says; return its manifest."""
    cfg_file = tmp_path / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(config_data(corpus, out, stages)))
    env = {**os.environ, ENV: faults, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "dq_ray.cli", "run", str(cfg_file)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    time.sleep(2)  # Ray stops the dead driver's workers
    return json.loads((out / "manifest.json").read_text())


def rows_by_id(run_dir, name="docs"):
    rows = pq.read_table(f"{run_dir}/{name}").to_pylist()
    return {(r["source_file"], r["source_index"]): r for r in rows}, len(rows)


def assert_same_output(run_dir, baseline_dir):
    docs, n = rows_by_id(run_dir)
    base, n_base = rows_by_id(baseline_dir)
    assert n == len(docs) == n_base == len(base)  # no document lost or duplicated
    assert docs == base  # the same rows with the same signal values
    rejected, _ = rows_by_id(run_dir, "rejected")
    base_rejected, _ = rows_by_id(baseline_dir, "rejected")
    assert rejected == base_rejected


@pytest.fixture(scope="module")
def baselines(ray_local, tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    return {
        name: run_job(load_config(config_data(tiny_corpus, root / name, stages)))
        for name, stages in (("streaming", STREAMING), ("fit", WITH_FIT))
    }


def test_resume_after_a_kill_in_the_streaming_phase(baselines, ray_local, tiny_corpus, tmp_path):
    out = tmp_path / "killed"
    before = killed_run(
        ray_local, tiny_corpus, out, STREAMING, "slow:heuristics:0.4,crash_driver:after_shards=2", tmp_path
    )
    assert before["status"] == "running"  # it never got to write its end
    cfg = load_config(config_data(tiny_corpus, out, STREAMING))
    with pytest.raises(RunExistsError, match="--resume"):
        run_job(cfg)
    result = run_job(cfg, resume=True)
    m = result.manifest
    assert m["status"] == "succeeded" and m["counts"] == baselines["streaming"].manifest["counts"]
    reused = m["resume"]["reused"]
    assert 2 <= reused["shards"]["0"] < 6  # some input shards were committed, not all
    assert m["resume"]["attempts"][0]["status"] == "running"
    # the committed shards were not recomputed: heuristics saw only the other shards' documents this time
    assert 0 < m["stages"]["heuristics"]["rows"] < m["counts"]["accepted"]
    assert_same_output(result.run_dir, baselines["streaming"].run_dir)
    assert not (out / "_work").exists()


def test_resume_after_a_kill_reuses_the_fitted_artifacts(baselines, ray_local, tiny_corpus, tmp_path):
    out = tmp_path / "killed"
    killed_run(ray_local, tiny_corpus, out, WITH_FIT, "crash_driver:after_fit=minhash", tmp_path)
    assert (out / "_shards" / "fits" / "minhash.json").exists()
    fitted = {p.name: p.stat().st_mtime_ns for p in (out / "artifacts" / "minhash").rglob("*") if p.is_file()}
    result = run_job(load_config(config_data(tiny_corpus, out, WITH_FIT)), resume=True)
    m = result.manifest
    assert m["status"] == "succeeded" and m["counts"] == baselines["fit"].manifest["counts"]
    assert m["resume"]["reused"]["fits"] == ["minhash"] and m["stage_info"]["minhash"]["fit"]["reused"] is True
    assert m["resume"]["reused"]["phases"] == [0]  # the segment before the fit was committed
    assert "minhash.fit" not in m["stages"] and "heuristics" not in m["stages"]  # nothing before it re-ran
    after = {p.name: p.stat().st_mtime_ns for p in (out / "artifacts" / "minhash").rglob("*") if p.is_file()}
    assert after == fitted  # the artifacts were reused as they were
    assert_same_output(result.run_dir, baselines["fit"].run_dir)


def test_resume_refuses_a_different_config(baselines, tmp_path):
    done = baselines["streaming"].run_dir
    data = config_data("unused", done, STREAMING)
    data["input"]["paths"] = [baselines["streaming"].manifest["config"]["input"]["paths"][0]]
    data["stages"] = STREAMING[:1]
    with pytest.raises(RunExistsError, match="different 'stages' config"):
        run_job(load_config(data), resume=True)
