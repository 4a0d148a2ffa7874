"""The ``pii`` stage: planted personal data in real documents (recall and precision per kind), look-alike numbers
that are not personal data, bad input, and redaction that changes nothing outside the spans."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from dq_ray.demo import news_docs, speech_docs, wikipedia_docs
from dq_ray.stages.pii import KINDS, PLACEHOLDERS, Pii, PiiParams, find_spans, iban_ok, luhn_ok, redact

#: Values of each kind, in the formats people write them (test card numbers, example IBANs, fictional SSNs).
PLANTED = {
    "email": ["maria.gonzalez@example.org", "j.smith+newsletter@mail.example.co.uk", "info@acme-widgets.com"],
    "phone": ["+44 20 7946 0958", "(617) 253-1000", "+1-202-456-1111", "+33 1 42 68 53 00", "+49 30 901820"],
    "ip": ["192.168.10.24", "8.8.4.4", "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
    "credit_card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009", "6011000990139424"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR14 2004 1010 0505 0001 3M02 606"],
    "national_id": ["078-05-1120", "123-45-6789", "12345678Z", "X1234567L"],
}

#: Numbers that look like personal data but are not (or fail the check the kind has).
NEGATIVES = [
    "4111 1111 1111 1112",  # a card number failing Luhn
    "1234 5678 9012 3456",  # no card network, fails Luhn
    "5500-0000-0000-0005",
    "GB82 WEST 1234 5698 7654 33",  # IBAN failing mod 97
    "DE89370400440532013001",
    "000-12-3456",  # SSN rules: area 000
    "666-12-3456",
    "123-00-4567",  # group 00
    "12345678A",  # DNI with the wrong letter
    "2023-10-05",
    "05/10/2023",
    "1914-1918",
    "v1.2.3.4",
    "version 2.10.1",
    "Python 3.11.4",
    "10:30:00",
    "std::vector",
    "ISBN 978-3-16-148410-0",
    "$1,234,567.89",
    "3.14159265358979",
    "149597870700 m",
]


def _clean_docs(n: int) -> list[str]:
    """Real documents (Wikipedia leads, news, speeches) in which no detector finds anything."""
    pool = [d["text"] for d in wikipedia_docs()[:400] + news_docs()[:200] + speech_docs()[:200]]
    clean = [t for t in pool if len(t) > 400 and not find_spans(t)]
    assert len(clean) >= n
    return random.Random(0).sample(clean, n)


def _plant(text: str, value: str, rng: random.Random) -> tuple[str, int]:
    """``text`` with `` value `` inserted at a word boundary; returns the text and where the value starts."""
    cuts = [i for i, ch in enumerate(text) if ch == " "]
    at = rng.choice(cuts[len(cuts) // 4 :])
    return text[:at] + " " + value + text[at:], at + 1


@pytest.fixture(scope="module")
def planted():
    """One real document per planted value (several values per kind), with its ground-truth span."""
    rng = random.Random(1)
    cases = [(kind, v) for kind, values in PLANTED.items() for v in values]
    docs = _clean_docs(len(cases) + len(NEGATIVES))
    out = []
    for (kind, value), text in zip(cases, docs):
        doc, start = _plant(text, value, rng)
        out.append((kind, doc, (start, start + len(value))))
    negatives = [_plant(text, value, rng)[0] for value, text in zip(NEGATIVES, docs[len(cases) :])]
    return out, negatives


def test_recall_and_precision_per_kind_on_planted_values(planted):
    cases, _ = planted
    found_by_kind = {k: 0 for k in KINDS}
    flagged_by_kind = {k: 0 for k in KINDS}
    for kind, doc, span in cases:
        spans = find_spans(doc)
        for s in spans:
            flagged_by_kind[s.kind] += 1
        found_by_kind[kind] += any(s.kind == kind and (s.start, s.end) == span for s in spans)
    recall = {k: found_by_kind[k] / len(PLANTED[k]) for k in KINDS}
    # the documents were clean before planting, so every flag is on a planted value or a false positive
    precision = {k: found_by_kind[k] / flagged_by_kind[k] if flagged_by_kind[k] else 0.0 for k in KINDS}
    assert recall == {k: 1.0 for k in KINDS}, recall
    assert precision == {k: 1.0 for k in KINDS}, precision


def test_look_alike_numbers_are_not_flagged(planted):
    _, negatives = planted
    for value, doc in zip(NEGATIVES, negatives):
        assert find_spans(doc) == [], value


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # one character short for GB


def test_phone_numbers_in_urls_and_bare_digit_runs_are_not_phones():
    text = (
        "The caesium-133 atom, to be 9192631770 when expressed in hertz. "
        "See http://www.cbc.ca/news/track-and-field-star-dead-at-95-1.2687465?cmp=rss and "
        "state.gov/r/pa/prs/ps/2014/230120.htm. For help call 1-800-273-8255 today."
    )
    spans = find_spans(text, kinds=("phone",))
    assert [text[s.start : s.end] for s in spans] == ["1-800-273-8255"]


def test_redaction_changes_nothing_outside_the_spans(planted):
    cases, _ = planted
    for kind, doc, (start, end) in cases:
        spans = find_spans(doc)
        red, new_spans, counts = redact(doc, spans)
        assert counts == {kind: 1}
        (ns,) = new_spans
        assert red[ns.start : ns.end] == PLACEHOLDERS[kind]
        # byte for byte: the text before and after the span is the original's
        assert red[: ns.start].encode() == doc[:start].encode()
        assert red[ns.end :].encode() == doc[end:].encode()
        assert doc[start:end] not in red


def test_redaction_skips_spans_that_do_not_fit():
    text = "write to a@b.example.com now"
    red, spans, counts = redact(
        text, [{"kind": "email", "start": 9, "end": 24}, {"kind": "email", "start": 20, "end": 99}]
    )
    assert red == "write to <EMAIL> now" and counts == {"email": 1} and len(spans) == 1
    assert redact(text, None)[0] == text


def test_stage_columns_and_bad_input():
    long_text = ("A line of ordinary prose without numbers. " * 3000) + " mail me at someone@example.org"
    texts = [
        "Contact maria.gonzalez@example.org or +44 20 7946 0958; card 4111 1111 1111 1111.",
        "",
        "   ",
        "12345 67890 ... 42",
        None,
        long_text,
        "no personal data here",
    ]
    stage = Pii(PiiParams(max_chars=10_000))
    out = stage(pa.table({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())}))
    assert out.schema.field("pii_count").type == pa.int32()
    rows = out.to_pylist()
    assert rows[0]["pii_count"] == 3 and rows[0]["pii_kinds"] == "credit_card,email,phone"
    assert [s["kind"] for s in rows[0]["pii_spans"]] == ["email", "phone", "credit_card"]
    assert rows[1]["pii_count"] == 0 and rows[1]["pii_reason"] == "empty" and rows[2]["pii_reason"] == "empty"
    assert rows[3]["pii_count"] == 0 and rows[3]["pii_reason"] is None
    assert rows[4]["pii_count"] is None and rows[4]["pii_reason"] == "no text"
    # capped: the e-mail lies past max_chars, so it is not counted, and the row says why
    assert rows[5]["pii_count"] == 0 and rows[5]["pii_reason"] == "capped"
    assert rows[6] | {"id": None, "text": None} == {
        "id": None,
        "text": None,
        "pii_count": 0,
        "pii_kinds": "",
        "pii_spans": [],
        "pii_reason": None,
    }


def test_a_failing_detector_is_a_null_with_a_reason_not_a_failed_batch(monkeypatch):
    import dq_ray.stages.pii as pii

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pii, "find_spans", broken)
    out = Pii()(pa.table({"text": ["a@b.example.com"]})).to_pylist()[0]
    assert out["pii_count"] is None and out["pii_reason"] == "error: RuntimeError"


def test_params_are_validated():
    from dq_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="valid kinds"):
        PiiParams(kinds=("email", "passport"))
    with pytest.raises(ConfigError, match="phone_region"):
        PiiParams(phone_region="XX")


def test_names_without_presidio_are_skipped_cleanly():
    pytest.importorskip("phonenumbers")
    try:
        import presidio_analyzer  # noqa: F401

        pytest.skip("Presidio is installed here")
    except ImportError:
        pass
    stage = Pii(PiiParams(names=True))
    out = stage(pa.table({"text": ["Maria Gonzalez lives at 12 Baker Street."]})).to_pylist()[0]
    assert out["pii_count"] == 0 and out["pii_reason"] is None
    assert stage.describe()["presidio"].startswith("not installed")
