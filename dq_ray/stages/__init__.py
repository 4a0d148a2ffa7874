"""Built-in stages. Importing this package registers them (see :func:`dq_ray.stage.registry`)."""

from dq_ray.stages import exact_dedup, heuristics  # noqa: F401
