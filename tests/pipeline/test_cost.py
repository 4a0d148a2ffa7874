"""Cost per billion documents: every manifest records core-hours (and GPU-hours) per 1e9 documents per stage."""

from __future__ import annotations

import json

import pytest

from dq_ray.pipeline.plan import READ_CPUS
from dq_ray.pipeline.run import COST_DOCS, FIT_CPUS, GROUP_CPUS, cost_of

HOURS_PER_1B = COST_DOCS / 3600


def test_a_real_runs_manifest_has_the_cost_of_every_stage(progress_run):
    result, _ = progress_run
    m = json.loads(open(f"{result.run_dir}/manifest.json").read())
    cost, stages = m["cost"], m["stages"]
    assert cost["documents"] == 1_000_000_000 and "busy_s" in cost["basis"]
    assert set(cost["per_1b_docs"]) == {"read", "heuristics", "exact_dedup", "exact_dedup.group"} == set(stages)
    cpus = {"read": READ_CPUS, "exact_dedup.group": GROUP_CPUS}
    for name, s in stages.items():
        c = cost["per_1b_docs"][name]
        # a worker's request before a small machine scales it (heuristics' actors are held at 0.5 CPU on 2 CPUs,
        # but each keeps a core busy): stage_info's "requested"; "resources" is what it ran with
        held = cpus.get(name, m["stage_info"].get(name, {}).get("requested", {}).get("num_cpus"))
        assert c["num_cpus"] == held and c["num_gpus"] == 0 and c["rows"] == s["rows"]
        # measured seconds per document, scaled to 1e9 documents
        assert c["core_hours"] == pytest.approx(s["busy_s"] * held / s["rows"] * HOURS_PER_1B, rel=1e-3, abs=1e-3)
        assert c["core_hours"] > 0 or name == "exact_dedup.group"
        assert c["gpu_hours"] == 0
        assert s["core_hours_per_1b_docs"] == c["core_hours"] and s["gpu_hours_per_1b_docs"] == 0
    assert cost["per_1b_docs"]["heuristics"]["setup_core_hours"] == pytest.approx(
        stages["heuristics"]["setup_s"] / 3600, abs=1e-6
    )
    total = sum(c["core_hours"] for c in cost["per_1b_docs"].values())
    assert cost["total"]["core_hours"] == pytest.approx(total, abs=1e-2) and cost["total"]["gpu_hours"] == 0


def test_fits_gpus_reads_and_groups_are_costed_by_what_they_hold():
    stages = {
        "read": {"rows": 1000, "busy_s": 2.0, "setup_s": 0.0, "wall_s": 1.0},
        "embed.fit": {"wall_s": 36.0},
        "embed": {"rows": 1000, "busy_s": 10.0, "setup_s": 4.0, "wall_s": 6.0},
        "dedup.group": {"rows": 1000, "busy_s": 1.0, "setup_s": 0.0, "wall_s": 1.0},
        "empty": {"rows": 0, "busy_s": 0.0, "setup_s": 0.0, "wall_s": 0.0},
    }
    info = {"embed": {"num_cpus": 2.0, "num_gpus": 0.5}, "empty": {"num_cpus": 1}}
    cost = cost_of(stages, info)
    per = cost["per_1b_docs"]
    assert set(per) == {"read", "embed.fit", "embed", "dedup.group"}  # no documents: no cost per document
    assert per["read"]["core_hours"] == pytest.approx(2.0 * READ_CPUS / 1000 * HOURS_PER_1B, rel=1e-6)
    assert per["embed"]["core_hours"] == pytest.approx(10.0 * 2 / 1000 * HOURS_PER_1B, rel=1e-6)
    assert per["embed"]["gpu_hours"] == pytest.approx(10.0 * 0.5 / 1000 * HOURS_PER_1B, rel=1e-6)
    assert per["embed"]["setup_core_hours"] == pytest.approx(4.0 * 2 / 3600, abs=1e-6)  # fixed, not scaled
    # a fit: its wall time on one CPU, per document of its stage
    assert per["embed.fit"]["core_hours"] == pytest.approx(36.0 * FIT_CPUS / 1000 * HOURS_PER_1B, rel=1e-6)
    assert per["embed.fit"]["rows"] == 1000 and per["embed.fit"]["gpu_hours"] == 0
    assert per["dedup.group"]["core_hours"] == pytest.approx(1.0 * GROUP_CPUS / 1000 * HOURS_PER_1B, rel=1e-6)
    assert cost["total"]["core_hours"] == pytest.approx(sum(c["core_hours"] for c in per.values()), abs=1e-2)
    assert cost["total"]["gpu_hours"] == per["embed"]["gpu_hours"]
