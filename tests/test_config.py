import pytest

from dq_ray.config import ConfigError, JobConfig, load_config, set_override
from dq_ray.stage import Stage, register

BASE = {"input": {"paths": ["x.jsonl"]}, "stages": [{"name": "heuristics"}, {"name": "exact_dedup"}]}


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert isinstance(cfg, JobConfig)
    assert [s.name for s in cfg.stages] == ["heuristics", "embed", "exact_dedup", "minhash", "semdedup", "density"]
    assert cfg.input.keep_fields == ("source",)
    assert cfg.to_dict()["stages"][0]["params"]["language"] == "en"


def test_unknown_stage_lists_valid_choices():
    with pytest.raises(ConfigError, match="unknown stage 'nope'.*valid stages: .*exact_dedup.*heuristics"):
        load_config({**BASE, "stages": [{"name": "nope"}]})


def test_import_path_as_stage_is_refused():
    with pytest.raises(ConfigError, match="registry name, not import path"):
        load_config({**BASE, "stages": [{"name": "os.system"}]})


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
