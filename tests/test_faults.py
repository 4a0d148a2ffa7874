"""Faults inside a run, triggered on purpose through $DQ_RAY_FAULTS, on a real local Ray and real text."""

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dq_ray.config import ConfigError, load_config
from dq_ray.pipeline import run_job
from dq_ray.pipeline.faults import ENV, parse_faults
from dq_ray.stage import Stage, append_columns, register


@dataclass(frozen=True)
class WordParams:
    """(Its module is what a Ray worker imports to find the stage.)"""

    lower: bool = True


@register
class ActorWords(Stage):
    """Test stage held in a Ray actor pool (like a model stage): the number of words of each document."""

    name = "test_actor_words"
    inputs = ("text",)
    outputs = {"test_actor_words": pa.int64()}
    Params = WordParams
    stateful = True

    def process(self, batch):
        return append_columns(
            batch, {"test_actor_words": pc.list_value_length(pc.utf8_split_whitespace(batch["text"]))}
        )


def cfg_for(corpus, out, stages, **ray):
    return load_config(
        {
            "input": {"paths": [str(corpus)], "batch_rows": 20},
            "output": {"path": str(out)},
            "ray": {"shuffle_partitions": 3, **ray},
            "stages": stages,
        }
    )


STAGES = [{"name": "heuristics", "resources": {"batch_size": 16}}, {"name": "exact_dedup"}]


def news_ids(corpus, n):
    return [json.loads(line)["id"] for line in (corpus / "news.jsonl").read_text().splitlines()[:n]]


def table_by_id(path):
    t = pq.read_table(path)
    return {r["id"]: r for r in t.to_pylist()}


@pytest.fixture(scope="module")
def baseline(ray_local, tiny_corpus, tmp_path_factory):
    return run_job(cfg_for(tiny_corpus, tmp_path_factory.mktemp("base") / "run", STAGES))


def test_parse_faults_rules_and_errors():
    f = parse_faults("poison:heuristics:news:1, kill_actor:embed:after=2,crash_driver:after_shards=3,slow:embed:0.5")
    assert f.poison == {"heuristics": ("news:1",)} and f.kill_actor == {"embed": 2}
    assert f.crash_after_shards == 3 and f.slow == {"embed": 0.5} and f.active
    assert not parse_faults(None).active and not parse_faults("").active
    for bad in ("explode:now", "kill_actor:embed:after=x", "crash_driver:whenever"):
        with pytest.raises(ConfigError, match="DQ_RAY_FAULTS"):
            parse_faults(bad)


def test_poison_documents_are_rejected_and_the_job_completes(baseline, tiny_corpus, tmp_path, monkeypatch):
    poison = news_ids(tiny_corpus, 2)
    monkeypatch.setenv(ENV, ",".join(f"poison:heuristics:{p}" for p in poison))
    result = run_job(cfg_for(tiny_corpus, tmp_path / "run", STAGES))
    m = result.manifest
    c, base = m["counts"], baseline.manifest["counts"]
    assert m["status"] == "succeeded" and m["faults"] == [f"poison:heuristics:{p}" for p in poison]
    assert c["input"] == base["input"] and c["consistent"]
    assert c["accepted"] == base["accepted"] - 2 and c["rejected"] == base["rejected"] + 2
    assert c["rejected_by_reason"]["stage_error"] == 2 and c["rejected_by_stage"]["heuristics"] == 2
    rejected = [r for r in pq.read_table(f"{result.run_dir}/rejected").to_pylist() if r["reason"] == "stage_error"]
    assert sorted(r["id"] for r in rejected) == sorted(poison)
    assert all(r["stage"] == "heuristics" and "injected poison" in r["detail"] for r in rejected)
    assert all(r["source_file"].endswith("news.jsonl") and r["source_index"] >= 1 for r in rejected)
    # every other document is scored exactly as without the poison (its batch was bisected, not dropped)
    docs, base_docs = table_by_id(f"{result.run_dir}/docs"), table_by_id(f"{baseline.run_dir}/docs")
    assert set(docs) == set(base_docs) - set(poison)
    cols = [c for c in base_docs[poison[0]] if c.startswith("heur_")]
    assert all({k: docs[i][k] for k in cols} == {k: base_docs[i][k] for k in cols} for i in docs)
    # the stage saw every document once; the next stage only the survivors
    assert m["stages"]["heuristics"]["rows"] == base["accepted"]
    assert m["stages"]["exact_dedup"]["rows"] == base["accepted"] - 2


def test_a_stage_failing_on_every_document_fails_the_job(ray_local, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "poison:heuristics:")  # the empty substring is in every id
    with pytest.raises(Exception, match="failed on every document of a batch"):
        run_job(cfg_for(tiny_corpus, tmp_path / "run", STAGES, max_task_retries=0))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


def test_a_killed_actor_is_restarted_and_its_batch_retried(ray_local, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "kill_actor:test_actor_words:after=1")
    stages = [{"name": "test_actor_words", "resources": {"batch_size": 16, "concurrency": 1}}]
    result = run_job(cfg_for(tiny_corpus, tmp_path / "run", stages, max_actor_restarts=2, max_task_retries=2))
    m = result.manifest
    assert (tmp_path / "run" / "_faults" / "kill_actor-test_actor_words").exists()  # the actor did die
    assert m["status"] == "succeeded" and m["counts"]["consistent"]
    docs = pq.read_table(f"{result.run_dir}/docs").to_pylist()
    assert len(docs) == len({d["id"] for d in docs}) == m["counts"]["accepted"]  # none lost, none twice
    assert all(d["test_actor_words"] > 0 for d in docs)
    # the batch that died after being counted is counted once
    assert m["stages"]["test_actor_words"]["rows"] == m["counts"]["accepted"]


def test_a_pool_of_a_named_size_runs_every_actor(ray_local, tiny_corpus, tmp_path):
    """``concurrency: 2`` means two actors working side by side, even on a short queue (small blocks)."""
    stages = [{"name": "test_actor_words", "resources": {"batch_size": 8, "concurrency": 2}}]
    m = run_job(cfg_for(tiny_corpus, tmp_path / "run", stages)).manifest
    st = m["stages"]["test_actor_words"]
    assert m["status"] == "succeeded" and st["rows"] == m["counts"]["accepted"]
    assert st["workers"] == 2
    assert m["stage_info"]["test_actor_words"]["resources"]["concurrency"] == 2
    assert st["setup_s"] > 0  # each actor's set-up is reported with its first batch


def test_a_stage_that_cannot_set_up_fails_clearly(ray_local, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "fail_setup:test_actor_words")
    stages = [{"name": "test_actor_words", "resources": {"concurrency": 1}}]
    with pytest.raises(Exception, match="test_actor_words") as info:
        run_job(cfg_for(tiny_corpus, tmp_path / "run", stages, max_actor_restarts=0))
    assert "could not be set up" in str(info.value) or "injected setup failure" in str(info.value)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "failed" and "test_actor_words" in m["error"]


def test_a_stage_asking_for_missing_gpus_fails_before_running(ray_local, tiny_corpus, tmp_path):
    stages = [{"name": "heuristics", "resources": {"num_gpus": 1}}]
    with pytest.raises(RuntimeError, match="asks for 1 GPU"):
        run_job(cfg_for(tiny_corpus, tmp_path / "run", stages))
