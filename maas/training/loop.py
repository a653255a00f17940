"""The per-worker training loop run by Ray Train's ``TensorflowTrainer``.

Why a custom step instead of ``model.fit``: Keras 3 ``fit`` under ``MultiWorkerMirroredStrategy``
fails with more than one worker (ray-project/ray#47464, keras-team/keras#20585). A ``tf.function``
step run with ``strategy.run`` works: the Keras 3 optimizer all-reduces (sums) the gradients across
replicas, and the loss is averaged over the global batch with ``tf.nn.compute_average_loss``.
At the end of every epoch each worker hashes its weights and compares with rank 0 (the run fails
loudly if replicas ever diverge).

Every worker must make the same number of collective steps per epoch: the ``train`` dataset is split
with ``equal=True`` (Ray Train's default), so shards have the same number of rows and batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
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

    config = TrainConfig.from_dict(loop_config["train_config"])
    from maas.templates import get_template

    template = get_template(config.template)

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

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = template.build_model()
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    state = tf.train.Checkpoint(model=model, optimizer=optimizer)

    start_epoch = 0
    resumed_from = ray.train.get_checkpoint()
    if resumed_from is not None:
        with resumed_from.as_directory() as ckpt_dir:
            state.read(os.path.join(ckpt_dir, _TF_CKPT_PREFIX)).expect_partial()
            start_epoch = json.loads(Path(ckpt_dir, STATE_FILE).read_text())["epoch"]
        if rank == 0:
            logger.info("[maas] resumed from checkpoint after epoch %d", start_epoch)

    in_spec = tf.TensorSpec((None, *template.input.item_shape), template.input.dtype)

    @tf.function(input_signature=[in_spec, tf.TensorSpec((None,), tf.int64)])
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(y, probs)
                global_batch = tf.shape(x)[0] * world
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1), y), tf.float32))
            return loss, correct

        loss, correct = strategy.run(replica_step, args=(x, y))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        loss_sum, correct_sum, seen, steps = 0.0, 0.0, 0, 0
        for batch in shard.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
            x = template.features(batch)
            y = batch[template.label_column].astype(np.int64)
            loss, correct = train_step(x, y)
            loss_sum += float(loss)
            correct_sum += float(correct)
            seen += len(y) * world
            steps += 1
        elapsed = time.perf_counter() - started

        fingerprint = weights_fingerprint(model.get_weights())
        if broadcast_from_rank_zero(fingerprint) != fingerprint:
            raise ReplicaDivergence(f"worker {rank} weights differ from rank 0 after epoch {epoch + 1}")

        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(steps, 1),
            "train_accuracy": correct_sum / max(seen, 1),
            "samples_per_second": seen / elapsed if elapsed > 0 else 0.0,
            "weights_sha256": fingerprint,
            "num_workers": world,
            "resumed_from_epoch": start_epoch,  # 0 for a fresh run: epochs are never trained twice
        }
        final = epoch + 1 == config.epochs
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as scratch:
            # Rank 0 reports the training state; every worker adds the fingerprint of its own
            # weights (Ray merges the workers' files into one checkpoint), so a checkpoint shows
            # that the replicas agree. Every worker writes the TF state (saving may involve
            # collectives); only rank 0's copy is kept.
            state.write(os.path.join(tmp if rank == 0 else scratch, _TF_CKPT_PREFIX))
            Path(tmp, f"{REPLICA_FINGERPRINT_PREFIX}{rank}.txt").write_text(fingerprint)
            Path(tmp, f"{WORKER_NODE_PREFIX}{rank}.txt").write_text(node_id)
            if rank == 0:
                Path(tmp, STATE_FILE).write_text(json.dumps({"epoch": epoch + 1}))
                if final:
                    metrics.update(_export_and_evaluate(model, template, tmp))
                logger.info(
                    f"[maas] epoch {epoch + 1}/{config.epochs} loss={metrics['loss']:.4f} "
                    f"train_accuracy={metrics['train_accuracy']:.4f} "
                    f"{metrics['samples_per_second']:.0f} samples/s ({elapsed:.1f}s)"
                    + (f" test_accuracy={metrics['test_accuracy']:.4f}" if final else "")
                )
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _export_and_evaluate(model: Any, template: Any, ckpt_dir: str) -> dict[str, Any]:
    """Export a plain (non-distributed) copy of the model, then evaluate *the exported SavedModel* on
    the held-out test split: the figures describe exactly the artifact that gets published."""
    import ray.train
    import tensorflow as tf

    from maas.training.export import export_saved_model
    from maas.training.metrics import classification_metrics

    serving_model = template.build_model()
    serving_model.set_weights(model.get_weights())
    export_path = os.path.join(ckpt_dir, EXPORT_DIR)
    signature = export_saved_model(serving_model, template, export_path)

    serve = tf.saved_model.load(export_path).signatures["serving_default"]
    y_true, y_pred = [], []
    for batch in ray.train.get_dataset_shard("test").iter_batches(batch_size=256, batch_format="numpy"):
        out = serve(**{template.input.name: tf.constant(template.features(batch))})[template.output_name]
        y_pred.append(np.argmax(out.numpy(), axis=-1))
        y_true.append(batch[template.label_column])
    evaluation = classification_metrics(np.concatenate(y_true), np.concatenate(y_pred), template.class_names)
    Path(ckpt_dir, EXPORT_INFO_FILE).write_text(
        json.dumps({"signature": signature.to_dict(), "evaluation": evaluation}, indent=2)
    )
    return {f"test_{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}
