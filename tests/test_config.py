import pytest

from dq_ray.config import ConfigError, JobConfig, load_config, set_override
from dq_ray.stage import Stage, register

BASE = {"input": {"paths": ["x.jsonl"]}, "stages": [{"name": "heuristics"}, {"name": "exact_dedup"}]}


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert isinstance(cfg, JobConfig)
    names = [s.name for s in cfg.stages]
    core = ["heuristics", "embed", "exact_dedup", "minhash", "semdedup", "density", "topics", "map"]
    assert [n for n in names if n in core] == core
    assert cfg.input.keep_fields == ("source", "date")
    assert cfg.selection is not None and [r.column for r in cfg.selection.rules][:1] == ["heur_gopher_quality_pass"]
    assert cfg.to_dict()["stages"][0]["params"]["language"] == "en"


def test_unknown_stage_lists_valid_choices():
    with pytest.raises(ConfigError, match="unknown stage 'nope'.*valid stages: .*exact_dedup.*heuristics"):
        load_config({**BASE, "stages": [{"name": "nope"}]})


def test_import_path_as_stage_is_refused():
    with pytest.raises(ConfigError, match="registry name, not import path"):
        load_config({**BASE, "stages": [{"name": "os.system"}]})


@pytest.mark.parametrize("name", ["dq_ray.stages.heuristics:Heuristics", "builtins/eval", "subprocess.run"])
def test_config_naming_python_code_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="not import path.*valid stages: .*heuristics"):
        load_config({**BASE, "stages": [{"name": name}]})
    with pytest.raises(ConfigError, match="not import path"):
        load_config(BASE, overrides=[f"stages.0.name={name}"])
    # YAML's python tags are never constructed: safe_load refuses them
    path = tmp_path / "evil.yaml"
    path.write_text("input: {paths: [x]}\nstages:\n  - !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


def test_retry_limits_are_validated():
    cfg = load_config({**BASE, "ray": {"max_task_retries": 0, "max_actor_restarts": 5}})
    assert (cfg.ray.max_task_retries, cfg.ray.max_actor_restarts) == (0, 5)
    assert load_config(BASE).ray.max_task_retries == 3  # bounded by default (Ray Data's own is unbounded)
    with pytest.raises(ConfigError, match="ray.max_actor_restarts must be >= 0"):
        load_config({**BASE, "ray": {"max_actor_restarts": -1}})


def test_unknown_field_names_valid_keys():
    with pytest.raises(ConfigError, match=r"input: unknown key\(s\) 'txt_field'.*valid keys: paths, format"):
        load_config({"input": {"paths": ["x"], "txt_field": "body"}})
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_config({**BASE, "extra": 1})


def test_wrong_types_and_values():
    with pytest.raises(ConfigError, match="input.batch_rows: expected an integer"):
        load_config({"input": {"paths": ["x"], "batch_rows": "many"}})
    with pytest.raises(ConfigError, match="input.format"):
        load_config({"input": {"paths": ["x"], "format": "csv"}})
    with pytest.raises(ConfigError, match="resources"):
        load_config({**BASE, "stages": [{"name": "heuristics", "resources": {"batch_size": 0}}]})
    with pytest.raises(ConfigError, match="GopherQualityFilter"):
        load_config({**BASE, "stages": [{"name": "heuristics", "params": {"gopher_quality": {"min_words": 3}}}]})


def test_missing_inputs_and_config_file():
    with pytest.raises(ConfigError, match="input.paths is empty"):
        load_config({"stages": []})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/no-such-config.yaml")


def test_column_flow_is_checked_before_ray():
    @register
    class NeedsScore(Stage):
        """A test stage that reads a column nothing produces."""

        name = "test_needs_score"
        inputs = ("askllm_score",)
        outputs = {}

    with pytest.raises(ConfigError, match=r"needs column\(s\) \['askllm_score'\] that nothing before it produces"):
        load_config({**BASE, "stages": [{"name": "test_needs_score"}]})
    with pytest.raises(ConfigError, match="appears twice"):
        load_config({**BASE, "stages": ["heuristics", "heuristics"]})


def test_overrides_and_cli_replacements():
    cfg = load_config(
        "configs/demo.yaml",
        overrides=[
            "input.batch_rows=7",
            "stages.heuristics.params.gopher_quality={min_doc_words: 20}",
            "stages.heuristics.resources.batch_size=16",
            "output.keep_text=true",
        ],
        inputs=["a.jsonl", "b.parquet"],
        output="runs/x",
    )
    assert cfg.input.batch_rows == 7
    assert cfg.input.paths == ("a.jsonl", "b.parquet")
    assert cfg.output.path == "runs/x" and cfg.output.keep_text is True
    heur = cfg.stages[0]
    assert heur.params.gopher_quality == {"min_doc_words": 20}
    assert heur.resources.batch_size == 16
    with pytest.raises(ConfigError, match="no stage named 'askllm'"):
        load_config("configs/demo.yaml", overrides=["stages.askllm.params.x=1"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        set_override({}, "novalue")
