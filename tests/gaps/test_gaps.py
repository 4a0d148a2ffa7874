"""dq-ray gaps: probes from a source the corpus lacks land where it is thinnest; copies of it do not."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.demo.languages import MIN_DEMO_CHARS, language_docs
from dq_ray.gaps import find_gaps

STAGES = [
    {"name": "embed", "params": {"backend": "onnx", "max_seq_length": 64}},
    {"name": "density", "params": {"k": 8}},
    {"name": "topics", "params": {"n_topics": 4, "n_coarse": 2}},
    {"name": "map", "params": {"method": "pca"}},
]
N_FOREIGN = 6


@pytest.fixture(scope="module")
def run(tiny_corpus, ray_local, tmp_path_factory):
    """The English tweets and news of the tiny demo corpus (one coherent domain: health news) with embed,
    density, topics and a PCA map."""
    out = tmp_path_factory.mktemp("gaps") / "run"
    inputs = [str(tiny_corpus / "tweets.jsonl.zst"), str(tiny_corpus / "news.jsonl")]
    cfg = {"input": {"paths": inputs}, "output": {"path": str(out)}, "stages": STAGES}
    path = out.parent / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _corpus_texts(tiny_corpus, n: int) -> list[dict]:
    from dq_ray.io import InputConfig, ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(str(tiny_corpus / "news.jsonl"),))
    rows = [r for f in discover_inputs(cfg) for t in read_shard(f, cfg, ShardResult(f.path)) for r in t.to_pylist()]
    return [{"id": f"copy-{i}", "text": r["text"]} for i, r in enumerate(rows[:n])]


@pytest.fixture(scope="module")
def probes(tiny_corpus, tmp_path_factory):
    foreign = [d for d in language_docs("speeches", "de") if len(d["text"]) >= MIN_DEMO_CHARS][:N_FOREIGN]
    rows = [{"id": f"de-{i}", "text": d["text"]} for i, d in enumerate(foreign)]
    rows += _corpus_texts(tiny_corpus, 3)
    rows.append({"id": "blank", "text": "   "})  # rejected (empty_text), listed in the report
    path = tmp_path_factory.mktemp("probes") / "probes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_foreign_probes_land_in_the_thinnest_decile(run, probes):
    result = CliRunner().invoke(main, ["gaps", str(run), "--probes", str(probes), "--k", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = run / "gaps-probes"
    for name in ("gaps.md", "gaps.html", "gaps.json", "probes.parquet"):
        assert (out / name).is_file(), name
    s = json.loads((out / "gaps.json").read_text())
    by_id = {p["probe_id"]: p for p in s["probes"]}
    assert len(by_id) == N_FOREIGN + 3
    assert [r["reason"] for r in s["rejected"]] == ["empty_text"]
    foreign = [p for i, p in by_id.items() if i.startswith("de-")]
    copies = [p for i, p in by_id.items() if i.startswith("copy-")]
    assert all(p["density_percentile"] <= 10 for p in foreign), [p["density_percentile"] for p in foreign]
    assert all(p["density_percentile"] >= 50 for p in copies), [p["density_percentile"] for p in copies]
    # a copy finds its original: cosine 1 (the corpus holds the same text)
    assert all(p["nearest_cosine"] == pytest.approx(1.0, abs=1e-3) for p in copies)
    assert s["coverage"]["thin_share"] == pytest.approx(N_FOREIGN / (N_FOREIGN + 3))
    # thinnest first; k neighbours with their signals; a topic and map coordinates for every probe
    pcts = [p["density_percentile"] for p in s["probes"]]
    assert pcts == sorted(pcts) and s["probes"][0]["rank"] == 1
    docs = pq.read_table(run / "docs", columns=["id", "density_score", "topic_id"])
    ids = set(docs.column("id").to_pylist())
    for p in s["probes"]:
        assert len(p["neighbours"]) == 3 and all(d["id"] in ids and "density_score" in d for d in p["neighbours"])
        assert p["topic_id"] is not None and p["topic_label"] and p["map_x"] is not None
    assert sum(t["probes"] for t in s["topics"]) == len(by_id)
    assert s["run"]["documents"] == docs.num_rows
    table = pq.read_table(out / "probes.parquet")
    assert table.num_rows == len(by_id) and {"map_x", "map_y", "density_percentile"} <= set(table.column_names)
    md, html = (out / "gaps.md").read_text(), (out / "gaps.html").read_text()
    assert md.startswith("# dq-ray coverage gaps") and "## Probes per topic" in md and "empty_text" in md
    assert "<h1>dq-ray coverage gaps</h1>" in html and "de-0" in html
    assert "thinnest decile" in result.output


def test_refuses_bad_input(run, probes, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    result = CliRunner().invoke(main, ["gaps", str(other), "--probes", str(probes)])
    assert result.exit_code == 1 and "is not a dq-ray run directory" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(main, ["gaps", str(run), "--probes", str(empty), "-o", str(tmp_path / "e")])
    assert result.exit_code == 1 and "empty probe file" in result.output
    no_density = tmp_path / "no_density"
    shutil.copytree(run, no_density, ignore=shutil.ignore_patterns("gaps-*"))
    manifest = json.loads((no_density / "manifest.json").read_text())
    manifest["config"]["stages"] = [s for s in manifest["config"]["stages"] if s["name"] != "density"]
    (no_density / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="gaps needs the embed and density stages"):
        find_gaps(str(no_density), str(probes))


def test_density_sampling_favours_the_neighbours_of_thin_probes(run, probes, tmp_path):
    """``density_sample`` with ``favour:`` keeps more of the documents nearest the under-covered probes."""
    from dq_ray.errors import ConfigError
    from dq_ray.select.policy import evaluate, favoured_ids, parse_policy

    out = tmp_path / "gaps"
    find_gaps(str(run), str(probes), output=str(out), k=3)
    near = favoured_ids(str(out), 10.0)
    foreign = [p for p in json.loads((out / "gaps.json").read_text())["probes"] if p["probe_id"].startswith("de-")]
    assert near == {d["id"] for p in foreign for d in p["neighbours"]}  # only the thin probes' neighbours
    docs = pq.read_table(run / "docs", columns=["id", "source_file", "source_index", "density_weight"])

    def kept_near(extra: dict) -> int:
        rule = {"kind": "density_sample", "fraction": 0.3, **extra}
        ev = evaluate(parse_policy({"seed": 3, "rules": [rule]}), docs)
        return sum(i in near for i, k in zip(docs.column("id").to_pylist(), ev.kept) if k)

    plain, favoured = kept_near({}), kept_near({"favour": str(out), "favour_weight": 50.0})
    assert favoured > plain and favoured >= 0.8 * len(near), (plain, favoured, len(near))
    assert kept_near({"favour": str(out / "probes.parquet"), "favour_weight": 50.0}) == favoured
    with pytest.raises(ConfigError, match="no dq-ray gaps report"):
        parse_policy({"rules": [{"kind": "density_sample", "fraction": 0.3, "favour": str(tmp_path / "none")}]})
