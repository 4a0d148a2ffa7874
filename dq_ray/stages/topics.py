"""Topics: k-means clusters over the embeddings at two levels, with keywords and representative documents.

**Fit** (once, on the driver, with the heavy counting in Ray tasks):

1. Spherical k-means (FAISS) on a deterministic sample of ``embedding``: ``n_topics`` *fine* topic centroids.
   A second k-means over those centroids groups them into ``n_coarse`` *coarse* topics (a two-level hierarchy:
   every fine topic has exactly one coarse parent).
2. A vocabulary (scikit-learn ``CountVectorizer``: lower-cased words of 2+ letters or digits, English stop words
   removed, at most ``max_vocab`` terms seen in at least ``min_df`` documents) fitted on a seeded sample of
   ``text``.
3. One Ray Data pass over every document (``id``, ``text``, ``embedding``): each block assigns its documents to
   the nearest fine centroid and returns, per topic, its document count, its term counts and its documents
   most similar to the centroid. The driver sums those partials (they are at most topics x vocabulary) and
   merges the representatives.
4. Keywords by class-based TF-IDF (c-TF-IDF, as BERTopic defines it): all documents of a topic form one class;
   the weight of term *t* in class *c* is ``tf(t, c) * log(1 + A / f(t))`` with ``tf`` the term count in the
   class, ``f(t)`` its count over all classes and ``A`` the average number of words per class, each class's
   weights L1-normalised. The same on the coarse level, over the summed counts of its fine topics.

Artifacts: ``RUN/artifacts/topics/centroids.npy`` (fine, unit norm), ``coarse_of_fine.npy`` (parent of every
fine topic), ``coarse_centroids.npy``, ``vocabulary.json``, and the topic table ``RUN/artifacts/topics.parquet``
(one row per topic and level; columns in docs/schema.md).

**Apply**: every document gets its nearest fine centroid (``topic_id``) and that topic's parent
(``topic_coarse_id``), the same assignment the fit counted, so the table's sizes equal the counts in ``docs/``.

Keywords are counted on text without URLs, markup and numbers, and every topic gets a short name
(``topic_label``): its first keywords, or a name the Ask-LLM stages' instruction model writes from its keywords
and representative snippets (``labels: llm``); see :mod:`dq_ray.stages._topic_labels`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dq_ray.artifacts import load_npy_trusted, trusted_digests
from dq_ray.stage import FitData, Resources, Stage, append_columns, register
from dq_ray.stages import _topic_labels as names
from dq_ray.stages._fit import embedding_sample, kmeans_sample_rows, rows_to_fit, save_npy, write_json, write_parquet
from dq_ray.vectors import embedding_matrix, nearest_centroid

log = logging.getLogger(__name__)

CENTROIDS = "centroids.npy"
COARSE_CENTROIDS = "coarse_centroids.npy"
COARSE_OF_FINE = "coarse_of_fine.npy"
VOCABULARY = "vocabulary.json"
#: The topic table, one level up from the stage's own artifacts: ``RUN/artifacts/topics.parquet``.
TOPIC_TABLE = "topics.parquet"
MAX_DEFAULT_TOPICS = 1000

TOPIC_TABLE_SCHEMA = pa.schema(
    [
        ("level", pa.string()),
        ("topic_id", pa.int32()),
        ("topic_coarse_id", pa.int32()),
        ("size", pa.int64()),
        ("share", pa.float64()),
        ("keywords", pa.list_(pa.string())),
        ("keyword_scores", pa.list_(pa.float32())),
        ("representative_ids", pa.list_(pa.string())),
        ("representative_sims", pa.list_(pa.float32())),
        ("representative_snippets", pa.list_(pa.string())),
        ("topic_label", pa.string()),
    ]
)

_PARTIAL_SCHEMA = pa.schema(
    [
        ("topic", pa.int32()),
        ("size", pa.int64()),
        ("term_ids", pa.list_(pa.int32())),
        ("term_counts", pa.list_(pa.int64())),
        ("rep_ids", pa.list_(pa.string())),
        ("rep_sims", pa.list_(pa.float32())),
        ("rep_snippets", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class TopicsParams:
    """Settings of the ``topics`` stage.

    Attributes:
        n_topics: fine topics (k of the first k-means); null: about ``sqrt(rows / 2)``, 2 to 1,000.
        n_coarse: coarse topics (k-means over the fine centroids); null: about ``sqrt(n_topics)``, at least 2.
        sample_rows: embeddings the k-means is fitted on (seeded sample); null: ``256 * n_topics``, at most 1M.
        vocab_rows: texts the keyword vocabulary is fitted on (seeded sample).
        max_vocab: most terms in the vocabulary (the most frequent in the sample).
        min_df: a term must occur in at least this many sampled texts.
        stop_words: ``english`` (scikit-learn's list) or null to keep every word; web leftovers (``http``,
            ``com``, ``nbsp``...) are always stop words.
        min_word_chars: the shortest keyword (letters only: numbers, URLs and markup never count).
        n_keywords: keywords kept per topic.
        n_representatives: representative documents (nearest the centroid) kept per topic.
        snippet_chars: characters of text kept per representative document.
        niter: k-means iterations.
        seed: seed of the samples and of the k-means initialisations.
        labels: how topics are named (``topic_label``): ``keywords`` (the first three), ``llm`` (the Ask-LLM
            model writes a short name from the keywords and snippets) or ``none``.
        label_params: the naming model's settings with ``labels: llm`` (any ``askllm`` judge key: ``backend``,
            ``model``, ``device``, ``template`` with ``{keywords}`` and ``{examples}``...).
        label_max_tokens: the most tokens a name may take.
    """

    n_topics: int | None = None
    n_coarse: int | None = None
    sample_rows: int | None = None
    vocab_rows: int = 20_000
    max_vocab: int = 20_000
    min_df: int = 2
    stop_words: str | None = "english"
    n_keywords: int = 10
    n_representatives: int = 5
    snippet_chars: int = 200
    niter: int = 25
    seed: int = 0
    min_word_chars: int = 3
    labels: str = "keywords"
    label_params: dict[str, Any] = field(default_factory=dict)
    label_max_tokens: int = 16

    def __post_init__(self) -> None:
        for key in ("n_topics", "n_coarse", "sample_rows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or null")
        if self.n_topics is not None and self.n_coarse is not None and self.n_coarse > self.n_topics:
            raise ValueError("n_coarse must be <= n_topics")
        for key in ("vocab_rows", "max_vocab", "min_df", "n_keywords", "n_representatives", "snippet_chars", "niter"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.stop_words not in (None, "english"):
            raise ValueError("stop_words must be 'english' or null")
        if self.min_word_chars < 1 or self.label_max_tokens < 1:
            raise ValueError("min_word_chars and label_max_tokens must be >= 1")
        if self.labels not in names.LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(names.LABEL_MODES)}")
        if self.labels == "llm":
            names.label_params(self.label_params)  # a clear error now, not after the k-means


def default_topics(num_rows: int) -> int:
    """About ``sqrt(num_rows / 2)`` fine topics, between 2 and :data:`MAX_DEFAULT_TOPICS`."""
    return max(2, min(MAX_DEFAULT_TOPICS, round(math.sqrt(num_rows / 2))))


def spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """FAISS spherical k-means; returns ``k`` unit-norm float32 centroids (``k`` capped at the row count)."""
    import faiss

    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    c = np.ascontiguousarray(km.centroids, dtype=np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _vectorizer(vocabulary: Sequence[str] | None, params: TopicsParams):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    stop = set(names.WEB_STOP_WORDS) | (set(ENGLISH_STOP_WORDS) if params.stop_words == "english" else set())
    common = dict(
        preprocessor=names.keyword_text,
        token_pattern=names.token_pattern(params.min_word_chars),
        stop_words=sorted(stop),
        dtype=np.int64,
    )
    if vocabulary is not None:
        return CountVectorizer(vocabulary=list(vocabulary), **common)
    return CountVectorizer(max_features=params.max_vocab, min_df=params.min_df, **common)


def fit_vocabulary(texts: Sequence[str], params: TopicsParams) -> list[str]:
    """The keyword vocabulary: the ``max_vocab`` most frequent terms of ``texts`` (in ``min_df`` docs or more)."""
    min_df = params.min_df if len(texts) >= 2 * params.min_df else 1
    cv = _vectorizer(None, dataclasses.replace(params, min_df=min_df))
    try:
        cv.fit(texts)
    except ValueError:  # empty vocabulary: only stop words or no text
        return []
    return [str(t) for t in cv.get_feature_names_out()]


def c_tf_idf(counts: Any) -> Any:
    """Class-based TF-IDF (BERTopic): ``tf(t, c) * log(1 + A / f(t))``, each class L1-normalised.

    ``counts`` is a (classes x terms) count matrix (scipy sparse or dense); returns a CSR matrix of weights.
    """
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    tf = sp.csr_matrix(counts, dtype=np.float64)
    f = np.asarray(tf.sum(axis=0)).ravel()
    words_per_class = np.asarray(tf.sum(axis=1)).ravel()
    avg = words_per_class.mean() if len(words_per_class) else 0.0
    idf = np.zeros_like(f)
    nz = f > 0
    idf[nz] = np.log(1.0 + avg / f[nz])
    return normalize(tf @ sp.diags(idf), norm="l1", axis=1)


def top_keywords(weights: Any, vocabulary: Sequence[str], n: int) -> list[tuple[list[str], list[float]]]:
    """Per row of a c-TF-IDF matrix: its ``n`` highest-weighted terms (ties by vocabulary order)."""
    out = []
    for row in range(weights.shape[0]):
        r = weights.getrow(row)
        order = np.lexsort((r.indices, -r.data))[:n]
        keep = [i for i in order if r.data[i] > 0]
        out.append(([vocabulary[r.indices[i]] for i in keep], [float(r.data[i]) for i in keep]))
    return out


def topic_partials(batch: pa.Table, centroids: np.ndarray, vocabulary: list[str], params: TopicsParams) -> pa.Table:
    """One block's share of the topic table: per topic its size, term counts and best representatives."""
    import scipy.sparse as sp

    cv = _vectorizer(vocabulary, params) if vocabulary else None
    x = embedding_matrix(batch.column("embedding"))
    label, sim = nearest_centroid(x, centroids)
    texts = [t or "" for t in batch.column("text").to_pylist()]
    ids = batch.column("id").to_pylist()
    topics = np.unique(label)
    rows: dict[str, list] = {name: [] for name in _PARTIAL_SCHEMA.names}
    per_topic = None
    if cv is not None and len(texts):
        counts = cv.transform(texts)
        onehot = sp.csr_matrix(
            (np.ones(len(label)), (label, np.arange(len(label)))), shape=(len(centroids), len(texts))
        )
        per_topic = (onehot @ counts).tocsr()
    r = params.n_representatives
    for t in topics:
        members = np.flatnonzero(label == t)
        best = members[np.lexsort((members, -sim[members]))][:r]
        rows["topic"].append(int(t))
        rows["size"].append(len(members))
        if per_topic is not None:
            row = per_topic.getrow(int(t))
            rows["term_ids"].append(row.indices.astype(np.int32).tolist())
            rows["term_counts"].append(row.data.astype(np.int64).tolist())
        else:
            rows["term_ids"].append([])
            rows["term_counts"].append([])
        rows["rep_ids"].append([ids[i] for i in best])
        rows["rep_sims"].append([float(sim[i]) for i in best])
        rows["rep_snippets"].append([_snippet(texts[i], params.snippet_chars) for i in best])
    return pa.Table.from_pydict(rows, schema=_PARTIAL_SCHEMA)


def _snippet(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def label_topics(table: pa.Table, params: TopicsParams) -> pa.Table:
    """Fill ``topic_label`` as ``params.labels`` says (see :mod:`dq_ray.stages._topic_labels`)."""
    if params.labels == "none" or not table.num_rows:
        return table
    if params.labels == "llm":
        labels = names.llm_labels(table, names.label_params(params.label_params), params.label_max_tokens)
    else:
        labels = [names.keyword_label(k) for k in table.column("keywords").to_pylist()]
    idx = table.schema.get_field_index("topic_label")
    return table.set_column(idx, "topic_label", pa.array(labels, pa.string()))


@register
class Topics(Stage):
    """Topics: two-level k-means over embeddings, c-TF-IDF keywords and representative documents."""

    name = "topics"
    inputs = ("id", "text", "embedding")
    outputs = {"topic_id": pa.int32(), "topic_coarse_id": pa.int32()}
    Params = TopicsParams
    default_resources = Resources(num_cpus=1, batch_size=1024)

    # -- fit ----------------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        """k-means on a sample, then one distributed pass for sizes, c-TF-IDF keywords and representatives."""
        p = self.params
        num_rows = rows_to_fit(data, "topics")
        k = p.n_topics or default_topics(num_rows)
        x = embedding_sample(data, kmeans_sample_rows(k, p.sample_rows), p.seed)
        centroids = spherical_kmeans(x, k, p.niter, p.seed)
        k = len(centroids)
        kc = min(p.n_coarse or max(2, round(math.sqrt(k))), k)
        coarse = spherical_kmeans(centroids, kc, p.niter, p.seed)
        coarse_of_fine = nearest_centroid(centroids, coarse)[0].astype(np.int32)
        texts = data.sample(["text"], p.vocab_rows, seed=p.seed + 1).column("text").to_pylist()
        vocabulary = fit_vocabulary([t or "" for t in texts], p)

        art = data.artifacts_dir
        save_npy(centroids, posixpath.join(art, CENTROIDS))
        save_npy(coarse, posixpath.join(art, COARSE_CENTROIDS))
        save_npy(coarse_of_fine, posixpath.join(art, COARSE_OF_FINE))
        write_json(posixpath.join(art, VOCABULARY), vocabulary)

        partials = data.dataset(["id", "text", "embedding"]).map_batches(
            topic_partials,
            fn_kwargs={"centroids": centroids, "vocabulary": vocabulary, "params": p},
            batch_format="pyarrow",
            batch_size=1024,
        )
        table = build_topic_table(
            partials.iter_batches(batch_format="pyarrow", batch_size=None), centroids, coarse_of_fine, vocabulary, p
        )
        table = label_topics(table, p)
        table_path = topic_table_path(art)
        write_parquet(table, table_path)
        fine = table.filter(pc.equal(table.column("level"), "fine"))
        sizes = np.array(fine.column("size").to_pylist())
        log.info("topics: %d fine / %d coarse topics over %d documents", k, kc, int(sizes.sum()))
        return {
            "documents": int(sizes.sum()),
            "sample_rows": len(x),
            "n_topics": k,
            "n_coarse": kc,
            "vocabulary": len(vocabulary),
            "topic_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
            "topic_table": table_path,
            "params": dataclasses.asdict(p),
        }

    # -- apply --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.artifacts_dir is None:
            raise RuntimeError("topics runs after its fit: artifacts_dir is not set")
        art = self.artifacts_dir
        digests = trusted_digests(art, self.artifact_digests)
        self.centroids = load_npy_trusted(art, CENTROIDS, digests)
        self.coarse_of_fine = load_npy_trusted(art, COARSE_OF_FINE, digests)

    def process(self, batch: pa.Table) -> pa.Table:
        label, _ = nearest_centroid(embedding_matrix(batch.column("embedding")), self.centroids)
        return append_columns(
            batch,
            {
                "topic_id": pa.array(label, pa.int32()),
                "topic_coarse_id": pa.array(self.coarse_of_fine[label], pa.int32()),
            },
        )


def topic_labels(table: pa.Table, level: str = "fine") -> dict[str, str]:
    """``{str(topic_id): topic_label}`` of one level of a topic table (topics without a name left out)."""
    if "topic_label" not in table.column_names:
        return {}
    rows = table.select(["level", "topic_id", "topic_label"]).to_pylist()
    return {str(r["topic_id"]): r["topic_label"] for r in rows if r["level"] == level and r["topic_label"]}


def topic_table_path(artifacts_dir: str) -> str:
    """``RUN/artifacts/topics.parquet`` for the stage's ``RUN/artifacts/topics`` directory."""
    return posixpath.join(posixpath.dirname(artifacts_dir.rstrip("/")), TOPIC_TABLE)


def build_topic_table(
    partials: Any, centroids: np.ndarray, coarse_of_fine: np.ndarray, vocabulary: list[str], params: TopicsParams
) -> pa.Table:
    """Merge per-block partials (see :func:`topic_partials`) into the two-level topic table."""
    import scipy.sparse as sp

    k, kc, v = len(centroids), int(coarse_of_fine.max()) + 1, max(len(vocabulary), 1)
    sizes = np.zeros(k, dtype=np.int64)
    rows, cols, vals = [], [], []
    reps: list[list[tuple[float, str, str]]] = [[] for _ in range(k)]
    r = params.n_representatives
    for block in partials:
        for p in block.to_pylist():
            t = p["topic"]
            sizes[t] += p["size"]
            rows.append(np.full(len(p["term_ids"]), t, dtype=np.int64))
            cols.append(np.asarray(p["term_ids"], dtype=np.int64))
            vals.append(np.asarray(p["term_counts"], dtype=np.int64))
            merged = reps[t] + list(zip(p["rep_sims"], p["rep_ids"], p["rep_snippets"]))
            reps[t] = sorted(merged, key=lambda e: (-e[0], e[1]))[:r]
    counts = sp.csr_matrix((_concat(vals), (_concat(rows), _concat(cols))), shape=(k, v))
    to_coarse = sp.csr_matrix((np.ones(k), (coarse_of_fine, np.arange(k))), shape=(kc, k))
    coarse_counts = to_coarse @ counts
    total = max(int(sizes.sum()), 1)
    coarse_sizes = np.bincount(coarse_of_fine, weights=sizes, minlength=kc).astype(np.int64)
    coarse_reps: list[list[tuple[float, str, str]]] = [[] for _ in range(kc)]
    for t in range(k):
        coarse_reps[coarse_of_fine[t]].extend(reps[t])
    coarse_reps = [sorted(e, key=lambda e: (-e[0], e[1]))[:r] for e in coarse_reps]

    out: dict[str, list] = {name: [] for name in TOPIC_TABLE_SCHEMA.names}
    for level, n, cnt, sz, rp, parent in (
        ("fine", k, counts, sizes, reps, coarse_of_fine),
        ("coarse", kc, coarse_counts, coarse_sizes, coarse_reps, np.arange(kc)),
    ):
        kw = top_keywords(c_tf_idf(cnt), vocabulary, params.n_keywords) if vocabulary else [([], [])] * n
        for t in range(n):
            out["level"].append(level)
            out["topic_id"].append(t)
            out["topic_coarse_id"].append(int(parent[t]))
            out["size"].append(int(sz[t]))
            out["share"].append(int(sz[t]) / total)
            out["keywords"].append(kw[t][0])
            out["keyword_scores"].append(kw[t][1])
            out["representative_ids"].append([e[1] for e in rp[t]])
            out["representative_sims"].append([float(e[0]) for e in rp[t]])
            out["representative_snippets"].append([e[2] for e in rp[t]])
            out["topic_label"].append(None)
    return pa.Table.from_pydict(out, schema=TOPIC_TABLE_SCHEMA)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
