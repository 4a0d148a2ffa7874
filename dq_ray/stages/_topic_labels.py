"""Readable topics: keyword text without URLs, markup or numbers, and a short name per topic.

**Keywords.** The ``topics`` stage counts words with scikit-learn's ``CountVectorizer``;
:func:`keyword_text` is its preprocessor: lower-cased text with URLs, e-mail addresses, HTML/XML tags and
entities, and @handles removed, so ``http``, ``com`` or ``nbsp`` never become keywords. The token pattern
(:func:`token_pattern`) keeps words of letters only (no digits), at least ``min_word_chars`` long, and
:data:`WEB_STOP_WORDS` adds the leftovers of web text to the stop words.

**Names** (``topics.labels``):

* ``keywords``: the first three keywords, joined (``"police · court · judge"``); no model;
* ``llm``: the instruction model the Ask-LLM stages use (any ``askllm`` judge setting in ``label_params``:
  ``backend`` transformers or vLLM, ``model``, ``device``...) names every fine and coarse topic from its keywords
  and representative snippets, greedily, in at most ``label_max_tokens`` tokens, in one Ray task (the GPU's when
  the cluster has one). An answer with no letters falls back to the keyword name;
* ``none``: ``topic_label`` stays null.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from dq_ray.stages.askllm import JudgeParams

log = logging.getLogger(__name__)

LABEL_MODES = ("keywords", "llm", "none")

#: what web text leaves behind once URLs and markup are gone
WEB_STOP_WORDS = ("http", "https", "www", "com", "org", "net", "html", "htm", "php", "amp", "nbsp", "quot", "rt")

_NOISE = re.compile(
    r"(?:https?://|ftp://|www\.)\S+"  # URLs
    r"|\S+@\S+\.\w+"  # e-mail addresses
    r"|</?[A-Za-z][^<>]{0,200}>"  # HTML/XML tags
    r"|&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);"  # entities
    r"|(?<!\w)@\w+"  # @handles
)

#: The default naming prompt; ``{keywords}`` and ``{examples}`` are filled per topic.
LABEL_TEMPLATE = (
    "Here are the keywords and a few example snippets of a group of documents.\n\n"
    "Keywords: {keywords}\n\nExamples:\n{examples}\n\n"
    "Write a short title (two to four words) for this group. Reply with the title only."
)


def keyword_text(text: str) -> str:
    """``text`` lower-cased, without URLs, e-mail addresses, tags, entities and @handles (the vectorizer's
    preprocessor)."""
    return _NOISE.sub(" ", text).lower()


def token_pattern(min_chars: int) -> str:
    """Words of letters only (no digits or underscores), at least ``min_chars`` long."""
    return rf"(?u)\b[^\W\d_]{{{min_chars},}}\b"


def keyword_label(keywords: Sequence[str] | None, n: int = 3) -> str | None:
    """The first ``n`` keywords joined by a middle dot; None without keywords."""
    words = [k for k in (keywords or []) if k][:n]
    return " · ".join(words) if words else None


#: the most words a name keeps
MAX_LABEL_WORDS = 6
_PREAMBLE = re.compile(
    r"^\s*(?:the\s+)?(?:topic|name|label|theme)(?:\s+name)?(?:\s+(?:of|for)\s+(?:this|the)\s+(?:group|documents))?"
    r"(?:\s+in\s+\w+\s+to\s+\w+\s+words)?(?:\s+(?:is|would\s+be|could\s+be))?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_ABOUT = re.compile(r"^\s*(?:[-*•]\s+)?(?:(?:these|the)\s+documents\s+are\s+(?:about|on)\s+)?", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»\n]{2,})")


def clean_label(text: str, max_chars: int = 48) -> str | None:
    """The name in a model's answer: its first line without a preamble (``Topic:``, ``The topic of this group
    is``), the quoted part when it quotes one, without markdown or a final full stop, at most ``max_chars``
    characters (cut at a word); None when no name is left (no letters)."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREAMBLE.sub("", _ABOUT.sub("", line, count=1), count=1)
    quoted = _QUOTED.search(line)
    if quoted:
        line = quoted.group(1)
    if len(line.split()) > MAX_LABEL_WORDS:  # a sentence, not a title: its first clause, then its first words
        line = re.split(r"[:,;(]", line, maxsplit=1)[0]
        line = " ".join(line.split()[:MAX_LABEL_WORDS])
    before = None
    while before != line:  # quotes, markdown and a full stop, in any order
        before, line = line, line.strip().strip("*#`\"'“”‘’«» ").rstrip(".")
    line = " ".join(line.split())
    if len(line) > max_chars:
        line = line[:max_chars].rsplit(" ", 1)[0]
    return line if re.search(r"[^\W\d_]", line) else None


@dataclass(frozen=True)
class TopicLabelParams(JudgeParams):
    """The naming model's settings: any ``askllm`` judge setting, a template with ``{keywords}`` and
    ``{examples}`` (:data:`LABEL_TEMPLATE` by default)."""

    template: str | None = LABEL_TEMPLATE
    token_budget: int = 160

    required_fields: ClassVar[tuple[str, ...] | None] = ("keywords", "examples")
    where: ClassVar[str] = "topics.label_params"


def label_params(params: Mapping[str, Any]) -> TopicLabelParams:
    """``topics.label_params`` as settings (raises ``ConfigError``)."""
    from dq_ray.typed import build_dataclass

    return build_dataclass(TopicLabelParams, dict(params), "topics.label_params")


def label_records(table: pa.Table, n_keywords: int = 8, n_examples: int = 3) -> list[dict[str, str]]:
    """One prompt record per row of the topic table: its keywords and representative snippets."""
    out = []
    for kw, snips in zip(table.column("keywords").to_pylist(), table.column("representative_snippets").to_pylist()):
        examples = "\n".join(f"- {s}" for s in (snips or [])[:n_examples])
        out.append({"keywords": ", ".join((kw or [])[:n_keywords]), "examples": examples})
    return out


def write_labels(records: Sequence[Mapping[str, str]], params: TopicLabelParams, max_tokens: int, engine=None):
    """The model's raw answers for ``records`` (loads the engine unless one is given)."""
    from dq_ray.stages._writer import GreedyWriter
    from dq_ray.stages.askllm import AskLLMJudge

    writer = GreedyWriter(AskLLMJudge(params, engine=engine), max_tokens, "topics.label_params")
    return writer.write(records)


def llm_labels(table: pa.Table, params: TopicLabelParams, max_tokens: int) -> list[str | None]:
    """Names for every row of the topic table, generated in one Ray task (on a GPU when the cluster has one and
    the settings allow it); rows whose answer has no letters get their keyword name."""
    import ray

    from dq_ray.stage import Resources
    from dq_ray.stages.askllm import gpu_resources

    records = label_records(table)
    res = gpu_resources(params, Resources(num_cpus=1), ray.cluster_resources().get("GPU", 0.0), "topics.label_params")
    task = ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus or None)(write_labels)
    answers = ray.get(task.remote(records, params, max_tokens))
    keywords = table.column("keywords").to_pylist()
    labels = [clean_label(a) or keyword_label(k) for a, k in zip(answers, keywords)]
    fallback = sum(1 for a in answers if clean_label(a) is None)
    log.info("topics: %d topic(s) named by the model (%d fell back to keywords)", len(labels), fallback)
    return labels
