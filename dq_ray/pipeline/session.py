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

#: Ray's notices a dq-ray user cannot act on, by the logger that emits them and the start of the message: the
#: hint to set a DataContext flag (dq-ray shows its own progress, see dq_ray.pipeline.progress) and the notice
#: that a new local Ray turned token authentication on by default (the embedded Ray keeps it on and listens on
#: 127.0.0.1). Ray's other warnings, the warning that token authentication is *off* included, are kept.
RAY_NOTICES: dict[str, tuple[str, ...]] = {
    "ray.data._internal.progress": ("Progress bars disabled. To enable, set",),
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled for this Ray cluster. Set",
    ),
}


class _DropNotices(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes`` (see :data:`RAY_NOTICES`)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted is not one of ours to judge
            return True
        return not message.startswith(self.prefixes)


def quiet_ray_notices() -> None:
    """Filter :data:`RAY_NOTICES` out of Ray's loggers in this process (idempotent). A filter sits on the logger
    that creates the record, so nothing else those loggers say, and nothing other loggers say, is touched."""
    for name, prefixes in RAY_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))


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

    quiet_ray_notices()
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
