"""Command-line arguments of a training job, shared by ``python -m jobs.train`` and ``maas train``."""

from __future__ import annotations

import argparse

from maas import settings
from maas.templates import TEMPLATES
from maas.training.config import PLACEMENT_STRATEGIES, TrainConfig, parse_num_workers


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="digits", choices=sorted(TEMPLATES), help="use case to train (default: digits)")
    p.add_argument("--num-workers", type=_num_workers, default=2, metavar="N|MIN-MAX",
                   help="Ray Train workers: N, or MIN-MAX to start with as many as fit now, at least MIN "
                        "(default: 2)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--epochs", type=int, default=None, help="default: the template's")
    p.add_argument("--batch-size", type=int, default=None, help="per-worker batch size; default: the template's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the template's")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data", default=None, metavar="URI",
                   help="your data set on any pyarrow.fs URI (local, s3://, gs://): train.parquet + test.parquet, "
                        "train.csv + test.csv, or image folders train/<class>/ + test/<class>/, matching the "
                        "template's schema (default: the template's built-in data set)")
    p.add_argument("--data-dir", default=None, metavar="URI",
                   help="where built-in data sets are staged; shared storage on a multi-node cluster "
                        f"(default: {settings.default_data_dir()})")
    p.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    p.add_argument("--storage-path", default=None,
                   help=f"Ray Train storage for runs and checkpoints (default: {settings.default_runs_uri()})")
    p.add_argument("--model-name", default=None, help="name to publish under (default: the template's name)")
    p.add_argument("--run-name", default=None, help="Ray Train run name (default: <model>-<UTC time>)")
    p.add_argument("--resume", metavar="RUN_NAME", default=None,
                   help="continue a stopped or failed run from its last checkpoint (same storage path)")
    p.add_argument("--cv", dest="cv_folds", type=int, default=None, metavar="K",
                   help="K-fold cross-validation on the training split first, folds as parallel Ray Train runs; "
                        "mean and std per metric go into the published version's metadata")
    p.add_argument("--validation-fraction", type=float, default=None, metavar="F",
                   help="hold out this share of the training split (stratified by class, seeded; never the "
                        "test split) and report its loss and metric every epoch (default: 0, none)")
    p.add_argument("--early-stopping-patience", type=int, default=None, metavar="P",
                   help="stop once the validation loss has not improved for P epochs and publish the best "
                        "epoch's weights (needs --validation-fraction; default: 0, off)")
    p.add_argument("--tune", action="store_true", default=None,
                   help="search the template's space with Ray Tune, each trial a Ray Train run, ASHA stopping "
                        "weak trials early on the validation loss; the best trial is published, every trial's "
                        "settings and result go into its metadata. Spaces: " + _spaces())
    p.add_argument("--trials", type=int, default=None, metavar="N", help="trials of a --tune search (default: 4)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="K",
                   help="trials at once (default: as many as fit side by side)")
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                   help="float16 compute with float32 weights (default: on with --use-gpu)")
    p.add_argument("--placement-strategy", default=None, choices=PLACEMENT_STRATEGIES,
                   help="where Ray puts the workers: PACK (default, fewest nodes) or SPREAD/STRICT_SPREAD (across nodes)")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from (default: 2)")
    p.add_argument("--wait-for-resources", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the workers to fit before failing with what holds the cluster "
                        "(default: 30; raise it on an autoscaling cluster, where nodes join later)")


def _spaces() -> str:
    """Each template's tuning space, for ``--help``."""
    return "; ".join(f"{t.name}: " + ", ".join(hp.describe().split(":")[0] for hp in t.tuning_space)
                     for t in TEMPLATES.values())


def _num_workers(text: str) -> int | str:
    """``N`` stays an int (what callers of the parsed arguments read); ``MIN-MAX`` and anything else
    stays text, which :func:`config_from_args` checks, so that a bad value fails in one line."""
    return int(text) if text.isascii() and text.isdigit() else text


_CONFIG_FIELDS = set(TrainConfig.__dataclass_fields__)


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """A validated :class:`TrainConfig` from parsed arguments (unset options keep their defaults)."""
    values = {k: v for k, v in vars(ns).items() if k in _CONFIG_FIELDS and v is not None}
    if "num_workers" in values:
        values["min_workers"], values["num_workers"] = parse_num_workers(values["num_workers"])
    resume = getattr(ns, "resume", None)
    if resume is not None:
        values.update(run_name=resume, resume=True)
    return TrainConfig(**values)


def to_argv(ns: argparse.Namespace) -> list[str]:
    """The options set in ``ns`` as command-line arguments again (to forward to a submitted job)."""
    argv: list[str] = []
    for key, value in vars(ns).items():
        if key not in _CONFIG_FIELDS | {"resume"} or value is None:
            continue
        flag = "--cv" if key == "cv_folds" else "--" + key.replace("_", "-")
        if value is False:
            if key == "mixed_precision":
                argv.append("--no-mixed-precision")
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv
