"""Where the probes fall in the corpus: density percentiles, nearest documents, nearest topics.

:func:`scan_corpus` makes one streamed pass over ``RUN/docs/`` (never the text): it keeps every document's
``density_score`` (the corpus's own density values, for the percentiles) and, per probe, the ``k`` documents
with the most similar ``embedding`` (cosine: the vectors are unit norm) with their ids and quality signals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray.vectors import embedding_matrix

log = logging.getLogger(__name__)

DENSITY = "density_score"
#: Signals reported for each nearest document when the run has them (and every ``*_pass`` flag).
NEIGHBOUR_SIGNALS = ("askllm_score", "askllm_pred", "density_score", "topic_id", "lang", "source")
#: The corpus's thinnest decile: a probe whose density percentile is at most this.
THIN_PERCENTILE = 10.0


@dataclass
class CorpusScan:
    """What one pass over ``docs/`` kept: density values, and per probe its nearest documents."""

    densities: np.ndarray
    neighbours: list[list[dict[str, Any]]] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    has_embedding: bool = True
    selected_densities: np.ndarray | None = None


def neighbour_columns(schema: pa.Schema) -> list[str]:
    """The docs/ columns shown next to each nearest document: id, the known signals and the heuristic flags."""
    cols = [c for c in NEIGHBOUR_SIGNALS if c in schema.names]
    cols += [c for c in schema.names if c.endswith("_pass") and pa.types.is_boolean(schema.field(c).type)]
    return cols


def scan_corpus(
    dataset: Any, probes: np.ndarray, k: int, selected: set[tuple[str, int]] | None = None, batch_rows: int = 65_536
) -> CorpusScan:
    """One pass over ``dataset`` (a pyarrow dataset of ``docs/``) against the unit-norm probe vectors ``probes``.

    ``selected``: the ``(source_file, source_index)`` keys of a selection; their density values are kept apart.
    """
    schema = dataset.schema
    signals = neighbour_columns(schema)
    has_embedding = "embedding" in schema.names
    keys = ["source_file", "source_index"] if selected is not None else []
    columns = list(dict.fromkeys(["id", DENSITY, *signals, *keys, *(["embedding"] if has_embedding else [])]))
    n_probes = len(probes)
    best_sim = np.full((n_probes, k), -np.inf, dtype=np.float32)
    best_rows: list[list[dict[str, Any] | None]] = [[None] * k for _ in range(n_probes)]
    densities: list[np.ndarray] = []
    chosen: list[np.ndarray] = []
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        dens = batch.column(DENSITY).to_numpy(zero_copy_only=False).astype(np.float64)
        densities.append(dens)
        if selected is not None:
            files = batch.column("source_file").to_pylist()
            idx = batch.column("source_index").to_pylist()
            chosen.append(np.fromiter(((f, i) in selected for f, i in zip(files, idx)), bool, count=len(files)))
        if has_embedding and n_probes:
            _merge_top_k(batch, embedding_matrix(batch.column("embedding")), probes, best_sim, best_rows, signals)
    all_dens = np.concatenate(densities) if densities else np.zeros(0)
    scan = CorpusScan(all_dens[np.isfinite(all_dens)], signals=signals, has_embedding=has_embedding)
    if selected is not None:
        mask = np.concatenate(chosen) if chosen else np.zeros(0, bool)
        sel = all_dens[mask]
        scan.selected_densities = sel[np.isfinite(sel)]
    scan.neighbours = [
        [{**row, "cosine": float(s)} for s, row in zip(best_sim[p], best_rows[p]) if row is not None]
        for p in range(n_probes)
    ]
    log.info("gaps: read %d corpus documents", len(all_dens))
    return scan


def _merge_top_k(
    batch: pa.RecordBatch,
    x: np.ndarray,
    probes: np.ndarray,
    best_sim: np.ndarray,
    best_rows: list[list[dict[str, Any] | None]],
    signals: list[str],
) -> None:
    """Fold one batch's documents into every probe's running top-k (most similar first)."""
    k = best_sim.shape[1]
    sims = probes.astype(np.float32) @ x.T  # (probes, rows)
    take = min(k, sims.shape[1])
    top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
    for p in range(len(probes)):
        cand_sim = np.concatenate([best_sim[p], sims[p, top[p]]])
        order = np.argsort(-cand_sim, kind="stable")[:k]
        rows: list[dict[str, Any] | None] = []
        for o in order:
            if o < k:
                rows.append(best_rows[p][o])
            else:
                i = int(top[p][o - k])
                rows.append({c: batch.column(c)[i].as_py() for c in ["id", *signals]})
        best_sim[p] = cand_sim[order]
        best_rows[p] = rows


def percentiles(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The percentile (0-100, mid-rank for ties) of every value among the ``reference`` values (nan if none)."""
    if len(reference) == 0:
        return np.full(len(values), np.nan)
    ref = np.sort(reference)
    below = np.searchsorted(ref, values, side="left")
    at_or_below = np.searchsorted(ref, values, side="right")
    return 100.0 * (below + 0.5 * (at_or_below - below)) / len(ref)


def thin_share(pct: np.ndarray) -> float | None:
    """The share of probes in the corpus's thinnest decile (percentile <= :data:`THIN_PERCENTILE`)."""
    finite = pct[np.isfinite(pct)]
    return float(np.mean(finite <= THIN_PERCENTILE)) if len(finite) else None


def topic_names(table: pa.Table | None) -> dict[int, dict[str, Any]]:
    """Fine topics of ``artifacts/topics.parquet`` by id: label (its keywords when it has none), size, share."""
    if table is None:
        return {}
    out = {}
    for r in table.to_pylist():
        if r.get("level") != "fine":
            continue
        label = r.get("topic_label") or ", ".join((r.get("keywords") or [])[:3]) or f"topic {r['topic_id']}"
        out[int(r["topic_id"])] = {"label": label, "size": r.get("size"), "share": r.get("share")}
    return out
