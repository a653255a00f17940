"""Train a template with Ray Train and publish the result as a new model version.

    python -m jobs.train --template digits --num-workers 2
    ray job submit --working-dir . -- python -m jobs.train --template digits --num-workers 2
    ray job submit --working-dir . -- python -m jobs.train --template digits --num-workers 1-2
    ray job submit --working-dir . -- python -m jobs.train --template digits --tune --trials 8

--num-workers MIN-MAX starts with as many workers as fit now (at least MIN, at most MAX). Workers
that do not fit are waited for --wait-for-resources seconds, then the job fails with one line:
what it asked for, what is free, and what holds the rest.

Connects to the running Ray cluster (RAY_ADDRESS, or the one `maas cluster up` started); with none
running, starts a local one for the duration of the job.
"""

from __future__ import annotations

import argparse
import json
import sys

from maas.cli_support import run_cli
from maas.training.arguments import add_train_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--json", action="store_true", help="print the published version as one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from maas.local_cluster import connect
        from maas.training.data import check_data
        from maas.training.driver import run_training
        from maas.training.metrics import headline

        config = config_from_args(args)
        check_data(config)  # a data set that does not fit the template fails here, before Ray starts
        connect()
        outcome = run_training(config)
        v, m = outcome.version, outcome.metrics
        if args.json:
            cv, tuning = outcome.cross_validation, outcome.tuning
            print(json.dumps({"model": v.model, "version": v.version, "metrics": m,
                              "cross_validation": cv and cv.to_json(), "tuning": tuning and tuning.to_json()}))
        else:
            print(f"Published {v.model} version {v.version} to {config.registry}: held-out {headline(m)} "
                  f"({m['num_examples']} examples)")
            if outcome.tuning:
                trials = outcome.tuning.trials
                stopped = sum(t.stopped_by == "ASHA" for t in trials)
                print(f"Tuned {len(trials)} trials ({stopped} stopped early by ASHA): best trial "
                      f"{outcome.tuning.best_trial} with " + ", ".join(
                          f"{k}={val:g}" for k, val in outcome.tuning.best_params.items()))
            if outcome.cross_validation:
                summary = outcome.cross_validation.summary
                print(f"{config.cv_folds}-fold cross-validation: "
                      + ", ".join(f"{k} {s['mean']:.4f} ± {s['std']:.4f}" for k, s in summary.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
