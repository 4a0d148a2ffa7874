"""Selection: turn a scored run into a curated subset, with a report of what was kept and removed, and why.

* :mod:`dq_ray.select.policy`: the rules (:class:`Policy`, :class:`FilterRule`, :class:`TopFractionRule`,
  :class:`DensitySampleRule`, :class:`TopicQuotaRule`), :func:`parse_policy` / :func:`load_policy`, and
  :func:`evaluate`, which applies a policy to an in-memory table and writes nothing (the dashboard's what-if);
* :mod:`dq_ray.select.apply`: :func:`select_run` / :func:`run_selection` apply a policy to a finished run
  directory and write ``selected/``, ``selection.json`` and the report;
* :mod:`dq_ray.select.export`: :func:`~dq_ray.select.export.export_run` writes a run's signals (text and map
  coordinates included, filtered or limited to a selection) as Parquet or JSONL with a dataset card
  (``dq-ray export``); import it from its module;
* :mod:`dq_ray.select.report`: the curation report (``report.md`` and a self-contained ``report.html``).

Everything listed in ``__all__`` can be imported from ``dq_ray.select`` directly.
"""

from dq_ray.select.apply import (
    OUTPUT_FORMATS,
    REPORT_COLUMNS,
    SELECTED_DIR,
    SOURCE_PATHS,
    OutputOptions,
    SelectionResult,
    count_rows,
    docs_schema,
    format_selection,
    gather_dataset,
    input_config,
    read_back_inputs,
    read_signals,
    removed_examples,
    run_selection,
    select_run,
    shown_source_file,
    signal_columns,
    source_file_map,
    write_dataset,
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
    "OUTPUT_FORMATS",
    "REPORT_COLUMNS",
    "RULE_KINDS",
    "SELECTED_DIR",
    "SOURCE_PATHS",
    "DensitySampleRule",
    "Evaluation",
    "FilterRule",
    "OutputOptions",
    "Policy",
    "Rule",
    "SelectionResult",
    "Step",
    "TopFractionRule",
    "TopicQuotaRule",
    "check_columns",
    "count_rows",
    "doc_hashes",
    "docs_schema",
    "evaluate",
    "format_selection",
    "gather_dataset",
    "input_config",
    "load_policy",
    "parse_policy",
    "read_back_inputs",
    "read_signals",
    "removed_examples",
    "run_selection",
    "select_run",
    "shown_source_file",
    "signal_columns",
    "source_file_map",
    "write_dataset",
    "write_selected",
]
