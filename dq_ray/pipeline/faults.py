"""Deliberate faults, for the reliability tests. Off unless ``$DQ_RAY_FAULTS`` is set.

The variable holds comma-separated rules (read on the driver; the parsed rules travel to Ray workers with
each stage, so workers need not see the variable):

    poison:<stage>:<id-substring>   the stage raises on every document whose id contains the substring
    kill_actor:<stage>:after=<n>    the worker running the stage exits (os._exit) in its (n+1)-th batch, after the
                                    work but before returning it;
                                    once per run (a marker in RUN/_faults/ keeps the restarted worker alive)
    fail_setup:<stage>              the stage's setup raises (a broken engine: the job must fail, not hang)
    slow:<stage>:<seconds>          the stage sleeps this long per batch (to make crash timing deterministic)
    crash_driver:after_shards=<n>   the driver SIGKILLs itself once n input shards are committed in the first phase
    crash_driver:after_fit=<stage>  the driver SIGKILLs itself right after fitting that stage

Example: ``DQ_RAY_FAULTS="poison:heuristics:news.jsonl#3,kill_actor:embed:after=2"``.
Normal runs never set it; a run with faults active logs a warning and records them in the manifest.
Without faults the plan hands its workers none and the plain map function (:func:`~dq_ray.pipeline.workers.map_stage`),
so no fault code runs per batch.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from dq_ray.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "DQ_RAY_FAULTS"


class InjectedFault(RuntimeError):
    """Raised by an injected ``poison`` or ``fail_setup`` rule."""


@dataclass(frozen=True)
class Faults:
    """Parsed fault rules (see the module docstring)."""

    poison: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kill_actor: dict[str, int] = field(default_factory=dict)
    fail_setup: frozenset[str] = frozenset()
    slow: dict[str, float] = field(default_factory=dict)
    crash_after_shards: int | None = None
    crash_after_fit: str | None = None
    rules: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any rule is set (the normal case: none)."""
        return bool(self.rules)

    # -- worker side ---------------------------------------------------------------------------------------
    def before_setup(self, stage: str) -> None:
        """Raise for a ``fail_setup`` rule of ``stage`` (called where a worker sets the stage up)."""
        if stage in self.fail_setup:
            raise InjectedFault(f"injected setup failure of stage {stage!r} (fail_setup)")

    def before_batch(self, stage: str) -> None:
        """Sleep for a ``slow`` rule of ``stage`` before the batch is processed."""
        delay = self.slow.get(stage)
        if delay:
            time.sleep(delay)

    def after_batch(self, stage: str, calls: int, run_root: str) -> None:
        """Called when a worker has processed (and reported) its ``calls``-th batch (0-based) of ``stage``, before
        the result is handed back: the worst moment to die, since Ray must redo a batch already counted once."""
        after = self.kill_actor.get(stage)
        if after is not None and calls >= after and _claim(run_root, f"kill_actor-{stage}"):
            log.warning("fault injection: killing the worker of %s mid-batch", stage)
            os._exit(1)

    def check_rows(self, stage: str, ids: list[Any]) -> None:
        """Raise if any id of the batch matches a poison rule of ``stage``."""
        for sub in self.poison.get(stage, ()):
            for doc_id in ids:
                if doc_id is not None and sub in str(doc_id):
                    raise InjectedFault(f"injected poison document {doc_id!r} in stage {stage!r}")

    # -- driver side ---------------------------------------------------------------------------------------
    def crash_driver(self, why: str) -> None:
        """SIGKILL this process (the driver), as a lost head node or the OOM killer would."""
        log.warning("fault injection: SIGKILL of the driver (%s)", why)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _claim(run_root: str, name: str) -> bool:
    """Create ``RUN/_faults/<name>`` exclusively; True for exactly one caller per run."""
    folder = os.path.join(run_root, "_faults")
    os.makedirs(folder, exist_ok=True)
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def parse_faults(text: str | None) -> Faults:
    """Parse a ``$DQ_RAY_FAULTS`` value. Raises :class:`ConfigError` on an unknown or malformed rule."""
    poison: dict[str, list[str]] = {}
    kill: dict[str, int] = {}
    fail: set[str] = set()
    slow: dict[str, float] = {}
    crash_shards, crash_fit = None, None
    rules = tuple(r.strip() for r in (text or "").split(",") if r.strip())
    kinds = "poison, kill_actor, fail_setup, slow, crash_driver"
    for rule in rules:
        kind, _, rest = rule.partition(":")
        try:
            if kind == "poison":
                stage, sub = rest.split(":", 1)
                poison.setdefault(stage, []).append(sub)
            elif kind == "kill_actor":
                stage, arg = rest.split(":", 1)
                kill[stage] = int(arg.removeprefix("after="))
            elif kind == "fail_setup":
                if not rest:
                    raise ValueError("no stage")
                fail.add(rest)
            elif kind == "slow":
                stage, arg = rest.split(":", 1)
                slow[stage] = float(arg)
            elif kind == "crash_driver" and rest.startswith("after_shards="):
                crash_shards = int(rest.removeprefix("after_shards="))
            elif kind == "crash_driver" and rest.startswith("after_fit="):
                crash_fit = rest.removeprefix("after_fit=")
            else:
                raise ValueError(f"unknown rule (kinds: {kinds})")
        except ValueError as exc:
            raise ConfigError(f"${ENV}: cannot parse {rule!r}: {exc}") from None
    return Faults(
        poison={k: tuple(v) for k, v in poison.items()},
        kill_actor=kill,
        fail_setup=frozenset(fail),
        slow=slow,
        crash_after_shards=crash_shards,
        crash_after_fit=crash_fit,
        rules=rules,
    )


def from_env() -> Faults:
    """The faults named in ``$DQ_RAY_FAULTS`` (none when it is unset: the normal case)."""
    faults = parse_faults(os.environ.get(ENV))
    if faults.active:
        log.warning("fault injection is ON (%s=%s): for tests only", ENV, ",".join(faults.rules))
    return faults
