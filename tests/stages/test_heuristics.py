"""The heuristics stage on real text, checked against datatrove's filters called directly.

The equality tests build a few thousand documents of varied shape from the demo sources (real Wikipedia leads,
news, tweets and speeches, plus documents generated from their sentences: long, repetitive, bulleted,
ellipsis-heavy, empty, code, non-ASCII, very short...) and require the ``fast`` engine's verdict and reason to
equal what datatrove's own filter objects return, for every document and every filter, with datatrove's
default arguments and with two sets of non-default ones.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from dq_ray.demo import news_docs, speech_docs, tweet_docs, wikipedia_docs
from dq_ray.errors import ConfigError
from dq_ray.stages import _heuristic_stats as hs
from dq_ray.stages.heuristics import (
    DUP_NGRAMS,
    FILTER_NAMES,
    NUMBERS,
    TOP_NGRAMS,
    Heuristics,
    HeuristicsParams,
)
from tests.helpers import wiki_texts

# -- the documents ---------------------------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_BREAKS = ("\n", "\n\n", "\n\n\n", "\r\n", "\n \n", "\u2028", "\x0c")
_FOREIGN = [
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们今天去公园散步，然后一起吃午饭。天气很好！",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "Überall gibt es Äpfel, Öl und Straßen — naïve café au lait?",
    "🙂🙂🙂 👍 ✨✨ 🚀",
]
_CODE = [
    "function f(x) { return x * 2; }",
    "if (a > b) { console.log('yes'); }",
    "Please enable JavaScript in your browser to see this page.",
    "This site uses cookies to improve your experience.",
    "By continuing you agree to our privacy policy and terms of use.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "The value of {x} is computed below, as usual.",
    "#include <stdio.h>",
    'int main() { printf("hi"); return 0; }',
    "var data = [1, 2, 3]; // javascript array",
]


def _sentences() -> list[str]:
    pool: set[str] = set()
    for docs in (wikipedia_docs()[:600], news_docs()[:200], speech_docs()[:200]):
        for doc in docs:
            pool.update(s for s in _SENTENCE.split(" ".join(doc["text"].split())) if len(s.split()) >= 3)
    return sorted(pool)


def _shapes(rng: random.Random, sents: list[str]) -> dict[str, Callable[[], str]]:
    """Generators of one document of each shape (real sentences, arranged)."""

    def pick(lo: int, hi: int) -> list[str]:
        return rng.sample(sents, rng.randint(lo, hi))

    def paragraphs() -> str:
        chosen, parts = pick(3, 25), []
        while chosen:
            k = rng.randint(1, 4)
            parts.append(" ".join(chosen[:k]))
            chosen = chosen[k:]
        return "".join(p + rng.choice(_BREAKS) for p in parts[:-1]) + parts[-1]

    def repetitive() -> str:
        base = pick(1, 4)
        kind = rng.randrange(5)
        if kind == 0:  # repeated lines
            return "\n".join(rng.choice(base) for _ in range(rng.randint(3, 15)))
        if kind == 1:  # repeated paragraphs among new ones
            return "\n\n".join([*base, *base[: rng.randint(1, len(base))], *pick(1, 5)])
        if kind == 2:  # one phrase many times in a line
            phrase = " ".join(rng.choice(base).split()[: rng.randint(2, 6)])
            return " ".join([phrase] * rng.randint(3, 30)) + "."
        if kind == 3:  # an n-gram repeated inside new text
            words = " ".join(pick(3, 8)).split()
            at = rng.randrange(len(words))
            return " ".join(words[:at] + words[: rng.randint(5, 12)] + words[at:])
        return " ".join([rng.choice(base)] * rng.randint(2, 12))

    def bulleted() -> str:
        lines = []
        for s in pick(2, 15):
            mark = rng.choice(["- ", "• ", "  - ", "* ", "", "-"])
            lines.append(mark + (s if rng.random() < 0.7 else " ".join(s.split()[:3])))
        return "\n".join(lines)

    def ellipses() -> str:
        lines = []
        for s in pick(1, 10):
            end = rng.choice(["...", "…", " ...", "... ", ".", "!", "…  "])
            if rng.random() < 0.2:  # ellipses between the words
                lines.append(" ".join(w + rng.choice(["", "", "…", " ..."]) for w in s.split()))
            else:
                lines.append(s.rstrip(".!?") + end if rng.random() < 0.8 else s.replace(" ", " ... ", 1))
        return rng.choice(["\n", " "]).join(lines)

    def code() -> str:
        lines = [rng.choice(_CODE) if rng.random() < 0.5 else s for s in pick(1, 10)]
        return "\n".join(lines)

    def foreign() -> str:
        parts = [rng.choice(_FOREIGN) if rng.random() < 0.6 else s for s in pick(1, 8)]
        return rng.choice(["\n", " ", "\n\n"]).join(parts)

    def short() -> str:
        words = rng.choice(sents).split()[: rng.randint(1, 10)]
        return " ".join(words) + rng.choice(["", ".", "!", "?", "...", "\n"])

    def citations() -> str:
        lines = []
        for s in pick(2, 10):
            cite = rng.choice(["[1]", "[23]", "[]", "[edit]", "[citation needed]", "[note 1]"])
            lines.append(rng.choice([s + cite, s[:-1] + cite + s[-1], cite + s, "lorem " + cite + "ipsum " + s]))
        return "\n".join(lines)

    def odd_words() -> str:
        s = rng.choice(sents).split()
        at = rng.randrange(len(s))
        long_word = rng.choice(["x" * 1001, "y" * 31, "supercalifragilistic" * 3, "a" * 12])
        return " ".join(s[:at] + [long_word] + s[at:]) + rng.choice(["", "\n" + rng.choice(sents)])

    def symbols() -> str:
        out = []
        for s in pick(1, 5):
            out.append(
                " ".join(
                    w if rng.random() < 0.6 else rng.choice(["#", "##", "#tag", "12", "3.5", "$", "%", "—", "..."])
                    for w in s.split()
                )
            )
        return "\n".join(out)

    def menu() -> str:
        items = [" ".join(rng.choice(sents).split()[:2]) for _ in range(rng.randint(2, 12))]
        return "\n".join(items) + ("\n" + " ".join(pick(1, 3)) if rng.random() < 0.5 else "")

    def one_word_lines() -> str:
        return "\n".join(" ".join(pick(1, 3)).split())

    def join_collisions() -> str:
        # n-grams equal only once joined without spaces ("a bc" / "ab c"), and with spaces
        unit = rng.choice(
            ["a bc d e f g h ab c d e f g h", "the rapist x y z therapist x y z", "in to the house into the house"]
        )
        return " ".join([unit] * rng.randint(1, 6)) + rng.choice(["", ".", " end."])

    def airy() -> str:  # paragraphs far apart: many newlines per word
        return ("\n" * rng.randint(4, 12)).join(pick(2, 10))

    def padded() -> str:
        return rng.choice([" ", "\n", "\t", "  \n"]) + " ".join(pick(3, 8)) + rng.choice([" ", "\n", "\n\n", ""])

    return {
        "long": lambda: " ".join(pick(3, 25)),
        "paragraphs": paragraphs,
        "repetitive": repetitive,
        "bulleted": bulleted,
        "ellipses": ellipses,
        "code": code,
        "foreign": foreign,
        "short": short,
        "citations": citations,
        "odd_words": odd_words,
        "symbols": symbols,
        "menu": menu,
        "one_word_lines": one_word_lines,
        "join_collisions": join_collisions,
        "airy": airy,
        "padded": padded,
    }


_DEGENERATE = [
    "",
    " ",
    "\n",
    "\n\n\n",
    "\t",
    " \n \t ",
    "\u2028",
    "\x0c",
    "\r\n",
    ".",
    "...",
    "#",
    "-",
    "•",
    "{",
    "a",
    "🙂" * 50,
    "\n\n\n x",
    "x\n",
    "The.",
    "lorem ipsum",
    "Lorem Ipsum dolor sit amet.",
]


def build_varied_texts() -> list[str]:
    """Real documents of every demo source and generated shapes: about 2,250 texts (seeded)."""
    rng = random.Random(15)
    real = [
        *[d["text"] for d in rng.sample(wikipedia_docs(), 500)],
        *[d["text"] for d in rng.sample(news_docs(), 30)],
        *[d["text"] for d in rng.sample(tweet_docs(), 700)],
        *[d["text"] for d in rng.sample(speech_docs(), 70)],
    ]
    shapes = _shapes(rng, _sentences())
    made = [make() for make in shapes.values() for _ in range(55)]
    return real + made + _DEGENERATE


@pytest.fixture(scope="module")
def varied_texts() -> list[str]:
    return build_varied_texts()


# -- datatrove, called directly -------------------------------------------------------------------------------

#: Non-default arguments: tighter thresholds, other n-gram sizes, C4 on sentences, FineWeb's other options.
STRICT = HeuristicsParams(
    gopher_quality={
        "min_doc_words": 5,
        "max_doc_words": 300,
        "min_avg_word_length": 2,
        "max_avg_word_length": 8,
        "max_symbol_word_ratio": 0.05,
        "max_bullet_lines_ratio": 0.5,
        "max_ellipsis_lines_ratio": 0.1,
        "max_non_alpha_words_ratio": 0.9,
        "min_stop_words": 4,
        "stop_words": ["the", "a", "of", "in", "is", "was", "to"],
    },
    gopher_repetition={
        "dup_line_frac": 0.1,
        "dup_para_frac": 0.1,
        "dup_line_char_frac": 0.05,
        "dup_para_char_frac": 0.05,
        "top_n_grams": [[2, 0.1], [5, 0.08], [1, 0.3]],
        "dup_n_grams": [[3, 0.05], [5, 0.1], [12, 0.05]],
    },
    c4={
        "split_paragraph": False,
        "remove_citations": False,
        "filter_no_terminal_punct": False,
        "min_num_sentences": 3,
        "min_words_per_line": 5,
        "max_word_length": 30,
        "filter_lorem_ipsum": False,
        "filter_javascript": False,
        "filter_curly_bracket": False,
        "filter_policy": False,
    },
    fineweb={
        "line_punct_thr": 0.5,
        "line_punct_exclude_zero": True,
        "stop_chars": [".", "!"],
        "short_line_thr": 0.3,
        "short_line_length": 60,
        "char_duplicates_ratio": 0.001,
        "new_line_ratio": 0.05,
    },
)
#: Checks switched off (None / 0 / -1), which reaches datatrove's divisions by zero, and many sentences.
LENIENT = HeuristicsParams(
    gopher_quality={
        "min_doc_words": 0,
        "max_doc_words": None,
        "min_avg_word_length": None,
        "max_avg_word_length": 12,
        "min_stop_words": 0,
        "stop_words": [],
    },
    gopher_repetition={
        "dup_para_frac": None,
        "dup_line_frac": 0,
        "top_n_grams": [],
        "dup_n_grams": [[1, 0.3], [2, 0.2]],
    },
    c4={"min_num_sentences": 12, "min_words_per_line": -1, "max_word_length": -1, "filter_no_terminal_punct": True},
    fineweb={"line_punct_thr": 0.0, "short_line_length": 10, "short_line_thr": 0.9, "new_line_ratio": 1.0},
)


CLASSES = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
    "fineweb": FineWebQualityFilter,
}


def datatrove_verdicts(params: HeuristicsParams, texts: list[str]) -> dict[str, list[tuple[bool, str | None]]]:
    """Every filter's (pass, reason) from datatrove's own filter objects, each on its own Document; a filter that
    raises gives ``error:<exception>``, as in the stage. C4 runs last, so the others share datatrove's cached
    tokenization of the document."""
    order = ("gopher_quality", "gopher_repetition", "fineweb", "c4")
    filters = {name: CLASSES[name](language=params.language, **params.filter_kwargs(name)) for name in order}
    out: dict[str, list] = {name: [] for name in order}
    for text in texts:
        for name, flt in filters.items():
            try:
                res = flt.filter(Document(text=text, id="x"))
            except Exception as exc:
                out[name].append((False, f"error:{type(exc).__name__}"))
                continue
            ok, reason = res if isinstance(res, tuple) else (res, None)
            out[name].append((bool(ok), None if ok else reason))
    return out


def stage_verdicts(params: HeuristicsParams, texts: list[str]) -> tuple[dict[str, list], pa.Table]:
    stage = Heuristics(params)
    stage.ensure_setup()
    table = stage.process(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    cols = {
        name: list(zip(table[f"heur_{name}_pass"].to_pylist(), table[f"heur_{name}_reason"].to_pylist()))
        for name in FILTER_NAMES
    }
    return cols, table


def assert_same_verdicts(
    params: HeuristicsParams, texts: list[str], got: dict[str, list] | None = None
) -> dict[str, set]:
    """The stage's verdicts (``got``, or computed here) equal datatrove's; returns the reasons seen per filter."""
    if got is None:
        got, _ = stage_verdicts(params, texts)
    expected = datatrove_verdicts(params, texts)
    for name in FILTER_NAMES:
        diffs = [
            (i, texts[i][:60], got[name][i], expected[name][i])
            for i in range(len(texts))
            if got[name][i] != expected[name][i]
        ]
        assert not diffs, f"{name}: {len(diffs)} differ, e.g. {diffs[:3]}"
    return {name: {reason for _, reason in expected[name]} for name in FILTER_NAMES}


@pytest.fixture(scope="module")
def default_run(varied_texts) -> tuple[dict[str, list], pa.Table]:
    """The stage with default settings over every varied text: (verdicts by filter, output table)."""
    return stage_verdicts(HeuristicsParams(), varied_texts)


def test_fast_engine_equals_datatrove_defaults(varied_texts, default_run):
    reasons = assert_same_verdicts(HeuristicsParams(), varied_texts, got=default_run[0])
    # the documents reach every check of every filter (C4's lorem ipsum and curly bracket included)
    assert reasons["gopher_quality"] >= {
        None,
        "gopher_short_doc",
        "gopher_below_alpha_threshold",
        "gopher_too_many_bullets",
        "gopher_too_many_end_ellipsis",
        "gopher_enough_stop_words",
        "gopher_too_many_hashes",
        "gopher_above_avg_threshold",
        "gopher_below_avg_threshold",
    }
    assert reasons["gopher_repetition"] >= {
        None,
        "empty",
        "dup_para_frac",
        "dup_line_frac",
        "top_2_gram",
        "duplicated_5_n_grams",
    }
    assert reasons["c4"] >= {None, "too_few_sentences", "lorem_ipsum", "curly_bracket"}
    assert reasons["fineweb"] >= {None, "empty", "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio"}


def test_fast_engine_equals_datatrove_strict(varied_texts):
    reasons = assert_same_verdicts(STRICT, varied_texts[::4])
    assert {"gopher_long_doc", "gopher_enough_stop_words"} <= reasons["gopher_quality"]
    assert {"top_5_gram", "duplicated_3_n_grams"} & reasons["gopher_repetition"]


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_fast_engine_equals_datatrove_lenient(varied_texts):
    reasons = assert_same_verdicts(LENIENT, varied_texts[1::4])
    assert "error:ZeroDivisionError" in reasons["gopher_quality"]  # datatrove divides by 0 words; so do we


def test_datatrove_engine_gives_the_same_columns(varied_texts):
    sample = varied_texts[::60]
    fast = Heuristics(HeuristicsParams())
    slow = Heuristics(HeuristicsParams(engine="datatrove"))
    batch = pa.table({"id": [str(i) for i in range(len(sample))], "text": sample})
    for s in (fast, slow):
        s.ensure_setup()
    assert fast.process(batch).equals(slow.process(batch))


# -- the numbers ----------------------------------------------------------------------------------------------


def reference_numbers(text: str, stop_chars: tuple, stop_words: set) -> dict:
    """The numbers as datatrove's own helpers compute them (dq-ray's implementation before the fast engine)."""
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_duplicates,
        find_top_duplicate,
        get_n_grams,
    )
    from datatrove.utils.text import PUNCTUATION_SET, split_into_words

    words = split_into_words(text, "en")
    n_chars, n_words, lines = len(text), len(words), text.splitlines()
    non_symbol = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]

    def ratio(num, den):
        return float(num) / den if den else None

    out = {
        "heur_n_chars": n_chars,
        "heur_n_lines": len(lines),
        "heur_n_words": n_words,
        "heur_word_count": len(non_symbol),
        "heur_mean_word_length": float(np.mean([len(w) for w in non_symbol])) if non_symbol else None,
        "heur_hash_word_ratio": ratio(text.count("#"), n_words),
        "heur_ellipsis_word_ratio": ratio(text.count("...") + text.count("…"), n_words),
        "heur_bullet_lines_ratio": ratio(sum(s.lstrip().startswith(("•", "-")) for s in lines), len(lines)),
        "heur_ellipsis_lines_ratio": ratio(sum(s.rstrip().endswith(("...", "…")) for s in lines), len(lines)),
        "heur_alpha_words_ratio": ratio(sum(any(c.isalpha() for c in w) for w in words), n_words),
        "heur_stop_word_count": len(stop_words.intersection(words)),
    }
    paragraphs = re.split(r"\n{2,}", text.strip())
    dup, chars = find_duplicates(paragraphs)
    out["heur_dup_para_frac"], out["heur_dup_para_char_frac"] = ratio(dup, len(paragraphs)), ratio(chars, n_chars)
    rep_lines = re.split("\n+", text)
    dup, chars = find_duplicates(rep_lines)
    out["heur_dup_line_frac"], out["heur_dup_line_char_frac"] = ratio(dup, len(rep_lines)), ratio(chars, n_chars)
    for n in TOP_NGRAMS:
        grams = get_n_grams(words, n)
        out[f"heur_top_{n}gram_char_frac"] = ratio(find_top_duplicate(grams), n_chars) if grams else 0.0
    for n in DUP_NGRAMS:
        out[f"heur_dup_{n}gram_char_frac"] = ratio(find_all_duplicate(words, n), n_chars)
    fw_lines = [line for line in text.split("\n") if line.strip()]
    out["heur_line_punct_ratio"] = ratio(sum(line.endswith(stop_chars) for line in fw_lines), len(fw_lines))
    out["heur_short_line_ratio"] = ratio(sum(len(line) <= 30 for line in fw_lines), len(fw_lines))
    out["heur_char_dup_ratio"] = ratio(find_duplicates(fw_lines)[1], len(text.replace("\n", "")))
    out["heur_newline_word_ratio"] = ratio(text.count("\n"), n_words)
    return out


def test_numbers_equal_datatrove_helpers(varied_texts, default_run):
    from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
    from datatrove.utils.text import TERMINAL_PUNCTUATION

    table = default_run[1].select(list(NUMBERS))
    for text, row in zip(varied_texts[::3], table.to_pylist()[::3]):
        ref = reference_numbers(text, tuple(TERMINAL_PUNCTUATION), set(STOP_WORDS))
        expected = pa.Table.from_pylist([ref], schema=table.schema).to_pylist()[0]
        assert row == expected, text[:80]


# -- invariants the fast engine relies on ---------------------------------------------------------------------


def test_settings_cover_every_datatrove_argument():
    import inspect

    renamed = {"short_line_thr": "short_line_threshold"}
    for name, cls in CLASSES.items():
        arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "exclusion_writer", "language"}
        fields = {f for f in hs.SETTINGS[name].__dataclass_fields__}
        assert {renamed.get(a, a) for a in arguments} == fields, name


def test_no_alphabetic_character_is_punctuation():
    from datatrove.utils.text import PUNCTUATION_SET

    assert all(len(c) == 1 and not c.isalpha() for c in PUNCTUATION_SET)


def test_warm_vocabulary_gives_the_same_words(varied_texts):
    """Words from the process's spaCy, its vocabulary kept warm, equal those of a fresh (cold) datatrove tokenizer."""
    from datatrove.utils.text import split_into_parts
    from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer

    shared = load_word_tokenizer("en").tokenizer
    for text in varied_texts[1::10]:
        shared.tokenizer(text)  # outside a memory zone: these words stay in the vocabulary
    split_into_parts.cache_clear()
    cold = SpaCyTokenizer("en")  # its own spacy.blank("en"): an empty vocabulary
    sample = varied_texts[::10]
    assert [hs.tokenize(t, "en")[0] for t in sample] == [cold.word_tokenize(t) for t in sample]


def test_one_pass_gives_datatrove_words_and_sentences(varied_texts):
    from datatrove.utils.text import split_into_parts, split_into_sentences, split_into_words

    for text in varied_texts[3::8]:
        words, sentences = hs.tokenize(text, "en", sentences=True)
        split_into_parts.cache_clear()
        assert (words, sentences) == (split_into_words(text, "en"), split_into_sentences(text, "en")), text[:80]


def test_ngram_helpers_match_datatrove_on_collisions():
    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams

    words = "a bc d e f ab c d e f a bc d e f g".split()
    grams = hs.joined_ngrams(words, (1, 2, 5, 7))
    for n in (1, 2, 5, 7):
        assert hs.duplicated_ngram_chars(grams[n], n) == find_all_duplicate(words, n)
    for n in (1, 2, 3, 4, 16, 17):
        expected = find_top_duplicate(get_n_grams(words, n)) if len(words) >= n else None
        assert hs.top_ngram_chars(words, n, spaced=False) == expected
    spaced = ["a b", "c", "a", "b c", "x"]
    assert hs.top_ngram_chars(spaced, 2, spaced=True) == find_top_duplicate(get_n_grams(spaced, 2))


def test_ngram_sizes_are_checked():
    with pytest.raises(ConfigError, match="n >= 1"):
        HeuristicsParams(gopher_repetition={"dup_n_grams": [[0, 0.1]]})
    with pytest.raises(ConfigError, match="pairs"):
        HeuristicsParams(gopher_repetition={"top_n_grams": [2, 0.1]})
    with pytest.raises(ConfigError, match="engine"):
        HeuristicsParams(engine="numba")


# -- the stage on real text -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage():
    s = Heuristics()
    s.ensure_setup()
    return s


@pytest.fixture(scope="module")
def real_texts():
    return wiki_texts(15) + [d["text"] for d in news_docs()[:10]] + [d["text"] for d in tweet_docs()[:15]]


@pytest.fixture(scope="module")
def scored(stage, real_texts):
    batch = pa.table({"id": [str(i) for i in range(len(real_texts))], "text": real_texts})
    return stage.process(batch)


def test_outputs_match_declared_schema(scored):
    for col, dtype in Heuristics.outputs.items():
        assert scored.schema.field(col).type == dtype, col
    assert scored.num_rows == 40 and scored.column_names[:2] == ["id", "text"]


def test_verdicts_equal_datatrove_filters_called_directly(scored, real_texts):
    filters = {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    rows = scored.to_pylist()
    for text, row in zip(real_texts, rows):
        for name, flt in filters.items():
            res = flt.filter(Document(text=text, id="x"))
            ok = res if isinstance(res, bool) else res[0]
            assert row[f"heur_{name}_pass"] is bool(ok)
            assert row[f"heur_{name}_reason"] == (None if ok else res[1])
    # real text gives both outcomes: Wikipedia leads mostly pass Gopher quality, tweets are too short
    assert sum(r["heur_gopher_quality_pass"] for r in rows[:15]) >= 12
    assert {r["heur_gopher_quality_reason"] for r in rows[25:]} == {"gopher_short_doc"}


def test_numbers_agree_with_verdicts(scored):
    for row in scored.to_pylist():
        if row["heur_word_count"] < 50:
            assert row["heur_gopher_quality_reason"] == "gopher_short_doc"
        if row["heur_line_punct_ratio"] is not None and row["heur_line_punct_ratio"] < 0.12:
            assert row["heur_fineweb_pass"] is False
        assert set(NUMBERS) <= set(row)


def test_numbers_on_known_text(stage):
    text = "alpha beta gamma.\nalpha beta gamma.\nsomething else entirely here!\n\n- a bullet line"
    batch = stage.process(pa.table({"id": ["k"], "text": [text]}))
    row = batch.to_pylist()[0]
    assert row["heur_n_chars"] == len(text)
    assert row["heur_n_lines"] == 5
    # lines split on runs of newlines: 4 lines, one duplicate of 17 chars
    assert row["heur_dup_line_frac"] == pytest.approx(1 / 4)
    assert row["heur_dup_line_char_frac"] == pytest.approx(17 / len(text))
    assert row["heur_bullet_lines_ratio"] == pytest.approx(1 / 5)
    assert row["heur_line_punct_ratio"] == pytest.approx(3 / 4)


def test_params_reach_datatrove_and_bad_params_fail():
    for engine in ("fast", "datatrove"):
        lenient = Heuristics(
            HeuristicsParams(gopher_quality={"min_doc_words": 5}, filters=("gopher_quality",), engine=engine)
        )
        lenient.ensure_setup()
        tweet = "Staying hydrated helps your body regulate temperature and keeps the joints working well."
        row = lenient.process(pa.table({"id": ["t"], "text": [tweet]})).to_pylist()[0]
        assert row["heur_gopher_quality_pass"] is True
        assert row["heur_c4_pass"] is None  # not run
    with pytest.raises(ValueError, match="unknown"):
        HeuristicsParams(filters=("gopher", "c4"))


def test_degenerate_text_does_not_crash(stage):
    texts = ["...", "#", "\n\n\n x", "🙂" * 50]
    out = stage.process(pa.table({"id": list("abcd"), "text": texts})).to_pylist()
    assert [r["heur_gopher_quality_pass"] for r in out] == [False] * 4


def test_tokenizer_loaded_without_torch_gives_datatrove_words(varied_texts):
    """A fresh process (as a Ray worker is) loads spaCy with torch hidden: same words, torch still importable."""
    import json
    import subprocess
    import sys

    from datatrove.utils.text import split_into_words

    texts = varied_texts[:40]
    script = (
        "import json, sys\n"
        "from dq_ray.stages import _heuristic_stats as hs\n"
        "hs.load_tokenizer('en')\n"
        "import thinc.compat\n"
        "from datatrove.utils.text import split_into_words\n"
        "words = [split_into_words(t, 'en') for t in json.load(sys.stdin)]\n"
        "import torch\n"
        "print(json.dumps({'has_torch': thinc.compat.has_torch, 'torch': torch.__version__, 'words': words}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["has_torch"] is False  # spaCy came in without torch
    assert out["torch"]  # and torch imports normally afterwards
    assert out["words"] == [split_into_words(t, "en") for t in texts]
