"""``dq-ray export``: a real tiny run written with its text (re-read from the inputs) and map coordinates, read back
with pandas and Hugging Face ``datasets``; ``--where``, ``--selected``, ``--format jsonl`` and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.errors import ConfigError
from dq_ray.select.export import parse_where


def _inputs(tiny_corpus) -> dict:
    from dq_ray.config import InputConfig
    from dq_ray.io import ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(str(tiny_corpus),))
    rows = [r for f in discover_inputs(cfg) for t in read_shard(f, cfg, ShardResult(f.path)) for r in t.to_pylist()]
    return {(r["source_file"], r["source_index"]): r["text"] for r in rows}


def _export(*args) -> str:
    result = CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_export_parquet_with_text_reads_in_pandas_and_datasets(finished_run, tiny_corpus, tmp_path, monkeypatch):
    out = tmp_path / "export"
    printed = _export(finished_run, "--output", out)
    docs = pq.read_table(finished_run / "docs")
    frame = pd.read_parquet(out / "data")
    assert f"exported {docs.num_rows:,} of {docs.num_rows:,}" in printed and len(frame) == docs.num_rows
    assert {"id", "source_file", "source_index", "text", "source", "map_x", "map_y", "heur_n_words"} <= set(frame)
    assert "embedding" not in frame  # left out unless asked for
    texts = _inputs(tiny_corpus)  # the text was re-read from the inputs (the run did not keep it)
    assert all(t == texts[(f, i)] for f, i, t in zip(frame.source_file, frame.source_index, frame.text))
    by_key = {(f, i): x for f, i, x in zip(*(docs[c].to_pylist() for c in ("source_file", "source_index", "map_x")))}
    assert all(np.isclose(x, by_key[(f, i)]) for f, i, x in zip(frame.source_file, frame.source_index, frame.map_x))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    hf = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), cache_dir=str(tmp_path / "hf"))
    assert hf["train"].num_rows == docs.num_rows and "text" in hf["train"].column_names
    # the folder alone: datasets finds the data files from the card's YAML header (configs: data_files)
    by_card = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-card"))
    assert by_card["train"].num_rows == docs.num_rows and set(by_card["train"].column_names) == set(frame.columns)

    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and 'path: "data/part-*.parquet"' in card
    assert str(finished_run) in card and f"documents in the run (`docs/`): {docs.num_rows}" in card
    assert f"documents exported: {docs.num_rows}" in card and "none: every document of the run" in card
    assert "`heuristics`" in card and "`map`" in card  # the config's stages
    for col in frame.columns:  # every exported column has a row in the table
        assert f"| `{col}` |" in card
    assert "| `heur_n_words` | int32 | heuristics | word tokens" in card
    assert "| `map_x` | float" in card and "| map |" in card
    assert json.loads((out / "export.json").read_text())["rows_exported"] == docs.num_rows


def test_export_where_and_jsonl(finished_run, tmp_path):
    out = tmp_path / "jsonl"
    where = ["--where", "heur_n_words>=40", "--where", "exact_dup_keep==true"]
    _export(finished_run, "-o", out, "--format", "jsonl", *where)
    docs = pq.read_table(finished_run / "docs").to_pandas()
    want = docs[(docs.heur_n_words >= 40) & docs.exact_dup_keep.fillna(False).astype(bool)]
    files = sorted((out / "data").glob("part-*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    assert 0 < len(rows) == len(want) < len(docs)
    assert {(r["source_file"], r["source_index"]) for r in rows} == set(zip(want.source_file, want.source_index))
    assert all(r["text"] and r["heur_n_words"] >= 40 for r in rows)
    frame = pd.concat(pd.read_json(f, lines=True) for f in files)
    assert len(frame) == len(want)
    card = (out / "README.md").read_text()
    assert "`heur_n_words>=40`" in card and "`exact_dup_keep==true`" in card and 'path: "data/part-*.jsonl"' in card
    assert f"documents exported: {len(want)}" in card


def test_export_selected_rows_only_and_chosen_columns(finished_run, tmp_path):
    out = tmp_path / "sel"
    _export(finished_run, "-o", out, "--selected", finished_run, "--columns", "heur_n_words,map_x", "--no-text")
    frame = pd.read_parquet(out / "data")
    selected = pq.read_table(finished_run / "selected")  # source_file relative to the input root
    assert list(frame.columns) == ["id", "source_file", "source_index", "heur_n_words", "map_x"]
    assert sorted(frame.id) == sorted(selected["id"].to_pylist()) and len(frame) == selected.num_rows
    assert "`--selected`" in (out / "README.md").read_text()


def test_parse_where():
    assert parse_where("askllm_score >= 0.5").op == ">=" and parse_where("askllm_score>=0.5").value == 0.5
    assert parse_where("heur_c4_pass==true").op == "is_true" and parse_where("x!=true").op == "is_false"
    assert parse_where("topic_id != null").op == "not_null" and parse_where("lang=='en'").value == "en"
    assert parse_where("lang==en").value == "en" and parse_where("topic_id<3").value == 3
    for bad in ("askllm_score", "askllm_score ~ 1", "x >= ", "x > true", "1x == 2", "x == nan"):
        with pytest.raises(ConfigError):
            parse_where(bad)


def test_export_bad_input_gives_a_clear_error(finished_run, tmp_path):
    def fails(*args) -> str:
        result = CliRunner().invoke(main, ["export", *map(str, args)])
        assert result.exit_code != 0 and not isinstance(result.exception, (TypeError, KeyError)), result.output
        return result.output

    assert "does not exist" in fails(tmp_path / "nope", "-o", tmp_path / "o1")
    assert "not a dq-ray run" in fails(tmp_path, "-o", tmp_path / "o2")
    out = fails(finished_run, "-o", tmp_path / "o3", "--columns", "heur_n_words,nope")
    assert "unknown column(s) ['nope']" in out and "available" in out
    assert "expected COLUMN OP VALUE" in fails(finished_run, "-o", tmp_path / "o4", "--where", "heur_n_words ~ 3")
    assert "not produced by the run" in fails(finished_run, "-o", tmp_path / "o5", "--where", "nope>1")
    assert "does not fit the column's type" in fails(finished_run, "-o", tmp_path / "o6", "--where", "heur_n_words>abc")
    assert "not an empty folder" in fails(finished_run, "-o", finished_run)
    assert not any((tmp_path / f"o{i}").exists() for i in range(3, 7))  # nothing written before the checks pass
