import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.config import ConfigError, load_config
from dq_ray.select import (
    DensitySampleRule,
    FilterRule,
    Policy,
    TopFractionRule,
    TopicQuotaRule,
    evaluate,
    parse_policy,
)


@pytest.fixture(scope="module")
def signals() -> pa.Table:
    rng = np.random.default_rng(7)
    n = 2000
    score = rng.random(n)
    score[rng.random(n) < 0.05] = np.nan
    flag = rng.random(n) < 0.8
    return pa.table(
        {
            "id": [f"d{i}" for i in range(n)],
            "source_file": [f"file{i % 3}.jsonl" for i in range(n)],
            "source_index": np.arange(n) // 3,
            "heur_c4_pass": pa.array([None if i % 50 == 0 else bool(f) for i, f in enumerate(flag)], pa.bool_()),
            "words": rng.integers(0, 500, n),
            "askllm_score": pa.array(score, pa.float32(), from_pandas=True),
            "density_weight": np.where(np.arange(n) % 2 == 0, 1.0, 4.0).astype(np.float32),
            "topic_id": rng.choice(10, n, p=[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]).astype(np.int32),
            "lang": rng.choice(["en", "fr", "de"], n),
        }
    )


def _policy(*rules, seed=0) -> Policy:
    return Policy(rules=tuple(rules), seed=seed)


@pytest.mark.parametrize(
    "op,value,expected",
    [
        ("is_true", None, lambda t: np.asarray(t["heur_c4_pass"].fill_null(False))),
        ("is_false", None, lambda t: ~np.asarray(t["heur_c4_pass"].fill_null(True))),
        ("not_null", None, lambda t: np.asarray(t["heur_c4_pass"].is_valid())),
        ("is_null", None, lambda t: ~np.asarray(t["heur_c4_pass"].is_valid())),
    ],
)
def test_filter_flags(signals, op, value, expected):
    ev = evaluate(_policy(FilterRule("heur_c4_pass", op, value)), signals)
    assert np.array_equal(ev.kept, expected(signals))


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_filter_comparisons(signals, op):
    ev = evaluate(_policy(FilterRule("words", op, 250)), signals)
    w = signals["words"].to_numpy()
    ref = {"==": w == 250, "!=": w != 250, "<": w < 250, "<=": w <= 250, ">": w > 250, ">=": w >= 250}[op]
    assert np.array_equal(ev.kept, ref)
    # nulls never pass a comparison
    ev = evaluate(_policy(FilterRule("askllm_score", op, 0.5)), signals)
    assert not ev.kept[np.isnan(signals["askllm_score"].to_numpy(zero_copy_only=False))].any()


def test_filter_membership(signals):
    lang = np.array(signals["lang"].to_pylist())
    assert np.array_equal(evaluate(_policy(FilterRule("lang", "in", ["en", "de"])), signals).kept, lang != "fr")
    assert np.array_equal(evaluate(_policy(FilterRule("lang", "not_in", ["en"])), signals).kept, lang != "en")


def test_top_fraction_keeps_the_highest_of_what_is_left(signals):
    ev = evaluate(_policy(FilterRule("heur_c4_pass", "is_true"), TopFractionRule("askllm_score", 0.3)), signals)
    first, second = ev.steps
    assert second.rows_in == first.kept and second.kept == round(0.3 * first.kept)
    score = signals["askllm_score"].to_numpy(zero_copy_only=False)
    kept, dropped = score[ev.kept], score[first.mask & ~ev.kept]
    assert not np.isnan(kept).any() and kept.min() >= np.nanmax(dropped)
    low = evaluate(_policy(TopFractionRule("askllm_score", 0.1, ascending=True)), signals)
    assert np.nanmax(score[low.kept]) <= np.nanmin(score[~low.kept])


def test_perplexity_rules_keep_the_lowest_or_drop_both_tails(signals):
    from dq_ray.select.policy import TrimTailsRule

    n = signals.num_rows
    ppl = np.exp(np.random.default_rng(3).normal(3.0, 1.0, n))
    ppl[::40] = np.nan  # documents without a perplexity (perplexity off, empty text) are never kept
    table = signals.append_column("askllm_ppl", pa.array(ppl, pa.float32(), from_pandas=True))
    policy = parse_policy({"rules": [{"kind": "trim_tails", "column": "askllm_ppl", "low": 0.05, "high": 0.1}]})
    ev = evaluate(policy, table)
    assert isinstance(policy.rules[0], TrimTailsRule) and ev.steps[0].label.startswith("drop the lowest 0.05")
    valid = ~np.isnan(ppl)
    assert ev.kept.sum() == valid.sum() - round(0.05 * n) - round(0.1 * n)
    kept, dropped = ppl[ev.kept], ppl[valid & ~ev.kept]
    low, high = dropped[dropped < np.median(kept)], dropped[dropped > np.median(kept)]
    assert len(low) == round(0.05 * n) and len(high) == round(0.1 * n)
    assert low.max() <= kept.min() and kept.max() <= high.min()  # the middle is kept, both tails go
    keep_lowest = {"kind": "top_fraction", "column": "askllm_ppl", "fraction": 0.2, "ascending": True}
    lowest = evaluate(parse_policy({"rules": [keep_lowest]}), table)  # keep the lowest perplexity
    assert lowest.kept.sum() == round(0.2 * n) and ppl[lowest.kept].max() <= np.nanmin(ppl[valid & ~lowest.kept])
    with pytest.raises(ConfigError, match=r"low \+ high < 1"):
        parse_policy({"rules": [{"kind": "trim_tails", "column": "askllm_ppl", "low": 0.6, "high": 0.5}]})


def test_density_sample_size_and_proportionality(signals):
    ev = evaluate(_policy(DensitySampleRule(size=300)), signals)
    assert ev.kept.sum() == 300
    assert evaluate(_policy(DensitySampleRule(fraction=0.25)), signals).kept.sum() == 500
    # weight 4 rows are drawn about 4x as often as weight 1 rows at a small sampling rate
    w = signals["density_weight"].to_numpy()
    rates = np.mean([evaluate(_policy(DensitySampleRule(size=100), seed=s), signals).kept for s in range(20)], axis=0)
    ratio = rates[w == 4].mean() / rates[w == 1].mean()
    assert 3.0 <= ratio <= 5.0, ratio
    # zero or null weights are never drawn
    zero = signals.set_column(6, "density_weight", pa.array(np.where(w == 4, 0.0, 1.0), pa.float32()))
    assert not evaluate(_policy(DensitySampleRule(fraction=1.0)), zero).kept[w == 4].any()


def test_topic_quota_caps_every_topic(signals):
    topics = signals["topic_id"].to_numpy()
    ev = evaluate(_policy(TopicQuotaRule(max_per_topic=100)), signals)
    counts = np.bincount(topics[ev.kept], minlength=10)
    assert counts.max() == 100 and all(c == min(100, n) for c, n in zip(counts, np.bincount(topics, minlength=10)))
    share = evaluate(_policy(FilterRule("words", ">", 100), TopicQuotaRule(max_share=0.1)), signals)
    cap = int(0.1 * share.steps[0].kept)
    assert np.bincount(topics[share.kept]).max() <= cap
    # order_by keeps each capped topic's highest scores
    ordered = evaluate(_policy(TopicQuotaRule(max_per_topic=50, order_by="askllm_score")), signals)
    score = signals["askllm_score"].to_numpy(zero_copy_only=False)
    for t in range(3):  # the three largest topics are capped
        in_t = topics == t
        assert np.nanmin(score[in_t & ordered.kept]) >= np.nanmax(score[in_t & ~ordered.kept])


def test_deterministic_for_a_seed_and_independent_of_row_order(signals):
    policy = _policy(
        FilterRule("heur_c4_pass", "is_true"), DensitySampleRule(fraction=0.5), TopicQuotaRule(max_share=0.2)
    )
    a, b = evaluate(policy, signals), evaluate(policy, signals.to_pandas())
    assert np.array_equal(a.kept, b.kept) and np.array_equal(a.removed_by, b.removed_by)
    perm = np.random.default_rng(1).permutation(signals.num_rows)
    c = evaluate(policy, signals.take(pa.array(perm)))
    assert np.array_equal(c.kept, a.kept[perm])
    other = evaluate(Policy(rules=policy.rules, seed=1), signals)
    assert not np.array_equal(other.kept, a.kept)
    # removed_by names the rule that removed each row; steps count in order
    assert all(s.rows_in == (a.steps[i - 1].kept if i else signals.num_rows) for i, s in enumerate(a.steps))
    for i, s in enumerate(a.steps):
        assert (a.removed_by == i).sum() == s.removed


def test_policy_parsing_errors():
    with pytest.raises(ConfigError, match="valid kinds: filter, top_fraction, trim_tails, density_sample, topic_quota"):
        parse_policy({"rules": [{"kind": "sample"}]})
    with pytest.raises(ConfigError, match="valid keys: column, op, value, name"):
        parse_policy({"rules": [{"kind": "filter", "column": "a", "op": "is_true", "treshold": 1}]})
    with pytest.raises(ConfigError, match="op '=~' is not one of"):
        parse_policy({"rules": [{"kind": "filter", "column": "a", "op": "=~", "value": 1}]})
    with pytest.raises(ConfigError, match="exactly one of size or fraction"):
        parse_policy({"rules": [{"kind": "density_sample", "size": 10, "fraction": 0.5}]})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_policy({"rules": [], "sed": 1})
    p = parse_policy({"seed": 3, "rules": [{"kind": "top_fraction", "column": "askllm_pred", "fraction": 0.5}]})
    assert p.seed == 3 and p.rules == (TopFractionRule("askllm_pred", 0.5),)
    assert parse_policy(p.to_dict()) == p


def test_job_config_selection_is_validated_before_ray(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    base = {"input": {"paths": [str(tmp_path / "in.jsonl")]}, "stages": [{"name": "exact_dedup"}]}
    ok = load_config(
        {**base, "selection": {"rules": [{"kind": "filter", "column": "exact_dup_keep", "op": "is_true"}]}}
    )
    assert ok.selection.rules[0].column == "exact_dup_keep"
    bad = {**base, "selection": {"rules": [{"kind": "top_fraction", "column": "askllm_score", "fraction": 0.5}]}}
    with pytest.raises(
        ConfigError, match=r"\['askllm_score'\] are not produced by the run; available: .*exact_dup_keep"
    ):
        load_config(bad)


# -- end to end: dq-ray run (with a selection) and dq-ray select, through real Ray -----------------------------

POLICY = {
    "seed": 0,
    "rules": [
        {"kind": "filter", "column": "exact_dup_keep", "op": "is_true"},
        {"kind": "filter", "column": "heur_n_words", "op": ">=", "value": 15},
        {"kind": "density_sample", "fraction": 0.8},
        {"kind": "topic_quota", "max_share": 0.3},
    ],
}


@pytest.fixture(scope="module")
def scored_run(tiny_corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("sel") / "run"
    cfg = {
        "input": {"paths": [str(tiny_corpus)], "keep_fields": ["source", "date"]},
        "output": {"path": str(out)},
        "stages": [
            {"name": "heuristics", "params": {"filters": ["gopher_quality"]}},
            {"name": "embed", "params": {"backend": "onnx"}},
            {"name": "exact_dedup"},
            {"name": "density"},
            {"name": "topics", "params": {"n_topics": 5, "n_coarse": 2}},
            {"name": "map", "params": {"method": "pca"}},
        ],
        "selection": POLICY,
    }
    path = out.parent / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def _inputs(tiny_corpus) -> dict:
    from dq_ray.config import InputConfig
    from dq_ray.io import ShardResult, discover_inputs, read_shard

    cfg = InputConfig(paths=(str(tiny_corpus),))
    rows = [r for f in discover_inputs(cfg) for t in read_shard(f, cfg, ShardResult(f.path)) for r in t.to_pylist()]
    return {(r["source_file"], r["source_index"]): r["text"] for r in rows}


def test_run_applies_the_config_policy(scored_run, tiny_corpus):
    run, output = scored_run
    docs = pq.read_table(run / "docs")
    ev = evaluate(parse_policy(POLICY), docs)
    selected = pq.read_table(run / "selected")
    assert "selected" in output and selected.num_rows == ev.kept.sum() > 0
    kept_keys = set(zip(*(docs.filter(pa.array(ev.kept))[c].to_pylist() for c in ("source_file", "source_index"))))
    # source_file is written relative to the input root by default (--source-paths)
    got_keys = {
        (str(tiny_corpus / f), i)
        for f, i in zip(selected["source_file"].to_pylist(), selected["source_index"].to_pylist())
    }
    assert got_keys == kept_keys
    # the original fields, text included, joined back from the inputs; the signals beside them
    texts = _inputs(tiny_corpus)
    for r in selected.to_pylist():
        assert r["text"] == texts[(str(tiny_corpus / r["source_file"]), r["source_index"])]
        assert r["exact_dup_keep"] and r["heur_n_words"] >= 15
    assert {"id", "text", "source", "date", "topic_id", "map_x", "density_weight"} <= set(selected.column_names)
    assert "embedding" not in selected.column_names
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["selection"]["selected"] == selected.num_rows
    assert [r["kept"] for r in manifest["selection"]["rules"]] == [s.kept for s in ev.steps]
    assert (run / "report.md").is_file() and (run / "report.html").is_file()


def test_cli_select_with_another_policy_and_seed(scored_run, tmp_path):
    run, _ = scored_run
    policy = {"rules": [{"kind": "density_sample", "size": 30}, {"kind": "topic_quota", "max_per_topic": 8}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        args = ["select", str(run), "--policy", str(tmp_path / "p.yaml"), "--output", str(tmp_path / name)]
        result = CliRunner().invoke(main, [*args, "--seed", str(seed)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        t = pq.read_table(tmp_path / name / "selected")
        outs.append(sorted(t["id"].to_pylist()))
        assert t.num_rows <= 30 and max(np.bincount(t["topic_id"].to_numpy())) <= 8
        summary = json.loads((tmp_path / name / "selection.json").read_text())
        assert summary["policy"]["seed"] == seed and summary["selected"] == t.num_rows
    assert outs[0] == outs[1] and outs[0] != outs[2]
    # the run's own manifest is untouched by a selection written elsewhere
    assert json.loads((run / "manifest.json").read_text())["selection"]["policy"]["seed"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [{"kind": "filter", "column": "nope", "op": "is_true"}]}))
    result = CliRunner().invoke(main, ["select", str(run), "--policy", str(bad)])
    assert result.exit_code != 0 and "nope" in result.output and "available" in result.output
