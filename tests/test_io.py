"""Readers and discovery, without Ray: every bad-input case becomes a recorded rejection or a clear error."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from dq_ray.io import (
    REJECT_REASONS,
    REJECTED_SCHEMA,
    InputConfig,
    InputError,
    RunDir,
    RunExistsError,
    ShardResult,
    discover_inputs,
    read_shard,
)
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
    first_id = run.read_json("manifest.json")["run_id"]  # the marker is written first
    run.write_json("manifest.json", {**run.read_json("manifest.json"), "status": "succeeded"})
    run.release()
    with pytest.raises(RunExistsError, match="pass --resume to continue it .* or --overwrite to replace it"):
        RunDir(str(tmp_path / "run")).prepare()
    resumed = RunDir(str(tmp_path / "run"))
    assert resumed.prepare(resume=True) is True  # kept as it is
    resumed.release()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "succeeded"
    again = RunDir(str(tmp_path / "run"))
    again.prepare(overwrite=True)
    again.release()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["run_id"] not in (None, first_id)


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


# -- bad input, identity and credentials -----------------------------------------------------------------


def read_one(shard, **cfg_kwargs):
    """Read one discovered shard; returns (docs, rejected, receipt) and checks the counts add up."""
    cfg = InputConfig(paths=(shard.path,), **cfg_kwargs)
    result = ShardResult(shard.path)
    tables = list(read_shard(shard, cfg, result))
    docs = pa.concat_tables(tables).to_pylist() if tables else []
    assert result.records == len(docs) + len(result.rejected)
    pa.Table.from_pylist(result.rejected, schema=REJECTED_SCHEMA)  # what the run directory writes
    return docs, result.rejected, result.receipt()


def test_invalid_utf8_keeps_the_raw_bytes(tmp_path):
    bad = b'{"id": "c", "text": "caf\xe9 cr\xe8me br\xfbl\xe9e"}'
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"id": "a", "text": "fine"}).encode() + b"\n" + bad + b"\r\n")
    docs, rejected = read_all(path)
    assert [d["id"] for d in docs] == ["a"]
    (row,) = rejected
    assert row["reason"] == "invalid_utf8" and row["raw"] is None and row["raw_bytes"] == bad
    assert row["raw_truncated"] is False and row["source_index"] == 2
    _, rejected = read_all(path, max_raw_bytes=10)
    assert rejected[0]["raw_bytes"] == bad[:10] and rejected[0]["raw_truncated"] is True
    assert REJECTED_SCHEMA.field("raw_bytes").type == pa.binary()
    assert REJECTED_SCHEMA.names[:8] == ["source_file", "source_index", "stage", "reason", "detail", "id", "raw"] + [
        "raw_truncated"
    ]

    # a binary text column in Parquet whose value does not decode
    table = pa.table({"id": ["p0", "p1"], "text": pa.array([b"good text", b"caf\xe9"], pa.binary())})
    pq.write_table(table, tmp_path / "bin.parquet")
    docs, rejected = read_all(tmp_path / "bin.parquet")
    assert [d["text"] for d in docs] == ["good text"]
    assert reasons(rejected) == ["invalid_utf8"] and rejected[0]["raw_bytes"] == b"caf\xe9"
    assert rejected[0]["id"] == "p1" and rejected[0]["source_index"] == 1


def test_compression_is_told_by_content_not_by_name(tmp_path):
    import bz2
    import lzma

    from dq_ray.io.readers import open_lines

    records = [{"id": f"w{i}", "text": t} for i, t in enumerate(wiki_texts(20))]
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    ids = [r["id"] for r in records]
    cases = {
        "plain-named.jsonl.gz": payload,
        "gzip-named.jsonl": gzip.compress(payload),
        "zstd-named.jsonl.gz": zstandard.ZstdCompressor().compress(payload),
        "bz2-named.jsonl": bz2.compress(payload),
        "xz-named.jsonl.zst": lzma.compress(payload),
        "two-members.jsonl.gz": gzip.compress(payload[:5000]) + gzip.compress(payload[5000:]),
        "padded.jsonl.gz": gzip.compress(payload) + b"\0" * 16,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        docs, rejected = read_all(tmp_path / name)
        assert [d["id"] for d in docs] == ids and rejected == [], name
        with open_lines(str(tmp_path / name)) as lines:
            assert b"".join(lines) == payload, name

    # a gzip cut in half keeps every record before the cut, then says where it stopped
    gz = gzip.compress(payload)
    (tmp_path / "cut.jsonl").write_bytes(gz[: len(gz) // 2])
    docs, rejected = read_all(tmp_path / "cut.jsonl")
    assert 0 < len(docs) < len(records) and [d["id"] for d in docs] == ids[: len(docs)]
    assert reasons(rejected) == ["corrupt_file"] and rejected[0]["source_index"] == len(docs) + 1
    assert "TruncatedInput" in rejected[0]["detail"]
    # garbage after a gzip member is not silently dropped
    (tmp_path / "trailing.jsonl.gz").write_bytes(gzip.compress(payload) + b"not gzip at all")
    docs, rejected = read_all(tmp_path / "trailing.jsonl.gz")
    assert len(docs) == len(records) and reasons(rejected) == ["corrupt_file"]


def test_a_leading_bom_is_ignored(tmp_path):
    text = wiki_texts(1)[0]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "first", "text": text}).encode() + b"\n")
    docs, rejected = read_all(path)
    assert [d["id"] for d in docs] == ["first"] and rejected == []
    (tmp_path / "bom.jsonl.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert [d["id"] for d in read_all(tmp_path / "bom.jsonl.gz")[0]] == ["first"]
    # only a leading one: a BOM inside a later line is that line's problem
    path.write_bytes(path.read_bytes() + b"\xef\xbb\xbf" + json.dumps({"id": "second", "text": text}).encode())
    docs, rejected = read_all(path)
    assert [d["id"] for d in docs] == ["first"] and reasons(rejected) == ["malformed_json"]


def test_ids_keep_big_integers_exact_and_map_to_strings(tmp_path):
    texts = wiki_texts(1) * 12
    lines = [
        b'{"id": 123456789012345678901234567890, "text": "%s", "n": 98765432109876543210987}',
        b'{"id": -9223372036854775809, "text": "%s", "n": {"deep": [18446744073709551616]}}',
        b'{"id": 18446744073709551615, "text": "%s"}',
        b'{"id": 123, "text": "%s"}',
        b'{"id": "123", "text": "%s"}',
        b'{"id": true, "text": "%s"}',
        b'{"id": 1.5, "text": "%s"}',
        b'{"id": 2.0, "text": "%s"}',
        b'{"id": null, "text": "%s"}',
        b'{"id": "", "text": "%s"}',
        b'{"id": "a 12345678901234567890 digit run in a string", "text": "%s"}',
        b'{"id": [1, "x"], "text": "%s"}',
    ]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(line % json.dumps(t)[1:-1].encode() for line, t in zip(lines, texts)) + b"\n")
    docs, rejected = read_all(path, keep_fields=("n",))
    assert rejected == []
    assert [d["id"] for d in docs] == [
        "123456789012345678901234567890",
        "-9223372036854775809",
        "18446744073709551615",
        "123",
        "123",
        "true",
        "1.5",
        "2.0",
        "ids.jsonl#9",
        "ids.jsonl#10",
        "a 12345678901234567890 digit run in a string",
        '[1,"x"]',
    ]
    assert docs[0]["n"] == "98765432109876543210987"
    assert json.loads(docs[1]["n"]) == {"deep": [18446744073709551616]}
    assert not any("e+" in d["id"] for d in docs)
    # a record rejected for its text keeps its big id exactly too
    path.write_bytes(b'{"id": 123456789012345678901234567890, "text": ""}\n')
    assert read_all(path)[1][0]["id"] == "123456789012345678901234567890"
    # NaN / Infinity stay invalid JSON, also on the exact path
    path.write_bytes(b'{"id": 123456789012345678901234567890, "text": "x", "v": NaN}\n')
    assert reasons(read_all(path)[1]) == ["malformed_json"]


def test_json_array_files(tmp_path):
    texts = wiki_texts(3)
    elements = [
        {"id": "a", "text": texts[0]},
        42,
        {"id": "c", "body": "no text"},
        {"text": texts[1]},
        ["nested", "list"],
        {"id": 123456789012345678901234567890, "text": texts[2]},
    ]
    pretty = json.dumps(elements, indent=2).encode()
    (tmp_path / "pretty.json").write_bytes(b"\xef\xbb\xbf\n  " + pretty + b"\n")
    (tmp_path / "pretty.json.gz").write_bytes(gzip.compress(pretty))
    (tmp_path / "oneline.json").write_bytes(json.dumps(elements).encode())
    (tmp_path / "forced.txt").write_bytes(pretty)
    for name, fmt in [
        ("pretty.json", "auto"),
        ("pretty.json.gz", "auto"),
        ("oneline.json", "auto"),
        ("forced.txt", "jsonl"),
    ]:
        docs, rejected = read_all(tmp_path / name, format=fmt)
        stem = name.split(".")[0]
        assert [d["id"] for d in docs] == ["a", f"{name}#3", "123456789012345678901234567890"], name
        assert [d["source_index"] for d in docs] == [0, 3, 5], name
        assert [(r["source_index"], r["reason"]) for r in rejected] == [
            (1, "not_an_object"),
            (2, "missing_text_field"),
            (4, "not_an_object"),
        ], stem
        assert json.loads(rejected[0]["raw"]) == 42 and rejected[1]["id"] == "c"

    # a truncated array keeps the elements before the cut
    (tmp_path / "cut.json").write_bytes(pretty[: pretty.index(b'"body"')])
    docs, rejected = read_all(tmp_path / "cut.json")
    assert [d["id"] for d in docs] == ["a"]
    assert [(r["source_index"], r["reason"]) for r in rejected] == [(1, "not_an_object"), (2, "corrupt_file")]
    # an element that is not UTF-8 is rejected alone, with its bytes
    bad = b'[{"text": "ok"},\n {"text": "caf\xe9"},\n {"text": "also ok"}]'
    (tmp_path / "latin.json").write_bytes(bad)
    docs, rejected = read_all(tmp_path / "latin.json")
    assert [d["text"] for d in docs] == ["ok", "also ok"]
    assert reasons(rejected) == ["invalid_utf8"] and rejected[0]["raw_bytes"] == b'{"text": "caf\xe9"}'
    # too big to parse whole: one rejection that says so (the limit scales with input.max_text_bytes)
    docs, rejected = read_all(tmp_path / "pretty.json", max_text_bytes=4)
    assert docs == [] and reasons(rejected) == ["array_too_large"] and "JSON Lines" in rejected[0]["detail"]
    (tmp_path / "empty.json").write_bytes(b"[ ]\n")
    assert reasons(read_all(tmp_path / "empty.json")[1]) == ["empty_file"]

    # JSON Lines whose lines are arrays stay JSON Lines: one rejection per line
    lines = b'[1, 2, 3]\n{"id": "x", "text": "a line"}\n["a"]\n'
    for name in ("arrays.jsonl", "arrays.json"):
        (tmp_path / name).write_bytes(lines)
        docs, rejected = read_all(tmp_path / name)
        assert [d["id"] for d in docs] == ["x"], name
        assert [(r["source_index"], r["reason"]) for r in rejected] == [(1, "not_an_object"), (3, "not_an_object")]
    (tmp_path / "pretty.jsonl").write_bytes(pretty)  # .jsonl is never read as one array
    assert set(reasons(read_all(tmp_path / "pretty.jsonl")[1])) == {"malformed_json", "not_an_object"}


class _Alarm:
    """Fail (instead of hanging forever) when a block takes longer than ``seconds``."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def fire(signum, frame):
            raise TimeoutError("blocked: something opened a FIFO")

        self.previous = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_fifos_are_refused_or_rejected_never_opened(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with _Alarm(20):
        with pytest.raises(InputError, match="not a regular file"):
            discover_inputs(InputConfig(paths=(str(fifo),)))

        (tmp_path / "sub").mkdir()
        os.mkfifo(tmp_path / "sub" / "other.jsonl.gz")
        os.symlink(tmp_path / "nowhere.jsonl", tmp_path / "broken.jsonl")
        write_jsonl(tmp_path / "good.jsonl", [{"id": "g", "text": "a good record"}])
        cfg = InputConfig(paths=(str(tmp_path),))
        files = {f.name: f for f in discover_inputs(cfg)}
        assert sorted(files) == ["broken.jsonl", "good.jsonl", "pipe.jsonl", "sub/other.jsonl.gz"]
        assert files["good.jsonl"].problem is None
        for name in ("pipe.jsonl", "sub/other.jsonl.gz", "broken.jsonl"):
            docs, rejected, receipt = read_one(files[name])
            assert docs == [] and reasons(rejected) == ["not_a_regular_file"]
            assert rejected[0]["source_file"] == files[name].path
            assert (receipt["records"], receipt["accepted"], receipt["rejected"]) == (1, 0, 1)
        assert "FIFO" in read_one(files["pipe.jsonl"])[1][0]["detail"]
        assert [d["id"] for d in read_one(files["good.jsonl"])[0]] == ["g"]
        # a glob that matches a FIFO: a rejection too, not a hang
        matched = discover_inputs(InputConfig(paths=(str(tmp_path / "*.jsonl"),)))
        assert {f.name: f.problem is not None for f in matched} == {
            "broken.jsonl": True,
            "good.jsonl": False,
            "pipe.jsonl": True,
        }
    assert "not_a_regular_file" in REJECT_REASONS


def test_receipts_record_the_identity_of_the_bytes_read(tmp_path):
    import os

    from dq_ray.io.digest import file_sha256
    from dq_ray.io.readers import changed_inputs

    records = [{"id": f"w{i}", "text": t} for i, t in enumerate(wiki_texts(10))]
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "plain.jsonl").write_bytes(payload)
    (tmp_path / "gz.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "zst.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "rows.parquet")
    gz = gzip.compress(payload)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "array.json").write_bytes(json.dumps(records, indent=1).encode())
    files = discover_inputs(InputConfig(paths=(str(tmp_path),)))
    receipts = {}
    for f in files:
        docs, rejected, receipt = read_one(f)
        size, digest = file_sha256(f.path)
        assert receipt["sha256"] == digest and receipt["size"] == size == f.size, f.name
        assert receipt["format"] == ("parquet" if f.name.endswith(".parquet") else "jsonl")
        assert receipt["mtime"] == os.stat(f.path).st_mtime == f.mtime
        assert receipt["path"] == f.path and receipt["records"] == len(docs) + len(rejected)
        receipts[receipt["path"]] = json.loads(json.dumps(receipt))  # as stored
    assert changed_inputs(files, receipts) == []

    with open(tmp_path / "plain.jsonl", "ab") as fh:  # grown
        fh.write(b'{"text": "one more"}\n')
    os.utime(tmp_path / "rows.parquet", (1_000_000_000, 1_000_000_000))  # same size, touched
    receipts[str(tmp_path / "gz.jsonl.gz")]["size"] = None  # an older run's receipt: unknown, not changed
    del receipts[str(tmp_path / "zst.jsonl.zst")]  # never read: nothing to compare
    files = discover_inputs(InputConfig(paths=(str(tmp_path),)))
    assert changed_inputs(files, receipts) == [str(tmp_path / "plain.jsonl"), str(tmp_path / "rows.parquet")]


def test_credentials_in_input_urls_never_reach_rows_receipts_or_errors(tmp_path, caplog):
    import functools
    import http.server
    import threading

    from dq_ray.io import InputFile

    texts = wiki_texts(2)
    (tmp_path / "data.jsonl").write_bytes(
        (json.dumps({"text": texts[0]}) + "\n" + json.dumps({"id": "x", "text": ""}) + "\n" + "{broken\n").encode()
        + json.dumps({"id": "y", "text": texts[1]}).encode()
        + b"\n"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secrets = ("s3cr3t", "SIGSECRET", "TOKSECRET")
    try:
        port = server.server_address[1]
        url = f"http://user:s3cr3t@127.0.0.1:{port}/data.jsonl?X-Amz-Signature=SIGSECRET&token=TOKSECRET"
        cfg = InputConfig(paths=(url,))
        caplog.set_level("DEBUG", logger="dq_ray")
        (shard,) = discover_inputs(cfg)
        assert shard.path == url and shard.name == "data.jsonl"  # the real URL stays in memory only
        docs, rejected, receipt = read_one(shard)
        assert [d["id"] for d in docs] == ["data.jsonl#1", "y"]
        assert reasons(rejected) == ["empty_text", "malformed_json"]
        assert receipt["path"] == docs[0]["source_file"] == rejected[0]["source_file"]
        assert receipt["path"].startswith("http://***@127.0.0.1:") and "X-Amz-Signature=***" in receipt["path"]
        assert receipt["size"] == (tmp_path / "data.jsonl").stat().st_size and receipt["sha256"]

        errors = []
        missing = url.replace("data.jsonl", "gone.jsonl")
        with pytest.raises(InputError) as info:
            discover_inputs(InputConfig(paths=(missing,)))
        errors.append(info.value)
        # an input that disappears between discovery and reading: a corrupt_file row, its detail scrubbed
        gone = InputFile(missing, "jsonl", "gone.jsonl", 10)
        _, gone_rejected, gone_receipt = read_one(gone)
        assert reasons(gone_rejected) == ["corrupt_file"]
        assert "127.0.0.1" in gone_rejected[0]["detail"]  # the error is still useful
        stored = json.dumps([docs, rejected, receipt, gone_rejected, gone_receipt], default=str)
        shown = stored + "".join(str(e) for e in errors) + caplog.text
        for secret in secrets:
            assert secret not in shown, secret
    finally:
        server.shutdown()
        server.server_close()


def test_every_reject_reason_is_documented():
    from pathlib import Path

    schema = (Path(__file__).parents[1] / "docs" / "schema.md").read_text()
    rejected_part = schema[schema.index("## `rejected/`") : schema.index("## `manifest.json`")]
    for reason in REJECT_REASONS:
        assert f"| `{reason}` |" in rejected_part, reason
    for column in REJECTED_SCHEMA.names:
        assert f"| `{column}` |" in rejected_part, column
