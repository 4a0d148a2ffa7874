"""Built-in stages. Importing this package registers them (see :func:`dq_ray.stage.registry`)."""

from dq_ray.stages import density, embed, exact_dedup, heuristics, minhash, semdedup  # noqa: F401
