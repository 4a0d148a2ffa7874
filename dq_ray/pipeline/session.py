"""Connecting to Ray for one job: an embedded local Ray or a cluster.

The library never calls ``ray.init()`` on its own: :func:`ray_session` is what the CLI and ``jobs/`` use, and
:func:`init_local_ray` is the embedded Ray they (and the benchmarks) start. This module imports nothing else of
dq-ray, so any module may use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RaySettings(Protocol):
    """What :func:`ray_session` reads of the config's ``ray:`` section (:class:`dq_ray.config.RayConfig`)."""

    address: str | None
    num_cpus: int | None


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start the embedded local Ray of ``dq-ray run`` (also what benchmarks start, to measure the same thing).

    Ray starts its workers at niceness 15 to keep its own daemons responsive; on a machine that also runs other
    work that would leave every stage (the whole job) the leftovers. Embedded, the job is the point: workers run
    at normal priority unless ``RAY_worker_niceness`` is set.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    os.environ.setdefault("RAY_worker_niceness", "0")
    # Embedded Ray serves this process only: its servers listen on 127.0.0.1, not on every interface. Ray picks
    # the loopback address itself when multi-node clusters are off (its macOS/Windows default); that switch is
    # read when the node starts, so setting it here is enough (``ray start`` clusters are not affected).
    _CLUSTER_MODE.setdefault("enabled", ray_constants.ENABLE_RAY_CLUSTER)
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)


_CLUSTER_MODE: dict[str, bool] = {}


def _restore_cluster_mode() -> None:
    """Undo :func:`init_local_ray`'s loopback switch once its Ray is shut down."""
    if "enabled" in _CLUSTER_MODE:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = _CLUSTER_MODE.pop("enabled")


@contextlib.contextmanager
def ray_session(cfg: RaySettings) -> Iterator[dict[str, Any]]:
    """Connect to Ray for one job: the configured cluster, ``$RAY_ADDRESS``, or an embedded local Ray.

    An already initialised Ray (a test fixture, a Ray job driver) is used as is and left running.
    """
    import ray

    started = False
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            log.info("starting an embedded local Ray")
            init_local_ray(cfg.num_cpus)
        started = True
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        yield {
            "mode": "cluster" if (cfg.address or os.environ.get("RAY_ADDRESS")) else "embedded",
            "nodes": len(nodes),
            "cpus": ray.cluster_resources().get("CPU", 0),
            "gpus": ray.cluster_resources().get("GPU", 0),
            "ray_version": ray.__version__,
        }
    finally:
        if started:
            ray.shutdown()
            _restore_cluster_mode()
