"""Live progress of a run, on the driver: per stage documents done, docs/s and ETA, and a line when each phase,
stage and fit starts and ends.

A thread polls the statistics actor (``StageStats.progress`` in :mod:`dq_ray.pipeline.workers`) while
:meth:`dq_ray.pipeline.plan.Plan.execute` runs; the plan reports its phases and fits through ``Plan.on_step``.
Two ways to show it (``mode``):

* ``bars``: tqdm bars on stderr (a terminal): a status line for the phase (its elapsed time, the fit or shuffle
  under way) and a bar per running stage; log lines are printed above them.
* ``log``: plain log lines (logger ``dq_ray.pipeline.progress``, INFO) every ``every`` seconds (default 10,
  ``$DQ_RAY_PROGRESS_EVERY``): what you get when stderr is redirected to a file.

``auto`` (the default) picks ``bars`` when stderr is a terminal and ``log`` otherwise; ``off`` shows nothing;
``ray`` shows Ray Data's own operator bars instead (for debugging the plan). ``$DQ_RAY_PROGRESS`` sets the mode
when the caller does not.

The total behind the ETA is the number of documents a phase works through. For the first phase it is known only
once every input file is read: until then it is estimated from the records and bytes of the files read so far
(``~`` marks an estimate, ``?`` an unknown total); a later phase's total is the rows its source holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dq_ray.io import InputFile, redact_url
from dq_ray.pipeline.plan import Phase, Plan

log = logging.getLogger(__name__)

MODES = ("auto", "bars", "log", "off", "ray")
#: seconds between two plain progress lines (``log`` mode), unless ``$DQ_RAY_PROGRESS_EVERY`` says otherwise
DEFAULT_EVERY = 10.0
#: seconds between two polls of the statistics actor (bars are redrawn, new stages noticed)
POLL_S = 1.0

#: what a poll returns: ``StageStats.progress(since)``
Fetch = Callable[[int], dict[str, Any]]


def resolve_mode(mode: str | None = None, stream: IO[str] | None = None) -> str:
    """The progress mode to use: ``mode``, else ``$DQ_RAY_PROGRESS``, else ``auto``; ``auto`` becomes ``bars``
    when ``stream`` (stderr) is a terminal and ``log`` otherwise."""
    chosen = (mode or os.environ.get("DQ_RAY_PROGRESS") or "auto").strip().lower()
    if chosen not in MODES:
        raise ValueError(f"progress mode {chosen!r} is not one of {', '.join(MODES)}")
    if chosen == "auto":
        stream = stream or sys.stderr
        return "bars" if getattr(stream, "isatty", lambda: False)() else "log"
    return chosen


def resolve_every(every: float | None = None) -> float:
    """Seconds between plain progress lines: ``every``, else ``$DQ_RAY_PROGRESS_EVERY``, else 10."""
    if every is None:
        raw = os.environ.get("DQ_RAY_PROGRESS_EVERY")
        try:
            every = float(raw) if raw else DEFAULT_EVERY
        except ValueError:
            raise ValueError(f"DQ_RAY_PROGRESS_EVERY must be a number of seconds, not {raw!r}") from None
    if every <= 0:
        raise ValueError("the progress interval must be > 0 seconds")
    return float(every)


def actor_fetch(stats: Any, timeout: float = 30.0) -> Fetch:
    """Polls of the statistics actor ``stats`` (a ``StageStats`` handle)."""
    import ray

    return lambda since: ray.get(stats.progress.remote(since), timeout=timeout)


def steps_of(plan: Plan, ph: Phase) -> list[str]:
    """The statistics names of what phase ``ph`` runs: ``read``, ``<stage>.group``, then its stages."""
    names = ["read"] if ph.source is None else []
    if ph.group is not None:
        names.append(f"{plan.stages[ph.group].name}.group")
    return names + [plan.stages[i].name for i in ph.stages]


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _rate(r: float | None) -> str:
    if r is None:
        return "? docs/s"
    return f"{r:,.0f} docs/s" if r >= 10 else f"{r:.1f} docs/s"


def _eta(rows: int, total: int | None, rate: float | None) -> str:
    if total is None or not rate:
        return "?"
    return tqdm.format_interval(max(total - rows, 0) / rate)


class _Bar(tqdm):
    """A tqdm bar whose text after the bar is ours (``detail``): the same numbers as the plain lines."""

    def __init__(self, *args: Any, detail: str = "", **kwargs: Any) -> None:
        self.detail = detail  # before tqdm draws it the first time
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["detail"] = self.detail
        return d


_KNOWN = "{desc:<20}{percentage:3.0f}%|{bar:20}| {detail}"
_UNKNOWN = "{desc:<20}  ?%|{bar:20}| {detail}"
_STATUS = "{desc:<20}{elapsed} {detail}"


@dataclass
class _Stage:
    """What the reporter knows of one stage (a statistics name) in this run."""

    name: str
    rows: int = 0
    start: float = 0.0  # Unix time its first batch started (the statistics' ``start``)
    logged: int = -1  # rows at its last plain line
    done: bool = False  # its end line is printed
    bar: Any = None

    def rate(self, now: float) -> float | None:
        """Documents per second since its first batch started (an average: stages downstream get rows in bursts)."""
        return self.rows / (now - self.start) if self.rows and now > self.start else None


class Progress:
    """Shows the progress of ``plan`` while it executes: use it as a context manager around ``plan.execute()``.

    ``fetch`` polls the statistics (:func:`actor_fetch`); ``files`` are the run's input files (their sizes give
    the estimated total while the first phase reads them). Lines go to the ``dq_ray.pipeline.progress`` logger;
    bars (``mode="bars"``) to ``stream`` (stderr): one status bar for the phase (its elapsed time, a fit, a
    shuffle) and one per running stage.
    """

    def __init__(
        self,
        plan: Plan,
        fetch: Fetch,
        files: list[InputFile],
        mode: str = "log",
        every: float = DEFAULT_EVERY,
        poll: float = POLL_S,
        stream: IO[str] | None = None,
    ) -> None:
        if mode not in ("bars", "log"):
            raise ValueError(f"Progress shows bars or log lines, not {mode!r}")
        self.plan, self.fetch, self.mode = plan, fetch, mode
        self.every, self.poll_s = every, min(poll, every)
        self.stream = stream or sys.stderr
        self.sizes = {redact_url(f.path): f.size for f in files}
        self.total_bytes = sum(self.sizes.values())
        self.bytes_read = 0
        self.files_read = 0
        self.since = 0
        self.stages: dict[str, _Stage] = {}
        self.last_stats: dict[str, dict[str, Any]] = {}  # the per-stage totals of the last poll
        self.phase: Phase | None = None
        self.phase_started = 0.0
        self.phase_total: int | None = None  # rows of a later phase's source (counted once, in the thread)
        self.docs_total: int | None = None  # documents accepted by the read (its receipts, once all are read)
        self.fit: tuple[str, float] | None = None  # the fit running now and when it started
        self.status: Any = None  # the phase's status bar
        self.last_line = 0.0
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self._redirect: contextlib.ExitStack | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.plan.on_step = self.on_step
        if self.mode == "bars":  # log lines (ours, Ray's) are printed above the bars, not through them
            self._redirect = contextlib.ExitStack()
            loggers = [logging.root, logging.getLogger("ray"), logging.getLogger("ray.data")]
            self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers))
        self.thread = threading.Thread(target=self._loop, daemon=True, name="dq-progress")
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        with self.lock:
            self._close_bars()
        if self._redirect is not None:
            self._redirect.close()

    def _loop(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception as exc:  # progress must never fail a run
                log.debug("progress poll failed: %s", exc)

    # -- what the plan reports ------------------------------------------------------------------------------

    def on_step(self, kind: str, name: str, ended: bool) -> None:
        """``Plan.on_step``: a phase or a fit started or ended."""
        with self.lock:
            if kind == "fit":
                self._fit_step(name, ended)
            elif kind == "phase":
                self._phase_step(self.plan.phases[int(name)], ended)

    def _fit_step(self, stage: str, ended: bool) -> None:
        step = f"{stage}.fit"
        if not ended:
            self.fit = (step, time.monotonic())
            log.info("%s: started", step)
        else:
            wall = self.plan.timings.get(step)
            started = self.fit[1] if self.fit else time.monotonic()
            log.info("%s: done in %.1f s", step, wall if wall is not None else time.monotonic() - started)
            self.fit = None
        self._draw_status(time.monotonic())

    def _phase_step(self, ph: Phase, ended: bool) -> None:
        total = len(self.plan.phases)
        if not ended:
            self.phase, self.phase_started, self.phase_total = ph, time.monotonic(), None
            self.last_line = time.monotonic()
            log.info("phase %d/%d started: %s", ph.index + 1, total, ", ".join(steps_of(self.plan, ph)))
            if self.mode == "bars":
                self.status = _Bar(
                    desc=f"phase {ph.index + 1}/{total}",
                    bar_format=_STATUS,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=False,
                    detail=self._doing(ph, steps_of(self.plan, ph)),
                )
            return
        if ph.index in self.plan.reused.get("phases", []):
            self._close_bars()
            log.info("phase %d/%d: committed by an earlier attempt, skipped", ph.index + 1, total)
        else:
            try:
                self.tick(final=True)
            except Exception as exc:
                log.debug("progress poll failed: %s", exc)
            self._close_bars()  # first, so that the end lines below are printed on a clean screen
            for name in steps_of(self.plan, ph):
                self._stage_done(name)
            wall = self.plan.timings.get(f"phase-{ph.index}", time.monotonic() - self.phase_started)
            log.info("phase %d/%d done in %.1f s", ph.index + 1, total, wall)
        self.phase = None

    def _stage_done(self, name: str) -> None:
        st = self.stages.get(name)
        stats = self.last_stats.get(name)
        if stats is None:
            log.info("%s: no documents in this attempt", name)
            return
        if st is None:  # it started and ended between two polls
            st = self.stages[name] = _Stage(name, rows=stats["rows"], start=stats["start"])
            log.info("%s: started", name)
        if st.done:
            return
        st.done = True
        self._close_bar(st)
        wall = max(stats["end"] - stats["start"], 1e-9)
        log.info(
            "%s: done, %s docs in %.1f s (%s, %d worker(s))",
            name,
            _count(stats["rows"]),
            wall,
            _rate(stats["rows"] / wall),
            stats["workers"],
        )

    # -- polling ----------------------------------------------------------------------------------------------

    def tick(self, final: bool = False) -> None:
        """Poll the statistics once: notice stages that started, redraw bars, print the plain lines when due.

        ``final``: the poll at the end of a phase (on the plan's thread), which only updates the counts.
        """
        ph = self.phase
        if not final and ph is not None:  # outside the lock: the plan's thread must not wait for these reads
            if ph.source is not None and self.phase_total is None:
                rows = self._source_rows(ph)
                with self.lock:
                    if self.phase is ph:
                        self.phase_total = rows
            elif ph.source is None and self.docs_total is None and self.files_read >= len(self.sizes):
                self.docs_total = self._accepted()
        snap = self.fetch(self.since)
        now = time.monotonic()
        with self.lock:
            self.since = snap["next"]
            for stage, key in snap["new"]:
                if stage == "read":
                    self.files_read += 1
                    self.bytes_read += self.sizes.get(key, 0)
            self.last_stats = snap["stages"]
            ph = self.phase
            if ph is None or final:
                return
            names = steps_of(self.plan, ph)
            for name in names:
                s = snap["stages"].get(name)
                if s is None:
                    continue
                st = self.stages.get(name)
                if st is None:
                    st = self.stages[name] = _Stage(name)
                    log.info("%s: started", name)
                st.rows, st.start = s["rows"], s["start"]
                if name == "read" and self.files_read >= len(self.sizes):
                    self._stage_done(name)  # every input file is read: the read is over before its phase
                elif self.mode == "bars" and not st.done:
                    self._draw(st)
            if self.mode == "bars":
                self._draw_status(now)
            elif now - self.last_line >= self.every:
                self.last_line = now
                self._lines(ph, names, now)

    def total(self, name: str) -> tuple[int | None, bool]:
        """The documents stage ``name`` of the current phase works through, and whether that is an estimate.

        In the first phase: the input records (the read's count; the stages after it get the documents the read
        accepted, once every file is read), estimated from the bytes read so far until then. In a later phase:
        the rows of its source.
        """
        ph = self.phase
        if ph is not None and ph.source is not None:
            return self.phase_total, False
        read = self.last_stats.get("read")
        if not read or not self.bytes_read:
            return None, True
        if self.files_read >= len(self.sizes):
            if name != "read" and self.docs_total is not None:
                return self.docs_total, False
            return read["rows"], False
        return round(read["rows"] * self.total_bytes / self.bytes_read), True

    def _accepted(self) -> int | None:
        try:
            return sum(r.get("accepted", 0) for r in self.plan.run.receipts())
        except Exception as exc:  # receipts that cannot be read: the read's records stay the total
            log.debug("could not read the receipts: %s", exc)
            return None

    def _source_rows(self, ph: Phase) -> int | None:
        try:
            return self.plan.run.count_rows(ph.source)
        except Exception as exc:  # an unreadable footer: the total stays unknown
            log.debug("could not count the rows of %s: %s", ph.source, exc)
            return None

    # -- what is shown ---------------------------------------------------------------------------------------

    def describe(self, st: _Stage) -> str:
        """``1,200/~3,818 docs (31%), 45 docs/s, ETA 00:58``: one stage's progress."""
        total, estimated = self.total(st.name)
        if total is not None:
            total = max(total, st.rows)
        rate = st.rate(time.time())
        of = "?" if total is None else ("~" if estimated else "") + _count(total)
        share = f" ({100 * st.rows / total:.0f}%)" if total else ""
        return f"{_count(st.rows)}/{of} docs{share}, {_rate(rate)}, ETA {_eta(st.rows, total, rate)}"

    def _doing(self, ph: Phase, names: list[str]) -> str:
        """What the phase is doing when no stage line says it."""
        if self.fit is not None:
            return f"fitting {self.fit[0][: -len('.fit')]} ({tqdm.format_interval(time.monotonic() - self.fit[1])})"
        if any(n in self.stages for n in names):
            return "running " + ", ".join(names)
        if ph.group is not None:
            return f"shuffling for {names[0]}, no batch done yet"
        return "starting its workers, no batch done yet"

    def _lines(self, ph: Phase, names: list[str], now: float) -> None:
        if self.fit is not None:
            log.info("%s: fitting, %s so far", self.fit[0], tqdm.format_interval(now - self.fit[1]))
            return
        started = [self.stages[n] for n in names if n in self.stages]
        if not started:
            log.info(
                "phase %d/%d: %s (%s so far)",
                ph.index + 1,
                len(self.plan.phases),
                self._doing(ph, names),
                tqdm.format_interval(now - self.phase_started),
            )
        for st in started:
            # a stage that has all its documents and did not move is left out (it waits for its phase to end)
            total, _ = self.total(st.name)
            if st.done or (total is not None and st.rows >= total and st.rows == st.logged):
                continue
            st.logged = st.rows
            log.info("%s: %s", st.name, self.describe(st))

    def _draw_status(self, now: float) -> None:
        if self.status is not None and self.phase is not None:
            self.status.detail = self._doing(self.phase, steps_of(self.plan, self.phase))
            self.status.refresh()

    def _draw(self, st: _Stage) -> None:
        total, _ = self.total(st.name)
        if st.bar is None:
            st.bar = _Bar(desc=st.name, file=self.stream, dynamic_ncols=True, leave=False, bar_format=_UNKNOWN)
        st.bar.detail = self.describe(st)
        st.bar.bar_format = _KNOWN if total else _UNKNOWN
        st.bar.total = max(total, st.rows) if total else None
        st.bar.n = st.rows
        st.bar.refresh()

    def _close_bar(self, st: _Stage) -> None:
        if st.bar is not None:
            st.bar.close()
            st.bar = None

    def _close_bars(self) -> None:
        for st in self.stages.values():
            self._close_bar(st)
        if self.status is not None:
            self.status.close()
            self.status = None


@contextlib.contextmanager
def progress_of(
    plan: Plan, stats: Any, files: list[InputFile], mode: str | None = None, every: float | None = None
) -> Iterator[Progress | None]:
    """Show the progress of ``plan`` (polling the statistics actor ``stats``) while the block runs.

    ``mode`` and ``every`` as in :func:`resolve_mode` and :func:`resolve_every`; ``off`` and ``ray`` show none
    of ours (yields None).
    """
    chosen = resolve_mode(mode)
    if chosen not in ("bars", "log"):
        yield None
        return
    with Progress(plan, actor_fetch(stats), files, chosen, resolve_every(every)) as reporter:
        yield reporter
