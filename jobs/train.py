"""Train a template with Ray Train and publish the result as a new model version.

    python -m jobs.train --template digits --num-workers 2
    ray job submit --working-dir . -- python -m jobs.train --template digits --num-workers 2

Connects to the running Ray cluster (``RAY_ADDRESS``, or the one ``maas cluster up`` started);
with none running, starts a local one for the duration of the job.
"""

from __future__ import annotations

import argparse
import json
import sys

from maas import settings
from maas.cli_support import fail, run_cli
from maas.templates import TEMPLATES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", default="digits", choices=sorted(TEMPLATES), help="use case to train (default: digits)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default: 2)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--epochs", type=int, default=None, help="default: the template's")
    p.add_argument("--batch-size", type=int, default=None, help="per-worker batch size; default: the template's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the template's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", dest="data_dir", default=None,
                   help=f"folder for the template's data set (default: {settings.default_data_dir()})")
    p.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    p.add_argument("--storage-path", default=None,
                   help=f"Ray Train storage for runs and checkpoints (default: {settings.default_runs_uri()})")
    p.add_argument("--model-name", default=None, help="name to publish under (default: the template's name)")
    p.add_argument("--run-name", default=None, help="Ray Train run name; reuse one to resume that run")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from (default: 2)")
    p.add_argument("--json", action="store_true", help="print the published version as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from maas.cluster import connect
        from maas.training.config import TrainConfig
        from maas.training.driver import run_training

        options = {k: v for k, v in vars(args).items() if k != "json" and v is not None}
        config = TrainConfig(**options)
        connect()
        outcome = run_training(config)
        v = outcome.version
        if args.json:
            print(json.dumps({"model": v.model, "version": v.version, "metrics": outcome.metrics}))
        else:
            m = outcome.metrics
            print(
                f"Published {v.model} version {v.version} to {config.registry}: "
                f"test accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f} "
                f"({m['num_examples']} held-out examples)"
            )
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
