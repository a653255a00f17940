"""Command-line arguments of a training job, shared by ``python -m jobs.train`` and ``maas train``."""

from __future__ import annotations

import argparse

from maas import settings
from maas.templates import TEMPLATES
from maas.training.config import PLACEMENT_STRATEGIES, TrainConfig


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="digits", choices=sorted(TEMPLATES), help="use case to train (default: digits)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default: 2)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--epochs", type=int, default=None, help="default: the template's")
    p.add_argument("--batch-size", type=int, default=None, help="per-worker batch size; default: the template's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the template's")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data", dest="data_dir", default=None,
                   help="folder or URI (s3://, gs://) for the template's data set; shared storage on a "
                        f"multi-node cluster (default: {settings.default_data_dir()})")
    p.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    p.add_argument("--storage-path", default=None,
                   help=f"Ray Train storage for runs and checkpoints (default: {settings.default_runs_uri()})")
    p.add_argument("--model-name", default=None, help="name to publish under (default: the template's name)")
    p.add_argument("--run-name", default=None, help="Ray Train run name; reuse one to resume that run")
    p.add_argument("--placement-strategy", default=None, choices=PLACEMENT_STRATEGIES,
                   help="where Ray puts the workers: PACK (default, fewest nodes) or SPREAD/STRICT_SPREAD (across nodes)")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from (default: 2)")


_CONFIG_FIELDS = set(TrainConfig.__dataclass_fields__)


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """A validated :class:`TrainConfig` from parsed arguments (unset options keep their defaults)."""
    return TrainConfig(**{k: v for k, v in vars(ns).items() if k in _CONFIG_FIELDS and v is not None})


def to_argv(ns: argparse.Namespace) -> list[str]:
    """The options set in ``ns`` as command-line arguments again (to forward to a submitted job)."""
    argv: list[str] = []
    for key, value in vars(ns).items():
        if key not in _CONFIG_FIELDS or value is None or value is False:
            continue
        flag = "--data" if key == "data_dir" else "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv
