"""Readers and discovery, without Ray: every bad-input case becomes a recorded rejection or a clear error."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from dq_ray.config import InputConfig
from dq_ray.io import REJECT_REASONS, InputError, RunDir, RunExistsError, ShardResult, discover_inputs, read_shard
from tests.helpers import wiki_texts, write_jsonl


def read_all(path, **cfg_kwargs):
    cfg = InputConfig(paths=(str(path),), **cfg_kwargs)
    (shard,) = discover_inputs(cfg)
    result = ShardResult(shard.path)
    tables = list(read_shard(shard, cfg, result))
    docs = pa.concat_tables(tables).to_pylist() if tables else []
    assert result.records == len(docs) + len(result.rejected), "records must equal accepted + rejected"
    assert result.accepted == len(docs)
    return docs, result.rejected


def reasons(rejected):
    return [r["reason"] for r in rejected]


def test_every_bad_jsonl_record_is_rejected_with_its_reason(tmp_path):
    good = wiki_texts(2)
    lines = [
        json.dumps({"id": "a", "text": good[0]}).encode(),
        b'{"id": "b", "text": "unterminated}',
        b'{"id": "c", "text": "caf\xe9"}',
        json.dumps({"id": "d", "body": "no text field"}).encode(),
        json.dumps({"id": "e", "text": None}).encode(),
        json.dumps({"id": "f", "text": "  \n\t "}).encode(),
        json.dumps({"id": "g", "text": ""}).encode(),
        json.dumps({"id": "h", "text": 17}).encode(),
        json.dumps({"id": "i", "text": ["a", "list"]}).encode(),
        b"[1, 2, 3]",
        b"",  # blank lines are not records
        json.dumps({"text": good[1]}).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, rejected = read_all(path)
    assert [d["id"] for d in docs] == ["a", "mixed.jsonl#12"]
    assert [d["source_index"] for d in docs] == [1, 12]
    assert reasons(rejected) == [
        "malformed_json",
        "invalid_utf8",
        "missing_text_field",
        "missing_text_field",
        "empty_text",
        "empty_text",
        "text_not_string",
        "text_not_string",
        "not_an_object",
    ]
    assert [r["source_index"] for r in rejected] == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert all(r["reason"] in REJECT_REASONS for r in rejected)
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason["malformed_json"]["raw"] == '{"id": "b", "text": "unterminated}'
    assert by_reason["invalid_utf8"]["raw"] is None  # not decodable: no raw text
    assert [r["id"] for r in rejected if r["reason"] == "missing_text_field"] == ["d", "e"]


def test_huge_document_is_rejected_or_accepted_by_limit(tmp_path):
    big = " ".join(wiki_texts(30)) * 150  # several MB of real text
    assert len(big.encode()) > 3_000_000
    path = write_jsonl(tmp_path / "big.jsonl", [{"id": "big", "text": big}])
    docs, rejected = read_all(path, max_raw_bytes=1000)
    assert docs == [] and reasons(rejected) == ["text_too_large"]
    assert rejected[0]["raw_truncated"] is True and len(rejected[0]["raw"]) == 1000
    docs, rejected = read_all(path, max_text_bytes=10_000_000)
    assert len(docs) == 1 and docs[0]["text"] == big and rejected == []


def test_compressed_inputs_and_truncation(tmp_path):
    records = [{"id": f"w{i}", "text": t} for i, t in enumerate(wiki_texts(50))]
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "ok.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "ok.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    for name in ("ok.jsonl.gz", "ok.jsonl.zst"):
        docs, rejected = read_all(tmp_path / name)
        assert [d["id"] for d in docs] == [r["id"] for r in records] and rejected == []

    gz = gzip.compress(payload)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    zst = zstandard.ZstdCompressor().compress(payload)
    (tmp_path / "cut.jsonl.zst").write_bytes(zst[: len(zst) // 2])
    for name in ("cut.jsonl.gz", "cut.jsonl.zst"):
        docs, rejected = read_all(tmp_path / name)
        assert 0 <= len(docs) < len(records)
        assert reasons(rejected) == ["corrupt_file"], name
        assert [d["id"] for d in docs] == [r["id"] for r in records[: len(docs)]]  # what was read is kept


def test_empty_file_is_recorded(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    docs, rejected = read_all(tmp_path / "empty.jsonl")
    assert docs == [] and reasons(rejected) == ["empty_file"]
    (tmp_path / "blank.jsonl").write_bytes(b"\n\n  \n")
    assert reasons(read_all(tmp_path / "blank.jsonl")[1]) == ["empty_file"]


def test_parquet_rows_ids_and_fields(tmp_path):
    texts = wiki_texts(3)
    table = pa.table(
        {
            "doc_id": pa.array([7, None, 9, 10]),
            "body": pa.array([texts[0], texts[1], None, "   "]),
            "url": ["u0", "u1", "u2", "u3"],
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    docs, rejected = read_all(tmp_path / "rows.parquet", text_field="body", id_field="doc_id", keep_fields=("url",))
    assert [d["id"] for d in docs] == ["7", "rows.parquet#1"]  # ids kept as given; missing ones generated
    assert [d["url"] for d in docs] == ["u0", "u1"]
    assert [(r["source_index"], r["reason"]) for r in rejected] == [(2, "missing_text_field"), (3, "empty_text")]
    assert json.loads(rejected[1]["raw"])["doc_id"] == 10

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    assert reasons(read_all(tmp_path / "ints.parquet")[1]) == ["text_not_string", "text_not_string"]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    assert reasons(read_all(tmp_path / "bad.parquet")[1]) == ["corrupt_file"]


def test_generated_ids_are_stable(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": t} for t in wiki_texts(3)])
    first = [d["id"] for d in read_all(path)[0]]
    assert first == [d["id"] for d in read_all(path)[0]] == ["n.jsonl#1", "n.jsonl#2", "n.jsonl#3"]


def test_discovery(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "sub" / "b.jsonl", [{"text": "y"}])
    (tmp_path / "notes.txt").write_text("ignored in a directory")
    (tmp_path / "_SUCCESS").write_text("")
    files = discover_inputs(InputConfig(paths=(str(tmp_path),)))
    assert [f.name for f in files] == ["a.jsonl", "sub/b.jsonl"]
    assert all(f.format == "jsonl" and f.size > 0 for f in files)
    assert len(discover_inputs(InputConfig(paths=(str(tmp_path / "**" / "*.jsonl"),)))) == 2

    with pytest.raises(InputError, match="does not exist"):
        discover_inputs(InputConfig(paths=(str(tmp_path / "missing.jsonl"),)))
    with pytest.raises(InputError, match="matches no file"):
        discover_inputs(InputConfig(paths=(str(tmp_path / "*.parquet"),)))
    with pytest.raises(InputError, match="cannot tell the format"):
        discover_inputs(InputConfig(paths=(str(tmp_path / "notes.txt"),)))
    assert discover_inputs(InputConfig(paths=(str(tmp_path / "notes.txt"),), format="jsonl"))[0].format == "jsonl"
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="holds no JSONL or Parquet"):
        discover_inputs(InputConfig(paths=(str(tmp_path / "only"),)))


def test_fsspec_urls_go_through_the_same_code(tmp_path):
    """Object-store paths are fsspec URLs; the in-memory filesystem stands in for s3:// here."""
    import fsspec

    fs = fsspec.filesystem("memory")
    texts = wiki_texts(2)
    with fs.open("/bucket/corpus/part-0.jsonl", "wb") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    cfg = InputConfig(paths=("memory://bucket/corpus",))
    (shard,) = discover_inputs(cfg)
    assert shard.path.startswith("memory://") and shard.path.endswith("/bucket/corpus/part-0.jsonl")
    result = ShardResult(shard.path)
    docs = pa.concat_tables(list(read_shard(shard, cfg, result))).to_pylist()
    assert [d["text"] for d in docs] == texts


def test_run_dir_refuses_to_overwrite(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    run.prepare()
    run.write_json("manifest.json", {"status": "succeeded"})
    with pytest.raises(RunExistsError, match="pass --resume to continue it .* or --overwrite to replace it"):
        RunDir(str(tmp_path / "run")).prepare()
    assert RunDir(str(tmp_path / "run")).prepare(resume=True) is True  # kept as it is
    assert (tmp_path / "run" / "manifest.json").exists()
    RunDir(str(tmp_path / "run")).prepare(overwrite=True)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_commits_are_per_shard_atomic_and_idempotent(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    run.prepare()
    rows = pa.table({"id": ["a", "b", "c"], "source_file": ["/x/1.jsonl", "/x/2.jsonl", "/x/1.jsonl"]})
    rows = rows.append_column("source_index", pa.array([3, 1, 1], pa.int64()))
    first = run.commit_rows("docs", rows)
    again = run.commit_rows("docs", rows.take([2, 1, 0]))  # a retried batch, in another order
    assert sorted(first) == sorted(again) and len(first) == 2
    k1, k2 = run.shard_key("/x/1.jsonl"), run.shard_key("/x/2.jsonl")
    assert run.rows_by_shard("docs") == {k1: 2, k2: 1}  # not doubled
    assert pq.read_table(tmp_path / "run" / f"{first[0][0]}").column("source_index").to_pylist() in ([1, 3], [1])
    assert not list((tmp_path / "run" / "docs").glob(".*"))  # no temporary left behind
    run.write_stage_rejections(
        0,
        "heuristics",
        [
            {
                "source_file": "/x/1.jsonl",
                "source_index": 3,
                "id": "a",
                "stage": "heuristics",
                "reason": "stage_error",
                "detail": "boom",
                "raw": None,
                "raw_truncated": False,
            }
        ],
    )
    assert run.stage_rejections_by_shard(0) == {k1: 1} and run.stage_rejections_by_shard(1) == {}
    run.drop_shards("docs", 0, [k1])
    assert run.rows_by_shard("docs") == {k2: 1} and run.stage_rejections_by_shard(0) == {}


def test_credentials_in_paths_are_redacted():
    from dq_ray.io import redact, redact_url

    assert redact_url("s3://AKIAXXX:s3cr3t@bucket/corpus/") == "s3://***@bucket/corpus/"
    url = "https://host/data.jsonl?X-Amz-Signature=abc123&X-Amz-Credential=AKIA&part=2"
    assert redact_url(url) == "https://host/data.jsonl?X-Amz-Signature=***&X-Amz-Credential=***&part=2"
    assert redact_url("/local/path:with@at") == "/local/path:with@at"
    assert redact({"input": {"paths": ["gs://u:pw@b/x"]}, "n": 3}) == {"input": {"paths": ["gs://***@b/x"]}, "n": 3}
    # what the manifest records of a config whose paths carry credentials
    from dq_ray.config import load_config

    cfg = load_config({"input": {"paths": ["s3://AKIA:TOPSECRET@b/in/"]}, "output": {"path": "s3://b/out?token=T0K"}})
    recorded = json.dumps(redact(cfg.to_dict()))
    assert "TOPSECRET" not in recorded and "T0K" not in recorded and "s3://***@b/in/" in recorded
