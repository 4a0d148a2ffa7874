"""Fixed costs of a small run: where the seconds go when there is little work, and how far they are from the work.

Runs the CPU job (``heuristics``, ``exact_dedup``, ``minhash``) through the real CLI at a small size (300
documents) and a larger one (``--large``, 5,000 by default), with the groupby shuffle dq-ray picks for such runs
(``ray.shuffle: auto`` -> Ray Data's pull-based sort shuffle) and, side by side, with Ray's hash shuffle (what
every groupby used before). For each part of the job (Ray start, each phase, the MinHash fit) it reports:

* its wall at the small size and its per-document cost at the large size;
* its **fixed cost**: wall(small) - small x per-document cost(large);

and, for the whole job, the ratio of the small run's wall to (Ray start + the stages' work at the small size),
the stages' work being small x the per-document cost of every phase at the large size. The targets (issue 15):
<= 3 s of fixed cost per stage, and a 300-document run within 2x of (Ray start + work).

    .venv/bin/python benchmarks/fixed_costs.py [--small 300] [--large 5000]
"""

from __future__ import annotations

import argparse
import logging
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


def table(shuffle: str, small: int, large: int, walls: dict[int, dict[str, float]]) -> tuple[list[str], dict]:
    """Markdown rows of one shuffle setting, and its totals."""
    lines = [
        f"| part ({shuffle} shuffle) | wall at {small:,} s | ms / doc at {large:,} | fixed cost s |",
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
    parser.add_argument("--shuffles", default="auto,hash", help="comma list of ray.shuffle settings to compare")
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
        for shuffle in args.shuffles.split(","):
            results[shuffle] = {}
            for n, corpus in corpora.items():
                cfg = job_config(corpus.dir, workdir / "runs" / f"{shuffle}-{n}", STAGES, None)
                cfg["ray"]["shuffle"] = shuffle
                result = run_cli(f"cpu-{shuffle}", cfg, workdir, n)
                results[shuffle][n] = parts(result.manifest)
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
    for shuffle, walls in results.items():
        lines, summary[shuffle] = table(shuffle, args.small, args.large, walls)
        report += [*lines, ""]
    if len(summary) > 1:
        base, *others = summary
        for other in others:
            report.append(
                f"{args.small:,}-document job, `ray.shuffle: {base}` vs `{other}`: "
                f"{summary[other]['total_s'] / summary[base]['total_s']:.2f}x faster"
            )
    text = "\n".join(report)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
