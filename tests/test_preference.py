"""Reading preference / instruction data (input.shape dpo, kto, sft) on the constructed demo preference set."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dq_ray.config import ConfigError, InputConfig, load_config
from dq_ray.demo.preference import PreferenceSizes, build_preference_set
from dq_ray.io import REJECT_REASONS, InputFile, ShardResult, discover_inputs, read_shard
from dq_ray.io.shapes import PREF_COLUMNS, SHAPE_REJECT_REASONS, ShapeReader, render_messages

TINY_PREF = PreferenceSizes(
    good=8, parquet=4, reversed=4, identical=3, near=3, length=4, dup_prompt=3, chat=3, kto=6, sft=4
)


@pytest.fixture(scope="session")
def tiny_pref(tmp_path_factory):
    """A tiny constructed preference set (real Wikipedia leads and tweets) and its summary."""
    out = tmp_path_factory.mktemp("pref")
    summary = build_preference_set(out, TINY_PREF, seed=3)
    return out, summary


def read_all(cfg: InputConfig) -> tuple[pa.Table, list[dict]]:
    tables, rejected, records = [], [], 0
    for f in discover_inputs(cfg):
        result = ShardResult(f.path)
        tables += list(read_shard(f, cfg, result))
        rejected += result.rejected
        records += result.records
    table = pa.concat_tables(tables)
    assert records == table.num_rows + len(rejected)
    return table, rejected


def test_dpo_reader_accepts_pairs_and_rejects_malformed_with_reasons(tiny_pref):
    out, summary = tiny_pref
    cfg = InputConfig(paths=(str(out / "dpo"),), shape="dpo", keep_fields=("kind",))
    table, rejected = read_all(cfg)
    kinds = {k: len(v) for k, v in summary["ids"].items()}
    assert table.num_rows == sum(kinds.values())
    assert {r["id"] or "broken:json": r["reason"] for r in rejected} == summary["expected_rejections"]
    assert set(PREF_COLUMNS) <= set(table.column_names)
    rows = {r["id"]: r for r in table.to_pylist()}
    good = rows["pair:good:0"]
    assert good["text"] == good["pref_prompt"] and good["pref_prompt"].endswith(("?", "."))
    assert good["pref_label"] is None and good["pref_chosen"] and good["pref_rejected"]
    # Parquet pairs arrive like JSONL ones
    assert all(rows[i]["pref_chosen"] for i in summary["ids"]["parquet"])


def test_chat_lists_render_prompt_and_trailing_assistant_turns(tiny_pref):
    out, summary = tiny_pref
    source = [json.loads(line) for line in (out / "dpo" / "chat.jsonl").read_text().splitlines()]
    cfg = InputConfig(paths=(str(out / "dpo" / "chat.jsonl"),), shape="dpo")
    table, rejected = read_all(cfg)
    assert not rejected
    for rec, row in zip(source, table.to_pylist()):
        assert row["pref_prompt"] == rec["prompt"][0]["content"]
        assert row["pref_chosen"] == rec["chosen"][-1]["content"]
        assert row["pref_rejected"] == rec["rejected"][-1]["content"]


def test_render_messages_rules():
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Name a lake."}
    assert render_messages([system, user], prompt=True) == "system: Be brief.\n\nuser: Name a lake."
    answer = [user, {"role": "assistant", "content": "Lake Vostok."}, {"role": "assistant", "content": "It is big."}]
    assert render_messages(answer, prompt=False) == "Lake Vostok.\n\nIt is big."
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert render_messages(parts, prompt=False) == "a\nb"
    assert render_messages([], prompt=True).reason == "bad_messages"
    assert render_messages([user], prompt=False).reason == "bad_messages"
    assert render_messages(["hello"], prompt=True).reason == "bad_messages"


def test_parquet_chat_lists_and_renamed_fields(tmp_path, tiny_pref):
    out, _ = tiny_pref
    chat = [json.loads(line) for line in (out / "dpo" / "chat.jsonl").read_text().splitlines()]
    rows = [{"q": c["prompt"], "a": c["chosen"], "b": c["rejected"]} for c in chat]
    rows.append({"q": chat[0]["prompt"], "a": [{"role": "user", "content": "x"}], "b": chat[0]["rejected"]})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")  # list<struct<role, content>>
    cfg = InputConfig(paths=(str(tmp_path),), shape="dpo", fields={"prompt": "q", "chosen": "a", "rejected": "b"})
    table, rejected = read_all(cfg)
    assert table.num_rows == len(chat)
    assert table.column("pref_chosen").to_pylist() == [c["chosen"][-1]["content"] for c in chat]
    assert [r["reason"] for r in rejected] == ["bad_messages"]


def test_kto_labels_place_the_completion_and_bad_labels_are_rejected(tiny_pref):
    out, summary = tiny_pref
    table, rejected = read_all(InputConfig(paths=(str(out / "kto"),), shape="kto"))
    assert table.num_rows == summary["kto_records"] - 1
    assert [(r["id"], r["reason"]) for r in rejected] == [("kto:bad-label", "bad_label")]
    for row in table.to_pylist():
        if row["pref_label"]:
            assert row["pref_chosen"] and row["pref_rejected"] is None
        else:
            assert row["pref_rejected"] and row["pref_chosen"] is None
    reader = ShapeReader("kto")
    assert reader.parse({"prompt": "p", "completion": "c", "label": 1})["pref_chosen"] == "c"
    assert reader.parse({"prompt": "p", "completion": "c", "label": 2}).reason == "bad_label"


def test_sft_parquet(tiny_pref):
    out, summary = tiny_pref
    table, rejected = read_all(InputConfig(paths=(str(out / "sft"),), shape="sft"))
    assert table.num_rows == summary["sft_records"] and not rejected
    assert table.column("pref_rejected").null_count == table.num_rows
    assert table.column("text").to_pylist() == table.column("pref_prompt").to_pylist()


def test_answer_size_limit_is_a_rejection():
    reader = ShapeReader("dpo", max_bytes=10)
    result = reader.parse({"prompt": "short", "chosen": "a much longer answer", "rejected": "no"})
    assert result.reason == "text_too_large"


def test_shape_config_errors_name_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="input.shape: 'pairs' is not one of text, dpo, kto, sft"):
        InputConfig(shape="pairs")
    with pytest.raises(ConfigError, match="valid roles: prompt, completion, label"):
        load_config({"input": {"paths": [str(tmp_path)], "shape": "kto", "fields": {"chosen": "x"}}})
    with pytest.raises(ConfigError, match=r"set input.shape to dpo, kto or sft"):
        load_config({"input": {"paths": [str(tmp_path)]}, "stages": ["pairs"]})
    with pytest.raises(ConfigError, match="keep_fields may not name reader columns"):
        InputConfig(shape="dpo", keep_fields=("pref_chosen",))
    cfg = load_config({"input": {"paths": [str(tmp_path)], "shape": "dpo"}, "stages": ["pairs"]})
    assert cfg.input.shape == "dpo"


def test_reject_reasons_are_registered_and_documented():
    from pathlib import Path

    schema = (Path(__file__).parents[1] / "docs" / "schema.md").read_text()
    for reason in SHAPE_REJECT_REASONS:
        assert reason in REJECT_REASONS
        assert f"| `{reason}` |" in schema


def test_text_shape_reads_as_before(tiny_corpus):
    cfg = InputConfig(paths=(str(tiny_corpus / "news.jsonl"),))
    table, _ = read_all(cfg)
    assert not set(PREF_COLUMNS) & set(table.column_names)
    assert InputFile  # the reader API used above
