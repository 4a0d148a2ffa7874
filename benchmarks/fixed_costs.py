"""Fixed costs of a small run: where the seconds go when there is little work, and how far they are from the work.

Runs the CPU job (``heuristics``, ``exact_dedup``, ``minhash``) through the real CLI at a small size (300
documents) and a larger one (``--large``, 5,000 by default), once per variant, side by side in one run:

* ``local`` (the defaults): a groupby over little data runs on the driver (``ray.local_group_bytes``), and MinHash
  hashes a small corpus there too (``local_hash_rows``);
* ``distributed``: every groupby a Ray Data shuffle (sort shuffle) and MinHash's hashing in a pool of actors, what
  every run did before the local paths (``ray.local_group_bytes: 0``, ``local_hash_rows: 0``);
* ``hash``: as ``distributed`` with Ray's hash shuffle (``ray.shuffle: hash``).

For each part of the job (Ray start, each phase, the MinHash fit) it reports:

* its wall at the small size and its per-document cost at the large size;
* its **fixed cost**: wall(small) - small x per-document cost(large);

and, for the whole job, the ratio of the small run's wall to (Ray start + the stages' work at the small size),
the stages' work being small x the per-document cost of every phase at the large size. The targets (issue 15):
<= 3 s of fixed cost per stage, and a 300-document run within 2x of (Ray start + work).

    .venv/bin/python benchmarks/fixed_costs.py [--small 300] [--large 5000] [--variants local,distributed]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUIET, report_header  # noqa: E402
from scale import generate_corpus, job_config, run_cli, sentence_pool  # noqa: E402

log = logging.getLogger("bench.fixed")
STAGES = ["heuristics", "exact_dedup", "minhash"]
PACKAGES = ("ray", "datatrove", "pyarrow")
#: per variant: what it is, its ray settings, and per stage the settings it adds (params, resources)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, dict[str, Any]]]] = {
    "local": (
        "the defaults: small groupbys and MinHash hashing on the driver, heuristics' actors by input size",
        {},
        {},
    ),
    "distributed": (
        "every groupby a Ray shuffle, MinHash hashed by an actor pool, heuristics in one actor per CPU",
        {"local_group_bytes": 0},
        {"minhash": {"params": {"local_hash_rows": 0}}, "heuristics": {"resources": {"concurrency": "cpus"}}},
    ),
    "hash": (
        "as distributed, with Ray's hash shuffle",
        {"local_group_bytes": 0, "shuffle": "hash"},
        {"minhash": {"params": {"local_hash_rows": 0}}, "heuristics": {"resources": {"concurrency": "cpus"}}},
    ),
}


def parts(manifest: dict[str, Any]) -> dict[str, float]:
    """Wall seconds of each part of one run: Ray start (and the manifest around it), each phase, the fits."""
    out = {"Ray start + bookkeeping": manifest["wall_s"] - manifest["pipeline_wall_s"]}
    stages = manifest.get("stages", {})
    for ph in manifest["phases"]:
        wall = ph["wall_s"]
        if "fit" in ph:
            fit = stages.get(f"{ph['fit']}.fit", {}).get("wall_s", 0.0)
            out[f"{ph['fit']}.fit"] = fit
            wall -= fit
        if "group" in ph:
            name = f"{ph['group']}.group" + (f" + {', '.join(ph['stages'])}" if ph["stages"] else "")
        else:
            name = ", ".join((["read"] if ph["phase"] == 0 else []) + ph["stages"])
        out[f"phase {ph['phase']}: {name}"] = wall
    return out


def table(variant: str, small: int, large: int, walls: dict[int, dict[str, float]]) -> tuple[list[str], dict]:
    """Markdown rows of one variant, and its totals."""
    lines = [
        f"| part ({variant}) | wall at {small:,} s | ms / doc at {large:,} | fixed cost s |",
        "|---|---:|---:|---:|",
    ]
    start_key = "Ray start + bookkeeping"
    work = 0.0
    for name, wall_small in walls[small].items():
        per_doc = walls[large].get(name, 0.0) / large
        fixed = wall_small - small * per_doc
        if name != start_key:
            work += small * per_doc
        lines.append(f"| {name} | {wall_small:.1f} | {1000 * per_doc:.2f} | {fixed:.1f} |")
    total = sum(walls[small].values())
    start = walls[small][start_key]
    ratio = total / (start + work)
    lines.append(f"| **job at {small:,}** | **{total:.1f}** | | |")
    lines.append("")
    lines.append(
        f"Ray start {start:.1f} s + the stages' work at {small:,} documents {work:.1f} s = {start + work:.1f} s; "
        f"the {small:,}-document job took {total:.1f} s: **{ratio:.2f}x** (target <= 2x)."
    )
    return lines, {"total_s": total, "ray_start_s": start, "work_s": work, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    today = datetime.now(timezone.utc).date().isoformat()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--variants", default="local,distributed", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="most seconds to wait for idle CPUs")
    parser.add_argument("--out", default=f"benchmarks/results/fixed-costs-{today}.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    QUIET["max_wait_s"] = args.quiet_wait
    workdir = Path(tempfile.mkdtemp(prefix="dq-fixed-"))
    pool = sentence_pool()
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        corpora = {n: generate_corpus(n, workdir / f"corpus-{n}", pool, min_files=2) for n in (args.small, args.large)}
        for variant in args.variants.split(","):
            results[variant] = {}
            ray_cfg, per_stage = VARIANTS[variant][1:]
            for n, corpus in corpora.items():
                cfg = job_config(corpus.dir, workdir / "runs" / f"{variant}-{n}", STAGES, None)
                cfg["ray"].update(ray_cfg)
                for entry in cfg["stages"]:
                    for key, values in per_stage.get(entry["name"], {}).items():
                        entry[key] = {k: os.cpu_count() if v == "cpus" else v for k, v in values.items()}
                result = run_cli(f"cpu-{variant}", cfg, workdir, n)
                results[variant][n] = parts(result.manifest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = [
        *report_header("Fixed costs of a small run (heuristics + exact_dedup + minhash)", PACKAGES),
        "",
        "Part walls from the manifest (`wall_s - pipeline_wall_s`, `phases`, `<stage>.fit`); "
        "fixed cost = wall at the small size - small x ms/doc at the large size.",
        "",
    ]
    summary = {}
    for variant, walls in results.items():
        report.append(f"**{variant}**: {VARIANTS[variant][0]}.")
        report.append("")
        lines, summary[variant] = table(variant, args.small, args.large, walls)
        report += [*lines, ""]
    if len(summary) > 1:
        base, *others = summary
        for other in others:
            ours, theirs = summary[base]["total_s"], summary[other]["total_s"]
            report.append(
                f"{args.small:,}-document job: `{base}` {ours:.1f} s, `{other}` {theirs:.1f} s: `{base}` takes "
                f"{ours / theirs:.2f}x the wall of `{other}`"
            )
    text = "\n".join(report)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
