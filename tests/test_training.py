"""A real 2-worker Ray Train job (MultiWorkerMirroredStrategy) on the real digits, published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas.registry import Registry
from maas.training.loop import REPLICA_FINGERPRINT_PREFIX, STATE_FILE

pytestmark = pytest.mark.cluster


def test_two_workers_publish_a_version_with_held_out_metrics(trained_digits) -> None:
    config, outcome = trained_digits
    version = Registry(config.registry).get("digits", outcome.version.version)
    meta = version.metadata
    assert meta["metrics"]["accuracy"] >= 0.95, meta["metrics"]
    for key in ("precision_macro", "recall_macro", "f1_macro"):
        assert 0.9 <= meta["metrics"][key] <= 1.0
    assert meta["metrics"]["num_examples"] == 360  # the stratified 20% held out of 1,797
    assert len(meta["metrics"]["confusion_matrix"]) == 10
    assert meta["params"]["num_workers"] == 2 and meta["training"]["num_workers"] == 2
    assert meta["signature"]["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": [-1, 8, 8]}]
    assert len(meta["data"]["fingerprint"]) == 64
    assert meta["ray"]["job_id"] and meta["ray"]["run_name"] == config.run_name
    assert meta["libraries"]["ray"] == "2.60.0"
    assert (Path(config.registry) / "digits" / str(version.version) / "saved_model.pb").is_file()


def test_both_replicas_end_with_identical_weights(trained_digits) -> None:
    _, outcome = trained_digits
    ckpt = Path(outcome.checkpoint_path)
    fingerprints = {p.name: p.read_text() for p in ckpt.glob(f"{REPLICA_FINGERPRINT_PREFIX}*.txt")}
    assert sorted(fingerprints) == [f"{REPLICA_FINGERPRINT_PREFIX}0.txt", f"{REPLICA_FINGERPRINT_PREFIX}1.txt"]
    assert len(set(fingerprints.values())) == 1, fingerprints


def test_a_run_resumes_from_its_last_checkpoint(ray_cluster) -> None:
    from maas.training.config import TrainConfig
    from maas.training.driver import run_training

    first = TrainConfig(template="digits", num_workers=2, epochs=1, model_name="digits-resume", run_name="resume-me")
    run_training(first)
    # Same run name, more epochs: Ray Train hands the last checkpoint back and only epoch 2 runs.
    second = run_training(TrainConfig(**{**first.to_dict(), "epochs": 2}))
    training = Registry(first.registry).get("digits-resume", second.version.version).metadata["training"]
    assert training["epoch"] == 2 and training["resumed_from_epoch"] == 1
    assert second.version.version == 2


def test_checkpoints_every_epoch_and_keeps_the_latest(trained_digits) -> None:
    config, outcome = trained_digits
    run_dir = Path(config.storage_path) / config.run_name
    checkpoints = sorted(c for c in run_dir.glob("checkpoint_*") if c.is_dir())
    assert len(checkpoints) == 2  # CheckpointConfig(num_to_keep=2) over 6 epochs
    epochs = sorted(json.loads((c / STATE_FILE).read_text())["epoch"] for c in checkpoints)
    assert epochs == [config.epochs - 1, config.epochs]
