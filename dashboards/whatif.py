"""The what-if panel's engine: how many documents, and which topics, a selection policy would keep.

Policies are :class:`dq_ray.select.Policy` objects (the same rules ``dq-ray select`` applies), evaluated with
:func:`dq_ray.select.evaluate` on an in-memory table built from the store's cached columns, so the number shown
is the number the selection would write (on a prepared run: an estimate from the uniform sample). Nothing is
written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dq_ray.select.policy import (
    DensitySampleRule,
    FilterRule,
    Policy,
    TopFractionRule,
    TopicQuotaRule,
    check_columns,
    evaluate,
)

__all__ = ["Policy", "WhatIf", "build_policy", "evaluate_policy"]


def build_policy(
    require: tuple[str, ...] = (),
    top_by: str | None = None,
    top_fraction: float = 1.0,
    density_fraction: float | None = None,
    topic_max_share: float | None = None,
    topic_column: str = "topic_id",
    seed: int = 0,
) -> Policy:
    """The policy the panel's widgets describe: required flags, a top fraction, density sampling, a topic quota."""
    rules: list[Any] = [FilterRule(column=c, op="is_true") for c in require]
    if top_by and top_fraction < 1.0:
        rules.append(TopFractionRule(column=top_by, fraction=float(top_fraction)))
    if density_fraction is not None and density_fraction < 1.0:
        rules.append(DensitySampleRule(fraction=float(density_fraction)))
    if topic_max_share is not None and topic_max_share < 1.0:
        rules.append(TopicQuotaRule(column=topic_column, max_share=float(topic_max_share)))
    return Policy(rules=tuple(rules), seed=seed)


@dataclass
class WhatIf:
    """The outcome of a policy on the documents considered."""

    considered: int
    kept: int
    steps: list[dict[str, Any]]
    by_group: pd.DataFrame
    group_column: str | None
    policy: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0

    @property
    def kept_share(self) -> float:
        return self.kept / max(self.considered, 1)


def policy_table(store, columns: list[str]) -> pa.Table:
    """The columns a policy reads (plus the document key), for every in-memory row, as Arrow."""
    names = list(dict.fromkeys([*columns, "source_file", "source_index"]))
    arrays = {}
    for name in names:
        arrays[name] = store._cached(
            f"arrow:{name}", lambda n=name: store._source_table([n]).column(n).combine_chunks()
        )
    return pa.table(arrays)


def evaluate_policy(store, policy: Policy, within: np.ndarray | None = None) -> WhatIf:
    """Evaluate ``policy`` on the store's rows (only those in the boolean mask ``within``, if given)."""
    group = next((c for c in ("topic_id", "topic_coarse_id", "source") if c in store.columns.categorical), None)
    available = list(store.columns.numeric + store.columns.flags + store.columns.categorical)
    check_columns(policy, available, where="what-if policy")
    cols = policy.columns() + ([group] if group else [])
    table = policy_table(store, cols)
    if within is not None:
        table = table.filter(pa.array(within))
    result = evaluate(policy, table)
    scale = store.scale
    kept = result.kept
    if group:
        g = table.column(group).to_pandas().astype("string").fillna("(none)")
        df = pd.DataFrame({group: g, "kept": kept})
        by = df.groupby(group, sort=False)["kept"].agg(["size", "sum"]).reset_index()
        by.columns = [group, "documents", "kept"]
        by["documents"] = (by["documents"] * scale).round().astype(int)
        by["kept"] = (by["kept"] * scale).round().astype(int)
        by["kept_share"] = (by["kept"] / by["documents"].clip(lower=1)).round(3)
        by = by.sort_values("documents", ascending=False).reset_index(drop=True)
    else:
        by = pd.DataFrame()
    steps = [{**s, "kept": int(round(s["kept"] * scale)), "in": int(round(s["in"] * scale))} for s in result.counts()]
    return WhatIf(
        considered=int(round(table.num_rows * scale)),
        kept=int(round(int(kept.sum()) * scale)),
        steps=steps,
        by_group=by,
        group_column=group,
        policy=policy.to_dict(),
        scale=scale,
    )
