"""``dq-ray select`` as a training set: ``--shuffle`` (seeded, across the whole selection), ``--format jsonl``,
``--source-paths`` and ``--rows-per-file``, on the shared finished run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.errors import ConfigError
from dq_ray.select import OutputOptions
from tests.select.conftest import POLICY


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "p.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return path


def _select(run, policy_file, out, *args) -> Path:
    argv = ["select", str(run), "--policy", str(policy_file), "--output", str(out), *map(str, args)]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "selected"


def _ids_in_file_order(folder: Path) -> list[str]:
    return [i for f in sorted(folder.glob("part-*.parquet")) for i in pq.read_table(f)["id"].to_pylist()]


def test_shuffle_is_seeded_global_and_not_input_order(finished_run, policy_file, tmp_path):
    plain = _ids_in_file_order(_select(finished_run, policy_file, tmp_path / "plain"))
    a = _ids_in_file_order(_select(finished_run, policy_file, tmp_path / "a", "--shuffle", "--seed", 3))
    b = _ids_in_file_order(_select(finished_run, policy_file, tmp_path / "b", "--shuffle", "--seed", 3))
    c = _select(finished_run, policy_file, tmp_path / "c", "--shuffle", "--seed", 4, "--rows-per-file", 7)
    assert len(plain) > 20 and sorted(a) == sorted(plain)
    assert a == b and a != plain  # the same order for a seed, not the input order
    assert _ids_in_file_order(c) != a and sorted(_ids_in_file_order(c)) == sorted(a)  # another seed, another order
    # across the whole selection: the first file mixes documents of several input files
    first = pq.read_table(sorted(c.glob("part-*.parquet"))[0])
    assert len(set(first["source_file"].to_pylist())) > 1
    summary = json.loads((tmp_path / "a" / "selection.json").read_text())
    want = {"format": "parquet", "shuffle": True, "source_paths": "relative", "rows_per_file": None}
    assert summary["output"] == want


def test_jsonl_in_files_of_the_target_size(finished_run, policy_file, tmp_path):
    selected = _select(finished_run, policy_file, tmp_path / "j", "--format", "jsonl", "--rows-per-file", 10)
    files = sorted(selected.glob("*"))
    rows = [[json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()] for f in files]
    total = sum(map(len, rows))
    summary = json.loads((tmp_path / "j" / "selection.json").read_text())
    assert total == summary["selected"] > 20
    assert all(f.suffix == ".jsonl" for f in files) and len(files) == math.ceil(total / 10)
    assert all(len(r) == 10 for r in rows[:-1]) and 0 < len(rows[-1]) <= 10
    assert all(set(r) == {"id", "text"} and r["text"] for part in rows for r in part)
    assert (tmp_path / "j" / "report.md").is_file()  # the report's numbers come from the signals of those rows
    assert f"{total:,} of" in (tmp_path / "j" / "report.md").read_text()


def test_source_paths_relative_redacted_absolute(finished_run, policy_file, tmp_path, tiny_corpus):
    docs = set(pq.read_table(finished_run / "docs")["source_file"].to_pylist())
    relative = set(pq.read_table(finished_run / "selected")["source_file"].to_pylist())  # the default
    assert relative and all(not p.startswith("/") and (tiny_corpus / p).is_file() for p in relative)
    redacted = _select(finished_run, policy_file, tmp_path / "r", "--source-paths", "redacted")
    hashed = set(pq.read_table(redacted)["source_file"].to_pylist())
    assert len(hashed) == len(relative) and all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashed)
    assert not any(str(tiny_corpus) in h for h in hashed)
    absolute = _select(finished_run, policy_file, tmp_path / "abs", "--source-paths", "absolute")
    assert set(pq.read_table(absolute)["source_file"].to_pylist()) <= docs


def test_output_options_are_checked():
    with pytest.raises(ConfigError, match="format 'csv'"):
        OutputOptions(format="csv")
    with pytest.raises(ConfigError, match="source_paths"):
        OutputOptions(source_paths="home")
    with pytest.raises(ConfigError, match="rows_per_file"):
        OutputOptions(rows_per_file=0)
    result = CliRunner().invoke(main, ["select", ".", "--policy", "x.yaml", "--source-paths", "home"])
    assert result.exit_code == 2 and "'home' is not one of" in result.output
