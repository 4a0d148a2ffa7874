"""``redact_pii``: a run with the ``lang`` and ``pii`` stages, then a selection that writes redacted text to
``selected/`` and reports languages and personal data.

Real documents with planted personal data; the selected text holds placeholders where the values were and is
byte for byte the original everywhere else; no value reaches the manifest, selection.json or the report (whose
examples of removed documents are redacted)."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dq_ray.cli import main
from dq_ray.demo.languages import language_docs
from dq_ray.errors import ConfigError
from dq_ray.select import parse_policy
from dq_ray.select.policy import Policy, check_columns
from dq_ray.stages.pii import PLACEHOLDERS
from tests.helpers import wiki_texts, write_jsonl

VALUES = {
    "email": "maria.gonzalez@example.org",
    "phone": "+44 20 7946 0958",
    "ip": "192.168.10.24",
    "credit_card": "4111 1111 1111 1111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "national_id": "078-05-1120",
}

#: offensive sentences appended to two documents without personal data (the report's offensive-language section)
SWEARING = {1: "What a fucking shitty mess, you stupid idiots.", 3: "Shut up, you fucking moron, this is shit."}


@pytest.fixture(scope="module")
def redacted_run(ray_local, tmp_path_factory):
    """40 real English Wikipedia leads, every other one with one planted value near its start, and 4 French and
    Spanish leads; the policy drops the documents holding an e-mail address and redacts the rest."""
    root = tmp_path_factory.mktemp("redact")
    rng = random.Random(0)
    kinds = list(VALUES)
    docs, truth = [], {}
    for i, text in enumerate(wiki_texts(40)):
        if i % 2 == 0:
            kind = kinds[(i // 2) % len(kinds)]
            cut = text.index(". ") + 2 if 0 < text.find(". ") < 150 else 0
            text = f"{text[:cut]}Contact: {VALUES[kind]} {text[cut:]}"
            truth[f"w{i}"] = (kind, cut + len("Contact: "), cut + len("Contact: ") + len(VALUES[kind]))
        elif i in SWEARING:
            text = f"{text} {SWEARING[i]}"
        docs.append({"id": f"w{i}", "text": text})
    for lang in ("fr", "es"):
        docs += [{"id": f"{lang}{k}", "text": d["text"]} for k, d in enumerate(language_docs("wikipedia", lang)[:2])]
    rng.shuffle(docs)
    write_jsonl(root / "docs.jsonl", docs)
    cfg = {
        "input": {"paths": [str(root / "docs.jsonl")]},
        "output": {"path": str(root / "run")},
        "stages": [{"name": "lang"}, {"name": "pii"}, {"name": "offensive"}],
        "selection": {
            "rules": [{"kind": "filter", "column": "pii_kinds", "op": "not_in", "value": ["email"]}],
            "redact_pii": True,
        },
    }
    (root / "job.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(root / "job.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run", {d["id"]: d["text"] for d in docs}, truth, result.output


def test_selected_text_is_redacted_and_unchanged_elsewhere(redacted_run):
    run, originals, truth, _ = redacted_run
    selected = pq.read_table(run / "selected").to_pylist()
    emails = [i for i, (kind, _, _) in truth.items() if kind == "email"]
    assert len(selected) == len(originals) - len(emails) == 40
    for row in selected:
        original, text = originals[row["id"]], row["text"]
        if row["id"] not in truth:
            assert text == original and row["pii_count"] == 0
            continue
        kind, start, end = truth[row["id"]]
        holder = PLACEHOLDERS[kind]
        assert row["pii_count"] == 1 and row["pii_kinds"] == kind
        assert text[start : start + len(holder)] == holder
        assert text[:start].encode() == original[:start].encode()
        assert text[start + len(holder) :].encode() == original[end:].encode()
        # the spans in selected/ locate the placeholders in the written text
        (span,) = row["pii_spans"]
        assert text[span["start"] : span["end"]] == holder


def test_no_value_reaches_manifest_selection_or_report(redacted_run):
    run, _, truth, output = redacted_run
    files = ["manifest.json", "selection.json", "report.md", "report.html"]
    for name in files:
        body = (run / name).read_text()
        for value in VALUES.values():
            assert value not in body, (name, value)
    # nor any other text file of the run directory (logs, receipts, artifacts)
    for path in run.rglob("*"):
        if path.is_file() and path.suffix not in (".parquet", ".png"):
            body = path.read_bytes().decode("utf-8", errors="replace")
            assert not [v for v in VALUES.values() if v in body], path
    assert all(v not in output for v in VALUES.values())
    summary = json.loads((run / "selection.json").read_text())
    pii = summary["pii"]
    planted = {k: 20 // 6 + (i < 20 % 6) for i, k in enumerate(VALUES)}  # 20 values, the kinds in turn
    assert pii["redact_pii"] and pii["before"]["spans"] == planted
    assert pii["redacted"] == pii["after"]["spans"] == {k: v for k, v in planted.items() if k != "email"}
    assert pii["before"]["documents_with_pii"] == len(truth) == 20
    report = (run / "report.md").read_text()
    assert "## Personal data" in report
    assert "<EMAIL>" in report  # the removed documents' snippets are shown redacted
    langs = summary["languages"]
    assert set(langs["before"]) == {"en", "fr", "es"} and langs["before"]["en"] == pytest.approx(40 / 44, abs=1e-6)
    assert langs["heur_mismatch"] == 4 == langs["heur_mismatch_after"]
    assert "## Languages" in report
    # offensive language: the counts are the docs/ and selected/ columns' own (no e-mail document is offensive)
    off = summary["offensive"]
    docs = pq.read_table(run / "docs", columns=["id", "offensive_flag", "offensive_words"]).to_pylist()
    flagged = {d["id"] for d in docs if d["offensive_flag"]}
    assert {f"w{i}" for i in SWEARING} <= flagged
    assert off["before"]["flagged"] == len(flagged) == off["after"]["flagged"]
    assert off["before"]["with_listed_words"] == sum(1 for d in docs if d["offensive_words"]) >= len(SWEARING)
    assert off["before"]["documents"] == 44 and off["after"]["documents"] == 40
    assert "## Offensive language" in report and "offensive_flag" in report


def test_redact_pii_needs_the_pii_stage():
    policy = parse_policy({"rules": [], "redact_pii": True})
    assert policy.to_dict()["redact_pii"] is True
    with pytest.raises(ConfigError, match="redact_pii needs the pii stage"):
        check_columns(policy, ["heur_c4_pass"])
    check_columns(policy, ["pii_count"])
    check_columns(Policy(), [])
    with pytest.raises(ConfigError, match="redact_pii"):
        parse_policy({"rules": [], "redact_pii": "yes"})


def test_redaction_also_when_the_spans_are_left_out_of_selected(redacted_run, tmp_path):
    run, originals, truth, _ = redacted_run
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"rules": [], "redact_pii": True, "exclude_columns": ["embedding", "pii_spans"]}))
    out = tmp_path / "sel"
    result = CliRunner().invoke(main, ["select", str(run), "--policy", str(policy), "--output", str(out)])
    assert result.exit_code == 0, result.output
    selected = pq.read_table(out / "selected")
    assert "pii_spans" not in selected.column_names and selected.num_rows == len(originals)
    texts = dict(zip(selected.column("id").to_pylist(), selected.column("text").to_pylist()))
    for doc_id, (kind, start, _) in truth.items():
        assert texts[doc_id][start:].startswith(PLACEHOLDERS[kind])
    assert all(v not in t for t in texts.values() for v in VALUES.values())
