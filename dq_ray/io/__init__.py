"""Input and output: the ``input:`` config (:mod:`.input_config`), the record shapes (:mod:`.shapes`), readers
for the corpus (:mod:`.readers`), the run directory (:mod:`.rundir`), and the one function that keeps
credentials out of everything stored or printed (:mod:`.redact`)."""

from dq_ray.io.input_config import INPUT_FORMATS, READER_COLUMNS, InputConfig
from dq_ray.io.readers import (
    REJECT_REASONS,
    REJECTED_SCHEMA,
    InputError,
    InputFile,
    ShardResult,
    discover_inputs,
    doc_schema,
    generated_id,
    read_shard,
)
from dq_ray.io.redact import redact, redact_url
from dq_ray.io.rundir import RunDir, RunExistsError

__all__ = [
    "INPUT_FORMATS",
    "READER_COLUMNS",
    "REJECTED_SCHEMA",
    "REJECT_REASONS",
    "InputConfig",
    "InputError",
    "InputFile",
    "RunDir",
    "RunExistsError",
    "ShardResult",
    "discover_inputs",
    "doc_schema",
    "generated_id",
    "read_shard",
    "redact",
    "redact_url",
]
