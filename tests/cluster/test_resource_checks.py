"""The resource check before Ray Train on the real shared cluster: it waits while something holds
the CPUs and goes once they are free, fails in one line naming the holder when they stay held, and
a worker group that still cannot be placed fails instead of Ray Train retrying it forever."""

from __future__ import annotations

import threading
import time

import pytest
from support import cpus_held

from maas.errors import ResourcesUnavailable
from maas.training.resources import WorkerRequest, wait_for_workers

pytestmark = pytest.mark.cluster


def test_waiting_ends_when_the_cpus_are_freed_and_fails_in_one_line_while_they_are_not(ray_cluster) -> None:
    import ray

    request = WorkerRequest(2, 2, 1.0)
    said: list[str] = []
    with cpus_held(leave=1.5):
        started = time.monotonic()
        with pytest.raises(ResourcesUnavailable) as failure:
            wait_for_workers(request, 2, say=said.append)
        assert time.monotonic() - started < 10
        line = str(failure.value)
        assert "\n" not in line
        assert line.startswith("2 workers × 1 CPU do not fit after waiting 2 s: "
                               "1.5 of 6 CPU free (largest node 1.5); ")
        assert "other actors hold" in line and "(Placeholder" in line
        assert "Use --num-workers 1-2 to start with what fits" in line
        assert said == [("2 workers × 1 CPU do not fit now: 1.5 of 6 CPU free (largest node 1.5); "
                         "waiting up to 2 s for them (--wait-for-resources)")]
        assert wait_for_workers(WorkerRequest(1, 2, 1.0), 0) == 1  # a range starts with what fits, at once

        # Another holder takes the last CPUs and lets go after 2 s: the wait ends then.
        @ray.remote(num_cpus=1.5)
        class Holder:
            def ready(self) -> bool:
                return True

        holder = Holder.remote()
        ray.get(holder.ready.remote(), timeout=60)
        threading.Timer(2.0, ray.kill, args=(holder,)).start()
        started = time.monotonic()
        assert wait_for_workers(WorkerRequest(1, 1, 1.0), 30, say=said.append) == 1
        assert 1.5 < time.monotonic() - started < 15


def test_gpus_on_a_cluster_without_gpus_fail_in_one_line(ray_cluster) -> None:
    with pytest.raises(ResourcesUnavailable) as failure:
        wait_for_workers(WorkerRequest(1, 1, 1.0, gpus=1.0), 1, say=lambda _: None)
    line = str(failure.value)
    assert line.startswith("1 worker × (1 CPU + 1 GPU) does not fit after waiting 1 s: ")
    assert "asks for 1 GPU per worker; the cluster has 0 GPU" in line
    assert line.endswith("Drop --use-gpu or add GPU nodes.")


def test_a_worker_group_that_cannot_be_placed_fails_instead_of_being_retried_forever(
        ray_cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backstop behind the check: Ray Train itself asked for 7 one-CPU workers on 6 CPUs (as
    when the cluster changes between the check and the start) gives up after one start timeout."""
    from maas.training.config import TrainConfig
    from maas.training.data import check_data
    from maas.training.driver import _fit, _load_datasets

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3")  # Ray Train reads it from the driver
    config = TrainConfig(template="digits", num_workers=7, epochs=1, model_name="digits-unplaceable",
                         wait_for_resources=0)
    info = check_data(config)
    datasets = _load_datasets(info, reserved_cpus=0)
    started = time.monotonic()
    with pytest.raises(ResourcesUnavailable) as failure:
        _fit(config, info, datasets, config.run_name or "", None, 7)
    assert time.monotonic() - started < 30
    line = str(failure.value)
    assert line.startswith("7 workers × 1 CPU did not start within 3 s: ") and "of 6 CPU free" in line
    assert "\n" not in line
