"""Score a data set with a registry version on a pool of Ray Data actors; write the predictions as Parquet.

    python -m jobs.predict --model digits --data data/digits.parquet --out scores/
    ray job submit --working-dir . -- python -m jobs.predict --model digits --label stable \\
        --data s3://bucket/digits/ --out s3://bucket/scores/ --concurrency 2-8

--data is Parquet or CSV (a file, or a folder of files, read in name order) or a folder of images
(searched recursively), on any pyarrow.fs URI. It is checked against the version's signature (and,
for a version trained from a template, the columns and image size training used) before anything
runs: a mismatch fails in one line with exit code 2.

--out receives Parquet files: the input's `id` column if it has one (else `row`, the row's position
in the input; for images `path`, relative to --data), one column per model output, and for
classifiers `class` (the top class) and `class_name`.

Connects to the running Ray cluster (RAY_ADDRESS, or the one `maas cluster up` started); with none
running, starts a local one for the duration of the job.
"""

from __future__ import annotations

import argparse
import sys

from maas import settings
from maas.cli_support import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name in the registry")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="version to score with (default: the stable "
                                                                  "label's, else the latest)")
    which.add_argument("--label", default=None, help="label whose version to score with (stable, canary...)")
    p.add_argument("--data", required=True, metavar="URI", help="Parquet, CSV or image folder (local, s3://, gs://)")
    p.add_argument("--out", required=True, metavar="URI", help="a new or empty folder for the Parquet predictions")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--concurrency", default=None, metavar="N|MIN-MAX",
                   help="actors: N, or MIN-MAX for a pool that grows with the work (default: as many as the "
                        "free CPUs, or GPUs, hold now)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="rows per model call (default: 1024 for tables, 64 for images)")
    p.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    p.add_argument("--json", action="store_true", help="print the run's figures as one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from maas.batch import parse_concurrency, predict_dataset

        # The data is checked against the version before Ray starts: a mismatch is one line, exit 2.
        report = predict_dataset(args.model, args.data, args.out, version=args.version, label=args.label,
                                 registry=args.registry, use_gpu=args.use_gpu, batch_size=args.batch_size,
                                 concurrency=None if args.concurrency is None else parse_concurrency(args.concurrency))
        print(report.json_line() if args.json else "\n".join(report.lines()), flush=True)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
