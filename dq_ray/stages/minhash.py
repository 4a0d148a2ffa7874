"""Near-duplicates by MinHash with LSH banding, the way FineWeb deduplicates (datatrove's MinHash, distributed).

**Signatures.** Each text is normalised with datatrove's ``simplify_text`` (lower case, numbers -> ``0``,
punctuation removed, whitespace collapsed, diacritics stripped), split into words with datatrove's word
tokenizer for the language, and shingled into word n-grams (5 by default). Every shingle is hashed (64-bit
xxHash) and ``num_buckets * hashes_per_bucket`` seeded universal hashes ``(a*x + b) mod (2^61 - 1)`` keep their
minimum. :class:`MinHasher` computes all of it with datatrove's own ``MinhashDedupSignature`` (its tokenizer,
permutation parameters and ``get_signature``), so signatures are datatrove's. A document with fewer words than
``n_grams`` has no shingle and no signature: it is never a near-duplicate (``exact_dedup`` still groups such
texts).

**Fit (distributed).** Two documents are candidates when all hashes of one band (bucket) agree; with the
FineWeb defaults (14 bands of 8) a pair of Jaccard similarity 0.8 is found with probability 0.92, 0.7 with
0.56, 0.5 with 0.05. The fit runs as Ray Data operators over the whole corpus: ``map_batches`` turns each
document into one 128-bit key per band, a shuffle brings equal keys together (hash partitions of the key,
several keys per partition, handled vectorised), and each band bucket links its members to its first member.
Only those edges (about one per duplicated document and band) come back to the driver, where SciPy's connected
components form the duplicate groups (A~B and B~C put A, B and C in one group). The artifact
``RUN/artifacts/minhash/members.parquet`` lists every document that has at least one near-duplicate
(``source_file``, ``source_index``, ``minhash_group``, ``minhash_keep``, ``minhash_count``); documents in no
group are not stored, so it stays small when duplicates are rare. The band rows themselves are kept too
(``bands/``, 24 bytes per document and band, :mod:`dq_ray.stages._bands`): an update against this run hashes only
its new documents and links their bands with these.

**Apply.** ``process`` looks each document up in the artifact. ``minhash_group`` names the group by the
document key (see :func:`dq_ray.stages._keys.doc_key_hex`) of the member it keeps; a document without
near-duplicates is its own group (its own key, ``minhash_count`` 1, ``minhash_keep`` true).

**Keep rule.** Exactly one member per group has ``minhash_keep = true``: the first in input order, the smallest
``(source_file, source_index)``, the same rule as ``exact_dedup``, so the two stages agree on which copy stays.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dq_ray.artifacts import read_trusted, trusted_digests
from dq_ray.stage import KEY_COLUMNS, FitData, Resources, Stage, append_columns, gather_for_sort, register
from dq_ray.stages._bands import (
    PriorBands,
    empty_band_rows,
    with_partition,
    write_band_dataset,
    write_band_index,
    write_band_table,
)
from dq_ray.stages._fit import cpu_pool_args, write_parquet
from dq_ray.stages._groups import component_roots, component_sizes
from dq_ray.stages._keys import doc_key_hex

log = logging.getLogger(__name__)

ARTIFACT = "members.parquet"
WORD_TOKENIZERS = ("datatrove", "whitespace")
HASH_FUNCTIONS = ("xxhash", "sha1")
#: Bits of a document's ``source_index`` in its fit-time number ``file_number << 40 | source_index``.
_INDEX_BITS = 40
#: Shingles x hashes per signature step (bounds memory for very long documents).
_CELLS_PER_STEP = 4_000_000
#: Band rows per shuffle partition when ``shuffle_partitions`` is null.
_BAND_ROWS_PER_PARTITION = 4_000_000
#: Bytes of one band row in memory (two uint64 key halves, an int64 document number, an int32 partition)
_BAND_ROW_BYTES = 28
#: Up to this many band rows (documents x bands; ~28 bytes each on the driver), the fit links them on the driver
#: instead of shuffling them (``shuffle_partitions`` null only).
_BAND_ROWS_IN_MEMORY = 4_000_000


@dataclass(frozen=True)
class MinHashParams:
    """Settings of the ``minhash`` stage; the defaults are FineWeb's.

    Attributes:
        n_grams: words per shingle.
        num_buckets: LSH bands; two documents are candidates when one whole band agrees.
        hashes_per_bucket: hashes per band. Fewer or more bands and hashes move the similarity at which a pair is
            found with probability 1/2, about ``(1/num_buckets) ** (1/hashes_per_bucket)`` (0.72 by default).
        seed: seed of the hash functions (the same on every worker; datatrove's default).
        language: language of datatrove's word tokenizer.
        word_tokenizer: ``datatrove`` (datatrove's tokenizer for ``language``: signatures identical to datatrove's
            MinHash) or ``whitespace`` (split the normalised text on spaces: several times faster; differs
            only where the tokenizer splits a word, e.g. contractions).
        hash_precision: bits of the shingle hashes and minhashes, 64 (datatrove's default) or 32.
        hash_fc: the shingle hash, ``xxhash`` (datatrove's default) or ``sha1``.
        text_norm: overrides of datatrove's ``TextNormConfig`` (``lowercase``, ``norm_whitespace``,
            ``remove_punctuation``, ``norm_unicode_diacritics``, ``norm_numbers``, ``norm_weekdays``,
            ``norm_monthnames``).
        shuffle_partitions: partitions of the fit's band shuffle; null sizes them from the row count
            (about 4 million band rows each), and up to 4 million band rows (~285k documents with 14 bands) links
            the bands on the driver without a shuffle (about 110 MB there).
        local_hash_rows: up to this many documents the fit hashes them on the driver, one process; above, a pool of
            actors does (one per CPU), whose start (the word tokenizer loaded in each) costs seconds
            (benchmarks/README.md, "Fixed costs"). 0: always the pool. Speed only: the groups are the same.
    """

    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1
    language: str = "en"
    word_tokenizer: str = "datatrove"
    hash_precision: int = 64
    hash_fc: str = "xxhash"
    text_norm: dict = field(default_factory=dict)
    shuffle_partitions: int | None = None
    local_hash_rows: int = 5_000

    def __post_init__(self) -> None:
        for key in ("n_grams", "num_buckets", "hashes_per_bucket"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.local_hash_rows < 0:
            raise ValueError("local_hash_rows must be >= 0")
        if self.word_tokenizer not in WORD_TOKENIZERS:
            raise ValueError(f"word_tokenizer must be one of {', '.join(WORD_TOKENIZERS)}")
        if self.hash_precision not in (32, 64):
            raise ValueError("hash_precision must be 32 or 64")
        if self.hash_fc not in HASH_FUNCTIONS:
            raise ValueError(f"hash_fc must be one of {', '.join(HASH_FUNCTIONS)}")
        from datatrove.utils.text import TextNormConfig

        valid = [f.name for f in dataclasses.fields(TextNormConfig)]
        unknown = sorted(set(self.text_norm) - set(valid))
        if unknown:
            raise ValueError(f"text_norm: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        if self.shuffle_partitions is not None and self.shuffle_partitions < 1:
            raise ValueError("shuffle_partitions must be >= 1 or null")

    @property
    def num_hashes(self) -> int:
        return self.num_buckets * self.hashes_per_bucket


class MinHasher:
    """MinHash signatures of texts, computed by datatrove's own ``MinhashDedupSignature`` (so they cannot drift).

    The datatrove step is built from the params (its ``MinhashConfig``: n-grams, bands, seed, ``TextNormConfig``,
    ``HashConfig``) but never run: the hasher uses its word tokenizer, its permutation parameters and its
    ``get_signature``, with datatrove's ``simplify_text``, ``ngrams`` and ``create_hash_func``. One step is ours:
    the shingle hash is given UTF-8 bytes (``create_hash_func(..., bytes)``), because datatrove 0.10.1's
    ``get_shingles`` hands ``str`` to xxhash, which xxhash 3 encoded as UTF-8 and xxhash 4 refuses; the numbers
    are the same. Speed, measured against the vectorised re-derivation this replaced on 2,000 demo documents
    (best CPU seconds on a loaded 2-core machine): 11.1-16.0 s before, 13.7-16.9 s after, nearly all of it
    datatrove's spaCy word tokenizer, which both use; everything after tokenising took 1.17 s before and 0.64 s
    with datatrove's ``ngrams`` and ``get_signature``.
    """

    def __init__(self, params: MinHashParams) -> None:
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
        from datatrove.utils.hashing import HashConfig, create_hash_func
        from datatrove.utils.text import TextNormConfig

        self.params = params
        config = MinhashConfig(
            n_grams=params.n_grams,
            num_buckets=params.num_buckets,
            hashes_per_bucket=params.hashes_per_bucket,
            seed=params.seed,
            norm_config=TextNormConfig(**params.text_norm),
            hash_config=HashConfig(precision=params.hash_precision, hash_fc=params.hash_fc),
        )
        from dq_ray.stages import _heuristic_stats as hs

        #: the language whose datatrove word tokenizer splits the words (None: whitespace)
        self.language = None if params.word_tokenizer == "whitespace" else params.language
        if self.language:
            hs.load_tokenizer(self.language)  # spaCy without torch, in the set-up (as the heuristics stage does)
        tokenizer = self.language or split_tokenizer()
        # an in-memory output folder: the step is never run, nothing is written
        self.step = MinhashDedupSignature("memory://dq-ray-minhash", config=config, language=tokenizer)
        self.hash = create_hash_func(config.hash_config, bytes)

    def words(self, text: str) -> list[str]:
        """The words of ``text`` after datatrove's ``simplify_text``, by the step's word tokenizer."""
        from datatrove.utils.text import simplify_text

        from dq_ray.stages._heuristic_stats import warm

        text = simplify_text(text, self.step.config.norm_config)
        if self.language:
            warm(text, self.language)  # the process's first texts stay in spaCy's vocabulary: same words, faster
        return self.step.word_tokenizer.word_tokenize(text)

    def shingles(self, text: str) -> np.ndarray:
        """Hashes of the word n-grams of ``text`` (uint64; empty when it has fewer than ``n_grams`` words)."""
        from datatrove.utils.text import ngrams

        grams = ngrams(self.words(text), self.params.n_grams)
        return np.fromiter((self.hash(" ".join(g).encode("utf-8", "surrogatepass")) for g in grams), dtype=np.uint64)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The signature of one document's shingle hashes (non-empty): ``num_hashes`` uint64 values."""
        step = max(1, _CELLS_PER_STEP // self.params.num_hashes)  # bounds memory for very long documents
        parts = [
            np.array(sum(self.step.get_signature(shingles[lo : lo + step, None]), []), dtype=np.uint64)
            for lo in range(0, len(shingles), step)
        ]
        return np.minimum.reduce(parts)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(signatures, has_signature)``: a (docs with shingles) x num_hashes uint64 matrix, and a mask of docs."""
        shingles = [self.shingles(t) for t in texts]
        has = np.array([len(s) > 0 for s in shingles], dtype=bool)
        sig = np.empty((int(has.sum()), self.params.num_hashes), dtype=np.uint64)
        for row, doc in enumerate(s for s in shingles if len(s)):
            sig[row] = self.signature(doc)
        return sig, has


@functools.cache
def split_tokenizer() -> Any:
    """datatrove's word-tokenizer interface over ``str.split()`` (``word_tokenizer: whitespace``). The class is
    defined on first use, so that importing the stage does not import datatrove."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            raise NotImplementedError("the whitespace tokenizer splits words only")

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            raise NotImplementedError("the whitespace tokenizer splits words only")

    return SplitTokenizer()


_HASHERS: dict[str, MinHasher] = {}


def _hasher(params: MinHashParams) -> MinHasher:
    """The hasher of this worker process for ``params`` (built once: the tokenizer load is not free)."""
    key = repr(params)
    if key not in _HASHERS:
        _HASHERS[key] = MinHasher(params)
    return _HASHERS[key]


def band_keys(sig: np.ndarray, num_buckets: int) -> np.ndarray:
    """One 128-bit key per (document, band): xxHash of the band's index and hashes, as a (docs, bands, 2) uint64."""
    import xxhash

    bands = np.ascontiguousarray(sig.reshape(len(sig), num_buckets, sig.shape[1] // num_buckets))
    out = bytearray()
    for doc in bands:
        for j, band in enumerate(doc):
            out += xxhash.xxh3_128_digest(band.tobytes(), seed=j)
    return np.frombuffer(bytes(out), dtype=np.uint64).reshape(len(sig), num_buckets, 2)


def _band_rows(batch: pa.Table, params: MinHashParams, files: list[str], partitions: int) -> pa.Table:
    """Ray Data UDF of the fit: one row per (document with a signature, band): key, document number, partition."""
    sig, has = _hasher(params).signatures(batch.column("text").to_pylist())
    file_no = pc.index_in(batch.column("source_file"), value_set=pa.array(files, pa.string())).to_numpy()
    index = batch.column("source_index").to_numpy().astype(np.int64)
    if len(index) and (index.min() < 0 or index.max() >= 1 << _INDEX_BITS):
        raise ValueError(f"minhash: source_index outside [0, 2**{_INDEX_BITS})")
    doc = ((file_no.astype(np.int64) << _INDEX_BITS) | index)[has]
    keys = band_keys(sig, params.num_buckets).reshape(-1, 2)
    return pa.table(
        {
            "k1": keys[:, 0],
            "k2": keys[:, 1],
            "doc": np.repeat(doc, params.num_buckets),
            "part": (keys[:, 1] % np.uint64(partitions)).astype(np.int32),
        }
    )


def _read_here(data: FitData, columns: list[str]) -> pa.Table:
    """The whole fit data as one table on the driver: read with pyarrow where the fit data can (a phase's
    Parquet, :meth:`dq_ray.pipeline.workers.ParquetFitData.read`), else through one Ray Data execution."""
    read = getattr(data, "read", None)
    if read is not None:
        return read(columns)
    blocks = _blocks(data.dataset(columns))
    return pa.concat_tables(blocks) if blocks else pa.table({c: pa.array([], pa.string()) for c in columns})


def _blocks(ds: Any) -> list[pa.Table]:
    """The non-empty blocks of a Ray dataset, on the driver."""
    return [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]


class BandRows:
    """:func:`_band_rows` in a Ray actor of the fit (see :func:`dq_ray.stages._fit.cpu_pool_args`): the hasher
    and its tokenizer are built once per actor."""

    def __init__(self, params: MinHashParams, files: list[str], partitions: int) -> None:
        self.params, self.files, self.partitions = params, files, partitions
        _hasher(params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _band_rows(batch, self.params, self.files, self.partitions)


def _bucket_edges(rows: pa.Table) -> pa.Table:
    """Ray Data UDF of the fit: for every band key in a shuffle partition, link each member to the smallest one."""
    k1, k2, doc = (rows.column(c).to_numpy() for c in ("k1", "k2", "doc"))
    order = np.lexsort((doc, k2, k1))
    k1, k2, doc = k1[order], k2[order], doc[order]
    first = np.r_[True, (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])] if len(doc) else np.zeros(0, bool)
    head = doc[first][np.cumsum(first) - 1]
    a, b = head[~first], doc[~first]
    if len(a):
        a, b = np.unique(np.stack([a, b], axis=1), axis=0).T
    return pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64())})


def _collect_edges(edges: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bring the (few) edges of a Ray Dataset to the driver, without repeats."""
    parts = [t for t in edges.iter_batches(batch_format="pyarrow") if t.num_rows]
    return _unique_edges(pa.concat_tables(parts) if parts else pa.table({"a": [], "b": []}))


def _unique_edges(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``a``/``b`` columns of an edge table as int64 arrays, each edge once."""
    if not table.num_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.stack([table.column("a").to_numpy(), table.column("b").to_numpy()], axis=1).astype(np.int64)
    a, b = np.unique(pairs, axis=0).T
    return a, b


def _file_names(batch: pa.Table) -> pa.Table:
    """Ray Data UDF of the fit: the distinct ``source_file`` values of one batch."""
    return pa.table({"source_file": pc.unique(batch.column("source_file"))})


def _source_files(data: FitData) -> list[str]:
    """The input files of the fit's documents, sorted: a map and a set on the driver (no shuffle: there are few)."""
    names: set[str] = set()
    for batch in (
        data.dataset(["source_file"])
        .map_batches(_file_names, batch_format="pyarrow")
        .iter_batches(batch_format="pyarrow", batch_size=None)
    ):
        names.update(batch.column("source_file").to_pylist())
    return sorted(names)


def group_members(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of the edges ``a[i] -- b[i]`` over document numbers.

    Returns ``(members, kept, sizes)``: every document number that has an edge (sorted), the document each one's
    group keeps (the smallest number, i.e. the first in input order), and the group's size.
    """
    members = np.unique(np.concatenate([a, b]))
    roots = component_roots(len(members), np.searchsorted(members, a), np.searchsorted(members, b))
    return members, members[roots], component_sizes(roots)


@register
class MinHashDedup(Stage):
    """Near-duplicate groups by MinHash LSH (FineWeb's parameters); keeps the first member of each group."""

    name = "minhash"
    inputs = ("text", *KEY_COLUMNS)
    outputs = {
        "minhash_group": pa.string(),
        "minhash_count": pa.int64(),
        "minhash_keep": pa.bool_(),
    }
    Params = MinHashParams
    default_resources = Resources(num_cpus=1, batch_size=1024)
    fit_per_document = True  # members.parquet names the documents of this run: an update refits it

    @staticmethod
    def extends_prior_fit(digests: dict[str, str]) -> bool:
        """An update can link its new documents with the baseline fit's band rows (``bands/``), when it kept them."""
        return PriorBands.usable(digests)

    # -- fit ----------------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        """Find every near-duplicate group of the corpus with Ray Data; write ``members.parquet`` and the band
        rows (``bands/``, :mod:`dq_ray.stages._bands`).

        In an update whose fit data carries ``prior_artifacts`` (the baseline fit's verified folder and digests,
        :class:`dq_ray.pipeline.baseline.PriorFitData`), only the new documents are hashed; their bands are linked
        with the baseline's band rows, so groups span both runs.
        """
        p = self.params
        prior_artifacts = getattr(data, "prior_artifacts", None)
        prior = PriorBands(*prior_artifacts) if prior_artifacts else None
        num_rows = data.num_rows() + (prior.documents if prior else 0)
        band_rows = num_rows * p.num_buckets
        in_memory = p.shuffle_partitions is None and band_rows <= _BAND_ROWS_IN_MEMORY
        # a small corpus is hashed on the driver: a pool of actors, each loading the word tokenizer, costs more
        here = _read_here(data, list(self.inputs)) if in_memory and data.num_rows() <= p.local_hash_rows else None
        ds = data.dataset(list(self.inputs)) if here is None else None
        files = _source_files(data) if here is None else sorted(set(here.column("source_file").to_pylist()))
        if prior is not None:
            files = sorted(set(files) | set(prior.files))
        if len(files) >= 1 << (63 - _INDEX_BITS):
            raise ValueError(f"minhash: {len(files)} input files are more than it can number")
        partitions = 1 if in_memory else p.shuffle_partitions or max(1, math.ceil(band_rows / _BAND_ROWS_PER_PARTITION))
        args = {"params": p, "files": files, "partitions": partitions}
        if here is not None:
            size = self.default_resources.batch_size
            bands = [_band_rows(here.slice(i, size), **args) for i in range(0, here.num_rows, size)]
            if prior is not None:
                bands += _blocks(prior.dataset(files, partitions, _INDEX_BITS))
        else:
            pool = cpu_pool_args()
            bands = ds.map_batches(
                BandRows if pool else _band_rows,
                batch_format="pyarrow",
                batch_size=self.default_resources.batch_size,
                **({"fn_constructor_kwargs": args, **pool} if pool else {"fn_kwargs": args}),
            )
            if prior is not None:
                bands = bands.union(prior.dataset(files, partitions, _INDEX_BITS))
        if in_memory:
            # a few million band rows: link them here rather than shuffle them across the cluster
            parts = [t for t in (bands if here is not None else _blocks(bands)) if t.num_rows]
            rows = pa.concat_tables(parts) if parts else with_partition(empty_band_rows(), 1)
            write_band_table(data.artifacts_dir, rows)
            a, b = _unique_edges(_bucket_edges(rows))
        else:
            bands = write_band_dataset(data.artifacts_dir, bands)
            bands = bands.map_batches(with_partition, fn_kwargs={"partitions": partitions}, batch_format="pyarrow")
            bands = gather_for_sort(bands, band_rows * _BAND_ROW_BYTES, partitions)
            edges = bands.groupby("part", num_partitions=partitions).map_groups(_bucket_edges, batch_format="pyarrow")
            a, b = _collect_edges(edges)
        write_band_index(data.artifacts_dir, files, num_rows)
        members, kept, sizes = group_members(a, b)
        table = self._members_table(files, members, kept, sizes)
        write_parquet(table, posixpath.join(data.artifacts_dir, ARTIFACT))
        groups = int(np.unique(kept).size)
        info = {
            "documents": num_rows,
            "documents_in_groups": len(members),
            "groups": groups,
            "documents_not_kept": len(members) - groups,
            "candidate_edges": len(a),
            "shuffle_partitions": 0 if in_memory else partitions,
            "hashed_on": "workers" if here is None else "driver",
            "threshold_50pct": round((1 / p.num_buckets) ** (1 / p.hashes_per_bucket), 3),
            "artifact": ARTIFACT,
            "params": dataclasses.asdict(p),
        }
        if prior is not None:
            info["baseline_documents_from_bands"] = prior.documents
        log.info("minhash: %d document(s) in %d near-duplicate group(s)", len(members), groups)
        return info

    @staticmethod
    def _members_table(files: list[str], members: np.ndarray, kept: np.ndarray, sizes: np.ndarray) -> pa.Table:
        file_names = pa.array(files, pa.string())
        mask = np.int64((1 << _INDEX_BITS) - 1)
        source_file = file_names.take(pa.array(members >> _INDEX_BITS))
        kept_file = file_names.take(pa.array(kept >> _INDEX_BITS))
        return pa.table(
            {
                "source_file": source_file,
                "source_index": pa.array(members & mask, pa.int64()),
                "minhash_group": pa.array(doc_key_hex(kept_file, pa.array(kept & mask)), pa.string()),
                "minhash_keep": pa.array(members == kept, pa.bool_()),
                "minhash_count": pa.array(sizes, pa.int64()),
            }
        )

    # -- apply --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.artifacts_dir is None:
            raise RuntimeError("minhash runs after its fit: artifacts_dir is not set")
        digests = trusted_digests(self.artifacts_dir, self.artifact_digests)
        table = pq.read_table(pa.BufferReader(read_trusted(self.artifacts_dir, ARTIFACT, digests)))
        self._files = pc.unique(table.column("source_file")).sort()
        numbers = self._numbers(table)
        order = np.argsort(numbers, kind="stable")
        self._sorted = numbers[order]
        self._group = table.column("minhash_group").take(pa.array(order)).combine_chunks()
        self._count = table.column("minhash_count").to_numpy()[order]
        self._keep = table.column("minhash_keep").to_numpy(zero_copy_only=False)[order]

    def _numbers(self, table: pa.Table) -> np.ndarray:
        """Document numbers against the artifact's files (-1 for a file that holds no near-duplicate)."""
        file_no = pc.index_in(table.column("source_file"), value_set=self._files)
        file_no = pc.fill_null(file_no, -1).to_numpy().astype(np.int64)
        index = table.column("source_index").to_numpy().astype(np.int64)
        return np.where(file_no >= 0, (file_no << _INDEX_BITS) | index, -1)

    def _lookup(self, batch: pa.Table) -> np.ndarray:
        """Each row's position in the artifact, -1 for a document without near-duplicates."""
        numbers = self._numbers(batch)
        if not len(self._sorted):
            return np.full(len(numbers), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, numbers), len(self._sorted) - 1)
        return np.where((numbers >= 0) & (self._sorted[pos] == numbers), pos, -1)

    def process(self, batch: pa.Table) -> pa.Table:
        pos = self._lookup(batch)
        hit = pos >= 0
        group = pa.array(doc_key_hex(*(batch.column(c) for c in KEY_COLUMNS)), pa.string())
        count = np.ones(len(pos), dtype=np.int64)
        keep = np.ones(len(pos), dtype=bool)
        if hit.any():
            group = pc.if_else(pa.array(hit), self._group.take(pa.array(np.where(hit, pos, 0))), group)
            count[hit], keep[hit] = self._count[pos[hit]], self._keep[pos[hit]]
        return append_columns(
            batch,
            {"minhash_group": group, "minhash_count": pa.array(count), "minhash_keep": pa.array(keep)},
        )
