"""Entry point submitted to a Ray cluster:

    ray job submit --working-dir . -- python jobs/score.py --config configs/demo.yaml \
        --output /shared/runs/demo [--input PATH ...] [--set key.sub=value ...] [--overwrite | --resume]

It parses the config (failing before any work if it is invalid), connects to the cluster the job runs on
(``ray.init()`` picks up the job's address), and runs the same pipeline as ``dq-ray run``. Paths must be
readable and writable from every node: a shared filesystem or object storage (``s3://...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the dq_ray package

from dq_ray.cli import format_summary  # noqa: E402
from dq_ray.config import load_config  # noqa: E402
from dq_ray.pipeline import run_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a dq-ray scoring job on the current Ray cluster.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", action="append", default=[], help="input path (repeatable)")
    parser.add_argument("--output", default=None, help="run directory")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY.SUB=VALUE")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--resume", action="store_true", help="continue a killed run in the same output directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, overrides=args.overrides, inputs=args.input or None, output=args.output)
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)  # inside `ray job submit` this joins the job's cluster
    result = run_job(cfg, overwrite=args.overwrite, resume=args.resume)
    print(format_summary(result.manifest))
    if cfg.selection is not None:  # the config's selection policy: RUN/selected/ + the report
        from dq_ray.select import format_selection, select_run

        print(format_selection(select_run(result.run_dir, cfg.selection).summary))
    print(json.dumps({"run_dir": result.run_dir, "counts": result.manifest["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
