"""Selection policies: an ordered list of rules that turns a scored run into a curated subset.

A policy is data (YAML, in a file for ``dq-ray select`` or under ``selection:`` in a job config)::

    seed: 0
    rules:                                   # applied in this order, each to what the rules before it kept
      - {kind: filter, column: heur_gopher_quality_pass, op: is_true}
      - {kind: filter, column: exact_dup_keep, op: is_true}
      - {kind: top_fraction, column: askllm_score, fraction: 0.5}
      - {kind: trim_tails, column: askllm_ppl, low: 0.05, high: 0.05}   # drop both perplexity tails
      - {kind: density_sample, fraction: 0.6}          # or size: 100000
      - {kind: topic_quota, max_share: 0.05}           # or max_per_topic: 1000
    redact_pii: true                         # needs the pii stage: personal data -> <EMAIL>, <PHONE>... in selected/

Rule kinds (:data:`RULE_KINDS`):

* ``filter``: keep rows where ``column op value``; ``op`` one of :data:`FILTER_OPS` (``is_true`` /
  ``is_false`` for flags such as ``heur_*_pass`` and ``*_keep``, ``in`` / ``not_in`` with a list). A null never
  passes a comparison (``is_null`` / ``not_null`` test for it).
* ``top_fraction``: keep the ``fraction`` of the remaining rows with the highest ``column`` (lowest with
  ``ascending: true``: ``{kind: top_fraction, column: askllm_ppl, fraction: 0.8, ascending: true}`` keeps the
  80 % with the lowest perplexity); rows with a null value are not kept.
* ``trim_tails``: drop the ``low`` share of the remaining rows with the lowest ``column`` and the ``high`` share
  with the highest, keeping the middle (for perplexity: the lowest are repeated boilerplate and lists, the
  highest garbled text); rows with a null value are not kept.
* ``density_sample``: Density sampling: draw ``size`` rows (or ``fraction`` of the remaining ones) without
  replacement, with probability proportional to ``column`` (``density_weight``); weighted reservoir keys
  ``u ** (1 / w)`` (Efraimidis & Spirakis) with ``u`` a hash of the document key and the seed. With
  ``favour: RUN/gaps-NAME`` (a ``dq-ray gaps`` report) the nearest documents of the under-covered probes weigh
  ``favour_weight`` (4) times more: ``{kind: density_sample, fraction: 0.6, favour: runs/demo/gaps-questions}``.
* ``topic_quota``: at most ``max_per_topic`` rows (or ``max_share`` of the remaining rows) per value of
  ``column`` (``topic_id``), the highest ``order_by`` first when given, else a seeded random choice.

``redact_pii: true`` changes what is written, not what is kept: in ``selected/`` every span the ``pii`` stage found
(``pii_spans``) is replaced by its kind's placeholder (``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<CREDIT_CARD>``,
``<IBAN>``, ``<NATIONAL_ID>``), nothing outside the spans changes, and the report counts what was redacted.

Every random choice comes from a hash of the document key (``source_file#source_index``, else ``id``), the rule's
position and the seed, so the result is the same for a seed however the rows are ordered or split.

:func:`evaluate` runs a policy on an in-memory table (pyarrow or pandas) and writes nothing (the dashboard's
what-if panel uses it); :func:`dq_ray.select.apply.select_run` applies it to a run directory and writes
``selected/`` and the report.

This module is the pure rules: it reads and writes no run directory and imports nothing that leads to the job
config (:mod:`dq_ray.config` imports it to check a job's ``selection:`` block).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dq_ray.errors import ConfigError
from dq_ray.stage import KEY_COLUMNS
from dq_ray.typed import build_dataclass, load_yaml

FILTER_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_true", "is_false", "is_null", "not_null")
_UNARY_OPS = ("is_true", "is_false", "is_null", "not_null")


# -- rules ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterRule:
    """Keep rows where ``column op value``.

    Attributes:
        column: a column of ``docs/`` (e.g. ``heur_c4_pass``, ``exact_dup_keep``, ``heur_n_words``).
        op: one of ``==, !=, <, <=, >, >=, in, not_in, is_true, is_false, is_null, not_null``.
        value: the right-hand side (a list for ``in`` / ``not_in``; none for the unary ops).
        name: a label for the report (default: the rule written out).
    """

    column: str
    op: str
    value: Any = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.op not in FILTER_OPS:
            raise ValueError(f"op {self.op!r} is not one of {', '.join(FILTER_OPS)}")
        if self.op in _UNARY_OPS and self.value is not None:
            raise ValueError(f"op {self.op} takes no value")
        if self.op in ("in", "not_in") and not isinstance(self.value, (list, tuple)):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op not in _UNARY_OPS and self.op not in ("in", "not_in") and self.value is None:
            raise ValueError(f"op {self.op} needs a value")

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def label(self) -> str:
        if self.name:
            return self.name
        return f"{self.column} {self.op}" + ("" if self.op in _UNARY_OPS else f" {self.value!r}")

    def apply(self, data: _Data, alive: np.ndarray) -> np.ndarray:
        values, valid = data.values(self.column)
        op = self.op
        if op == "is_null":
            return alive & ~valid
        if op == "not_null":
            return alive & valid
        ok = np.zeros(len(alive), dtype=bool)
        v = values[valid]
        if op == "is_true":
            ok[valid] = v.astype(bool)
        elif op == "is_false":
            ok[valid] = ~v.astype(bool)
        elif op in ("in", "not_in"):
            member = np.isin(v, np.asarray(list(self.value), dtype=v.dtype if v.dtype != object else object))
            ok[valid] = member if op == "in" else ~member
        else:
            cmp = {
                "==": np.equal,
                "!=": np.not_equal,
                "<": np.less,
                "<=": np.less_equal,
                ">": np.greater,
                ">=": np.greater_equal,
            }[op]
            ok[valid] = cmp(v, self.value)
        return alive & ok


@dataclass(frozen=True)
class TopFractionRule:
    """Keep the ``fraction`` of the remaining rows with the highest ``column`` (``ascending``: the lowest).

    Attributes:
        column: a score such as ``askllm_score`` (or its distilled prediction ``askllm_pred``).
        fraction: share of the remaining rows kept, in (0, 1] (rounded to the nearest row).
        ascending: keep the lowest values instead.
        name: a label for the report.
    """

    column: str
    fraction: float
    ascending: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def label(self) -> str:
        return self.name or f"{'bottom' if self.ascending else 'top'} {self.fraction:g} by {self.column}"

    def apply(self, data: _Data, alive: np.ndarray) -> np.ndarray:
        values, valid = data.values(self.column)
        n_keep = round(self.fraction * int(alive.sum()))
        cand = np.flatnonzero(alive & valid)
        score = values[cand].astype(np.float64)
        if not self.ascending:
            score = -score
        order = cand[np.lexsort((data.hash_keys[cand], score))]
        out = np.zeros(len(alive), dtype=bool)
        out[order[:n_keep]] = True
        return out


@dataclass(frozen=True)
class TrimTailsRule:
    """Drop both tails of ``column``: the ``low`` share of the remaining rows with the lowest values and the
    ``high`` share with the highest (each rounded to the nearest row; ties broken by the seeded document hash).

    Attributes:
        column: a signal such as ``askllm_ppl`` (perplexity) or ``askllm_doc_logprob``.
        low: share of the remaining rows dropped at the low end, in [0, 1).
        high: share dropped at the high end, in [0, 1); ``low + high`` < 1.
        name: a label for the report.
    """

    column: str
    low: float = 0.0
    high: float = 0.0
    name: str | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.low < 1 and 0 <= self.high < 1 and self.low + self.high < 1):
            raise ValueError("low and high must be in [0, 1) with low + high < 1")
        if self.low == 0 and self.high == 0:
            raise ValueError("give low or high (a share of rows to drop at that end)")

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def label(self) -> str:
        return self.name or f"drop the lowest {self.low:g} and highest {self.high:g} by {self.column}"

    def apply(self, data: _Data, alive: np.ndarray) -> np.ndarray:
        values, valid = data.values(self.column)
        n_alive = int(alive.sum())
        cand = np.flatnonzero(alive & valid)
        order = cand[np.lexsort((data.hash_keys[cand], values[cand].astype(np.float64)))]
        start, stop = round(self.low * n_alive), len(order) - round(self.high * n_alive)
        out = np.zeros(len(alive), dtype=bool)
        out[order[start : max(start, stop)]] = True
        return out


@dataclass(frozen=True)
class DensitySampleRule:
    """Density sampling: ``size`` rows (or ``fraction`` of the remaining) drawn with probability ~ ``column``.

    Attributes:
        size: rows to draw (all remaining rows if fewer remain).
        fraction: or: share of the remaining rows to draw, in (0, 1].
        column: the sampling weight (``density_weight``); a null or non-positive weight is never drawn.
        name: a label for the report.
        favour: a ``dq-ray gaps`` output (its folder or its ``probes.parquet``): the nearest documents of every
            probe at or below ``favour_percentile`` of the corpus's density (the under-covered ones) have their
            weight multiplied by ``favour_weight``, so the sample keeps more of what those probes stand for.
        favour_weight: the factor for those documents (> 1 favours them, < 1 holds them back).
        favour_percentile: which probes count as under-covered (10: the corpus's thinnest decile).
    """

    size: int | None = None
    fraction: float | None = None
    column: str = "density_weight"
    name: str | None = None
    favour: str | None = None
    favour_weight: float = 4.0
    favour_percentile: float = 10.0

    def __post_init__(self) -> None:
        if (self.size is None) == (self.fraction is None):
            raise ValueError("give exactly one of size or fraction")
        if self.size is not None and self.size < 0:
            raise ValueError("size must be >= 0")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        if not (math.isfinite(self.favour_weight) and self.favour_weight > 0):
            raise ValueError("favour_weight must be a positive number")
        if not 0 <= self.favour_percentile <= 100:
            raise ValueError("favour_percentile must be in [0, 100]")
        if self.favour is not None:
            favoured_ids(self.favour, self.favour_percentile)  # a missing or foreign file fails here, not later

    def columns(self) -> tuple[str, ...]:
        return (self.column, "id") if self.favour is not None else (self.column,)

    def label(self) -> str:
        what = f"{self.size} docs" if self.size is not None else f"{self.fraction:g}"
        near = f", x{self.favour_weight:g} near thin probes" if self.favour is not None else ""
        return self.name or f"density sample {what} by {self.column}{near}"

    def apply(self, data: _Data, alive: np.ndarray) -> np.ndarray:
        weights, valid = data.values(self.column)
        n_alive = int(alive.sum())
        n_keep = self.size if self.size is not None else round(self.fraction * n_alive)
        cand = np.flatnonzero(alive & valid)
        w = weights[cand].astype(np.float64)
        if self.favour is not None:
            ids, _ = data.values("id")
            near = favoured_ids(self.favour, self.favour_percentile)
            w = np.where(np.fromiter((str(v) in near for v in ids[cand]), bool, len(cand)), w * self.favour_weight, w)
        cand, w = cand[w > 0], w[w > 0]
        # Efraimidis-Spirakis: keep the n largest u ** (1 / w), i.e. the largest log(u) / w
        u = (data.hash_keys[cand] >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        key = np.log(np.maximum(u, 1e-300)) / w
        order = cand[np.lexsort((data.hash_keys[cand], -key))]
        out = np.zeros(len(alive), dtype=bool)
        out[order[:n_keep]] = True
        return out


def favoured_ids(path: str, percentile: float) -> frozenset[str]:
    """The ``id`` of every nearest document of the probes of a ``dq-ray gaps`` output (``path``: its folder or
    its ``probes.parquet``) whose density percentile is at most ``percentile``."""
    file = Path(path).expanduser().resolve()
    file = file / "probes.parquet" if file.is_dir() else file
    try:
        stamp = file.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"favour: no dq-ray gaps report at {path} ({exc.strerror})") from exc
    return _favoured_ids(str(file), stamp, float(percentile))


@functools.lru_cache(maxsize=8)
def _favoured_ids(file: str, stamp: int, percentile: float) -> frozenset[str]:
    """(Cached per file version: ``stamp`` is its modification time.)"""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file, columns=["density_percentile", "neighbour_ids"])
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise ValueError(f"favour: {file} is not the probes.parquet of a dq-ray gaps report ({exc})") from exc
    ids: set[str] = set()
    for pct, near in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
        if pct is not None and pct <= percentile:
            ids.update(near or ())
    return frozenset(ids)


@dataclass(frozen=True)
class TopicQuotaRule:
    """At most ``max_per_topic`` rows (or ``max_share`` of the remaining rows) per value of ``column``.

    Attributes:
        max_per_topic: cap per topic.
        max_share: or: cap as a share of the rows remaining before this rule (at least 1 row per topic).
        column: the topic column (``topic_id``, or ``topic_coarse_id``); null is a topic of its own.
        order_by: which rows of a topic to keep first: the highest values of this column; null: seeded random.
        name: a label for the report.
    """

    max_per_topic: int | None = None
    max_share: float | None = None
    column: str = "topic_id"
    order_by: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.max_per_topic is None) == (self.max_share is None):
            raise ValueError("give exactly one of max_per_topic or max_share")
        if self.max_per_topic is not None and self.max_per_topic < 1:
            raise ValueError("max_per_topic must be >= 1")
        if self.max_share is not None and not 0 < self.max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")

    def columns(self) -> tuple[str, ...]:
        return (self.column,) + ((self.order_by,) if self.order_by else ())

    def cap(self, n_alive: int) -> int:
        if self.max_per_topic is not None:
            return self.max_per_topic
        return max(1, math.floor(self.max_share * n_alive))

    def label(self) -> str:
        cap = self.max_per_topic if self.max_per_topic is not None else f"{self.max_share:g} share"
        return self.name or f"at most {cap} per {self.column}"

    def apply(self, data: _Data, alive: np.ndarray) -> np.ndarray:
        topics, valid = data.values(self.column)
        cap = self.cap(int(alive.sum()))
        cand = np.flatnonzero(alive)
        group = np.where(valid[cand], topics[cand], -(2**62)).astype(np.int64)
        if self.order_by:
            s, s_valid = data.values(self.order_by)
            score = np.where(s_valid[cand], -s[cand].astype(np.float64), np.inf)
        else:
            score = np.zeros(len(cand))
        order = np.lexsort((data.hash_keys[cand], score, group))
        g = group[order]
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if len(g) else np.zeros(0, dtype=np.int64)
        rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
        out = np.zeros(len(alive), dtype=bool)
        out[cand[order[rank < cap]]] = True
        return out


Rule = FilterRule | TopFractionRule | TrimTailsRule | DensitySampleRule | TopicQuotaRule

RULE_KINDS: dict[str, type] = {
    "filter": FilterRule,
    "top_fraction": TopFractionRule,
    "trim_tails": TrimTailsRule,
    "density_sample": DensitySampleRule,
    "topic_quota": TopicQuotaRule,
}


@dataclass(frozen=True)
class Policy:
    """An ordered list of rules, a seed, and what the selected output leaves out.

    Attributes:
        rules: applied in order, each to the rows the rules before it kept.
        seed: seed of every random choice (density sampling, random picks inside a topic quota, ties).
        exclude_columns: signal columns not copied into ``selected/`` (the embedding, by default).
        redact_pii: replace each personal-data span of the ``pii`` stage by a typed placeholder (``<EMAIL>``...)
            in the text written to ``selected/`` (the run needs the ``pii`` stage).
    """

    rules: tuple[Rule, ...] = ()
    seed: int = 0
    exclude_columns: tuple[str, ...] = ("embedding",)
    redact_pii: bool = False

    def columns(self) -> list[str]:
        """Every column some rule reads."""
        return list(dict.fromkeys(c for r in self.rules for c in r.columns()))

    def to_dict(self) -> dict[str, Any]:
        rules = []
        for r in self.rules:
            kind = next(k for k, cls in RULE_KINDS.items() if isinstance(r, cls))
            rules.append({"kind": kind, **{k: v for k, v in dataclasses.asdict(r).items() if v is not None}})
        out = {"seed": self.seed, "exclude_columns": list(self.exclude_columns), "rules": rules}
        if self.redact_pii:
            out["redact_pii"] = True
        return out


def parse_policy(data: Any, where: str = "selection") -> Policy:
    """Build a :class:`Policy` from plain data (parsed YAML); raises ``ConfigError`` naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with 'rules' (and optionally seed, exclude_columns)")
    unknown = sorted(set(data) - {"rules", "seed", "exclude_columns", "redact_pii"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: rules, seed, exclude_columns, redact_pii")
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{where}.rules: expected a list of rules")
    rules = []
    for i, entry in enumerate(raw_rules):
        at = f"{where}.rules[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ConfigError(f"{at}: expected a mapping with a 'kind' (one of {', '.join(RULE_KINDS)})")
        kind = entry["kind"]
        if kind not in RULE_KINDS:
            raise ConfigError(f"{at}.kind: unknown rule kind {kind!r}; valid kinds: {', '.join(RULE_KINDS)}")
        fields = {k: v for k, v in entry.items() if k != "kind"}
        rules.append(build_dataclass(RULE_KINDS[kind], fields, f"{at}({kind})"))
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.seed: expected an integer, got {seed!r}")
    exclude = data.get("exclude_columns", ["embedding"])
    if not isinstance(exclude, list) or not all(isinstance(c, str) for c in exclude):
        raise ConfigError(f"{where}.exclude_columns: expected a list of column names")
    redact_pii = data.get("redact_pii", False)
    if not isinstance(redact_pii, bool):
        raise ConfigError(f"{where}.redact_pii: expected true or false, got {redact_pii!r}")
    return Policy(rules=tuple(rules), seed=seed, exclude_columns=tuple(exclude), redact_pii=redact_pii)


def load_policy(path: str) -> Policy:
    """A policy from a YAML file (``rules:`` + optional ``seed``; a job config's ``selection:`` block works too)."""
    data = load_yaml(path, "policy")
    if "selection" in data and "rules" not in data:
        data = data["selection"]
    return parse_policy(data, where=Path(path).name)


def check_columns(policy: Policy, available: Sequence[str], where: str = "selection") -> None:
    """Every column a rule reads must exist; raises ``ConfigError`` listing what is available."""
    missing = [c for c in policy.columns() if c not in available]
    if missing:
        raise ConfigError(
            f"{where}: rule column(s) {missing} are not produced by the run; available: {', '.join(available)}"
        )
    if policy.redact_pii and "pii_count" not in available:
        raise ConfigError(
            f"{where}: redact_pii needs the pii stage's columns (pii_count, pii_spans); add the pii stage"
        )


# -- evaluation -------------------------------------------------------------------------------------------


class _Data:
    """Column access for rules: numpy values + validity masks, and a per-row hash key (seeded)."""

    def __init__(self, table: Any, seed: int) -> None:
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        self.table, self.seed = table, seed
        #: which rule is being applied: each rule draws its own random numbers (the seed salted with its index)
        self.rule_index = 0
        self._hashes: dict[int, np.ndarray] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def hash_keys(self) -> np.ndarray:
        """Per row, a 64-bit hash of its document key, the seed and the current rule's index."""
        if self.rule_index not in self._hashes:
            salted = (self.seed * 1_000_003 + self.rule_index) % 2**64
            self._hashes[self.rule_index] = doc_hashes(self.table, salted)
        return self._hashes[self.rule_index]

    def values(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        if column not in self._cache:
            if column not in self.table.column_names:
                raise KeyError(f"column {column!r} is not in the data; columns: {', '.join(self.table.column_names)}")
            arr = self.table.column(column).combine_chunks()
            valid = np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)
            if pa.types.is_floating(arr.type):
                valid &= ~np.isnan(arr.fill_null(0).to_numpy(zero_copy_only=False))
            if pa.types.is_boolean(arr.type):
                values = arr.fill_null(False).to_numpy(zero_copy_only=False)
            elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
                values = arr.fill_null(0).to_numpy(zero_copy_only=False)
            else:
                values = np.asarray(arr.to_pylist(), dtype=object)
            self._cache[column] = (values, valid)
        return self._cache[column]


def doc_hashes(table: pa.Table, seed: int) -> np.ndarray:
    """A seeded 64-bit hash per row of its document key (``source_file#source_index``, else ``id``, else row)."""
    names = table.column_names
    if all(k in names for k in KEY_COLUMNS):
        keys = [
            f"{f}#{i}"
            for f, i in zip(table.column("source_file").to_pylist(), table.column("source_index").to_pylist())
        ]
    elif "id" in names:
        keys = [str(v) for v in table.column("id").to_pylist()]
    else:
        keys = [str(i) for i in range(table.num_rows)]
    return np.fromiter((xxhash.xxh3_64_intdigest(k.encode(), seed=seed) for k in keys), np.uint64, len(keys))


@dataclass
class Step:
    """One rule's effect: rows in, rows kept, and the mask of rows kept after it (cumulative)."""

    rule: Rule
    label: str
    rows_in: int
    kept: int
    mask: np.ndarray = field(repr=False)

    @property
    def removed(self) -> int:
        return self.rows_in - self.kept


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        steps: one :class:`Step` per rule, in order (``steps[i].mask``: rows still kept after rule ``i``).
        kept: the final keep mask (rows of the input table).
        removed_by: per row, the index of the rule that removed it, or -1 if it is kept.
    """

    steps: list[Step]
    kept: np.ndarray
    removed_by: np.ndarray

    def counts(self) -> list[dict[str, Any]]:
        return [{"rule": s.label, "in": s.rows_in, "kept": s.kept, "removed": s.removed} for s in self.steps]


def evaluate(policy: Policy, table: Any) -> Evaluation:
    """Apply ``policy`` to an in-memory ``pyarrow.Table`` or pandas ``DataFrame``; writes nothing.

    The table needs the columns the rules read (:meth:`Policy.columns`), plus ``source_file`` and
    ``source_index`` (or ``id``) for the seeded random choices.
    """
    data = _Data(table, policy.seed)
    n = data.table.num_rows
    alive = np.ones(n, dtype=bool)
    removed_by = np.full(n, -1, dtype=np.int32)
    steps = []
    for i, rule in enumerate(policy.rules):
        rows_in = int(alive.sum())
        data.rule_index = i
        new = rule.apply(data, alive) & alive
        removed_by[alive & ~new] = i
        alive = new
        steps.append(Step(rule, rule.label(), rows_in, int(alive.sum()), alive.copy()))
    return Evaluation(steps, alive, removed_by)
