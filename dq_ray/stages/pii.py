"""Personal data: where a document holds e-mail addresses, phone numbers, IP addresses, payment cards, IBANs or
national ids, and how many.

Every detector reads at most ``max_chars`` characters of the text (the value is then counted over that prefix and
``pii_reason`` says ``capped``). What each kind accepts, so that numbers in ordinary prose are not flagged:

* ``email``: ``local@domain.tld`` with an alphabetic top-level domain;
* ``phone``: Google's libphonenumber (the ``phonenumbers`` package, ``Leniency.VALID``): numbers that are valid
  for their country, international ones (``+44 20 ...``) anywhere and national ones for ``phone_region``. A bare
  regular expression flags years, amounts and reference numbers; libphonenumber checks the numbering plan;
* ``ip``: dotted IPv4 quads and IPv6 addresses that :mod:`ipaddress` parses (IPv6 needs a digit and three groups,
  so ``std::vector`` or a time such as ``10:30:00`` is not one); an IPv4 quad right after ``v`` / ``version`` is a
  version number, not an address;
* ``credit_card``: 13-19 digits, one consistent separator (space or dash) or none, a card network's prefix and a
  valid Luhn check digit;
* ``iban``: a country code, two check digits and the country's length, with the ISO 13616 mod-97 check;
* ``national_id``: US social security numbers written ``AAA-GG-SSSS`` (no checksum exists; the SSA's format rules:
  area not 000, 666 or 900-999, group not 00, serial not 0000), and Spanish DNI / NIE numbers, whose final letter is
  a mod-23 check.

Optionally (``names: true``) Presidio's analyzer adds ``person`` and ``address`` spans when ``presidio_analyzer``
and its spaCy model are installed; otherwise the stage logs that once and goes on without them (never a
dependency of dq-ray).

Outputs: ``pii_count`` (spans found), ``pii_kinds`` (the kinds found, sorted, comma-separated: ``"email,phone"``;
``""`` for none), ``pii_spans`` (``[{kind, start, end}]``: Python string offsets into the text, never the matched
values; what selection's ``redact_pii`` replaces) and ``pii_reason`` (null, or why the value is partial or null:
``empty``, ``capped``, ``error: <ExceptionType>``). A null text gives nulls and the reason ``no text``. The matched
values are never logged, written to the manifest or shown in the report.

:func:`find_spans` and :func:`redact` are pure functions of a string, used by the stage and by selection.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register

log = logging.getLogger(__name__)

#: Every kind the built-in detectors find, with its placeholder in redacted text.
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip": "<IP>",
    "credit_card": "<CREDIT_CARD>",
    "iban": "<IBAN>",
    "national_id": "<NATIONAL_ID>",
    "person": "<PERSON>",  # Presidio only
    "address": "<ADDRESS>",  # Presidio only
}
KINDS = tuple(k for k in PLACEHOLDERS if k not in ("person", "address"))
#: When two spans overlap, the kind earlier here wins (the more specific check first).
_PRIORITY = ("iban", "credit_card", "national_id", "email", "ip", "phone", "person", "address")

SPAN_TYPE = pa.list_(pa.struct([("kind", pa.string()), ("start", pa.int32()), ("end", pa.int32())]))


class Span(NamedTuple):
    """One match: its kind and its ``[start, end)`` offsets in the text (Python string indices)."""

    kind: str
    start: int
    end: int


# -- detectors --------------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w@-])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bversion\s?|\brelease\s?)$", re.IGNORECASE)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d]|-\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d]|-\d)")
_DNI = re.compile(r"(?<![\w-])([XYZ]?)(\d{7,8})-?([A-Z])(?![\w-])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"

#: IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_network_ok(digits: str) -> bool:
    """A payment-card prefix (IIN) with a length that network issues."""
    n, p2, p4 = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # American Express
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649 or p2 == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if p2 in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    if p2 == 50 or 56 <= p2 <= 69:
        return 12 <= n <= 19  # Maestro
    return False


def iban_ok(compact: str) -> bool:
    """ISO 13616: the country's length and ``int(rearranged) % 97 == 1`` (letters as 10..35)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """The SSA's format rules for a US social security number (it has no check digit)."""
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def dni_ok(prefix: str, number: str, letter: str) -> bool:
    """Spanish DNI (8 digits) / NIE (X, Y or Z and 7 digits): the letter is ``number mod 23``."""
    if prefix:
        if len(number) != 7:
            return False
        number = str("XYZ".index(prefix)) + number
    elif len(number) != 8:
        return False
    return _DNI_LETTERS[int(number) % 23] == letter


def _emails(text: str) -> Iterable[Span]:
    for m in _EMAIL.finditer(text):
        yield Span("email", m.start(), m.end())


def _ips(text: str) -> Iterable[Span]:
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text, max(0, m.start() - 9), m.start()):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Span("ip", m.start(), m.end())
    for m in _IPV6.finditer(text):
        cand = m.group()
        groups = [g for g in re.split(r"[:.]", cand) if g]
        if len(groups) < 3 or not any(c.isdigit() for c in cand):
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield Span("ip", m.start(), m.end())


def _cards(text: str) -> Iterable[Span]:
    for m in _CARD.finditer(text):
        raw = m.group()
        seps = set(re.sub(r"\d", "", raw))
        if len(seps) > 1:
            continue
        digits = re.sub(r"\D", "", raw)
        if len(set(digits)) > 1 and _card_network_ok(digits) and luhn_ok(digits):
            yield Span("credit_card", m.start(), m.end())


def _ibans(text: str) -> Iterable[Span]:
    for m in _IBAN.finditer(text):
        raw = m.group()
        compact = raw.replace(" ", "")
        want = IBAN_LENGTHS.get(compact[:2])
        if want is None or len(compact) < want:
            continue
        # the regex may run into a following code; keep the country's length (spaces counted back in)
        end, seen = m.start(), 0
        while seen < want:
            seen += raw[end - m.start()] != " "
            end += 1
        if iban_ok(compact[:want]) and (end == m.end() or not text[end].isalnum()):
            yield Span("iban", m.start(), end)


def _national_ids(text: str) -> Iterable[Span]:
    for m in _SSN.finditer(text):
        if ssn_ok(*m.groups()):
            yield Span("national_id", m.start(), m.end())
    for m in _DNI.finditer(text):
        if dni_ok(*m.groups()):
            yield Span("national_id", m.start(), m.end())


_URL_TOKEN = re.compile(r"://|^www\.|[A-Za-z]/|/[A-Za-z]|[?&=]")
_PHONE_CUE = re.compile(r"(?:call|tel|phone|dial|fax|mobile|cell|text|whatsapp|contact)\W{0,3}\w{0,4}\W{0,3}$", re.I)


def _phones(text: str, region: str) -> Iterable[Span]:
    """libphonenumber's valid numbers, less three kinds it accepts that real text shows are mostly not phones:
    numbers inside a URL or path, numbers split by ``/``, and bare digit runs (``9192631770``) not after a cue
    such as "call" or "tel"."""
    import phonenumbers

    if not any(ch.isdigit() for ch in text):
        return
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        raw, start = match.raw_string, match.start
        if "/" in raw:
            continue
        left = start
        while left > 0 and not text[left - 1].isspace():
            left -= 1
        right = match.end
        while right < len(text) and not text[right].isspace():
            right += 1
        if _URL_TOKEN.search(text[left:right]):
            continue
        if raw.isdigit() and not _PHONE_CUE.search(text, max(0, start - 24), start):
            continue
        yield Span("phone", start, match.end)


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Non-overlapping spans sorted by start: where spans overlap the kind earlier in ``_PRIORITY`` wins, then
    the longer span."""
    rank = {k: i for i, k in enumerate(_PRIORITY)}
    chosen: list[Span] = []
    for s in sorted(set(spans), key=lambda s: (rank.get(s.kind, len(rank)), s.start - s.end, s.start)):
        if all(s.end <= c.start or s.start >= c.end for c in chosen):
            chosen.append(s)
    return sorted(chosen, key=lambda s: s.start)


def find_spans(
    text: str, kinds: Sequence[str] = KINDS, phone_region: str = "US", max_chars: int | None = None
) -> list[Span]:
    """The personal-data spans in ``text[:max_chars]`` (non-overlapping, sorted by start)."""
    if max_chars is not None:
        text = text[:max_chars]
    found: list[Span] = []
    if "email" in kinds and "@" in text:
        found += _emails(text)
    if "ip" in kinds:
        found += _ips(text)
    if "credit_card" in kinds:
        found += _cards(text)
    if "iban" in kinds:
        found += _ibans(text)
    if "national_id" in kinds:
        found += _national_ids(text)
    if "phone" in kinds:
        found += _phones(text, phone_region)
    return resolve_overlaps(found)


def redact(text: str, spans: Iterable[Any]) -> tuple[str, list[Span], Counter]:
    """``text`` with each span replaced by its kind's placeholder (``<EMAIL>``...); nothing else changes.

    ``spans`` are :class:`Span` or ``{kind, start, end}`` mappings (a ``pii_spans`` value). A span that does not
    fit the text (out of range, overlapping one before it, unknown kind) is skipped. Returns the redacted text,
    the placeholders' spans in it, and how many spans of each kind were replaced.
    """
    items = sorted(
        (Span(s["kind"], s["start"], s["end"]) if isinstance(s, dict) else Span(*s) for s in spans or ()),
        key=lambda s: s.start,
    )
    parts, new_spans, counts, pos, out_len = [], [], Counter(), 0, 0
    for s in items:
        if s.kind not in PLACEHOLDERS or s.start < pos or s.end > len(text) or s.start >= s.end:
            continue
        parts.append(text[pos : s.start])
        out_len += s.start - pos
        holder = PLACEHOLDERS[s.kind]
        parts.append(holder)
        new_spans.append(Span(s.kind, out_len, out_len + len(holder)))
        out_len += len(holder)
        counts[s.kind] += 1
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts), new_spans, counts


# -- Presidio (optional) ----------------------------------------------------------------------------------------

_PRESIDIO_KINDS = {"PERSON": "person", "LOCATION": "address"}


#: spaCy pipelines Presidio may use, best first; only an installed one is used (Presidio would download a missing one).
_SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")


@functools.cache
def _presidio_analyzer() -> Any:
    """Presidio's analyzer over an installed English spaCy pipeline, or None when either is not installed."""
    try:
        import spacy.util
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError as exc:
        log.warning("pii: names/addresses skipped, Presidio is not installed (%s)", exc.name)
        return None
    model = next((m for m in _SPACY_MODELS if spacy.util.is_package(m)), None)
    if model is None:
        log.warning("pii: names/addresses skipped, no English spaCy pipeline installed (%s)", ", ".join(_SPACY_MODELS))
        return None
    try:
        config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
        return AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=config).create_engine())
    except Exception as exc:  # a broken install must not stop the other detectors
        log.warning("pii: names/addresses skipped, Presidio failed to start (%s)", type(exc).__name__)
        return None


def _presidio_spans(analyzer: Any, text: str) -> list[Span]:
    results = analyzer.analyze(text=text, language="en", entities=list(_PRESIDIO_KINDS))
    return [Span(_PRESIDIO_KINDS[r.entity_type], r.start, r.end) for r in results]


# -- the stage --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiiParams:
    """Settings of the ``pii`` stage.

    Attributes:
        kinds: the detectors to run (any of ``email, phone, ip, credit_card, iban, national_id``).
        phone_region: the ISO country whose national phone format is recognised (international ``+`` numbers are
            found whatever it is).
        max_chars: characters of each text every detector reads; a longer text is counted over its start and
            gets ``pii_reason = "capped"``.
        names: also find person names and addresses with Presidio when it and its spaCy model are installed
            (skipped, with a warning, when not).
    """

    kinds: tuple[str, ...] = KINDS
    phone_region: str = "US"
    max_chars: int = 100_000
    names: bool = False

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"pii.kinds: unknown kind(s) {bad}; valid kinds: {', '.join(KINDS)}")
        if self.max_chars < 1:
            raise ConfigError("pii.max_chars must be >= 1")
        import phonenumbers

        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"pii.phone_region: {self.phone_region!r} is not an ISO region phonenumbers knows")


@register
class Pii(Stage):
    """Counts personal data (e-mails, phones, IPs, payment cards, IBANs, national ids) and records where it is."""

    name = "pii"
    inputs = ("text",)
    outputs = {
        "pii_count": pa.int32(),
        "pii_kinds": pa.string(),
        "pii_spans": SPAN_TYPE,
        "pii_reason": pa.string(),
    }
    Params = PiiParams
    default_resources = Resources(num_cpus=1, batch_size=256)

    def setup(self) -> None:
        list(_phones("call +1 202 456 1111", self.params.phone_region))  # loads libphonenumber's metadata
        self._presidio = _presidio_analyzer() if self.params.names else None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.params.names:
            info["presidio"] = "used" if _presidio_analyzer() is not None else "not installed: names skipped"
        return info

    def document(self, text: str | None) -> tuple[int | None, str | None, list[Span] | None, str | None]:
        """``(count, kinds, spans, reason)`` of one text; never raises."""
        p = self.params
        if text is None:
            return None, None, None, "no text"
        if not text.strip():
            return 0, "", [], "empty"
        try:
            spans = find_spans(text, p.kinds, p.phone_region, p.max_chars)
            presidio = getattr(self, "_presidio", None)
            if presidio is not None:
                spans = resolve_overlaps([*spans, *_presidio_spans(presidio, text[: p.max_chars])])
        except Exception as exc:  # a detector bug must not fail the batch; never log the text (it holds PII)
            log.warning("pii: a detector failed on one document (%s)", type(exc).__name__)
            return None, None, None, f"error: {type(exc).__name__}"
        reason = "capped" if len(text) > p.max_chars else None
        return len(spans), ",".join(sorted({s.kind for s in spans})), spans, reason

    def process(self, batch: pa.Table) -> pa.Table:
        counts, kinds, spans, reasons = [], [], [], []
        for text in batch.column("text").to_pylist():
            c, k, s, r = self.document(text)
            counts.append(c)
            kinds.append(k)
            spans.append(None if s is None else [s_._asdict() for s_ in s])
            reasons.append(r)
        return append_columns(
            batch,
            {
                "pii_count": pa.array(counts, pa.int32()),
                "pii_kinds": pa.array(kinds, pa.string()),
                "pii_spans": pa.array(spans, SPAN_TYPE),
                "pii_reason": pa.array(reasons, pa.string()),
            },
        )


def redact_column(texts: Sequence[str | None], spans: Sequence[Any]) -> tuple[list, list, Counter]:
    """:func:`redact` over a column: the redacted texts, their ``pii_spans`` (now locating the placeholders) and the
    number of spans replaced per kind. A null text, or a null ``pii_spans`` (nothing was scanned), is kept as is."""
    out_texts, out_spans, counts = [], [], Counter()
    for text, doc_spans in zip(texts, spans):
        if text is None or doc_spans is None:
            out_texts.append(text)
            out_spans.append(doc_spans)
            continue
        red, new, c = redact(text, doc_spans)
        out_texts.append(red)
        out_spans.append([s._asdict() for s in new])
        counts.update(c)
    return out_texts, out_spans, counts
