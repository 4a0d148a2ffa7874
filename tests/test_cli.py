"""The dq-ray command, in process (sharing the session's Ray) and once as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dq_ray.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = str(REPO / "tests" / "data" / "fast.yaml")


def test_run_prints_summary_and_honours_options(ray_local, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    args = ["run", FAST, "--input", str(tiny_corpus), "--output", str(out)]
    args += ["--set", "input.batch_rows=25", "--set", "stages.heuristics.params.filters=[gopher_quality]"]
    result = CliRunner().invoke(main, [*args, "--progress-every", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"run directory: {out}" in result.output
    assert "documents in" in result.output and "rejected" in result.output and "docs/s" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # what 1e9 documents cost at this run's rates, per stage and in all
    total = manifest["cost"]["total"]["core_hours"]
    assert "core-h/1B" in result.output and f"~{total:,.0f} core-hours" in result.output
    assert manifest["config"]["input"]["batch_rows"] == 25
    docs = pq.read_table(out / "docs").to_pylist()
    assert all(d["heur_c4_pass"] is None for d in docs)  # only gopher_quality ran
    assert any(d["heur_gopher_quality_pass"] is not None for d in docs)
    # a second run into the same directory is refused with a clear message
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--overwrite" in again.output and "--resume" in again.output
    both = CliRunner().invoke(main, [*args, "--resume", "--overwrite"])
    assert both.exit_code != 0 and "exclude each other" in both.output
    # resuming a finished run redoes nothing and leaves the same output
    resumed = CliRunner().invoke(main, [*args, "--resume", "--no-progress"], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    after = json.loads((out / "manifest.json").read_text())
    assert after["counts"] == manifest["counts"] and after["resume"]["reused"]["phases"] == [0, 1]
    assert pq.read_table(out / "docs").num_rows == len(docs)


def test_clear_errors_before_ray(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["run", "configs/demo.yaml", "--input", str(tmp_path / "nope.jsonl")])
    assert r.exit_code != 0 and "does not exist" in r.output
    r = runner.invoke(main, ["run", "configs/demo.yaml", "--set", "stages.0.name=bogus"])
    assert r.exit_code != 0 and "unknown stage 'bogus'" in r.output
    (tmp_path / "in").mkdir()
    out = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "run")]
    r = runner.invoke(main, ["run", "configs/demo.yaml", *out], env={"DQ_RAY_PROGRESS": "loud"})
    assert r.exit_code != 0 and "progress mode 'loud'" in r.output and not (tmp_path / "run").exists()
    r = runner.invoke(main, ["run", "configs/demo.yaml", *out, "--progress-every", "0"])
    assert r.exit_code != 0 and "--progress-every" in r.output


def test_validate_and_stages(tiny_corpus):
    runner = CliRunner()
    r = runner.invoke(main, ["validate", "configs/demo.yaml", "--input", str(tiny_corpus)])
    assert r.exit_code == 0, r.output
    assert "6 input file(s)" in r.output and "heuristics -> heur_gopher_quality_pass" in r.output
    r = runner.invoke(main, ["stages"])
    assert r.exit_code == 0 and "exact_dedup" in r.output and "reads: text" in r.output


@pytest.mark.slow
def test_cli_end_to_end_with_embedded_ray(tiny_corpus, tmp_path):
    """`dq-ray run` as a user types it: a new process that starts (and stops) its own local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "e2e"
    cmd = [str(Path(sys.executable).with_name("dq-ray")), "run", "configs/demo.yaml"]
    cmd += ["--input", str(tiny_corpus), "--output", str(out), "--set", "ray.num_cpus=2"]
    # the demo's stages as configured, with the two slow fits made small: fewer LLM-scored docs, PCA for the map
    cmd += ["--set", "stages.askllm_distill.params.sample_size=40", "--set", "stages.map.params.method=pca"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["ray"]["mode"] == "embedded"
    assert manifest["counts"]["consistent"] and manifest["counts"]["accepted"] == 103
    # the demo config runs every stage, fitted ones included
    for stage in ("heuristics", "embed", "exact_dedup", "minhash.fit", "semdedup.fit", "density.fit", "density"):
        assert stage in manifest["stages"], stage
    for stage in ("askllm_distill.fit", "topics.fit", "map.fit"):
        assert stage in manifest["stages"], stage
    docs = pq.read_table(out / "docs").to_pylist()
    cols = ("embedding", "minhash_keep", "semdedup_keep", "density_score", "density_weight", "askllm_pred", "map_x")
    for col in cols + ("topic_id",):
        assert all(d[col] is not None for d in docs), col
    for col in ("exact_dup_keep", "minhash_keep", "semdedup_keep"):
        assert "not kept" in proc.stdout and sum(not d[col] for d in docs) >= 5, col
    # and the demo's selection policy wrote the curated subset and its report
    assert 0 < pq.read_table(out / "selected").num_rows < len(docs)
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_job_entry_point(ray_local, tiny_corpus, tmp_path, capsys):
    """jobs/score.py is what `ray job submit` runs; here it joins the already running Ray."""
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import score
    finally:
        sys.path.pop(0)
    out = tmp_path / "job"
    code = score.main(["--config", FAST, "--input", str(tiny_corpus), "--output", str(out)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["counts"]["accepted"] == 103
