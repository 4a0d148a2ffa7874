"""The ``dq-ray`` command.

    dq-ray run CONFIG.yaml [--input PATH ...] [--output RUN_DIR] [--set key.sub=value ...] [--overwrite | --resume]
               [--progress/--no-progress] [--progress-every SECONDS]
    dq-ray validate CONFIG.yaml [same options]     check config and inputs without starting Ray
    dq-ray select RUN --policy POLICY.yaml [--output DIR] [--seed N]   curated subset + report of a run
               [--shuffle] [--format parquet|jsonl] [--source-paths relative|absolute|redacted] [--rows-per-file N]
    dq-ray export RUN --output PATH [--format parquet|jsonl] [--columns a,b] [--no-text] [--where EXPR ...]
               [--selected DIR]                    signals + text + map coordinates, with a dataset card
    dq-ray stages                                  list the registered stages and their columns
    dq-ray demo-corpus OUT_DIR                     build the demo corpus from installed packages
    dq-ray dashboard RUN [--port P] [--address A]  serve the map of a run (127.0.0.1 by default)
    dq-ray dashboard-prepare RUN                   tiles + pyramid for maps beyond memory (a Ray job)
    dq-ray demo-preference OUT_DIR                 build the constructed demo preference set (DPO, KTO, SFT)
    dq-ray compare RUN_A RUN_B [--output DIR] [--psi X] [--ks-pvalue P] [--ks-stat D] [--rate-diff R]   drift report
    dq-ray gaps RUN --probes FILE [--output DIR] [--k 10]   coverage of a probe set (density, nearest docs, topic)

``run`` uses the Ray cluster at ``$RAY_ADDRESS`` (or ``ray.address`` in the config) when set, and an
embedded local Ray otherwise. It shows live progress on stderr (bars on a terminal, a log line every 10 s
otherwise; see :mod:`dq_ray.pipeline.progress`) and ends with a summary that includes what 1e9 documents cost
at the run's measured rates.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from dq_ray.config import ConfigError, JobConfig, load_config
from dq_ray.io import RunExistsError

log = logging.getLogger("dq_ray")


def _setup_logging(verbose: bool) -> None:
    if not verbose:  # Ray Data's per-dataset INFO lines; read when ray.data is first imported
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("ray", "ray.data", "filelock", "fsspec", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def _config_options(fn):
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY.SUB=VALUE", help="Override a config value.")(fn)
    fn = click.option("--output", "-o", default=None, help="Run directory (replaces output.path).")(fn)
    fn = click.option("--input", "-i", "inputs", multiple=True, help="Input path/dir/glob (replaces input.paths).")(fn)
    return click.argument("config", type=click.Path(dir_okay=False))(fn)


def _load(config: str, inputs: tuple[str, ...], output: str | None, overrides: tuple[str, ...]) -> JobConfig:
    try:
        return load_config(config, overrides=overrides, inputs=inputs or None, output=output)
    except ConfigError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dq-ray")
def main() -> None:
    """dq-ray: judge and curate LLM training data at web scale, as a Ray Data job."""


@main.command()
@_config_options
@click.option("--overwrite", is_flag=True, help="Replace a run already in the output directory.")
@click.option("--resume", is_flag=True, help="Continue a killed or failed run in the output directory.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show live progress: bars on a terminal, a log line every few seconds otherwise (default: on; "
    "$DQ_RAY_PROGRESS=auto|bars|log|off|ray chooses when neither flag is given).",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Seconds between two progress log lines when stderr is not a terminal (default 10, "
    "or $DQ_RAY_PROGRESS_EVERY).",
)
@click.option(
    "--baseline",
    default=None,
    metavar="RUN",
    help="An earlier finished run: score only documents it has not scored, apply its fitted artifacts (index, "
    "centroids, map), flag copies of its documents; select/export read both runs as one corpus.",
)
@click.option(
    "--recompute-changed",
    is_flag=True,
    help="With --baseline: compute stages whose config differs from the baseline's afresh instead of refusing.",
)
@click.option(
    "--baseline-keep",
    type=click.Choice(["old", "both"]),
    default="old",
    show_default=True,
    help="With --baseline: which copy of a document the baseline already holds keeps exact_dup_keep.",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (and Ray's own logs).")
def run(
    config: str,
    inputs,
    output,
    overrides,
    overwrite: bool,
    resume: bool,
    progress: bool | None,
    progress_every: float | None,
    baseline: str | None,
    recompute_changed: bool,
    baseline_keep: str,
    verbose: bool,
) -> None:
    """Score every document of the inputs and write the run directory.

    With --baseline RUN, an incremental run: documents whose text RUN already scored reuse its signals, RUN's
    fits are applied (not refitted), copies of RUN's documents are flagged (exact_dup_in_baseline), and the new
    run reads as one corpus with RUN. A baseline made with another config is refused, the differences listed.
    """
    from dq_ray.artifacts import UntrustedArtifactError
    from dq_ray.io import InputError
    from dq_ray.io.guard import NotARunError, RunLockedError, UnsafeOutputError
    from dq_ray.pipeline import run_job
    from dq_ray.pipeline.baseline import BaselineOptions
    from dq_ray.pipeline.progress import resolve_every, resolve_mode

    _setup_logging(verbose)
    cfg = _load(config, inputs, output, overrides)
    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other")
    if baseline is None and (recompute_changed or baseline_keep != "old"):
        raise click.UsageError("--recompute-changed and --baseline-keep need --baseline")
    base = BaselineOptions(baseline, recompute_changed, baseline_keep) if baseline else None
    try:  # a $DQ_RAY_PROGRESS or $DQ_RAY_PROGRESS_EVERY that means nothing is refused before anything runs
        mode = resolve_mode(None if progress is None else ("auto" if progress else "off"))
        every = resolve_every(progress_every)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        result = run_job(cfg, overwrite=overwrite, resume=resume, progress=mode, progress_every=every, baseline=base)
    except (
        ConfigError,
        InputError,
        RunExistsError,
        NotARunError,
        RunLockedError,
        UnsafeOutputError,
        UntrustedArtifactError,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(result.manifest))
    if cfg.selection is not None:  # the config's selection policy, applied to the finished run
        _select(result.run_dir, cfg.selection, None, None, cfg.ray)


def _select(run_dir: str, policy, output: str | None, seed: int | None, ray_cfg=None, options=None) -> None:
    from dq_ray.io.guard import NotARunError, RunLockedError, UnsafeOutputError
    from dq_ray.select import format_selection, run_selection

    try:
        result = run_selection(run_dir, policy, output=output, seed=seed, ray_cfg=ray_cfg, options=options)
    except (ConfigError, FileNotFoundError, NotARunError, RunLockedError, UnsafeOutputError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_selection(result.summary))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--policy", "-p", "policy_path", required=True, type=click.Path(dir_okay=False), help="Policy YAML.")
@click.option("--output", "-o", default=None, help="Output directory (default: the run directory itself).")
@click.option("--seed", type=int, default=None, help="Override the policy's seed (also the --shuffle order's).")
@click.option("--shuffle", is_flag=True, help="Write the rows in one seeded random order across the whole selection.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "jsonl"]),
    default="parquet",
    show_default=True,
    help="jsonl: one JSON object per line with text and id (for trainers); parquet: input fields + signals.",
)
@click.option(
    "--source-paths",
    type=click.Choice(["relative", "absolute", "redacted"]),
    default="relative",
    show_default=True,
    help="source_file as the path under its input root, as stored in the run, or a hash of it.",
)
@click.option(
    "--rows-per-file",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per output file (files filled up to it; default: one file per input file's share).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (and Ray's own logs).")
def select(
    run_dir: str,
    policy_path: str,
    output: str | None,
    seed: int | None,
    shuffle: bool,
    fmt: str,
    source_paths: str,
    rows_per_file: int | None,
    verbose: bool,
) -> None:
    """Apply a selection policy to a finished run: write selected/ and report.md/.html (no signal recomputed)."""
    from dq_ray.select import OutputOptions, load_policy

    _setup_logging(verbose)
    try:
        policy = load_policy(policy_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid policy: {exc}") from None
    options = OutputOptions(format=fmt, shuffle=shuffle, source_paths=source_paths, rows_per_file=rows_per_file)
    _select(run_dir, policy, output, seed, options=options)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, help="Output directory (new or empty): data files + README.md.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True)
@click.option("--columns", default=None, metavar="A,B,...", help="Only these docs/ columns (ids always come).")
@click.option("--text/--no-text", default=True, show_default=True, help="Include the document text.")
@click.option(
    "--where",
    multiple=True,
    metavar="EXPR",
    help="Only rows where COLUMN OP VALUE (ops ==, !=, <, <=, >, >=; e.g. 'askllm_score>=0.5', "
    "'heur_c4_pass==true', 'lang==en', 'topic_id!=null'); repeat to require several.",
)
@click.option(
    "--selected",
    "selected_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Only the rows of this dq-ray select output (its folder or its selected/).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (and Ray's own logs).")
def export(
    run_dir: str,
    output: str,
    fmt: str,
    columns: str | None,
    text: bool,
    where: tuple[str, ...],
    selected_dir: str | None,
    verbose: bool,
) -> None:
    """Write a run's signals, text and map coordinates as Parquet or JSONL, with a dataset card (README.md)."""
    from dq_ray.io import InputError
    from dq_ray.io.guard import NotARunError, UnsafeOutputError
    from dq_ray.select.export import export_run

    _setup_logging(verbose)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns is not None else None
    try:
        result = export_run(run_dir, output, fmt=fmt, columns=cols, text=text, where=where, selected=selected_dir)
    except (ConfigError, FileNotFoundError, InputError, NotARunError, UnsafeOutputError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"exported {result['rows_exported']:,} of {result['rows_in_run']:,} documents "
        f"({len(result['columns'])} columns, {fmt}) -> {result['output']}\ndataset card: {result['card']}"
    )


@main.command()
@_config_options
def validate(config: str, inputs, output, overrides) -> None:
    """Check a config and its inputs (no Ray); print the resolved config and the column flow."""
    from dq_ray.config import READER_COLUMNS
    from dq_ray.io import InputError, discover_inputs
    from dq_ray.io.guard import UnsafeOutputError, check_output

    cfg = _load(config, inputs, output, overrides)
    try:
        check_output(cfg.output.path, cfg.input.paths)
        files = discover_inputs(cfg.input)
    except (InputError, UnsafeOutputError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(cfg.to_dict(), indent=2, default=str))
    click.echo(f"\n{len(files)} input file(s), {sum(f.size for f in files):,} bytes")
    from dq_ray.io.shapes import shape_columns

    reader_cols = list(READER_COLUMNS) + list(shape_columns(cfg.input.shape)) + list(cfg.input.keep_fields)
    click.echo(f"reader -> {', '.join(reader_cols)}")
    for sc in cfg.stages:
        stage = sc.build()
        click.echo(f"{sc.name} -> {', '.join(stage.outputs)}")
    click.echo("config OK")


@main.command()
def stages() -> None:
    """List the registered stages: name, what they read, what they add."""
    from dq_ray.select.export import stage_catalog  # also what dq-ray export's dataset card reads

    for s in stage_catalog():
        click.echo(f"{s['name']}: {s['doc']}")
        click.echo(f"  reads: {', '.join(s['inputs']) or '-'}")
        click.echo(f"  adds:  {', '.join(s['outputs'])}")


@main.command("demo-corpus")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
def demo_corpus(out_dir: str, seed: int) -> None:
    """Build the demo corpus (Wikipedia leads, news, tweets, speeches) from installed packages."""
    from dq_ray.demo import DemoSizes, MissingDemoData, build_demo_corpus

    try:
        summary = build_demo_corpus(out_dir, DemoSizes(), seed)
    except MissingDemoData as exc:
        raise click.ClickException(str(exc)) from None
    total = sum(summary["documents"].values())
    click.echo(
        f"demo corpus in {summary['dir']}: {total} documents {summary['documents']}, "
        f"{summary['broken_records']} broken records"
    )


@main.command("demo-preference")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
def demo_preference(out_dir: str, seed: int) -> None:
    """Build the demo preference set: pairs constructed from real text (Wikipedia leads vs tweets)."""
    from dq_ray.demo import MissingDemoData
    from dq_ray.demo.preference import PreferenceSizes, build_preference_set

    try:
        summary = build_preference_set(out_dir, PreferenceSizes(), seed)
    except MissingDemoData as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"demo preference set in {summary['dir']}: {summary['dpo_records']} DPO records (dpo/), "
        f"{summary['kto_records']} KTO (kto/), {summary['sft_records']} SFT (sft/); constructed pairs"
    )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--port", "-p", default=5006, show_default=True, help="Port to serve on.")
@click.option("--address", "-a", default="127.0.0.1", show_default=True, help="Address to bind (this machine only).")
@click.option(
    "--allow-websocket-origin",
    "origins",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Extra host allowed to open the app (when serving on another address behind a proxy).",
)
@click.option("--show", is_flag=True, help="Open a browser.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def dashboard(run_dir: str, port: int, address: str, origins, show: bool, verbose: bool) -> None:
    """Serve the map of a run: every document as a point, linked filters, what-if, drill-down."""
    _setup_logging(verbose)
    try:
        from dashboards.app import serve
    except ImportError as exc:  # pragma: no cover - the dashboard dependencies are part of the install
        raise click.ClickException(f"the dashboard needs panel, holoviews and datashader: {exc}") from None
    click.echo(f"dq-ray map of {run_dir} at http://{address}:{port}/  (Ctrl-C to stop)")
    try:
        serve(run_dir, port=port, address=address, show=show, extra_origins=list(origins))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("dashboard-prepare")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--base-level",
    default=None,
    type=int,
    help="Finest pyramid level (a 2^L x 2^L grid; default 10; 11 above 25M documents, 12 above 100M).",
)
@click.option("--sample-rows", default=1_000_000, show_default=True, help="Rows of the uniform sample.")
@click.option("--tile-level", default=None, type=int, help="Tile grid level (default: ~250k rows per tile).")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (and Ray's own logs).")
def dashboard_prepare(
    run_dir: str, base_level: int | None, sample_rows: int, tile_level: int | None, verbose: bool
) -> None:
    """Write RUN/dashboard/ (spatial tiles + pyramid) so the map scales beyond memory (a Ray Data job)."""
    from dashboards.prepare import prepare
    from dq_ray.config import RayConfig
    from dq_ray.pipeline import ray_session

    _setup_logging(verbose)
    with ray_session(RayConfig()):
        info = prepare(run_dir, base_level=base_level, sample_rows=sample_rows, tile_level=tile_level)
    click.echo(
        f"prepared {run_dir}/dashboard: {info['num_rows']:,} documents, {4 ** info['tile_level']:,} tiles, "
        f"pyramid levels 0..{info['base_level']}, sample {info['sample_rows']:,} rows, {info['wall_s']:.1f} s"
    )


@main.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", default=None, help="Report directory (default: RUN_B/compare-<name of RUN_A>).")
@click.option(
    "--psi",
    "psi_threshold",
    type=click.FloatRange(min=0),
    default=0.2,
    show_default=True,
    help="A signal or categorical column whose population stability index is at least this has shifted.",
)
@click.option(
    "--ks-pvalue",
    type=click.FloatRange(0, 1),
    default=0.001,
    show_default=True,
    help="A signal has shifted when the Kolmogorov-Smirnov p-value is below this ...",
)
@click.option(
    "--ks-stat",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="... and the KS statistic (largest CDF gap) is at least this.",
)
@click.option(
    "--rate-diff",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="A flag, null, duplicate or rejection rate has shifted when it moved by at least this (absolute).",
)
@click.option(
    "--max-values",
    type=click.IntRange(min=100),
    default=1_000_000,
    show_default=True,
    help="Values sampled per numeric column and run for quantiles, KS and PSI (counts are exact).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def compare(
    run_a: str,
    run_b: str,
    output: str | None,
    psi_threshold: float,
    ks_pvalue: float,
    ks_stat: float,
    rate_diff: float,
    max_values: int,
    verbose: bool,
) -> None:
    """Drift between two finished runs (A: baseline, B: new): compare.md, compare.html and compare.json.

    Per numeric signal: quantiles, KS and PSI and a verdict; pass / keep rates of flags; category shares (language
    mix, topics, personal-data kinds, reasons); rejection reasons; duplicate and null rates. No Ray.
    """
    from dq_ray.compare import NotAFinishedRunError, Thresholds, compare_runs, format_compare
    from dq_ray.io.guard import UnsafeOutputError

    _setup_logging(verbose)
    t = Thresholds(psi=psi_threshold, ks_pvalue=ks_pvalue, ks_stat=ks_stat, rate_diff=rate_diff)
    try:
        result = compare_runs(run_a, run_b, output=output, thresholds=t, max_values=max_values)
    except (NotAFinishedRunError, UnsafeOutputError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_compare(result))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--probes",
    "-p",
    "probes_path",
    required=True,
    help="JSONL / Parquet file (or folder, glob) of probe texts: what a model should learn or gets wrong.",
)
@click.option("--output", "-o", default=None, help="Report directory (default: RUN/gaps-<probe file stem>).")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Nearest documents kept.")
@click.option("--text-field", default="text", show_default=True, help="The probe records' text field.")
@click.option("--id-field", default="id", show_default=True, help="The probe records' id field.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def gaps(
    run_dir: str, probes_path: str, output: str | None, k: int, text_field: str, id_field: str, verbose: bool
) -> None:
    """Coverage of a probe set in a finished run: gaps.md, gaps.html, gaps.json and probes.parquet.

    Each probe is embedded with the run's model and scored with its fitted density (also as a percentile of the
    corpus's own density values); with its k nearest documents, nearest topic and map coordinates. No Ray.
    """
    from dq_ray.artifacts import UntrustedArtifactError
    from dq_ray.gaps import GapsInputError, NotAFinishedRunError, find_gaps, format_gaps
    from dq_ray.io.guard import UnsafeOutputError

    _setup_logging(verbose)
    try:
        result = find_gaps(run_dir, probes_path, output=output, k=k, text_field=text_field, id_field=id_field)
    except (GapsInputError, NotAFinishedRunError, UnsafeOutputError, UntrustedArtifactError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_gaps(result))


def format_summary(manifest: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    c = manifest["counts"]
    lines = [
        f"run directory: {manifest['run_dir']}  (status: {manifest['status']}, {manifest['wall_s']:.1f} s)",
        "",
        f"{'documents in':<14}{c['input']:>9,}",
        f"{'kept':<14}{c['accepted']:>9,}   -> docs/",
        f"{'rejected':<14}{c['rejected']:>9,}   -> rejected/"
        + (f"  ({', '.join(f'{k} {v}' for k, v in c['rejected_by_reason'].items())})" if c["rejected"] else ""),
        "",
    ]
    base = manifest.get("baseline")
    if base:  # an incremental run (--baseline)
        reused = (base.get("cache") or {}).get("reused") or {}
        dups = (base.get("cross_run") or {}).get("exact_duplicates")
        lines += [
            f"baseline {base['path']}: fits applied: {', '.join(base.get('fits_reused') or []) or 'none'}; "
            f"signals reused (same text) for {max(reused.values(), default=0):,} document(s); "
            f"copies of baseline documents: {'n/a' if dups is None else f'{dups:,}'}; "
            f"the view (baseline + this run): {(base.get('view') or {}).get('rows', 0):,} documents",
            "",
        ]
    cost = manifest.get("cost") or {}
    per = cost.get("per_1b_docs", {})
    gpu = any(c["gpu_hours"] for c in per.values())
    lines.append(
        f"{'stage':<20}{'docs':>9}{'wall s':>9}{'docs/s':>10}"
        + (f"{'core-h/1B':>11}" if per else "")
        + (f"{'GPU-h/1B':>10}" if gpu else "")
    )
    for name, s in manifest.get("stages", {}).items():
        if "rows" in s:
            line = f"{name:<20}{s['rows']:>9,}{s['wall_s']:>9.2f}{s['docs_per_s']:>10,.0f}"
        else:  # a fit step: one pass on the driver
            line = f"{name:<20}{'':>9}{s['wall_s']:>9.2f}{'':>10}"
        c = per.get(name)
        if c is not None:
            line += f"{c['core_hours']:>11,.0f}" + (f"{c['gpu_hours']:>10,.0f}" if gpu else "")
        lines.append(line)
    if per:
        total = cost["total"]
        gpu_total = f" + {total['gpu_hours']:,.0f} GPU-hours" if gpu else ""
        lines.append(
            f"1B documents at this run's rate: ~{total['core_hours']:,.0f} core-hours{gpu_total} "
            "(busy time; manifest: cost)"
        )
    flags = manifest.get("flags", {})
    passes = {k: v for k, v in flags.items() if k.endswith("_pass")}
    if passes:
        lines += ["", f"{'heuristic':<32}{'pass':>8}{'fail':>8}"]
        for name, v in passes.items():
            lines.append(f"{name:<32}{v['true']:>8,}{v['false']:>8,}")
    dedup = [
        ("exact_dup_keep", "exact duplicates"),
        ("minhash_keep", "near-duplicates (MinHash)"),
        ("semdedup_keep", "semantic duplicates"),
    ]
    found = [(col, label) for col, label in dedup if col in flags]
    if found:
        lines.append("")
        for col, label in found:
            lines.append(f"{label + ':':<28}{flags[col]['false']:>7,} not kept ({col} = false)")
    pairs = (manifest.get("summaries") or {}).get("pairs")
    if pairs:  # preference data: the share of each pair flag (dq_ray.stages._pair_summary)
        lb = pairs.get("length_bias") or {}
        share = lb.get("chosen_longer_share")
        longer = "n/a" if share is None else f"{share:.1%}"
        lines += ["", f"{pairs['pairs']:,} preference pairs; chosen longer in {longer}"]
        for name, f in (pairs.get("flags") or {}).items():
            lines.append(f"{name:<32}{f['true']:>8,} of {f['rows']:,}")
    lines += ["", f"manifest: {manifest['run_dir']}/manifest.json"]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
