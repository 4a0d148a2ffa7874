"""Selection: turn a scored run into a curated subset, with a report of what was kept and removed, and why.

* :mod:`dq_ray.select.policy`: the rules (:class:`Policy`, :class:`FilterRule`, :class:`TopFractionRule`,
  :class:`DensitySampleRule`, :class:`TopicQuotaRule`), :func:`parse_policy` / :func:`load_policy`, and
  :func:`evaluate`, which applies a policy to an in-memory table and writes nothing (the dashboard's what-if);
* :mod:`dq_ray.select.apply`: :func:`select_run` / :func:`run_selection` apply a policy to a finished run
  directory and write ``selected/``, ``selection.json`` and the report;
* :mod:`dq_ray.select.report`: the curation report (``report.md`` and a self-contained ``report.html``).

Everything listed in ``__all__`` can be imported from ``dq_ray.select`` directly.
"""

from dq_ray.select.apply import (
    REPORT_COLUMNS,
    SELECTED_DIR,
    SelectionResult,
    format_selection,
    read_back_inputs,
    read_signals,
    removed_examples,
    run_selection,
    select_run,
    signal_columns,
    write_selected,
)
from dq_ray.select.policy import (
    FILTER_OPS,
    KEY_COLUMNS,
    RULE_KINDS,
    DensitySampleRule,
    Evaluation,
    FilterRule,
    Policy,
    Rule,
    Step,
    TopFractionRule,
    TopicQuotaRule,
    check_columns,
    doc_hashes,
    evaluate,
    load_policy,
    parse_policy,
)

__all__ = [
    "FILTER_OPS",
    "KEY_COLUMNS",
    "REPORT_COLUMNS",
    "RULE_KINDS",
    "SELECTED_DIR",
    "DensitySampleRule",
    "Evaluation",
    "FilterRule",
    "Policy",
    "Rule",
    "SelectionResult",
    "Step",
    "TopFractionRule",
    "TopicQuotaRule",
    "check_columns",
    "doc_hashes",
    "evaluate",
    "format_selection",
    "load_policy",
    "parse_policy",
    "read_back_inputs",
    "read_signals",
    "removed_examples",
    "run_selection",
    "select_run",
    "signal_columns",
    "write_selected",
]
