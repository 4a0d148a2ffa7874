"""An update (``dq-ray run --baseline``) against a full rerun: what scoring only the new documents saves.

The demo corpus's accepted documents are shuffled and split: ``--new-share`` of them (10% by default) are the
new batch, the rest the base corpus; the new batch also holds planted exact copies of ``--copies`` base documents
(cache hits and cross-run duplicates). Three runs, each on a fresh embedded Ray:

* **base**: the base corpus (not timed for the table: it is the baseline);
* **rerun**: base + new batch from scratch, what a team does without ``--baseline``;
* **update**: the new batch with ``--baseline base``.

The table gives, per stage (and fit), the wall of the rerun and of the update and their ratio, and the whole
runs' walls. Target (issue 19): an update of 10% new documents costs about 10% of a rerun.

    .venv/bin/python benchmarks/update_vs_rerun.py [--sizes tiny|demo] [--new-share 0.1] [--copies 20] \
        [--num-cpus N] [--output benchmarks/results/update_vs_rerun.md]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUIET, read_accepted, report_header, save_report, wait_quiet, write_shards  # noqa: E402

log = logging.getLogger("bench.update")
STAGES: list[dict[str, Any]] = [
    {"name": "heuristics"},
    {"name": "exact_dedup"},
    {"name": "minhash"},
    {"name": "embed", "params": {"backend": "onnx", "num_threads": 1}},
    {"name": "density"},
    {"name": "topics"},
    {"name": "map", "params": {"method": "pca"}},
]
PACKAGES = ("ray", "pyarrow", "datatrove", "onnxruntime", "faiss-cpu")


def _run(inputs: list[Path], out: Path, num_cpus: int | None, baseline: Path | None = None) -> tuple[dict, float]:
    """One ``run_job`` on a fresh embedded Ray; the manifest and the wall seconds."""
    import ray

    from dq_ray.config import load_config
    from dq_ray.pipeline import init_local_ray, run_job
    from dq_ray.pipeline.baseline import BaselineOptions

    cfg = load_config(
        {
            "input": {"paths": [str(p) for p in inputs]},
            "output": {"path": str(out)},
            "ray": {"num_cpus": num_cpus},
            "stages": STAGES,
        }
    )
    init_local_ray(num_cpus)
    try:
        wait_quiet(out.name)
        t0 = time.perf_counter()
        result = run_job(cfg, progress="off", baseline=BaselineOptions(str(baseline)) if baseline else None)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return result.manifest, wall


def table(rerun: dict, update: dict, walls: tuple[float, float]) -> list[str]:
    """Markdown rows: per stage and fit, rerun wall, update wall, ratio; then the whole runs."""
    lines = [
        "| step | rerun docs | rerun wall s | update docs | update wall s | update / rerun |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = list(dict.fromkeys([*rerun["stages"], *update["stages"]]))
    for name in names:
        a, b = rerun["stages"].get(name, {}), update["stages"].get(name, {})
        wa, wb = a.get("wall_s"), b.get("wall_s")
        ratio = f"{wb / wa:.2f}" if wa and wb is not None else ("0 (applied)" if wa else "")
        cell = lambda s, w: ("" if w is None else f"{w:.2f}", f"{s.get('rows', ''):,}" if s.get("rows") else "")  # noqa: E731
        (wa_s, ra), (wb_s, rb) = cell(a, wa), cell(b, wb)
        lines.append(f"| {name} | {ra} | {wa_s} | {rb} | {wb_s} | {ratio} |")
    lines.append(
        f"| **whole run** | {rerun['counts']['input']:,} | {walls[0]:.1f} | {update['counts']['input']:,} | "
        f"{walls[1]:.1f} | **{walls[1] / walls[0]:.2f}** |"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", choices=["tiny", "demo"], default="tiny", help="tiny: ~150 documents; demo: the demo")
    ap.add_argument("--new-share", type=float, default=0.1)
    ap.add_argument("--copies", type=int, default=20, help="planted exact copies of base documents in the batch")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="benchmarks/results/update_vs_rerun.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from dq_ray.demo import DemoSizes, build_demo_corpus

    work = Path(tempfile.mkdtemp(prefix="dq-update-bench-"))
    sizes = (
        DemoSizes(wikipedia=80, news=30, tweets=60, speeches=30, duplicates=10) if args.sizes == "tiny" else DemoSizes()
    )
    build_demo_corpus(work / "corpus", sizes, seed=args.seed)
    docs = read_accepted(str(work / "corpus"))
    random.Random(args.seed).shuffle(docs)
    n_new = max(1, int(len(docs) * args.new_share))
    base_docs, new_docs = docs[n_new:], docs[:n_new]
    copies = [(f"copy-{i}", text) for i, (_, text) in enumerate(base_docs[: args.copies])]
    write_shards(base_docs, 2, work / "base_in")
    write_shards(new_docs + copies, 1, work / "new_in")

    _run([work / "base_in"], work / "base", args.num_cpus)
    rerun, rerun_wall = _run([work / "base_in", work / "new_in"], work / "rerun", args.num_cpus)
    update, update_wall = _run([work / "new_in"], work / "update", args.num_cpus, baseline=work / "base")
    b = update["baseline"]
    lines = [
        *report_header("Update (--baseline) vs full rerun", PACKAGES),
        f"- corpus: {len(base_docs):,} base documents; new batch {len(new_docs):,} new + {len(copies)} planted copies"
        f" ({args.sizes} demo sizes, seed {args.seed}); stages: {', '.join(s['name'] for s in STAGES)}",
        f"- quiet machine: waited for <= {QUIET['busy_share']:.0%} busy before each run",
        f"- update: fits applied from the baseline {b['fits_reused']}; signals reused from the cache "
        f"{b['cache']['reused']}; copies of baseline documents found: {b['cross_run'].get('exact_duplicates')}",
        "",
        *table(rerun, update, (rerun_wall, update_wall)),
        "",
        "Walls include each run's fixed costs (Ray Data start-up per phase, actor start, model loads), which do not",
        "shrink with the batch: on a small corpus they dominate both runs and the ratio stays far above the share",
        "of new documents; per-stage rows show where the documents' work went.",
    ]
    save_report(args.output, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
