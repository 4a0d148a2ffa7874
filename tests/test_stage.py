import pyarrow as pa
import pytest

from dq_ray.stage import Resources, Stage, append_columns, register
from dq_ray.stages import get_stage, registry


def test_builtin_stages_are_registered():
    stages = registry()
    assert {"heuristics", "exact_dedup"} <= set(stages)
    assert get_stage("heuristics").outputs["heur_gopher_quality_pass"] == pa.bool_()
    with pytest.raises(KeyError, match="valid stages"):
        get_stage("missing")


def test_register_refuses_a_second_class_under_one_name():
    class Other(Stage):
        name = "heuristics"

    with pytest.raises(ValueError, match="already registered"):
        register(Other)


def test_resources_validate():
    assert Resources().num_gpus == 0
    with pytest.raises(ValueError):
        Resources(batch_size=0)
    with pytest.raises(ValueError):
        Resources(num_cpus=-1)


def test_append_columns_replaces_and_appends():
    t = pa.table({"a": [1, 2]})
    t = append_columns(t, {"b": pa.array([3, 4]), "a": pa.array([5, 6])})
    assert t.column_names == ["a", "b"] and t.column("a").to_pylist() == [5, 6]


def test_every_output_column_is_documented_in_the_schema_table():
    from pathlib import Path

    schema_doc = (Path(__file__).resolve().parents[1] / "docs" / "schema.md").read_text()
    for cls in registry().values():
        if cls.__module__.startswith("dq_ray."):
            for col in cls.outputs:
                assert f"`{col}`" in schema_doc, f"{cls.name}.{col} missing from docs/schema.md"
