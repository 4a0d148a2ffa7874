"""The ``lang`` stage on real text in five languages (from installed packages), and on bad input."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from dq_ray.demo.languages import language_docs
from dq_ray.errors import ConfigError
from dq_ray.stages.lang import Lang, LangParams

SETS = [("wikipedia", "en"), ("wikipedia", "es"), ("wikipedia", "fr"), ("speeches", "de"), ("speeches", "nl")]


@pytest.fixture(scope="module")
def stage():
    s = Lang()
    s.ensure_setup()
    return s


@pytest.mark.parametrize("source,lang", SETS)
def test_accuracy_on_real_documents(stage, source, lang):
    docs = [d for d in language_docs(source, lang) if len(d["text"]) >= 100]
    docs = random.Random(0).sample(docs, 60)
    out = stage.process(pa.table({"text": [d["text"] for d in docs]}))
    got = out.column("lang").to_pylist()
    accuracy = sum(g == lang for g in got) / len(got)
    assert accuracy >= 0.95, (source, lang, accuracy)
    assert out.column("lang_heur_mismatch").to_pylist() == [g != "en" for g in got]
    top = out.column("lang_top").to_pylist()
    assert all(len(t) == 3 and t[0]["lang"] == g for t, g in zip(top, got))
    scores = out.column("lang_score").to_pylist()
    assert all(0 < s <= 1 for s in scores)


def test_bad_input_gets_a_value_or_a_null_with_a_reason(stage):
    wiki_fr = language_docs("wikipedia", "fr")[0]["text"]
    wiki_en = next(d["text"] for d in language_docs("wikipedia", "en") if len(d["text"]) > 400)
    texts = [None, "", "   \n", "12345 678 -- 42 %", "Bonjour", wiki_fr * 200, wiki_en[:300] + " " + wiki_fr[:300]]
    out = stage.process(pa.table({"text": pa.array(texts, pa.string())})).to_pylist()
    assert [r["lang_reason"] for r in out[:4]] == ["no text", "empty", "empty", "no letters"]
    assert all(r["lang"] is None and r["lang_score"] is None and r["lang_top"] == [] for r in out[:4])
    assert all(r["lang_heur_mismatch"] is None for r in out[:4])
    assert out[4]["lang"] is not None and "short" in out[4]["lang_reason"]
    assert out[5]["lang"] == "fr" and out[5]["lang_reason"] == "capped"
    mixed = out[6]
    assert {t["lang"] for t in mixed["lang_top"][:2]} == {"en", "fr"} and "mixed" in mixed["lang_reason"]


def test_languages_restrict_the_answers_and_min_score_abstains():
    stage = Lang(LangParams(languages=("en", "de"), min_score=0.99))
    stage.ensure_setup()
    fr = language_docs("wikipedia", "fr")[:20]
    out = stage.process(pa.table({"text": [d["text"] for d in fr]})).to_pylist()
    assert all(r["lang"] in ("en", "de", None) for r in out)
    assert all(t["lang"] in ("en", "de") for r in out for t in r["lang_top"])
    # the full model is not changed by a restricted copy
    assert Lang()(pa.table({"text": [fr[0]["text"]]})).column("lang").to_pylist() == ["fr"]


def test_params_are_validated():
    with pytest.raises(ConfigError, match="unknown code"):
        LangParams(languages=("en", "klingon"))
    with pytest.raises(ConfigError):
        LangParams(max_chars=0)
