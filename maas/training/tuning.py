"""``--tune``: a Ray Tune search over a template's tuning space, each trial a Ray Train run.

Tune runs one small driver per trial (no CPU of its own); the driver runs a ``TensorflowTrainer`` whose
workers report every epoch, and ``TuneReportCallback`` hands those reports to Tune. ASHA judges the
trials on the validation loss (``best_val_loss``: the best epoch's so far) at rungs of 1, 2, 4... epochs
and stops the weaker half at each. Trials run as many at once as their worker groups fit side by side
(a trial whose workers could not be placed would fail, not queue). The search is a Tune experiment
named after the run: ``--resume`` continues it, finished trials kept, unfinished ones resumed from their
Ray Train checkpoints.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from maas.errors import ConfigError
from maas.records import SchedulerRecord, TrialRecord, TuningRecord
from maas.storage import join_uri, resolve_uri
from maas.templates import DataInfo, Template
from maas.training.config import TrainConfig

logger = logging.getLogger(__name__)

METRIC = "best_val_loss"  # what ASHA and the final pick compare: lower is better
_RESERVED = ("checkpoint_path", "config", "trial_id", "experiment_tag", "training_iteration", "time_this_iter_s",
             "time_total_s", "timestamp", "date", "done", "hostname", "node_ip", "pid", "time_since_restore",
             "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint")


@dataclass(frozen=True)
class TuningOutcome:
    """The best trial, what to publish from it, and the record of the whole search."""

    config: TrainConfig  # the run's config with the best trial's learning rate and hyperparameters
    checkpoint: Any  # ray.train.Checkpoint of the best trial's last report (it holds the export)
    metrics: dict[str, Any]  # the best trial's last report
    record: TuningRecord  # for the metadata: scheduler, space, trials, best trial


def tune(config: TrainConfig, template: Template, info: DataInfo, datasets: dict[str, Any],
         majority: int | None, workers: int, at_once: int) -> TuningOutcome:
    """Run (or with ``config.resume`` continue) the search; return its best finished trial."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from maas.training.driver import _storage

    concurrent = min(config.max_concurrent or at_once, at_once, config.trials)
    if config.max_concurrent > at_once:
        print(f"[maas] --max-concurrent {config.max_concurrent}: only {at_once} trials of {workers} workers fit "
              f"side by side now; running {concurrent} at once", flush=True)
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(_trial, run=config, info=info, datasets=datasets, majority=majority,
                                 workers=workers),
        # The trial's driver only waits on its Ray Train run, whose workers hold the CPUs; Tune refuses an
        # empty reservation, and a sliver of a CPU would leave no whole CPU on a node for a worker.
        {"memory": 1})
    storage_fs, storage_path = _storage(config.storage_path)
    experiment = join_uri(config.storage_path, config.run_name or "")
    space = {hp.name: hp.domain() for hp in template.tuning_space}
    if config.resume:
        if not ray_tune.Tuner.can_restore(_local_or_uri(experiment)):
            raise ConfigError(f"--resume {config.run_name}: no tuning run of that name under {config.storage_path}")
        tuner = ray_tune.Tuner.restore(_local_or_uri(experiment), trainable, resume_errored=True,
                                       storage_filesystem=storage_fs)
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=space,
            tune_config=ray_tune.TuneConfig(
                metric=METRIC, mode="min", num_samples=config.trials, max_concurrent_trials=concurrent,
                scheduler=ASHAScheduler(time_attr="epoch", max_t=config.epochs or 1,
                                        grace_period=1, reduction_factor=2),
                search_alg=BasicVariantGenerator(random_state=config.seed, max_concurrent=concurrent),
            ),
            run_config=ray_tune.RunConfig(name=config.run_name, storage_path=storage_path,
                                          storage_filesystem=storage_fs, verbose=1),
        )
    with _cwd_of_its_own():
        grid = tuner.fit()
    return _pick(config, template, grid, storage_fs)


@contextmanager
def _cwd_of_its_own() -> Iterator[None]:
    """Run Tune in a folder that outlives it. Tune resolves its result paths against the working
    directory; under ``ray job submit`` that is the job's unpacked ``--working-dir``, which a runtime-env
    agent may remove once no worker on its node uses it (several raylets on one machine share one
    session folder), and ``os.getcwd()`` then fails mid-search. Paths here are absolute by now."""
    try:
        before: str | None = os.getcwd()
    except FileNotFoundError:
        before = None
    os.chdir(tempfile.gettempdir())
    try:
        yield
    finally:
        if before is not None and os.path.isdir(before):
            os.chdir(before)


def _trial(params: dict[str, float], run: TrainConfig, info: DataInfo, datasets: dict[str, Any],
           majority: int | None, workers: int) -> None:
    """One trial: a Ray Train run of ``run`` with the trial's settings, reporting to Tune every epoch."""
    from ray import tune as ray_tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from maas.training.driver import _fit

    trial_id = ray_tune.get_context().get_trial_id()
    config = trial_config(run, params, f"{run.run_name}-{trial_id}")
    _fit(config, info, datasets, config.run_name or "", majority, workers, callbacks=[TuneReportCallback()])


def trial_config(run: TrainConfig, params: dict[str, float], run_name: str) -> TrainConfig:
    """``run`` with a trial's settings: its learning rate, its builder settings, its own run name.
    (A trial restarted by ``--resume`` gets the same name, and Ray Train resumes it from its checkpoint.)"""
    settings = {k: float(v) for k, v in params.items()}
    learning_rate = settings.pop("learning_rate", run.learning_rate)
    return run.replace(learning_rate=learning_rate, hyperparameters=settings, tune=False, resume=False,
                       run_name=run_name)


def _pick(run: TrainConfig, template: Template, grid: Any, storage_fs: Any) -> TuningOutcome:
    """The finished trial with the lowest validation loss, and the record of every trial."""
    from ray.train import Checkpoint

    trials, finished = [], []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial = _record(run, result, metrics)
        trials.append(trial)
        if trial.stopped_by in ("completed", "early stopping") and metrics.get("checkpoint_path"):
            finished.append((trial, metrics))
    if not finished:
        errors = [f"{t.trial_id}: {t.stopped_by}" for t in trials]
        raise RuntimeError(f"no trial of {run.run_name} finished ({', '.join(errors) or 'no trials'})")
    best, metrics = min(finished, key=lambda pair: pair[0].best_val_loss if pair[0].best_val_loss is not None
                        else float("inf"))
    checkpoint = Checkpoint(path=metrics["checkpoint_path"], filesystem=storage_fs)
    params = dict(best.params)
    config = trial_config(run, params, run.run_name or "").replace(tune=True, resume=run.resume)
    record = TuningRecord(
        scheduler=SchedulerRecord(name="ASHA", metric=METRIC, mode="min", time_attr="epoch", grace_period=1,
                                  reduction_factor=2, max_t=run.epochs),
        space=[hp.describe() for hp in template.tuning_space],
        trials=trials,
        best_trial=best.trial_id,
        best_params=params,
        experiment=join_uri(run.storage_path, run.run_name or ""),
    )
    logger.info("best trial %s of %d: %s", best.trial_id, len(trials), params)
    return TuningOutcome(config=config, checkpoint=checkpoint,
                         metrics={k: v for k, v in metrics.items() if k not in _RESERVED}, record=record)


def _record(run: TrainConfig, result: Any, metrics: dict[str, Any]) -> TrialRecord:
    params = {k: float(v) for k, v in (result.config or {}).items()}
    epochs = int(metrics.get("epoch", 0))
    tested = {k.removeprefix("test_"): float(v) for k, v in metrics.items()
              if k.startswith("test_") and isinstance(v, (int, float))}
    if result.error is not None:
        stopped_by = "error"
    elif tested:
        stopped_by = "completed" if epochs >= (run.epochs or 0) else "early stopping"
    else:
        stopped_by = "ASHA"
    best = metrics.get(METRIC)
    return TrialRecord(trial_id=metrics.get("trial_id") or result.path.rsplit("/", 1)[-1], params=params,
                       epochs=epochs, best_val_loss=None if best is None else float(best), stopped_by=stopped_by,
                       test_metrics=tested)


def _local_or_uri(uri: str) -> str:
    """What ``Tuner.restore`` and ``can_restore`` take: a local path as a path, else the URI."""
    import pyarrow.fs as pafs

    fs, path = resolve_uri(uri)
    return path if isinstance(fs, pafs.LocalFileSystem) else uri
