"""The whole pipeline on a real local Ray and a tiny corpus of real text."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dq_ray.config import load_config
from dq_ray.io import REJECT_REASONS, RunExistsError
from dq_ray.pipeline import run_job
from dq_ray.stages.heuristics import Heuristics


def demo_cfg(corpus, out, **extra):
    data = {
        "input": {"paths": [str(corpus)], "keep_fields": ["source"], "batch_rows": 20},
        "output": {"path": str(out)},
        "ray": {"shuffle_partitions": 3},  # several hash buckets, so groups must not depend on the split
        "stages": [
            {"name": "heuristics", "resources": {"batch_size": 16}},
            {"name": "exact_dedup"},
        ],
    }
    for key, value in extra.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return load_config(data)


@pytest.fixture(scope="module")
def run(ray_local, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return run_job(demo_cfg(tiny_corpus, out))


def docs_of(run_dir):
    return pq.read_table(f"{run_dir}/docs").to_pylist()


def test_counts_add_up_and_manifest_records_the_run(run, tiny_summary):
    m = json.loads(open(f"{run.run_dir}/manifest.json").read())
    expected_docs = sum(tiny_summary["documents"].values())
    c = m["counts"]
    assert m["status"] == "succeeded"
    assert c["input"] == expected_docs + tiny_summary["broken_records"]
    assert c["accepted"] == expected_docs and c["rejected"] == tiny_summary["broken_records"]
    assert c["input"] == c["accepted"] + c["rejected"] and c["consistent"]
    assert set(c["rejected_by_reason"]) <= set(REJECT_REASONS)
    for stage in ("read", "heuristics", "exact_dedup", "exact_dedup.group"):
        s = m["stages"][stage]
        assert s["rows"] > 0 and s["wall_s"] > 0 and s["docs_per_s"] > 0
    assert m["stages"]["heuristics"]["rows"] == expected_docs
    assert m["config"]["stages"][0]["name"] == "heuristics"
    assert {"ray", "datatrove", "pyarrow", "python"} <= set(m["versions"])
    assert m["inputs"]["files"] == 6
    assert m["flags"]["exact_dup_keep"]["false"] >= tiny_summary["documents"]["duplicates"]


def test_docs_have_one_row_per_document_and_every_signal(run, tiny_summary):
    docs = docs_of(run.run_dir)
    assert len(docs) == len({d["id"] for d in docs}) == sum(tiny_summary["documents"].values())
    cols = set(docs[0])
    assert set(Heuristics.outputs) <= cols
    assert {"id", "source_file", "source_index", "source", "exact_dup_group", "exact_dup_keep"} <= cols
    assert "text" not in cols and "_dq_bucket" not in cols
    by_source = {d["source"] for d in docs}
    assert by_source == {"wikipedia", "news", "tweets", "speeches"}


def test_planted_duplicates_found_with_exactly_one_kept(run, tiny_corpus):
    docs = docs_of(run.run_dir)
    groups = {}
    for d in docs:
        groups.setdefault(d["exact_dup_group"], []).append(d)
    for members in groups.values():
        assert sum(m["exact_dup_keep"] for m in members) == 1
        assert all(m["exact_dup_count"] == len(members) for m in members)
    by_id = {d["id"]: d for d in docs}
    planted = [json.loads(line) for line in (tiny_corpus / "duplicates.jsonl").read_text().splitlines()]
    dup_rows = [d for d in docs if d["source_file"].endswith("duplicates.jsonl")]
    assert len(dup_rows) == len(planted)
    for row, record in zip(sorted(dup_rows, key=lambda d: d["source_index"]), planted):
        original = by_id[record["duplicate_of"]]
        assert row["exact_dup_group"] == original["exact_dup_group"]
        # the copy comes from duplicates.jsonl, which sorts before news/speeches/wikipedia files
        assert row["exact_dup_keep"] is True and original["exact_dup_keep"] is False
    # ids: given where present, generated (file#line) where not
    assert {r["id"] for r in dup_rows} == {
        record.get("id", f"duplicates.jsonl#{i}") for i, record in enumerate(planted, start=1)
    }


def test_rejected_rows_carry_location_and_reason(run):
    rejected = pq.read_table(f"{run.run_dir}/rejected").to_pylist()
    assert sorted(r["reason"] for r in rejected) == sorted(
        ["malformed_json", "invalid_utf8", "missing_text_field", "empty_text", "text_not_string", "not_an_object"]
    )
    assert all(r["source_file"].endswith("broken.jsonl") and r["stage"] == "read" for r in rejected)
    assert sorted(r["source_index"] for r in rejected) == [1, 2, 3, 4, 5, 6]


def test_refuses_to_overwrite_then_overwrites(run, ray_local, tiny_corpus):
    cfg = demo_cfg(tiny_corpus, run.run_dir)
    with pytest.raises(RunExistsError):
        run_job(cfg)
    # a second run with keep_text and only one stage replaces it
    cfg = load_config(
        {
            "input": {"paths": [str(tiny_corpus / "news.jsonl")]},
            "output": {"path": run.run_dir, "keep_text": True},
            "stages": [{"name": "heuristics", "params": {"filters": ["gopher_quality"]}}],
        }
    )
    again = run_job(cfg, overwrite=True)
    docs = docs_of(again.run_dir)
    assert again.manifest["counts"]["accepted"] == len(docs) == 12
    assert all(d["text"] for d in docs) and "exact_dup_keep" not in docs[0]
    assert all(d["heur_gopher_quality_pass"] is not None and d["heur_c4_pass"] is None for d in docs)
    assert len(list((Path(again.run_dir) / "docs").glob("*.parquet"))) == 1  # small blocks gathered into one file


def test_actor_stages_leave_cpus_for_tasks():
    """Two 1-CPU model stages in one phase on 2 CPUs would hold both CPUs and starve the reads: they shrink."""
    from dq_ray.pipeline import HELPER_CPUS, READ_CPUS, phases_of, share_cpus
    from dq_ray.stage import Resources
    from dq_ray.stages import get_stage

    stages = [get_stage("pii")(), get_stage("embed")(), get_stage("embed")()]
    resources = [Resources(num_cpus=1), Resources(num_cpus=1), Resources(num_cpus=1)]
    phases = phases_of(stages)
    out = share_cpus(phases, stages, resources, cpus=2)
    assert out[0] == resources[0]  # the task stage keeps its CPU
    assert out[1].num_cpus + out[2].num_cpus <= 2 - 1  # room for the 1-CPU task
    assert out[1].concurrency == out[2].concurrency == 1
    # enough CPUs: nothing changes
    assert share_cpus(phases, stages, resources, cpus=8) == resources
    # no task stage: room for Ray Data's own 1-CPU operators (repartition) and the reader
    out = share_cpus(phases_of(stages[1:]), stages[1:], resources[1:], cpus=2)
    assert out[0].num_cpus + out[1].num_cpus <= 2 - max(READ_CPUS, HELPER_CPUS)
    # a pool of a named size holds that many actors' CPUs: two 1-CPU actors of one stage shrink too
    two = [Resources(num_cpus=1, concurrency=2)]
    out = share_cpus(phases_of(stages[1:2]), stages[1:2], two, cpus=2)
    assert out[0].concurrency == 2 and 2 * out[0].num_cpus <= 2 - HELPER_CPUS


def test_cpu_pool_stage_gets_one_actor_per_cpu_and_leaves_room_for_tasks():
    """``heuristics`` (a ``cpu_pool`` stage) runs one actor per CPU, each set up once; their CPU requests shrink
    so that reads and commits still run. A named ``concurrency`` is kept."""
    from dq_ray.pipeline import READ_CPUS, phases_of, share_cpus
    from dq_ray.pipeline.plan import CPU_POOL_BYTES_PER_ACTOR, fill_cpus, in_actors
    from dq_ray.stage import Resources
    from dq_ray.stages import get_stage

    heur, pii = get_stage("heuristics")(), get_stage("pii")()
    assert heur.cpu_pool and in_actors(heur, heur.default_resources) and not in_actors(pii, pii.default_resources)
    filled = fill_cpus(heur, Resources(num_cpus=1), cpus=8)
    assert filled.concurrency == 8
    out = share_cpus(phases_of([heur, pii]), [heur, pii], [filled, pii.default_resources], cpus=8)
    assert out[0].concurrency == 8 and 8 * out[0].num_cpus <= 8 - 1  # the 1-CPU pii task still fits
    out = share_cpus(phases_of([heur]), [heur], [fill_cpus(heur, Resources(num_cpus=1), cpus=2)], cpus=2)
    assert out[0].concurrency == 2 and 2 * out[0].num_cpus <= 2 - READ_CPUS
    assert fill_cpus(heur, Resources(num_cpus=1, concurrency=3), cpus=8).concurrency == 3
    # a small input gets fewer actors: each one's start costs more than its share of the work
    per = CPU_POOL_BYTES_PER_ACTOR
    assert fill_cpus(heur, Resources(num_cpus=1), cpus=8, input_bytes=per // 2).concurrency == 1
    assert fill_cpus(heur, Resources(num_cpus=1), cpus=8, input_bytes=3 * per - 1).concurrency == 3
    assert fill_cpus(heur, Resources(num_cpus=1), cpus=8, input_bytes=100 * per).concurrency == 8
    assert fill_cpus(pii, Resources(num_cpus=1), cpus=8).concurrency is None
    # several nodes: scaled requests would leave each node a fraction of a CPU, so the stage runs as Ray tasks there
    assert not in_actors(heur, heur.default_resources, nodes=2)
    assert fill_cpus(heur, Resources(num_cpus=1), cpus=2, nodes=2).concurrency is None


def test_blocks_are_no_larger_than_the_smallest_batch_of_their_phase(tmp_path):
    """Ray Data hands whole blocks to an actor: a block larger than the batch would leave the pool's other
    actors idle, so a phase reads its input in blocks of its smallest batch (at most ``input.batch_rows``)."""
    from dq_ray.pipeline import Plan
    from dq_ray.stages import get_stage

    def plan(embed_batch):
        cfg = load_config(
            {
                "input": {"paths": [str(tmp_path)], "batch_rows": 500},
                "output": {"path": str(tmp_path / "run")},
                "stages": [
                    {"name": "heuristics"},
                    {"name": "embed", "params": {"backend": "onnx"}, "resources": {"batch_size": embed_batch}},
                ],
            }
        )
        p = Plan(cfg, [], None, None)
        return p.block_rows(p.phases[0])

    assert plan(32) == 32
    assert plan(4096) == get_stage("heuristics").default_resources.batch_size


def _sorted_docs(run_dir):
    return pq.read_table(f"{run_dir}/docs").sort_by([("source_file", "ascending"), ("source_index", "ascending")])


@pytest.mark.parametrize("after", [[], [{"name": "lang"}]], ids=["group-only", "stage-after-group"])
def test_a_small_group_phase_on_the_driver_writes_what_the_ray_shuffle_writes(
    ray_local, tiny_corpus, tmp_path, caplog, after
):
    """A group phase over little data is grouped on the driver (``ray.local_group_bytes``), with no Ray Data
    shuffle; the rows, their groups and keep flags equal those of the shuffle (``local_group_bytes: 0``), with
    and without stages after the groupby in the same phase. Three hash buckets, so each is grouped alone."""
    import logging

    def job(name, limit):
        cfg = load_config(
            {
                "input": {"paths": [str(tiny_corpus)], "batch_rows": 20},
                "output": {"path": str(tmp_path / name)},
                "ray": {"shuffle_partitions": 3, "local_group_bytes": limit},
                "stages": [{"name": "exact_dedup"}, *after],
            }
        )
        with caplog.at_level(logging.INFO, logger="dq_ray.pipeline.plan"):
            caplog.clear()
            result = run_job(cfg)
            return result, "on the driver (no shuffle)" in caplog.text

    here, grouped_here = job("here", 32 * 2**20)
    shuffled, grouped_there = job("shuffled", 0)
    assert grouped_here and not grouped_there
    assert here.manifest["counts"] == shuffled.manifest["counts"]
    assert (
        here.manifest["stages"]["exact_dedup.group"]["rows"] == shuffled.manifest["stages"]["exact_dedup.group"]["rows"]
    )
    ours, theirs = _sorted_docs(here.run_dir), _sorted_docs(shuffled.run_dir)
    assert ours.num_rows > 0 and ours.equals(theirs)
    if after:
        assert "lang" in ours.column_names


def test_local_group_bytes_must_not_be_negative():
    from dq_ray.config import ConfigError

    with pytest.raises(ConfigError, match="local_group_bytes"):
        load_config({"input": {"paths": ["x"]}, "ray": {"local_group_bytes": -1}, "stages": [{"name": "exact_dedup"}]})
