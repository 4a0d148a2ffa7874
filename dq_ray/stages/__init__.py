"""Built-in stages, one module per registry name, and the registry that finds a stage by its name.

Importing this package imports every built-in stage module, and each registers its class with
:func:`dq_ray.stage.register`; :func:`registry` and :func:`get_stage` then answer from what is registered (the
built-ins and any stage registered elsewhere, e.g. in a test). Stage modules import :mod:`dq_ray.stage` and the
modules they need, never this package.
"""

from dq_ray.stage import REGISTERED, Stage
from dq_ray.stages import (  # noqa: F401  (importing a stage module registers its stage)
    askllm,
    askllm_distill,
    density,
    embed,
    exact_dedup,
    heuristics,
    lang,
    map,
    minhash,
    offensive,
    pairs,
    pii,
    semdedup,
    topics,
)


def registry() -> dict[str, type[Stage]]:
    """All registered stages by name (a copy: the built-ins and any registered since)."""
    return dict(REGISTERED)


def get_stage(name: str) -> type[Stage]:
    """The stage class registered under ``name``; ``KeyError`` naming the valid stages otherwise."""
    stages = registry()
    if name not in stages:
        raise KeyError(f"unknown stage {name!r}; valid stages: {', '.join(sorted(stages))}")
    return stages[name]
