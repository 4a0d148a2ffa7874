"""Incremental runs (``dq-ray run --baseline``): a base run, then an update of new documents plus planted copies of
base documents, on real text with real Ray, models and Parquet."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.config import load_config
from dq_ray.io import RunDir, redact
from dq_ray.io.baseline import BaselineError, open_baseline, stage_differences, view_files
from dq_ray.pipeline.baseline import (
    BaselineOptions,
    BaselinePlan,
    mark_cross_run_semantic_duplicates,
    plan_baseline,
)
from dq_ray.pipeline.cache import TEXT_HASH, add_text_hash, split_cached, write_cache
from dq_ray.stages._keys import doc_key_hex

STAGES = [
    {"name": "heuristics"},
    {"name": "exact_dedup"},
    {"name": "minhash"},
    {"name": "embed", "params": {"backend": "onnx", "max_seq_length": 64}},
    {"name": "density", "params": {"k": 8}},
    {"name": "semdedup"},
    {"name": "topics", "params": {"n_topics": 4, "n_coarse": 2}},
    {"name": "map", "params": {"method": "pca"}},
]
N_COPIES = 5
N_NEAR = 3


def _with(**changed) -> list[dict]:
    """STAGES with the params of the named stages replaced."""
    return [{"name": s["name"], "params": changed[s["name"]]} if s["name"] in changed else dict(s) for s in STAGES]


def _write_config(path, inputs, out, stages=STAGES):
    cfg = {"input": {"paths": [str(p) for p in inputs]}, "output": {"path": str(out)}, "stages": stages}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _docs(run) -> pa.Table:
    r = RunDir(str(run))
    files = sorted(r.fs.glob(f"{r.root}/docs/*.parquet"))
    return pads.dataset(files, format="parquet").to_table()


def _news(tiny_corpus) -> list[dict]:
    """The news documents of the base run, as dq-ray reads them."""
    from dq_ray.io import InputConfig, ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(str(tiny_corpus / "news.jsonl"),))
    return [r for f in discover_inputs(cfg) for t in read_shard(f, cfg, ShardResult(f.path)) for r in t.to_pylist()]


def _planted(tiny_corpus) -> list[dict]:
    """Exact copies of N_COPIES news documents of the base run, N_NEAR copies with two words edited (past the
    embedding's first 64 tokens: the same embedding) and one copy with a word inserted early (``para-0``)."""
    from dq_ray.demo.planted import edit_words

    rows = _news(tiny_corpus)
    rng = random.Random(0)
    exact = [{"id": f"copy-{i}", "text": r["text"]} for i, r in enumerate(rows[:N_COPIES])]
    near = [{"id": f"near-{i}", "text": edit_words(r["text"], rng, 2)} for i, r in enumerate(rows[N_COPIES:][:N_NEAR])]
    assert all(len(r["text"].split()) > 150 for r in near)  # two edits leave a Jaccard similarity far above 0.8
    para = [{"id": "para-0", "text": _early_edit(rows[N_COPIES + N_NEAR]["text"])}]
    return exact + near + para


def _early_edit(text: str) -> str:
    """The text with a word inserted as its eleventh: inside the first 64 tokens, so its embedding moves a little
    (cosine 0.998 to the original's with all-MiniLM-L6-v2)."""
    words = text.split(" ")
    return " ".join([*words[:10], "reportedly", *words[10:]])


@pytest.fixture(scope="module")
def runs(tiny_corpus, ray_local, tmp_path_factory):
    """base: tweets + news; update (--baseline base): Wikipedia articles + copies of N_COPIES news documents."""
    top = tmp_path_factory.mktemp("baseline")
    base_cfg = _write_config(
        top / "base.yaml", [tiny_corpus / "tweets.jsonl.zst", tiny_corpus / "news.jsonl"], top / "base"
    )
    result = CliRunner().invoke(main, ["run", str(base_cfg), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    new = top / "new"
    new.mkdir()
    (new / "copies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _planted(tiny_corpus)))
    shutil.copy(tiny_corpus / "wikipedia.jsonl.gz", new / "wikipedia.jsonl.gz")
    upd_cfg = _write_config(top / "update.yaml", [new], top / "update")
    args = ["run", str(upd_cfg), "--no-progress", "--baseline", str(top / "base")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return top


def test_update_reuses_fits_and_cached_signals(runs):
    base, update = runs / "base", runs / "update"
    manifest = json.loads((update / "manifest.json").read_text())
    b = manifest["baseline"]
    assert b["path"].endswith("/base") and b["differences"] == {} and b["recomputed"] == []
    assert b["fits_reused"] == ["density", "semdedup", "topics", "map"]
    for name in b["fits_reused"]:  # applied, not refitted: no fit step ran, the artifacts are the baseline's
        assert f"{name}.fit" not in manifest["stages"]
        assert manifest["stage_info"][name]["fit"]["from_baseline"] == b["path"]
    old = (base / "artifacts/topics/centroids.npy").read_bytes()
    assert (update / "artifacts/topics/centroids.npy").read_bytes() == old
    assert (update / "artifacts/topics.parquet").exists()
    # every per-document stage answered the planted copies from the cache, and computed the rest
    assert set(b["cache"]["stages"]) == {"heuristics", "embed", "density", "topics", "map"}
    assert b["cache"]["reused"] == {name: N_COPIES for name in b["cache"]["stages"]}
    assert manifest["counts"]["consistent"]
    c = manifest["counts"]
    assert c["input"] == c["accepted"] + c["rejected"]
    assert not (update / "artifacts/_baseline_cache").exists()

    # the reused values are the baseline's, exactly
    new, old = _docs(update), _docs(base)
    assert TEXT_HASH not in new.column_names
    copies = new.filter(pa.compute.starts_with(new.column("id"), "copy-"))
    assert copies.num_rows == N_COPIES
    by_hash = {h: i for i, h in enumerate(old.column("exact_dup_group").to_pylist())}
    for row in copies.to_pylist():
        orig = old.slice(by_hash[row["exact_dup_group"]], 1).to_pylist()[0]
        for col in ("heur_word_count", "density_score", "topic_id", "map_x", "map_y"):
            assert row[col] == orig[col], col
        assert np.allclose(row["embedding"], orig["embedding"])
    # new documents are placed in the baseline's world: its topics and a density from its index
    wiki = new.filter(pa.compute.match_substring(new.column("source_file"), "wikipedia"))
    assert wiki.num_rows > 0 and wiki.column("density_score").null_count == 0
    assert set(wiki.column("topic_id").to_pylist()) <= set(old.column("topic_id").to_pylist())


def test_copies_of_baseline_documents_are_duplicates_and_the_old_copy_is_kept(runs):
    manifest = json.loads((runs / "update" / "manifest.json").read_text())
    cross = manifest["baseline"]["cross_run"]
    assert cross["exact_duplicates"] == N_COPIES and cross["keep"] == "old"
    new = _docs(runs / "update")
    flagged = new.filter(new.column("exact_dup_in_baseline"))
    assert flagged.num_rows == N_COPIES
    assert all(i.startswith("copy-") for i in flagged.column("id").to_pylist())
    assert not any(flagged.column("exact_dup_keep").to_pylist())
    assert all(n >= 2 for n in flagged.column("exact_dup_count").to_pylist())
    rest = new.filter(pa.compute.invert(new.column("exact_dup_in_baseline")))
    assert rest.num_rows == new.num_rows - N_COPIES
    assert manifest["flags"]["exact_dup_in_baseline"]["true"] == N_COPIES
    # MinHash was fitted over the new and the baseline's documents: exact and edited copies are near-duplicates of
    # the baseline's originals, and the originals are kept
    planted = new.filter(pa.compute.match_substring_regex(new.column("id"), "^(copy|near)-"))
    assert planted.num_rows == N_COPIES + N_NEAR
    assert all(planted.column("minhash_in_baseline").to_pylist())
    assert not any(planted.column("minhash_keep").to_pylist())
    near = planted.filter(pa.compute.starts_with(planted.column("id"), "near-"))
    assert not any(near.column("exact_dup_in_baseline").to_pylist())  # edited: not exact copies
    assert cross["near_duplicates"] == int(sum(new.column("minhash_in_baseline").to_pylist()))
    assert cross["near_duplicates"] >= N_COPIES + N_NEAR
    assert "minhash" not in manifest["baseline"]["fits_reused"]  # refitted over both runs' documents
    # ... from the baseline fit's band rows: only the new documents were hashed
    fit = manifest["stage_info"]["minhash"]["fit"]
    assert fit["baseline_documents_from_bands"] == _docs(runs / "base").num_rows
    assert fit["documents"] == fit["baseline_documents_from_bands"] + new.num_rows


def test_semantic_duplicates_of_baseline_documents_are_found_in_their_clusters(runs, tiny_corpus):
    base, update = _docs(runs / "base"), _docs(runs / "update")
    cross = json.loads((runs / "update" / "manifest.json").read_text())["baseline"]["cross_run"]
    assert cross["semantic_duplicates"]["keep"] == "old"
    old_key = dict(
        zip(base.column("id").to_pylist(), doc_key_hex(base.column("source_file"), base.column("source_index")))
    )
    news = [r["id"] for r in _news(tiny_corpus)]
    original = {f"copy-{i}": news[i] for i in range(N_COPIES)} | {
        f"near-{i}": news[N_COPIES + i] for i in range(N_NEAR)
    }
    original["para-0"] = news[N_COPIES + N_NEAR]
    rows = {r["id"]: r for r in update.to_pylist()}
    for new_id, old_id in original.items():  # exact copies and copies with two words edited: their original found
        row = rows[new_id]
        assert row["semdedup_in_baseline"] and not row["semdedup_keep"], new_id
        assert row["semdedup_baseline_of"] == old_key[old_id], new_id
        assert row["semdedup_max_sim"] >= 0.95
    assert rows["para-0"]["semdedup_max_sim"] < 0.9995  # a near-paraphrase, not an identical embedding
    # the Wikipedia articles are new: none is a semantic duplicate of a tweet or a news article
    others = [r for r in rows.values() if r["id"] not in original]
    assert others and not any(r["semdedup_in_baseline"] or r["semdedup_baseline_of"] for r in others)
    assert (
        cross["semantic_duplicates"]["found"]
        == N_COPIES + N_NEAR + 1
        == sum(update.column("semdedup_in_baseline").to_pylist())
    )


def test_keep_both_flags_semantic_duplicates_without_changing_keep(runs, tmp_path, monkeypatch):
    monkeypatch.setattr("dq_ray.pipeline.baseline.SEARCH_ROWS", 4)  # many chunks of clusters: the same answer
    update = tmp_path / "update"
    shutil.copytree(runs / "update", update)
    marked = _docs(update)
    for path in (update / "docs").glob("*.parquet"):  # as the pipeline left docs/, before the search
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["semdedup_in_baseline", "semdedup_baseline_of"]), path)
    base = open_baseline(str(runs / "base"))
    bp = BaselinePlan(base, BaselineOptions(str(runs / "base"), keep="both"), fits=["semdedup"])
    out = mark_cross_run_semantic_duplicates(bp, RunDir(str(update)))
    again = _docs(update)
    assert out["found"] == N_COPIES + N_NEAR + 1 and out["keep"] == "both"
    assert again.column("semdedup_in_baseline").equals(marked.column("semdedup_in_baseline"))
    assert again.column("semdedup_baseline_of").equals(marked.column("semdedup_baseline_of"))
    assert again.column("semdedup_keep").equals(marked.column("semdedup_keep"))  # not changed by `both`
    assert mark_cross_run_semantic_duplicates(bp, RunDir(str(update))) == out  # idempotent


def test_select_reads_the_update_and_its_baseline_as_one_corpus(runs, tmp_path):
    update, base = runs / "update", runs / "base"
    manifest = json.loads((update / "manifest.json").read_text())
    assert len(view_files(RunDir(str(update)))) > len(view_files(RunDir(str(base))))
    n_base, n_new = _docs(base).num_rows, _docs(update).num_rows
    assert manifest["baseline"]["view"] == {"baseline_rows": n_base, "rows": n_base + n_new}
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"rules": [{"kind": "filter", "column": "exact_dup_keep", "op": "is_true"}]}))
    out = tmp_path / "sel"
    args = ["select", str(update), "--policy", str(policy), "--output", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    selected = pads.dataset(str(out / "selected"), format="parquet").to_table()
    kept_old = sum(_docs(base).column("exact_dup_keep").to_pylist())
    kept_new = sum(_docs(update).column("exact_dup_keep").to_pylist())
    assert selected.num_rows == kept_old + kept_new
    sources = set(selected.column("source_file").to_pylist())
    assert any("news" in s for s in sources) and any("wikipedia" in s for s in sources)
    ids = selected.column("id").to_pylist()
    assert not any(i.startswith("copy-") for i in ids)  # the baseline's copies are kept, not the new exact copies
    assert sum(i.startswith("near-") for i in ids) == N_NEAR  # near copies: exact_dup_keep is about exact copies
    assert "text" in selected.column_names and selected.column("text").null_count == 0


def test_mismatched_baseline_is_refused_before_ray_with_the_differences(runs, tmp_path):
    stages = [*_with(embed={"backend": "onnx", "max_seq_length": 32}), {"name": "lang"}]
    cfg = _write_config(tmp_path / "c.yaml", [runs / "new"], tmp_path / "out", stages)
    args = ["run", str(cfg), "--no-progress", "--baseline", str(runs / "base")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "embed: params.max_seq_length: 64 in the baseline, 32 now" in result.output
    assert "lang: not in the baseline" in result.output
    assert "--recompute-changed" in result.output
    assert not (tmp_path / "out").exists()  # refused before the run directory (or Ray) was touched


def test_a_baseline_that_is_not_a_finished_run_is_refused(runs, tmp_path):
    failed = tmp_path / "failed"
    shutil.copytree(runs / "base", failed)
    m = json.loads((failed / "manifest.json").read_text())
    (failed / "manifest.json").write_text(json.dumps({**m, "status": "failed"}))
    with pytest.raises(BaselineError, match="not a finished run"):
        open_baseline(str(failed))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaselineError, match="not a dq-ray run"):
        open_baseline(str(tmp_path / "empty"))
    cfg = _write_config(tmp_path / "c.yaml", [runs / "new"], tmp_path / "out")
    result = CliRunner().invoke(main, ["run", str(cfg), "--no-progress", "--baseline", str(failed)])
    assert result.exit_code != 0 and "not a finished run" in result.output
    # the baseline itself as the output: refused, never overwritten
    cfg = _write_config(tmp_path / "d.yaml", [runs / "new"], runs / "base")
    result = CliRunner().invoke(main, ["run", str(cfg), "--overwrite", "--baseline", str(runs / "base")])
    assert result.exit_code != 0 and "is the baseline run" in result.output
    assert (runs / "base" / "docs").exists()


def _plan(runs, tmp_path, stages, recompute=True):
    cfg = load_config(_write_config(tmp_path / "p.yaml", [runs / "new"], tmp_path / "o", stages))
    built = [sc.build() for sc in cfg.stages]
    opts = BaselineOptions(str(runs / "base"), recompute_changed=recompute)
    return plan_baseline(redact(cfg.to_dict()), built, opts, str(tmp_path / "o"))


def test_recompute_changed_recomputes_the_changed_stages_and_what_reads_them(runs, tmp_path):
    topics = _with(topics={"n_topics": 5, "n_coarse": 2})
    plan = _plan(runs, tmp_path, topics)
    assert plan.recomputed == ["topics"] and plan.fits == ["density", "semdedup", "map"]
    assert "topics" not in plan.cached and "density" in plan.cached
    with pytest.raises(BaselineError) as err:
        _plan(runs, tmp_path, topics, recompute=False)
    assert err.value.differences == {"topics": ["params.n_topics: 4 in the baseline, 5 now"]}
    embed = _with(embed={"backend": "onnx", "max_seq_length": 32})
    plan = _plan(runs, tmp_path, embed)  # every stage downstream of the embeddings is computed afresh
    assert plan.recomputed == ["embed", "density", "semdedup", "topics", "map"] and plan.fits == []
    assert plan.cached == ["heuristics"]
    # execution-only params (threads) are no difference
    threads = _with(embed={"backend": "onnx", "max_seq_length": 64, "num_threads": 1})
    assert (
        stage_differences(
            open_baseline(str(runs / "base")),
            redact(load_config(_write_config(tmp_path / "t.yaml", [runs / "new"], tmp_path / "o", threads)).to_dict())[
                "stages"
            ],
        )
        == {}
    )


def test_split_cached_answers_known_texts_only(tmp_path):
    batch = add_text_hash(pa.table({"text": ["Hello, World!", "something new", "hello world"], "n": [1, 2, 3]}))
    known = batch.slice(0, 1).select([TEXT_HASH]).append_column("score", pa.array([0.5], pa.float32()))
    write_cache(str(tmp_path / "c.arrow"), known)
    todo, hits = split_cached(batch, str(tmp_path / "c.arrow"))
    assert todo.column("n").to_pylist() == [2]
    # normalisation folds case and punctuation: "hello world" is the cached text too
    assert hits.column("n").to_pylist() == [1, 3] and hits.column("score").to_pylist() == [0.5, 0.5]
