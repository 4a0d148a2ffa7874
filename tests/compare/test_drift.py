"""dq-ray compare: the drift statistics on known samples, and the report between two real runs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.compare import Thresholds, compare_runs, ks_test, psi
from dq_ray.compare.drift import (
    SHIFTED,
    STABLE,
    binned_shares,
    compare_categories,
    compare_numeric,
    decile_edges,
    psi_of_shares,
)

T = Thresholds()


# -- statistics on numpy arrays ----------------------------------------------------------------------------


def test_identical_samples_are_stable():
    a = np.random.default_rng(0).normal(size=2000)
    stat, p = ks_test(a, a.copy())
    assert stat == 0.0 and p == pytest.approx(1.0)
    assert psi(a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    assert compare_numeric(a, a.copy(), T)["verdict"] == STABLE


def test_two_samples_of_one_distribution_are_stable():
    rng = np.random.default_rng(1)
    r = compare_numeric(rng.normal(size=5000), rng.normal(size=5000), T)
    assert r["verdict"] == STABLE
    assert r["psi"] < 0.05 and r["ks_stat"] < 0.05 and r["ks_pvalue"] > 0.001


def test_shifted_normal_is_shifted():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=5000), rng.normal(loc=1.0, size=5000)
    r = compare_numeric(a, b, T)
    assert r["verdict"] == SHIFTED
    # a unit shift of a normal: the largest CDF gap is 2 * Phi(0.5) - 1 = 0.383
    assert r["ks_stat"] == pytest.approx(0.383, abs=0.03) and r["ks_pvalue"] < 1e-100
    assert r["psi"] > 0.5
    assert r["b"]["p50"] - r["a"]["p50"] == pytest.approx(1.0, abs=0.1)
    # a shift too small for either statistic stays stable
    assert compare_numeric(a, rng.normal(loc=0.02, size=5000), T)["verdict"] == STABLE


def test_psi_known_answer_and_ks_of_disjoint_samples():
    a = np.arange(1000, dtype=float)
    edges = decile_edges(a)
    assert len(edges) == 9 and binned_shares(a, edges) == pytest.approx(np.full(10, 0.1))
    b = np.arange(50, dtype=float)  # every value in A's first decile
    expected = 0.9 * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert psi(a, b, eps=1e-4) == pytest.approx(expected)
    assert psi_of_shares([0.5, 0.5], [0.25, 0.75]) == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    stat, p = ks_test(np.arange(100.0), np.arange(100.0) + 1000)
    assert stat == 1.0 and p < 1e-50
    assert math.isnan(psi(a, np.zeros(0))) and compare_numeric(a, np.zeros(0), T)["verdict"] == "n/a"


def test_categories_and_thresholds():
    r = compare_categories({"en": 90, "fr": 10}, 100, {"en": 50, "de": 50}, 100, T)
    assert r["appeared"] == ["de"] and r["disappeared"] == ["fr"]
    assert r["grew"][0] == "de" and r["shrank"][0] == "en"
    assert r["tvd"] == pytest.approx(0.5) and r["verdict"] == SHIFTED
    same = compare_categories({"en": 9, "fr": 1}, 10, {"en": 90, "fr": 10}, 100, T)
    assert same["psi"] == pytest.approx(0.0) and same["verdict"] == STABLE and same["top_changes"] == []
    with pytest.raises(ValueError, match="ks_pvalue"):
        Thresholds(ks_pvalue=2.0)


# -- two real runs ----------------------------------------------------------------------------------------

STAGES = [{"name": "heuristics"}, {"name": "exact_dedup"}, {"name": "lang"}]


def _run(ray_local, inputs: list[str], out) -> None:
    cfg = {"input": {"paths": inputs, "keep_fields": ["source"]}, "output": {"path": str(out)}, "stages": STAGES}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tiny_corpus, ray_local, tmp_path_factory):
    """A: the whole tiny corpus; B: only its tweets (short documents, no broken records, no duplicates)."""
    base = tmp_path_factory.mktemp("compare")
    _run(ray_local, [str(tiny_corpus)], base / "a")
    _run(ray_local, [str(tiny_corpus / "tweets.jsonl.zst")], base / "b")
    return base / "a", base / "b"


def test_shifted_run_is_flagged(runs, tmp_path):
    a, b = runs
    result = CliRunner().invoke(main, ["compare", str(a), str(b)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "verdict: DRIFT" in result.output
    out = b / "compare-a"  # the default: RUN_B/compare-<name of A>
    for name in ("compare.md", "compare.html", "compare.json"):
        assert (out / name).is_file(), name
    s = json.loads((out / "compare.json").read_text())
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (a, b))
    # the planted shift: tweets are short
    shifted = s["verdict"]["shifted"]
    assert s["verdict"]["status"] == "drift"
    assert "heur_n_words" in shifted["signals"] and "heur_n_chars" in shifted["signals"]
    words = s["signals"]["heur_n_words"]
    assert words["b"]["p50"] < words["a"]["p50"] and words["psi"] >= T.psi
    # the verdict lists exactly the columns whose verdict is shifted
    for kind in ("signals", "flags", "categories"):
        assert shifted[kind] == [c for c, v in s[kind].items() if v["verdict"] == SHIFTED]
    # numbers agree with the runs' manifests
    assert s["run_a"]["documents"] == ma["counts"]["accepted"] and s["run_b"]["documents"] == mb["counts"]["accepted"]
    assert words["a"]["count"] == ma["counts"]["accepted"]
    for flag, counts in ma["flags"].items():
        assert s["flags"][flag]["a"] == pytest.approx(counts["true"] / (counts["true"] + counts["false"]))
        f = mb["flags"][flag]
        assert s["flags"][flag]["b"] == pytest.approx(f["true"] / (f["true"] + f["false"]))
    rej = s["rejections"]
    assert rej["input_records"] == {"a": ma["counts"]["input"], "b": mb["counts"]["input"]}
    assert rej["total"]["a_count"] == ma["counts"]["rejected"] > 0 and rej["total"]["b_count"] == 0
    assert {r: d["a_count"] for r, d in rej["by_reason"].items()} == ma["counts"]["rejected_by_reason"]
    dup = s["duplicates"]["exact"]
    assert dup["a_count"] == ma["flags"]["exact_dup_keep"]["false"] > 0 and dup["b_count"] == 0
    src = s["categories"]["source"]
    assert sum(src["a"].values()) == pytest.approx(1.0) and set(src["b"]) == {"tweets"}
    assert src["verdict"] == SHIFTED and "tweets" in src["grew"]
    assert "lang" in s["categories"] and set(s["nulls"]) >= {"heur_n_words", "lang", "source"}
    md = (out / "compare.md").read_text()
    html = (out / "compare.html").read_text()
    assert md.startswith("# dq-ray drift report") and "## Numeric signals" in md and "## Language mix" in md
    assert "<h1>dq-ray drift report</h1>" in html and "heur_n_words" in html and "data:image/png;base64," in html
    assert (out / "compare_files" / "dist_heur_n_words.png").is_file()


def test_a_run_against_itself_is_stable(runs, tmp_path):
    a, _ = runs
    result = compare_runs(str(a), str(a), output=str(tmp_path / "aa"))
    s = result.summary
    assert s["verdict"]["status"] == "stable" and s["verdict"]["shifted_count"] == 0
    assert all(
        v["psi"] == pytest.approx(0.0) and v["ks_stat"] == 0.0 for v in s["signals"].values() if v["psi"] is not None
    )
    assert all(v["diff"] == 0 for v in s["flags"].values())
    assert json.loads((tmp_path / "aa" / "compare.json").read_text())["verdict"]["status"] == "stable"
    assert "STABLE" in (tmp_path / "aa" / "compare.md").read_text()


def test_refuses_what_is_not_a_finished_run(runs, tmp_path):
    a, _ = runs
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    result = CliRunner().invoke(main, ["compare", str(a), str(other)])
    assert result.exit_code == 1 and "is not a dq-ray run directory" in result.output
    unfinished = tmp_path / "unfinished"
    shutil.copytree(a, unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    result = CliRunner().invoke(main, ["compare", str(unfinished), str(a)])
    assert result.exit_code == 1 and "is not a finished run" in result.output and "'running'" in result.output
