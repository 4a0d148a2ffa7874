"""YAML -> typed, frozen config, validated before any Ray cluster starts.

The YAML mirrors these dataclasses one to one::

    input:   {paths: [...], format: auto, text_field: text, id_field: id, keep_fields: [], ...}
    output:  {path: runs/demo, keep_text: false}
    ray:     {address: null, num_cpus: null}
    stages:
      - name: heuristics          # a registry name, never an import path
        params: {...}             # the stage's own Params dataclass
        resources: {num_cpus: 1, concurrency: null, batch_size: 256}

Config is data, never code: it is loaded with ``yaml.safe_load`` and stages are chosen by registry name.
Every error names the offending key and lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dq_ray.errors import ConfigError
from dq_ray.io.input_config import INPUT_FORMATS, READER_COLUMNS, InputConfig
from dq_ray.io.shapes import shape_columns
from dq_ray.stage import Resources, Stage
from dq_ray.stages import get_stage, registry
from dq_ray.typed import build_dataclass, load_yaml

__all__ = [  # re-exported for users: ConfigError (dq_ray.errors), build_dataclass (dq_ray.typed), and
    # InputConfig, READER_COLUMNS, INPUT_FORMATS (dq_ray.io.input_config)
    "INPUT_FORMATS",
    "READER_COLUMNS",
    "ConfigError",
    "InputConfig",
    "JobConfig",
    "OutputConfig",
    "RayConfig",
    "StageConfig",
    "build_dataclass",
    "load_config",
    "set_override",
]


@dataclass(frozen=True)
class OutputConfig:
    """Where the run directory goes.

    Attributes:
        path: the run directory (local path or fsspec URL).
        keep_text: also write the document text into ``docs/`` (off: docs/ holds ids and signals only).
        rows_per_file: rows gathered into one output file (files are also split per input shard, the unit
            of resume).
    """

    path: str = "runs/latest"
    keep_text: bool = False
    rows_per_file: int = 100_000

    def __post_init__(self) -> None:
        if self.rows_per_file < 1:
            raise ConfigError("output.rows_per_file must be >= 1")


SHUFFLES = ("auto", "sort", "hash")


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray.

    Attributes:
        address: a cluster address; null means ``$RAY_ADDRESS`` if set, else an embedded local Ray.
        num_cpus: CPUs for an embedded local Ray (null: all of this machine's).
        shuffle_partitions: partitions of grouping shuffles (exact duplicates); null sizes them from the
            input bytes (about 128 MiB of signal rows each).
        shuffle: Ray Data's shuffle algorithm for groupbys (exact duplicates, the MinHash band shuffle):
            ``sort`` (pull-based sort shuffle: plain tasks, about a second of fixed cost), ``hash`` (Ray's hash
            shuffle: long-lived aggregator actors, built for large data, ~10 s to start them on a small
            machine) or ``auto``: ``sort`` below ``shuffle_hash_from_bytes`` of input, ``hash`` from there.
        shuffle_hash_from_bytes: the input size from which ``shuffle: auto`` picks the hash shuffle.
        reserve_operator_resources: Ray Data's per-operator resource reservation. It keeps a long pipeline
            from starving its later operators, but on a small cluster it leaves one stage a single CPU;
            null turns it off below 8 CPUs and on from 8.
        max_task_retries: how often a batch is retried after its worker died (a killed process, out of
            memory); Ray Data's own default retries forever.
        max_actor_restarts: how often a stage actor that died is restarted (and how many actors in a row may
            die while starting before the job fails, e.g. a model that cannot load).
        local_group_bytes: a grouping stage whose input (the previous phase's Parquet) holds at most this many
            bytes is grouped on the driver with pyarrow instead of a Ray Data shuffle, which costs seconds to
            start whatever the data; 0 always shuffles.
    """

    address: str | None = None
    num_cpus: int | None = None
    shuffle_partitions: int | None = None
    shuffle: str = "auto"
    shuffle_hash_from_bytes: int = 8 * 2**30
    reserve_operator_resources: bool | None = None
    max_task_retries: int = 3
    max_actor_restarts: int = 3
    local_group_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        if self.shuffle_partitions is not None and self.shuffle_partitions < 1:
            raise ConfigError("ray.shuffle_partitions must be >= 1 or null")
        if self.shuffle not in SHUFFLES:
            raise ConfigError(f"ray.shuffle must be one of {', '.join(SHUFFLES)}, not {self.shuffle!r}")
        for key in ("max_task_retries", "max_actor_restarts", "local_group_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"ray.{key} must be >= 0")


@dataclass(frozen=True)
class StageConfig:
    """One entry of ``stages:``: a registry name, the stage's typed params and its resources."""

    name: str
    params: Any
    resources: Resources

    def build(self) -> Stage:
        return get_stage(self.name)(self.params)


@dataclass(frozen=True)
class JobConfig:
    """A whole dq-ray job."""

    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    stages: tuple[StageConfig, ...] = ()
    #: the selection policy applied after the run (a :class:`dq_ray.select.Policy`; null: no selection)
    selection: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what the manifest records)."""
        return dataclasses.asdict(self)


def _build_stage(entry: Any, index: int) -> StageConfig:
    where = f"stages[{index}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a 'name' (one of {', '.join(sorted(registry()))})")
    unknown = sorted(set(entry) - {"name", "params", "resources"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: name, params, resources")
    name = entry["name"]
    if not isinstance(name, str) or "." in name or "/" in name or ":" in name:
        raise ConfigError(
            f"{where}.name: stages are chosen by registry name, not import path; "
            f"valid stages: {', '.join(sorted(registry()))}"
        )
    try:
        stage_cls = get_stage(name)
    except KeyError as exc:
        raise ConfigError(f"{where}.name: {exc.args[0]}") from None
    params = build_dataclass(stage_cls.Params, entry.get("params"), f"{where}({name}).params")
    defaults = dataclasses.asdict(stage_cls.default_resources)
    res_data = {**defaults, **(entry.get("resources") or {})}
    resources = build_dataclass(Resources, res_data, f"{where}({name}).resources")
    return StageConfig(name=name, params=params, resources=resources)


def check_column_flow(cfg: JobConfig) -> None:
    """Every stage's inputs must be produced by the reader or an earlier stage."""
    available = list(READER_COLUMNS) + list(shape_columns(cfg.input.shape)) + list(cfg.input.keep_fields)
    seen: set[str] = set()
    for i, sc in enumerate(cfg.stages):
        if sc.name in seen:
            raise ConfigError(f"stages[{i}]: stage {sc.name!r} appears twice")
        seen.add(sc.name)
        cls = get_stage(sc.name)
        missing = [c for c in cls.inputs if c not in available]
        if missing:
            hint = " (set input.shape to dpo, kto or sft)" if any(c.startswith("pref_") for c in missing) else ""
            raise ConfigError(
                f"stages[{i}]({sc.name}) needs column(s) {missing} that nothing before it produces{hint}; "
                f"available at that point: {', '.join(available)}"
            )
        available.extend(c for c in cls.outputs if c not in available)


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b=c`` to raw config data. The value is parsed as YAML (``3``, ``true``, ``[a]``).

    ``stages.<name>.x=...`` addresses a stage by registry name (``stages.<index>.x`` works too).
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: depth + 1]))
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping")
        node = node.setdefault(part, [] if part == "stages" else {})
    last = parts[-1]
    if isinstance(node, list):
        raise ConfigError(f"--set {key}: cannot replace a whole list item")
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: parent is not a mapping")
    node[last] = value


def _list_item(items: list, part: str, where: str) -> Any:
    if part.isdigit():
        idx = int(part)
        if idx >= len(items):
            raise ConfigError(f"--set {where}: index out of range ({len(items)} items)")
        return items[idx]
    for i, item in enumerate(items):
        if item == part:  # a stage given as a bare name
            items[i] = {"name": part}
            return items[i]
        if isinstance(item, dict) and item.get("name") == part:
            return item
    names = [it if isinstance(it, str) else it.get("name") for it in items]
    raise ConfigError(f"--set {where}: no stage named {part!r} in the config; stages: {names}")


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: typing.Iterable[str] = (),
    inputs: typing.Sequence[str] | None = None,
    output: str | None = None,
) -> JobConfig:
    """Load, override and validate a job config. Nothing here touches Ray.

    Args:
        source: a YAML file path, or already-parsed data.
        overrides: ``key.sub=value`` strings applied in order.
        inputs: replaces ``input.paths`` when given (the CLI's ``--input``).
        output: replaces ``output.path`` when given (the CLI's ``--output``).
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = yaml.safe_load(yaml.safe_dump(source))  # a deep, plain copy
    else:
        data = load_yaml(source, "config")
    for assignment in overrides:
        set_override(data, assignment)
    if inputs:
        data.setdefault("input", {})["paths"] = list(inputs)
    if output:
        data.setdefault("output", {})["path"] = output

    allowed = ("input", "output", "ray", "stages", "selection")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys: {', '.join(allowed)}")
    stages_data = data.get("stages") or []
    if not isinstance(stages_data, list):
        raise ConfigError("stages: expected a list of stages")
    cfg = JobConfig(
        input=build_dataclass(InputConfig, data.get("input"), "input"),
        output=build_dataclass(OutputConfig, data.get("output"), "output"),
        ray=build_dataclass(RayConfig, data.get("ray"), "ray"),
        stages=tuple(_build_stage(s, i) for i, s in enumerate(stages_data)),
    )
    if not cfg.input.paths:
        raise ConfigError("input.paths is empty: give input paths in the config or with --input")
    check_column_flow(cfg)
    if data.get("selection") is not None:
        cfg = dataclasses.replace(cfg, selection=_build_selection(cfg, data["selection"]))
    return cfg


def _build_selection(cfg: JobConfig, data: Any) -> Any:
    """The ``selection:`` policy, its rule columns checked against what the reader and the stages produce."""
    from dq_ray.select.policy import check_columns, parse_policy

    policy = parse_policy(data, "selection")
    available = list(READER_COLUMNS) + list(shape_columns(cfg.input.shape)) + list(cfg.input.keep_fields)
    available += [c for sc in cfg.stages for c in get_stage(sc.name).outputs]
    check_columns(policy, list(dict.fromkeys(available)), "selection")
    return policy
