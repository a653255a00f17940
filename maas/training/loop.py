"""The per-worker training loop run by Ray Train's ``TensorflowTrainer``.

Why a custom step instead of ``model.fit``: Keras 3 ``fit`` under ``MultiWorkerMirroredStrategy``
fails with more than one worker (ray-project/ray#47464, keras-team/keras#20585). A ``tf.function``
step run with ``strategy.run`` works: the Keras 3 optimizer all-reduces (sums) the gradients across
replicas, and the loss is averaged over the global batch with ``tf.nn.compute_average_loss``.
At the end of every epoch each worker hashes its weights and compares with rank 0 (the run fails
loudly if replicas ever diverge).

Every worker must make the same number of collective steps per epoch: the ``train`` dataset is split
with ``equal=True`` (Ray Train's default), so shards have the same number of rows and batches.

Rank 0 also writes TensorBoard event files (loss, training metric, learning rate, throughput, the
held-out metrics at the end) and copies them to ``<storage>/<run>/tensorboard`` after every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from maas.training.config import TrainConfig

logger = logging.getLogger(__name__)  # Ray Train shows workers' INFO records in the job's logs

STATE_FILE = "train_state.json"
EXPORT_DIR = "saved_model"
EXPORT_INFO_FILE = "export.json"
REPLICA_FINGERPRINT_PREFIX = "weights-sha256-rank"
WORKER_NODE_PREFIX = "node-id-rank"
_TF_CKPT_PREFIX = "tf_state/ckpt"


class ReplicaDivergence(RuntimeError):
    """Workers ended an epoch with different weights: data-parallel training is broken."""


def weights_fingerprint(weights: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train
    from ray.train import Checkpoint
    from ray.train.collective import broadcast_from_rank_zero

    from maas.templates import DataInfo, get_template

    config = TrainConfig.from_dict(loop_config["train_config"])
    epochs = config.epochs
    assert epochs is not None, "the driver resolves the template's default epochs before it starts the workers"
    info = DataInfo.from_dict(loop_config["data_info"])
    template = get_template(config.template)
    classification = template.task == "classification"

    import keras
    import tensorflow as tf

    if not os.environ.get("MAAS_VERBOSE"):
        tf.get_logger().setLevel("ERROR")
    threads = max(1, int(config.cpus_per_worker))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node_id = ray.get_runtime_context().get_node_id()
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:  # float16 compute, float32 weights; the heads stay float32
        keras.mixed_precision.set_dtype_policy("mixed_float16")

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = template.build_model(info, config.hyperparameters)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    state = tf.train.Checkpoint(model=model, optimizer=optimizer)

    start_epoch, history = 0, []
    watch = EarlyStopping(config.early_stopping_patience)
    resumed_from = ray.train.get_checkpoint()
    if resumed_from is not None:
        with resumed_from.as_directory() as ckpt_dir:
            state.read(os.path.join(ckpt_dir, _TF_CKPT_PREFIX)).expect_partial()
            saved = json.loads(Path(ckpt_dir, STATE_FILE).read_text())
            start_epoch, history = saved["epoch"], saved.get("history", list(range(1, saved["epoch"] + 1)))
            watch = EarlyStopping.restore(config.early_stopping_patience, saved.get("validation"), ckpt_dir)
            if watch.stopped:  # restarted after the run's last report (which holds the export): nothing to train
                start_epoch = epochs
        if rank == 0:
            logger.info("[maas] resumed from checkpoint after epoch %d", start_epoch)

    in_spec = tf.TensorSpec((None, *info.item_shape), template.input_dtype)
    y_spec = tf.TensorSpec((None,), tf.int64 if classification else tf.float32)

    def per_example_loss(y: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        if classification:
            return keras.losses.sparse_categorical_crossentropy(y, out)
        scale = info.stats.label_std if info.stats and info.stats.label_std else 1.0
        return tf.square((tf.squeeze(out, -1) - y) / scale)  # MSE of the standardized target

    # summed over the batch: correct predictions, or absolute errors
    def quality(y: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        if classification:
            return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, axis=-1), y), tf.float32))
        return tf.reduce_sum(tf.abs(tf.squeeze(out, -1) - y))

    @tf.function(input_signature=[in_spec, y_spec])  # type: ignore[untyped-decorator]  # TensorFlow is untyped
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def replica_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                out = tf.cast(model(x, training=True), tf.float32)
                global_batch = tf.shape(x)[0] * world
                loss = tf.nn.compute_average_loss(per_example_loss(y, out), global_batch_size=global_batch)
                scaled = optimizer.scale_loss(loss) if config.mixed_precision else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss, quality(y, out)

        loss, total = strategy.run(replica_step, args=(x, y))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
        )

    board = _TensorBoard(loop_config.get("tensorboard_uri")) if rank == 0 else None
    train_metric = "train_accuracy" if classification else "train_mae"
    shard = ray.train.get_dataset_shard("train")
    validation = ray.train.get_dataset_shard("validation") if config.validation_fraction else None
    # The validation split is scored on a plain (non-distributed) copy of the model by every worker on
    # its own: no collective op, and the same figures on every worker (same weights, same rows).
    scorer = template.build_model(info, config.hyperparameters) if validation is not None else None

    def validate() -> dict[str, float]:
        assert validation is not None and scorer is not None
        scorer.set_weights(model.get_weights())
        loss_sum, quality_sum, rows = 0.0, 0.0, 0
        for batch in validation.iter_batches(batch_size=256, batch_format="numpy"):
            y = template.labels(batch)
            out = tf.cast(scorer(template.features(batch, info), training=False), tf.float32)
            loss_sum += float(tf.reduce_sum(per_example_loss(tf.constant(y), out)))
            quality_sum += float(quality(tf.constant(y), out))
            rows += len(y)
        rows = max(rows, 1)
        return {"val_loss": loss_sum / rows, ("val_accuracy" if classification else "val_mae"): quality_sum / rows}

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        loss_sum, quality_sum, seen, steps = 0.0, 0.0, 0, 0
        for batch in shard.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
            y = template.labels(batch)
            loss, total = train_step(template.features(batch, info), y)
            loss_sum += float(loss)
            quality_sum += float(total)
            seen += len(y) * world
            steps += 1
        elapsed = time.perf_counter() - started

        fingerprint = weights_fingerprint(model.get_weights())
        if broadcast_from_rank_zero(fingerprint) != fingerprint:
            raise ReplicaDivergence(f"worker {rank} weights differ from rank 0 after epoch {epoch + 1}")

        history.append(epoch + 1)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(steps, 1),
            train_metric: quality_sum / max(seen, 1),
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "samples_per_second": seen / elapsed if elapsed > 0 else 0.0,
            "weights_sha256": fingerprint,
            "num_workers": world,
            "resumed_from_epoch": start_epoch,  # 0 for a fresh run
            "epochs_trained": len(history),  # each epoch once, across restarts
        }
        stop = False
        if validation is not None:
            metrics.update(validate())
            # Rank 0's verdict for everyone: workers must agree on the epoch they stop after.
            stop = broadcast_from_rank_zero(watch.update(epoch + 1, metrics, model.get_weights()))
            metrics.update(best_epoch=watch.best_epoch, best_val_loss=watch.best_loss)
        final = stop or epoch + 1 == epochs
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as scratch:
            # Rank 0 reports the training state; every worker adds the fingerprint of its own
            # weights (Ray merges the workers' files into one checkpoint), so a checkpoint shows
            # that the replicas agree. Every worker writes the TF state (saving may involve
            # collectives); only rank 0's copy is kept.
            state.write(os.path.join(tmp if rank == 0 else scratch, _TF_CKPT_PREFIX))
            Path(tmp, f"{REPLICA_FINGERPRINT_PREFIX}{rank}.txt").write_text(fingerprint)
            Path(tmp, f"{WORKER_NODE_PREFIX}{rank}.txt").write_text(node_id)
            if rank == 0:
                Path(tmp, STATE_FILE).write_text(json.dumps({"epoch": epoch + 1, "history": history,
                                                             "validation": watch.to_dict()}))
                watch.save_best(tmp)
                if final:
                    weights = watch.best_weights if watch.best_weights is not None else model.get_weights()
                    metrics.update(_export_and_evaluate(weights, config, template, info, tmp,
                                                        loop_config.get("majority_class")))
                assert board is not None
                board.write(epoch + 1, metrics)
                logger.info(_progress_line(epochs, metrics, elapsed, train_metric, final))
                if stop:
                    logger.info("[maas] early stopping after epoch %d: validation loss best at epoch %d, "
                                "no better in the %d since; publishing epoch %d's weights", epoch + 1,
                                watch.best_epoch, config.early_stopping_patience, watch.best_epoch)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        if stop:
            break


class EarlyStopping:
    """The validation loss's best epoch so far, its weights, and whether to stop: after ``patience``
    epochs without an improvement (0: never). Saved in each checkpoint, so a resumed run stops where
    the uninterrupted one would have."""

    BEST_WEIGHTS_FILE = "best_weights.npz"

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.curve: list[dict[str, float]] = []  # per epoch: epoch, val_loss, val_accuracy|val_mae
        self.stopped = False  # the run ended here: a restart from this state trains nothing more

    def update(self, epoch: int, metrics: dict[str, Any], weights: list[np.ndarray]) -> bool:
        """Record ``epoch``'s validation figures; True when training should stop after it."""
        self.curve.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items() if k.startswith("val_")}})
        if metrics["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.best_weights = float(metrics["val_loss"]), epoch, weights
        self.stopped = bool(self.patience) and epoch - self.best_epoch >= self.patience
        return self.stopped

    def to_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "curve": self.curve,
                "stopped": self.stopped}

    def save_best(self, ckpt_dir: str) -> None:
        if self.best_weights is not None:
            np.savez(os.path.join(ckpt_dir, self.BEST_WEIGHTS_FILE), *self.best_weights)

    @classmethod
    def restore(cls, patience: int, saved: dict[str, Any] | None, ckpt_dir: str) -> EarlyStopping:
        watch = cls(patience)
        if saved:
            watch.best_loss, watch.best_epoch, watch.curve = saved["best_loss"], saved["best_epoch"], saved["curve"]
            watch.stopped = bool(saved.get("stopped"))
            best = Path(ckpt_dir, cls.BEST_WEIGHTS_FILE)
            if best.is_file():
                with np.load(best) as arrays:
                    watch.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        return watch


def _progress_line(epochs: int, metrics: dict[str, Any], elapsed: float, train_metric: str, final: bool) -> str:
    line = (f"[maas] epoch {metrics['epoch']}/{epochs} loss={metrics['loss']:.4f} "
            f"{train_metric}={metrics[train_metric]:.4f} {metrics['samples_per_second']:.0f} samples/s "
            f"({elapsed:.1f}s)")
    if "val_loss" in metrics:
        line += f" val_loss={metrics['val_loss']:.4f} (best epoch {metrics['best_epoch']})"
    if final:
        line += " " + " ".join(f"{k}={metrics[k]:.4f}" for k in ("test_accuracy", "test_f1_macro", "test_mse",
                                                                  "test_mae", "test_r2") if k in metrics)
    return line


class _TensorBoard:
    """Event files written locally by rank 0 and copied to the run's storage after every epoch."""

    def __init__(self, uri: str | None) -> None:
        import tensorflow as tf

        self.uri = uri
        self.local = tempfile.mkdtemp(prefix="maas-tb-")
        self.writer = tf.summary.create_file_writer(self.local)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=step):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    tf.summary.scalar(key, value)
        self.writer.flush()
        if self.uri:
            import pyarrow.fs as pafs

            from maas.storage import resolve_uri

            fs, path = resolve_uri(self.uri)
            fs.create_dir(path, recursive=True)
            pafs.copy_files(self.local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _export_and_evaluate(weights: list[np.ndarray], config: TrainConfig, template: Any, info: Any, ckpt_dir: str,
                         majority_class: int | None) -> dict[str, Any]:
    """Export a plain (non-distributed, float32) model with ``weights``, then evaluate *the exported
    SavedModel* on the held-out split: the figures describe exactly the artifact that gets published."""
    import keras
    import ray.train
    import tensorflow as tf

    from maas.training.export import export_saved_model
    from maas.training.metrics import evaluate

    keras.mixed_precision.set_dtype_policy("float32")
    serving_model = template.build_model(info, config.hyperparameters)
    serving_model.set_weights(weights)
    export_path = os.path.join(ckpt_dir, EXPORT_DIR)
    signature = export_saved_model(serving_model, template, info, export_path)

    serve = tf.saved_model.load(export_path).signatures["serving_default"]
    y_true, y_out = [], []
    for batch in ray.train.get_dataset_shard("test").iter_batches(batch_size=256, batch_format="numpy"):
        out = serve(**{template.input_name: tf.constant(template.features(batch, info))})[template.output_name]
        y_out.append(out.numpy())
        y_true.append(template.labels(batch))
    evaluation = evaluate(template, info, np.concatenate(y_true), np.concatenate(y_out),
                          majority_class=majority_class)
    Path(ckpt_dir, EXPORT_INFO_FILE).write_text(
        json.dumps({"signature": signature.to_dict(), "evaluation": evaluation}, indent=2)
    )
    return {f"test_{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}
