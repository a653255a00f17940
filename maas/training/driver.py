"""The driver side of a training job: data, ``TensorflowTrainer``, then publishing to the registry."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas.errors import ConfigError, ResourcesUnavailable
from maas.records import (
    CrossValidation,
    DataRecord,
    DataStatistics,
    Preprocessing,
    RayRun,
    TrainingParameters,
    TrainingRecord,
    TuningRecord,
    ValidationRecord,
    VersionMetadata,
)
from maas.registry import ModelVersion, Registry
from maas.storage import join_uri, resolve_uri
from maas.templates import DataInfo, DataSplits, Template, get_template
from maas.templates.base import LABEL_COLUMN
from maas.training.config import TrainConfig
from maas.training.data import (
    add_training_stats,
    check_data,
    feature_stats,
    majority_class,
    read_split,
    read_table,
)
from maas.training.loop import EXPORT_DIR, EXPORT_INFO_FILE, STATE_FILE, WORKER_NODE_PREFIX, train_loop_per_worker
from maas.training.metrics import summarize_folds
from maas.training.resources import (
    DEFAULT_START_TIMEOUT_S,
    WorkerRequest,
    explain,
    groups_that_fit,
    read_nodes,
    start_retries,
    wait_for_workers,
)

if TYPE_CHECKING:
    from ray import ObjectRef

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainOutcome:
    version: ModelVersion
    metrics: dict[str, Any]
    checkpoint_path: str
    cross_validation: CrossValidation | None = field(default=None)
    tuning: TuningRecord | None = field(default=None)


def run_training(config: TrainConfig) -> TrainOutcome:
    """Train ``config.template`` on the connected Ray cluster and publish the result as a new version.

    The caller connects to Ray (``ray.init``) first. The data is checked against the template's
    schema before any worker starts; then the run takes as many workers as fit (``min_workers`` to
    ``num_workers``), waiting at most ``wait_for_resources`` seconds for ``min_workers`` to fit, else
    fails with :class:`ResourcesUnavailable`. With ``cv_folds`` the folds run first, in parallel,
    each with that same number of workers, and so does the final run.
    """
    import ray

    template = get_template(config.template)
    info = check_data(config)  # the schema is read and checked once
    request = worker_request(config)
    workers = wait_for_workers(request, config.wait_for_resources, say=_say)
    if request.min_workers < request.max_workers:
        _say(f"starting with {workers} of {request.min_workers}-{request.max_workers} workers (as many as fit now)")
    datasets = _load_datasets(info, reserved_cpus=workers * config.cpus_per_worker)
    if config.validation_fraction:
        datasets["train"], datasets["validation"] = validation_split(datasets["train"], config, template)
    info = add_training_stats(template, info, datasets["train"])  # of the rows trained on, only
    splits = info.splits
    majority = majority_class(info) if template.task == "classification" else None
    cv = None
    if config.cv_folds:
        cv = cross_validate(config, template, info, datasets["train"], workers)
        # The folds' worker groups are being released: wait (bounded) for the final run's to fit.
        wait_for_workers(request.fixed(workers), config.wait_for_resources, say=_say)

    tuning = None
    if config.tune:
        from maas.training.tuning import tune

        at_once = max(1, groups_that_fit(read_nodes(), request, workers))
        best = tune(config, template, info, datasets, majority, workers, at_once)
        config, checkpoint, last_report, tuning = best.config, best.checkpoint, best.metrics, best.record
    else:
        result = _fit(config, info, datasets, config.run_name or "", majority, workers)
        checkpoint, last_report = result.checkpoint, result.metrics
    with checkpoint.as_directory() as ckpt_dir:
        export_info = json.loads(Path(ckpt_dir, EXPORT_INFO_FILE).read_text())
        state = json.loads(Path(ckpt_dir, STATE_FILE).read_text())
        history = state["history"]
        metadata = VersionMetadata(
            template=template.name,
            task=template.task,
            classes=list(info.class_names),
            signature=export_info["signature"],
            metrics=export_info["evaluation"],
            cross_validation=cv,
            tuning=tuning,
            training=TrainingRecord(**{k: v for k, v in last_report.items() if not k.startswith("test_")},
                                    epoch_history=history,
                                    validation=_validation_record(config, datasets, state.get("validation"))),
            params=TrainingParameters(**config.recorded_params()),
            data=DataRecord(train=splits.train, test=splits.test, format=splits.format,
                            source=config.data or template.data_source, train_rows=info.train_rows or None,
                            test_rows=info.test_rows or None, fingerprint=data_fingerprint(splits)),
            preprocessing=Preprocessing(
                feature_columns=list(info.feature_columns), item_shape=list(info.item_shape),
                training_split_stats=None if info.stats is None else DataStatistics(**asdict(info.stats))),
            ray=RayRun(
                job_id=ray.get_runtime_context().get_job_id(),
                submission_id=_submission_id(),
                run_name=config.run_name,  # with --tune: the Tune experiment's
                checkpoint=checkpoint.path,
                tensorboard=_tensorboard_uri(config, config.run_name or ""),
                worker_nodes=_worker_nodes(ckpt_dir),
            ),
            libraries=library_versions(),
        )
        assert config.model_name is not None  # the config's validation fills it in (the template's name)
        version = Registry(config.registry).publish(config.model_name, str(Path(ckpt_dir, EXPORT_DIR)), metadata)
    return TrainOutcome(version=version, metrics=export_info["evaluation"], checkpoint_path=checkpoint.path,
                        cross_validation=cv, tuning=tuning)


def validation_split(train: Any, config: TrainConfig, template: Template) -> tuple[Any, Any]:
    """``(fit, validation)``: ``config.validation_fraction`` of the training split held out, never
    the test split. Seeded (``config.seed``) and, for classification, stratified: each class keeps its
    share in both parts. A Ray Data shuffle then Ray Data's stratified split, so data that does not fit
    in one process splits too."""
    shuffled = train.random_shuffle(seed=config.seed)
    stratify = LABEL_COLUMN if template.task == "classification" else None
    fit, validation = shuffled.train_test_split(config.validation_fraction, stratify=stratify)
    # Ray's stratified split groups the rows by class: the part trained on is shuffled again (batches
    # of one class each would not train), and both parts are materialized here, once, not re-filtered
    # every epoch.
    fit, validation = fit.random_shuffle(seed=config.seed + 1).materialize(), validation.materialize()
    if validation.count() == 0:
        raise ConfigError(f"--validation-fraction {config.validation_fraction}: the training split is too small "
                          "to hold out any row")
    return fit, validation


def _validation_record(config: TrainConfig, datasets: dict[str, Any],
                       watched: dict[str, Any] | None) -> ValidationRecord | None:
    """What the metadata says of the validation split: its size, the curve, the epoch kept."""
    if not config.validation_fraction or not watched:
        return None
    curve = watched["curve"]
    return ValidationRecord(fraction=config.validation_fraction, rows=datasets["validation"].count(),
                            patience=config.early_stopping_patience, curve=curve, epoch_kept=watched["best_epoch"],
                            epochs_run=len(curve), stopped_early=len(curve) < (config.epochs or 0))


def worker_request(config: TrainConfig) -> WorkerRequest:
    """What a run of ``config`` asks the cluster for: the worker range and each worker's bundle."""
    low, high = config.worker_range
    return WorkerRequest(low, high, config.cpus_per_worker, 1.0 if config.use_gpu else 0.0,
                         config.placement_strategy)


def _say(line: str) -> None:
    """A progress line in the job's log (the driver's loggers stay at WARNING, as Ray sets them)."""
    print(f"[maas] {line}", flush=True)


def _fit(config: TrainConfig, info: DataInfo, datasets: dict[str, Any], run_name: str,
         majority: int | None, workers: int, callbacks: list[Any] | None = None) -> Any:
    """One Ray Train run (``TensorflowTrainer``) of exactly ``workers`` workers to its end; returns
    its ``Result``.

    The size is fixed, chosen by :func:`wait_for_workers` from what is free: Ray's elastic
    ``num_workers=(min, max)`` counts the nodes' total resources and would ask for more workers than
    fit whenever something else holds part of a node. A worker group that still cannot be placed
    (the cluster changed since the check) is retried only within ``wait_for_resources``
    (``controller_failure_limit``; Ray's default retries forever), then fails as
    :class:`ResourcesUnavailable`."""
    # The configs and trainer are the ones ray.train and ray.train.tensorflow export with Train V2 on
    # (Ray's default), imported from where V2 defines them: mypy does not follow the condition they
    # are re-exported under, and would check the calls against V1's.
    from ray.train import ControllerError, DataConfig
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.tensorflow.tensorflow_trainer import TensorflowTrainer

    storage_fs, storage_path = _storage(config.storage_path)
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"train_config": config.to_dict(), "data_info": info.to_dict(),
                           "majority_class": majority, "tensorboard_uri": _tensorboard_uri(config, run_name)},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
            placement_strategy=config.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=config.max_failures,
                                         controller_failure_limit=start_retries(config.wait_for_resources,
                                                                                _start_timeout_s())),
            worker_runtime_env={"env_vars": _worker_env()},
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except ControllerError as exc:
        if not isinstance(exc.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        request = worker_request(config).fixed(workers)
        raise ResourcesUnavailable(explain(request, f"did not start within {_start_timeout_s():g} s")) from None
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    return result


def _start_timeout_s() -> float:
    """How long Ray Train waits for a worker group's placement group before it counts a failure."""
    return float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", DEFAULT_START_TIMEOUT_S))


def _tensorboard_uri(config: TrainConfig, run_name: str) -> str:
    return join_uri(config.storage_path, run_name, "tensorboard")


def cross_validate(config: TrainConfig, template: Template, info: DataInfo, train: Any,
                   workers: int) -> CrossValidation:
    """K-fold cross-validation of ``train``: fold k trains on the other K-1 parts (statistics from
    those parts only) and is evaluated on part k. Folds are independent Ray Train runs of
    ``workers`` workers each (a fixed size: folds compare like with like), launched as Ray tasks, as
    many at once as fit side by side now (the rest queue). Returns each fold's metrics and the mean
    and standard deviation per metric."""
    import ray

    k = config.cv_folds
    shuffled = train.random_shuffle(seed=config.seed).materialize()
    rows = shuffled.count()
    if rows < k:
        raise ConfigError(f"--cv {k}: the training split has only {rows} rows")
    parts = shuffled.split_at_indices([rows * i // k for i in range(1, k)])
    at_once = max(1, min(k, groups_that_fit(read_nodes(), worker_request(config), workers)))
    logger.info("cross-validation: %d folds of %d rows, %d at a time", k, rows, at_once)
    fit_fold = ray.remote(num_cpus=0)(_fit_fold)
    pending: list[ObjectRef[dict[int, dict[str, Any]]]] = []
    results: dict[int, dict[str, Any]] = {}
    for fold in range(k):
        others = [p for i, p in enumerate(parts) if i != fold]
        fold_train = others[0].union(*others[1:]) if len(others) > 1 else others[0]
        stats = feature_stats(template, info, fold_train) if info.stats is not None else None
        fold_info = replace(info, stats=stats)
        if len(pending) >= at_once:
            done, pending = ray.wait(pending, num_returns=1)
            results.update(_fold_result(done[0]))
        pending.append(fit_fold.remote(config, fold_info, {"train": fold_train, "test": parts[fold]},
                                       f"{config.run_name}-cv{fold}", fold, workers))
    for ref in pending:
        results.update(_fold_result(ref))
    folds = [results[i] for i in range(k)]
    return CrossValidation(folds=k, summary=summarize_folds(folds), per_fold=folds)


def _fold_result(ref: ObjectRef[dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """A fold's metrics; a fold whose workers could not start fails the job with the fold's own one
    line (Ray re-raises a task's error wrapped in its traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ResourcesUnavailable as exc:  # a RayTaskError that is also an instance of its cause
        raise ResourcesUnavailable(str(getattr(exc, "cause", exc))) from None


def _fit_fold(config: TrainConfig, info: DataInfo, datasets: dict[str, Any], run_name: str,
              fold: int, workers: int) -> dict[int, dict[str, Any]]:
    result = _fit(config.replace(validation_fraction=0.0, early_stopping_patience=0), info, datasets, run_name,
                  None, workers)  # a fold trains every epoch: folds compare like with like
    with result.checkpoint.as_directory() as ckpt_dir:
        evaluation = json.loads(Path(ckpt_dir, EXPORT_INFO_FILE).read_text())["evaluation"]
    return {fold: {k: v for k, v in evaluation.items() if not isinstance(v, (dict, list))}}


# Data sets smaller than this are read once into the object store and streamed to the workers from
# there each epoch; re-reading small Parquet files every epoch costs more than it saves.
CACHE_BELOW_BYTES = 256 * 1024 * 1024


def _load_datasets(info: DataInfo, *, reserved_cpus: float) -> dict[str, Any]:
    """Ray Data datasets for the splits, streamed to each worker's shard.

    Tables smaller than ``CACHE_BELOW_BYTES`` are read whole by this driver (one pyarrow read, no
    Ray Data read tasks to schedule) and put in the object store. Larger data is streamed, unless the
    training workers hold every CPU of the cluster (2 workers on 2 cores): no read task could then
    ever be scheduled and the run would hang, so it is read up front into the object store.
    """
    import ray
    import ray.data

    size = sum(_size_bytes(uri) for uri in (info.splits.train, info.splits.test))
    if info.splits.format != "images" and size < CACHE_BELOW_BYTES:
        logger.info("reading %d bytes of tables into the object store", size)
        return {name: ray.data.from_arrow(read_table(info, name)) for name in ("train", "test")}
    datasets = {name: read_split(info, name) for name in ("train", "test")}
    spare = ray.cluster_resources().get("CPU", 0.0) - reserved_cpus
    if spare < 1.0 or size < CACHE_BELOW_BYTES:
        logger.info("caching %d bytes of data in the object store (%.1f spare CPUs)", size, spare)
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    return datasets


def _size_bytes(uri: str) -> int:
    import pyarrow.fs as pafs

    fs, path = resolve_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return info.size or 0
    return sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)))


def _storage(uri: str) -> tuple[Any, str]:
    """Ray Train's ``(storage_filesystem, storage_path)``: the file system comes from the project's
    one resolver (so an S3-compatible endpoint set in the environment applies); local paths stay
    plain paths for Ray to handle itself."""
    import pyarrow.fs as pafs

    fs, path = resolve_uri(uri)
    return (None, path) if isinstance(fs, pafs.LocalFileSystem) else (fs, path)


def _worker_nodes(ckpt_dir: str) -> list[str]:
    """The Ray node id of each training worker, by rank, as the workers wrote them into the checkpoint."""
    by_rank = {int(f.stem.removeprefix(WORKER_NODE_PREFIX)): f
               for f in Path(ckpt_dir).glob(f"{WORKER_NODE_PREFIX}*.txt")}
    return [by_rank[rank].read_text() for rank in sorted(by_rank)]


def _worker_env() -> dict[str, str]:
    """Quiet TensorFlow's C++ logging in workers unless MAAS_VERBOSE is set."""
    if os.environ.get("MAAS_VERBOSE"):
        return {"MAAS_VERBOSE": "1"}
    return {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _submission_id() -> str | None:
    """The ``ray job submit`` id, when the driver runs as a submitted job (Ray puts it in the job config)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    submission_id: str | None = json.loads(raw).get("metadata", {}).get("job_submission_id")
    return submission_id


def data_fingerprint(splits: DataSplits) -> str:
    """SHA-256 over the names and bytes of every data file, on whatever storage holds them."""
    import pyarrow.fs as pafs

    digest = hashlib.sha256()
    for uri in (splits.train, splits.test):
        fs, path = resolve_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.is_file)
        else:
            files = [path] if info.type == pafs.FileType.File else []
        for file in files:
            digest.update(file.rsplit("/", 1)[-1].encode())
            with fs.open_input_stream(file) as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import numpy
    import pyarrow
    import ray
    import tensorflow as tf

    import maas

    try:
        import keras

        keras_version = keras.__version__
    except ImportError:  # pragma: no cover
        keras_version = "absent"
    return {
        "maas": maas.__version__,
        "ray": ray.__version__,
        "tensorflow": tf.__version__,
        "keras": keras_version,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }
