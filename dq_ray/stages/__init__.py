"""Built-in stages. Importing this package registers them (see :func:`dq_ray.stage.registry`)."""

from dq_ray.stages import (  # noqa: F401
    askllm,
    askllm_distill,
    density,
    embed,
    exact_dedup,
    heuristics,
    minhash,
    pairs,
    projection,
    semdedup,
    topics,
)
