import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dq_ray.select import DensitySampleRule, FilterRule, Policy, TopicQuotaRule, evaluate
from dq_ray.select.report import coverage, distribution, quality_summary, write_report

N = 400


@pytest.fixture(scope="module")
def signals() -> pa.Table:
    rng = np.random.default_rng(3)
    dates = [None if i % 4 else f"20{10 + i % 10}-0{1 + i % 9}-15" for i in range(N)]
    return pa.table(
        {
            "id": [f"d{i}" for i in range(N)],
            "source_file": ["a.jsonl"] * N,
            "source_index": np.arange(N),
            "source": [None if i % 10 == 0 else ("" if i % 10 == 1 else "wiki") for i in range(N)],
            "date": dates,
            "heur_gopher_quality_pass": rng.random(N) < 0.7,
            "heur_gopher_repetition_pass": rng.random(N) < 0.9,
            "heur_dup_line_frac": rng.random(N).astype(np.float32) * 0.2,
            "exact_dup_keep": rng.random(N) < 0.95,
            "minhash_keep": rng.random(N) < 0.9,
            "semdedup_keep": rng.random(N) < 0.85,
            "askllm_score": rng.random(N).astype(np.float32),
            "density_weight": rng.uniform(0.2, 3, N).astype(np.float32),
            "topic_id": rng.choice(6, N, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]).astype(np.int32),
        }
    )


MANIFEST = {
    "started_at": "2026-01-01T00:00:00+00:00",
    "counts": {"input": N + 5},
    "config": {"input": {"keep_fields": ["source", "date"]}},
}
REJECTED = pa.table({"reason": ["malformed_json"] * 3 + ["empty_text"] * 2})


def test_quality_summary_numbers(signals):
    q = quality_summary(MANIFEST, signals, REJECTED)
    e = q["error_rate"]
    assert e["input_records"] == N + 5 and e["rejected"] == 5
    assert e["rejected_by_reason"] == {"malformed_json": 3, "empty_text": 2}
    fails = int((~signals["heur_gopher_quality_pass"].to_numpy(zero_copy_only=False)).sum())
    assert e["heuristic_failures"]["heur_gopher_quality_pass"]["failed"] == fails
    c = q["completeness"]
    assert c["fill_rates"]["text"] == round(N / (N + 5), 6)
    assert c["fill_rates"]["source"] == round(0.8 * N / (N + 5), 6)  # null and "" are not filled
    filled = [
        (s or "") != "" and d is not None for s, d in zip(signals["source"].to_pylist(), signals["date"].to_pylist())
    ]
    assert c["complete_records"] == sum(filled)
    for kind, col in (("exact", "exact_dup_keep"), ("near", "minhash_keep"), ("semantic", "semdedup_keep")):
        assert q["duplicates"][kind]["not_kept"] == int((~signals[col].to_numpy(zero_copy_only=False)).sum())
    assert q["coherence"]["askllm_score"]["count"] == N
    assert q["coherence"]["repetition"]["heur_dup_line_frac"]["p50"] == pytest.approx(
        float(np.median(signals["heur_dup_line_frac"].to_numpy())), abs=1e-6
    )
    f = q["freshness"]
    assert f["field"] == "date" and f["dated_documents"] == N // 4 and f["oldest"] == "2010-01-15"
    assert f["age_days"]["count"] == N // 4 and f["age_days"]["p05"] > 0
    shares = np.bincount(signals["topic_id"].to_numpy()) / N
    assert q["topic_coverage"]["topics"] == 6
    assert q["topic_coverage"]["largest_share"] == pytest.approx(shares.max())
    assert coverage(np.zeros(10))["effective_topics"] == 1.0
    assert distribution(np.array([]))["count"] == 0


def test_report_numbers_match_the_parquet_written(signals, tmp_path):
    policy = Policy(
        rules=(
            FilterRule("heur_gopher_quality_pass", "is_true"),
            FilterRule("exact_dup_keep", "is_true"),
            DensitySampleRule(fraction=0.7),
            TopicQuotaRule(max_share=0.3),
        )
    )
    ev = evaluate(policy, signals)
    selected = tmp_path / "selected"
    selected.mkdir()
    pq.write_table(signals.filter(pa.array(ev.kept)), selected / "part-0.parquet")
    examples = {i: [{"id": "d1", "text": "an | example"}] for i in range(len(policy.rules))}
    names = {"0": "harbour tides", "1": "court cases"}  # the run's topic names (topic_label), beside the ids
    summary = write_report(
        str(tmp_path), MANIFEST, policy, signals, ev, str(selected), examples, REJECTED, topic_names=names
    )

    written = pq.read_table(selected)
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert summary["selected"] == written.num_rows
    assert f"{written.num_rows:,} of {N:,} documents selected" in md
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \| (\d+) \| (\d+) \| (\d+) \|$", md, re.M)
    assert [(int(a), int(b), int(c)) for _, _, a, b, c in rows] == [(s.rows_in, s.kept, s.removed) for s in ev.steps]
    assert int(rows[-1][3]) == written.num_rows
    # topic shares after: the report's table and summary equal the shares in the written Parquet
    topics = written["topic_id"].to_numpy()
    for t, n in zip(*np.unique(topics, return_counts=True)):
        assert summary["topics"]["after"][str(t)] == pytest.approx(n / len(topics), abs=1e-6)
        name = names.get(str(t), "")
        assert re.search(rf"^\| {t} \| {name} \| [0-9.]+% \| {100 * n / len(topics):.2f}% \|$", md, re.M)
    after = summary["scores"]["askllm_score"]["after"]
    assert after["count"] == written.num_rows
    assert after["p50"] == pytest.approx(float(np.median(written["askllm_score"].to_numpy())), abs=1e-6)
    assert summary["quality"]["error_rate"]["rejected"] == 5
    # plots: files for markdown, embedded PNG in the self-contained HTML
    assert (tmp_path / "report_files" / "rules.png").read_bytes()[:4] == b"\x89PNG"
    assert "![topics.png](report_files/topics.png)" in md
    assert html.count("data:image/png;base64,") == md.count("![")
    assert "an \\| example" in md and "an | example" in html
    assert json.loads(json.dumps(summary))["rules"][0]["rule"] == "heur_gopher_quality_pass is_true"
