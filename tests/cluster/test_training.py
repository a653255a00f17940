"""A real 2-worker Ray Train job (MultiWorkerMirroredStrategy) on the real digits, published."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from maas.registry import Registry
from maas.training.loop import REPLICA_FINGERPRINT_PREFIX, STATE_FILE

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def test_two_workers_publish_a_version_with_held_out_metrics(trained_digits) -> None:
    config, outcome = trained_digits
    version = Registry(config.registry).get("digits", outcome.version.version)
    meta = version.metadata.to_json()
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


def test_checkpoints_every_epoch_and_keeps_the_latest(trained_digits) -> None:
    config, _ = trained_digits
    run_dir = Path(config.storage_path) / config.run_name
    checkpoints = sorted(c for c in run_dir.glob("checkpoint_*") if c.is_dir())
    assert len(checkpoints) == 2  # CheckpointConfig(num_to_keep=2) over 6 epochs
    epochs = sorted(json.loads((c / STATE_FILE).read_text())["epoch"] for c in checkpoints)
    assert epochs == [config.epochs - 1, config.epochs]


def test_resuming_an_unknown_run_fails_in_one_line(ray_cluster) -> None:
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--resume", "no-such-run"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --resume no-such-run: no run of that name under {ray_cluster.home / 'runs'}"]


@pytest.mark.slow
def test_early_stopping_stops_before_the_epoch_limit_and_publishes_the_best_epoch(ray_cluster) -> None:
    """``ray job submit`` of 2 workers with a validation split carved from the training split and a
    learning rate high enough that the validation loss soon stops improving: the run stops early and
    the published weights are the best epoch's, which the metadata names beside the curve."""
    from maas import jobclient

    epochs = 30
    job = jobclient.submit("jobs.train", ["--template", "digits", "--epochs", str(epochs), "--learning-rate", "0.02",
                                          "--validation-fraction", "0.2", "--early-stopping-patience", "2",
                                          "--model-name", "digits-early", "--json"],
                           dashboard=ray_cluster.dashboard_url, follow=False, timeout_s=600)
    assert job.status == "SUCCEEDED", job.logs[-3000:]
    assert "early stopping after epoch" in job.logs
    published = json.loads([line for line in job.logs.splitlines() if line.startswith('{"model"')][-1])
    metadata = Registry(str(ray_cluster.home / "registry")).get("digits-early", published["version"]).metadata.to_json()
    validation = metadata["training"]["validation"]
    curve = validation["curve"]
    assert validation["stopped_early"] and len(curve) < epochs and validation["epochs_run"] == len(curve)
    best = min(curve, key=lambda point: point["val_loss"])
    assert validation["epoch_kept"] == best["epoch"] == len(curve) - 2  # patience 2: stopped 2 epochs after it
    assert metadata["params"]["validation_fraction"] == 0.2 and metadata["params"]["early_stopping_patience"] == 2
    train_rows = metadata["data"]["train_rows"]
    assert abs(validation["rows"] - 0.2 * train_rows) <= 10  # stratified per class: rounding in each of 10
    assert metadata["metrics"]["accuracy"] > 0.8  # the best epoch's weights, scored on the test split


@pytest.mark.slow
def test_a_tuning_run_stops_weak_trials_and_publishes_its_best_trial(ray_cluster) -> None:
    """``ray job submit`` of a 4-trial Ray Tune search, one at a time (so that ASHA sees the trials in
    one order: with the seeded space, the second trial's learning rate is too small and is stopped at
    its first rung), ASHA judging each epoch: the
    version published is the best finished trial's, its metadata records every trial; ``--resume`` of
    the finished search publishes the same winner again without training anything."""
    from maas import jobclient

    args = ["--template", "digits", "--num-workers", "1", "--epochs", "4", "--tune", "--trials", "4",
            "--max-concurrent", "1", "--model-name", "digits-tuned", "--run-name", "digits-tuned-search", "--json"]
    job = jobclient.submit("jobs.train", args, dashboard=ray_cluster.dashboard_url, follow=False, timeout_s=900)
    assert job.status == "SUCCEEDED", job.logs[-3000:]
    published = json.loads([line for line in job.logs.splitlines() if line.startswith('{"model"')][-1])
    registry = Registry(str(ray_cluster.home / "registry"))
    metadata = registry.get("digits-tuned", published["version"]).metadata.to_json()
    tuning = metadata["tuning"]
    trials = tuning["trials"]
    assert len(trials) == 4 and len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 4
    assert {t["stopped_by"] for t in trials} <= {"completed", "ASHA"}
    assert any(t["stopped_by"] == "ASHA" and t["epochs"] < 4 for t in trials), trials
    finished = [t for t in trials if t["stopped_by"] == "completed"]
    best = min(finished, key=lambda t: t["best_val_loss"])
    assert tuning["best_trial"] == best["trial_id"] and tuning["best_params"] == best["params"]
    assert metadata["params"]["learning_rate"] == best["params"]["learning_rate"]
    assert metadata["params"]["hyperparameters"] == {k: v for k, v in best["params"].items() if k != "learning_rate"}
    assert metadata["metrics"]["accuracy"] == best["test_metrics"]["accuracy"]  # the winner's own export
    assert metadata["training"]["validation"]["fraction"] == 0.2  # --tune holds out a validation split

    again = jobclient.submit("jobs.train", [*args, "--resume", "digits-tuned-search"],
                             dashboard=ray_cluster.dashboard_url, follow=False, timeout_s=600)
    assert again.status == "SUCCEEDED", again.logs[-3000:]
    resumed = json.loads([line for line in again.logs.splitlines() if line.startswith('{"model"')][-1])
    assert resumed["version"] == published["version"] + 1
    assert resumed["tuning"]["best_trial"] == tuning["best_trial"]
    assert "[maas] epoch" not in again.logs  # every trial had finished: nothing trained again


@dataclass
class RunningJob:
    """A training job submitted in a thread, caught once Ray Train has registered a checkpoint."""

    thread: threading.Thread
    outcome: dict
    registered_epoch: int
    workers: list  # its live RayTrainWorker actors (Ray's state API records)

    def result(self):
        self.thread.join(timeout=600)
        return self.outcome["job"]


def _start_job_until_checkpoint(ray_cluster, run_name: str, model_name: str, *extra: str,
                                epochs: int = 10) -> RunningJob:
    from ray.util.state import list_actors, list_jobs

    from maas import jobclient

    outcome: dict = {}
    job = threading.Thread(target=lambda: outcome.update(job=jobclient.submit(
        "jobs.train", ["--template", "maintenance", "--epochs", str(epochs), "--run-name", run_name,
                       "--model-name", model_name, "--json", *extra],
        dashboard=ray_cluster.dashboard_url, follow=False, timeout_s=600)))
    job.start()
    # A checkpoint folder in storage is not yet a checkpoint Ray Train would restore: the controller
    # registers a report only when it has polled it from every worker, and then writes its snapshot.
    snapshot = ray_cluster.home / "runs" / run_name / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while (registered := _registered_epoch(snapshot)) is None:
        assert time.monotonic() < deadline and job.is_alive(), "no checkpoint was registered"
        time.sleep(0.2)
    job_ids = [j.job_id for j in list_jobs() if j.status == "RUNNING" and run_name in (j.entrypoint or "")]
    assert len(job_ids) == 1, job_ids
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
                                   ("job_id", "=", job_ids[0])])  # this job's, not a finished run's
    assert len(workers) == 2, workers
    return RunningJob(job, outcome, registered, workers)


def _resumed_and_published(ray_cluster, running: RunningJob, model_name: str, epochs: int = 10) -> dict:
    """The job succeeded, resumed from a checkpoint, and counted every epoch once: its metadata."""
    result = running.result()
    assert result.status == "SUCCEEDED", result.logs[-3000:]
    assert "resumed from checkpoint after epoch" in result.logs
    published = json.loads([line for line in result.logs.splitlines() if line.startswith('{"model"')][-1])
    metadata = Registry(str(ray_cluster.home / "registry")).get(model_name, published["version"]).metadata.to_json()
    training = metadata["training"]
    assert training["resumed_from_epoch"] >= running.registered_epoch >= 1 and training["epoch"] == epochs
    assert training["epoch_history"] == list(range(1, epochs + 1))  # every epoch once, none twice
    return metadata


@pytest.mark.chaos
def test_a_killed_worker_resumes_from_the_last_checkpoint_and_counts_each_epoch_once(ray_cluster) -> None:
    """SIGKILL one training worker process of a submitted job mid-run: Ray Train restarts the worker
    group (FailureConfig), the loop resumes from the last checkpoint, and the job still publishes."""
    running = _start_job_until_checkpoint(ray_cluster, "kill-a-worker", "maintenance-ft")
    os.kill(running.workers[-1].pid, signal.SIGKILL)
    _resumed_and_published(ray_cluster, running, "maintenance-ft")


@pytest.mark.chaos
def test_a_run_whose_worker_node_is_lost_goes_on_from_its_checkpoint_on_the_other_nodes(ray_cluster) -> None:
    """A node holding one of the two workers (spread over nodes) removed at once, as a lost machine:
    Ray Train restarts the worker group on the surviving nodes from the last registered checkpoint,
    and the job publishes with every epoch counted once. A node is added first and replaced after,
    so the shared cluster keeps three."""
    spare = ray_cluster.add_worker_node()
    running = _start_job_until_checkpoint(ray_cluster, "lose-a-node", "maintenance-node",
                                          "--placement-strategy", "STRICT_SPREAD")
    head = ray_cluster.nodes.head_node.node_id
    by_id = {n.node_id: n for n in ray_cluster.nodes.worker_nodes}
    lost = next(by_id[w.node_id] for w in running.workers if w.node_id != head and w.node_id in by_id)
    removed_at = time.monotonic()
    ray_cluster.nodes.remove_node(lost, allow_graceful=False)
    try:
        metadata = _resumed_and_published(ray_cluster, running, "maintenance-node")
    finally:
        if lost is not spare:
            ray_cluster.nodes.remove_node(spare, allow_graceful=True)  # back to the three it had
        ray_cluster.add_worker_node()
    print(f"\nworker node lost after epoch {running.registered_epoch}: resumed from epoch "
          f"{metadata['training']['resumed_from_epoch']}, "
          f"published {time.monotonic() - removed_at:.0f} s after the loss")
    assert lost.node_id not in metadata["ray"]["worker_nodes"]  # the rest ran on the surviving nodes


def _registered_epoch(snapshot: Path) -> int | None:
    """The epoch of the latest checkpoint Ray Train's checkpoint manager has registered, if any."""
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None
    return int(latest["metrics"]["epoch"]) if latest else None


@pytest.mark.slow
def test_a_run_resumes_from_its_last_checkpoint(trained_digits) -> None:
    """--resume a copy of the session's digits run (6 epochs) to 7: Ray Train hands its last checkpoint
    back and only epoch 7 runs. A copy, so that the session's run keeps the checkpoints other tests read,
    whichever runs first."""
    from maas.training.config import TrainConfig
    from maas.training.driver import run_training

    config, _ = trained_digits
    run_name = f"{config.run_name}-copy"
    shutil.copytree(Path(config.storage_path) / config.run_name, Path(config.storage_path) / run_name)
    resumed = run_training(TrainConfig(**{**config.to_dict(), "epochs": config.epochs + 1, "resume": True,
                                          "run_name": run_name, "model_name": "digits-resume"}))
    training = Registry(config.registry).get("digits-resume", resumed.version.version).metadata.to_json()["training"]
    assert training["epoch"] == config.epochs + 1 and training["resumed_from_epoch"] == config.epochs
    assert training["epoch_history"] == list(range(1, config.epochs + 2))
