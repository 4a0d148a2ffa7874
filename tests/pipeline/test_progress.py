"""Live progress: plain lines in a real run (stderr not a terminal), bars on a terminal, the mode switches."""

from __future__ import annotations

import io
import logging

import pytest

from dq_ray.config import load_config
from dq_ray.io import InputFile
from dq_ray.pipeline.plan import Plan
from dq_ray.pipeline.progress import Progress, resolve_every, resolve_mode, steps_of


def test_a_real_run_logs_every_phase_and_stage_start_and_end(progress_run):
    result, lines = progress_run
    stages = result.manifest["stages"]
    assert "phase 1/2 started: read, heuristics, exact_dedup" in lines
    assert "phase 2/2 started: exact_dedup.group" in lines
    for name in ("read", "heuristics", "exact_dedup", "exact_dedup.group"):
        started = lines.index(f"{name}: started")
        # the end line carries the documents the stage did, as the manifest records them
        end = f"{name}: done, {stages[name]['rows']:,} docs"
        done = next(i for i, line in enumerate(lines) if line.startswith(end))
        assert started < done, name
    assert lines.index("phase 1/2 started: read, heuristics, exact_dedup") < lines.index("read: started")
    assert any(line.startswith("phase 1/2 done in ") for line in lines)
    assert lines[-1].startswith("phase 2/2 done in ")
    # and periodic lines in between: what is running (or that the workers are starting), every 0.3 s
    periodic = [line for line in lines if " docs/s, ETA " in line or "no batch done yet" in line]
    assert periodic, lines


# -- the reporter on its own: a real plan, scripted statistics ---------------------------------------------


class _Run:
    """The two things the reporter asks the run directory."""

    def count_rows(self, name: str) -> int:
        return 90

    def receipts(self) -> list[dict]:
        return [{"accepted": 45}, {"accepted": 45}]


def _plan(tmp_path) -> Plan:
    cfg = load_config(
        {
            "input": {"paths": [str(tmp_path)]},
            "output": {"path": str(tmp_path / "run")},
            "stages": [{"name": "heuristics"}, {"name": "exact_dedup"}],
        }
    )
    return Plan(cfg, [], _Run(), None)


FILES = [InputFile(f"/in/{n}.jsonl", "jsonl", f"{n}.jsonl", size=1000) for n in ("a", "b")]


def _snap(since, new, **rows):
    stages = {name: {"rows": n, "start": 1.0, "end": 2.0, "workers": 1, "busy_s": 1.0} for name, n in rows.items()}
    return {"stages": stages, "new": new, "next": since + len(new)}


def test_totals_are_estimated_from_bytes_then_known(tmp_path):
    plan = _plan(tmp_path)
    script = iter(
        [
            _snap(0, []),  # workers starting
            _snap(0, [("read", "/in/a.jsonl")], read=50, heuristics=20),  # half the bytes read
            _snap(1, [("read", "/in/b.jsonl")], read=100, heuristics=60, exact_dedup=30),  # all read
            _snap(2, [], read=100, heuristics=60, exact_dedup=30),
        ]
    )
    p = Progress(plan, lambda since: next(script), FILES, mode="log", every=1e-6)
    assert steps_of(plan, plan.phases[0]) == ["read", "heuristics", "exact_dedup"]
    p.on_step("phase", "0", False)
    p.tick()
    assert p.total("heuristics") == (None, True)
    p.tick()
    assert p.total("heuristics") == (100, True)  # 50 records in 1000 of 2000 bytes
    assert p.describe(p.stages["heuristics"]).startswith("20/~100 docs (20%), ")
    p.tick()
    assert p.total("read") == (100, False)  # records, every file read
    p.tick()  # the next poll reads the receipts: the documents the read accepted
    assert p.total("heuristics") == (90, False)
    assert p.describe(p.stages["heuristics"]).startswith("60/90 docs (67%), ")


def test_bars_on_a_terminal(tmp_path):
    plan = _plan(tmp_path)
    snaps = [_snap(0, [("read", "/in/a.jsonl")], read=50, heuristics=20), _snap(1, [], read=50, heuristics=40)]
    script = iter(snaps + [snaps[-1]] * 10)
    out = io.StringIO()
    with Progress(plan, lambda since: next(script), FILES, mode="bars", poll=3600, stream=out) as p:
        p.on_step("phase", "0", False)
        p.tick()
        p.tick()
        drawn = out.getvalue()
        assert "phase 1/2" in drawn and "running read, heuristics, exact_dedup" in drawn
        assert "heuristics" in drawn and "40/~100 docs (40%)" in drawn and "|" in drawn and "ETA" in drawn
        p.on_step("fit", "exact_dedup", False)  # (exact_dedup has no fit: only the status line is tested)
        p.tick()
        assert "fitting exact_dedup" in out.getvalue()
        p.on_step("fit", "exact_dedup", True)


def test_modes(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("DQ_RAY_PROGRESS", raising=False)
    monkeypatch.delenv("DQ_RAY_PROGRESS_EVERY", raising=False)
    assert resolve_mode(None, Tty()) == "bars" and resolve_mode(None, io.StringIO()) == "log"
    assert resolve_mode("off") == "off" and resolve_every() == 10.0 and resolve_every(2) == 2.0
    monkeypatch.setenv("DQ_RAY_PROGRESS", "ray")
    monkeypatch.setenv("DQ_RAY_PROGRESS_EVERY", "30")
    assert resolve_mode(None, Tty()) == "ray" and resolve_every() == 30.0
    monkeypatch.setenv("DQ_RAY_PROGRESS", "loud")
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        resolve_mode()
    monkeypatch.setenv("DQ_RAY_PROGRESS_EVERY", "often")
    with pytest.raises(ValueError, match="DQ_RAY_PROGRESS_EVERY"):
        resolve_every()


def test_ray_notices_are_dropped_and_other_warnings_kept(caplog):
    from dq_ray.pipeline.session import quiet_ray_notices

    quiet_ray_notices()
    quiet_ray_notices()  # idempotent
    progress = logging.getLogger("ray.data._internal.progress")
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(progress.filters) == 1
    with caplog.at_level(logging.WARNING):
        progress.warning("Progress bars disabled. To enable, set `ray.data.DataContext...` = True`.")
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        progress.warning("Progress bars for operators disabled.")
    kept = [r.getMessage() for r in caplog.records]
    assert kept == [
        "Token authentication is disabled for this Ray cluster. Anyone with network access ...",
        "Progress bars for operators disabled.",
    ]
