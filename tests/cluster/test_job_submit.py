"""Training through the Ray Jobs API: the way users start it (`ray job submit`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from support import cpus_held, ray_job_submit

from maas import jobclient
from maas.registry import Registry

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

pytestmark = pytest.mark.cluster


def test_training_job_submitted_through_the_job_client(ray_cluster) -> None:
    outcome = jobclient.submit(
        "jobs.train",
        # 2 workers x 1.5 CPUs: one per 2-CPU node of the shared cluster, beside a Serve replica (0.5 CPU)
        # that an earlier test's app may have left on it.
        ["--epochs", "2", "--cpus-per-worker", "1.5", "--model-name", "digits-job"],
        dashboard=ray_cluster.dashboard_url,
        follow=False,
        timeout_s=600,
    )
    assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    assert "[maas] epoch 2/2" in outcome.logs
    assert "waiting up to" not in outcome.logs  # the workers fit at once: no wait, no other message
    registry = Registry(str(ray_cluster.home / "registry"))
    version = registry.get("digits-job", registry.latest("digits-job"))
    assert version.metadata.to_json()["ray"]["submission_id"] == outcome.submission_id
    assert version.metadata.to_json()["params"]["cpus_per_worker"] == 1.5
    params = version.metadata.to_json()["params"]
    assert params["num_workers"] == params["min_workers"] == 2
    assert version.metadata.to_json()["training"]["num_workers"] == 2


def _job_info(ray_cluster, submission_id: str) -> JobDetails:
    from ray.job_submission import JobSubmissionClient

    from maas.local_cluster import use_client_auth

    use_client_auth()
    return JobSubmissionClient(ray_cluster.dashboard_url).get_job_info(submission_id)


def test_ray_job_submit_cli_runs_the_module_with_token_auth(ray_cluster) -> None:
    proc = ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--help")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "usage: python -m jobs.train" in proc.stdout
    assert "--num-workers" in proc.stdout


def test_bad_job_option_fails_with_one_clear_line(ray_cluster) -> None:
    proc = ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--epochs", "0")
    assert proc.returncode != 0
    assert "error: epochs must be at least 1. Received: 0" in proc.stdout + proc.stderr


def test_job_client_without_token_is_refused(ray_cluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "disabled"
    code = ("from ray.job_submission import JobSubmissionClient as C; import sys; "
            f"C({ray_cluster.dashboard_url!r}).list_jobs()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Authentication" in proc.stderr or "Unauthorized" in proc.stderr


# The case on the shared cluster: everything held but 1.5 CPUs on one node, as on a 2-core
# machine where `make demo` left a Serve replica holding 0.5 CPU.


@pytest.mark.slow
def test_a_job_whose_workers_cannot_fit_fails_within_a_minute_in_one_line(ray_cluster) -> None:
    with cpus_held(leave=1.5):
        started = time.monotonic()
        proc = ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--template", "digits",
                               "--num-workers", "2")
        elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    # The job itself, from its start to its end as Ray recorded them (this CLI's own start and the
    # upload of the working dir come on top: about 10 s here).
    job = _job_info(ray_cluster, re.search(r"raysubmit_\w+", output).group(0))
    job_s = (job.end_time - job.start_time) / 1000
    assert job.status == "FAILED" and job_s < 60, f"the job took {job_s:.0f} s ({elapsed:.0f} s with the CLI)"
    # One line, which `ray job submit` shows twice: in the job's log, and again in the job's status.
    errors = {line for line in output.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, output[-3000:]
    line = errors.pop()
    assert line.startswith("error: 2 workers × 1 CPU do not fit after waiting 30 s: "
                           "1.5 of 6 CPU free (largest node 1.5); "), line
    assert "other actors hold" in line and "Placeholder" in line, line
    assert "Use --num-workers 1-2 to start with what fits" in line, line


@pytest.mark.slow
def test_a_range_of_workers_starts_with_what_fits_and_publishes(ray_cluster) -> None:
    with cpus_held(leave=1.5):
        outcome = jobclient.submit(
            "jobs.train", ["--num-workers", "1-2", "--epochs", "1", "--model-name", "digits-elastic"],
            dashboard=ray_cluster.dashboard_url, follow=False, timeout_s=300,
        )
    assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    assert "[maas] starting with 1 of 1-2 workers (as many as fit now)" in outcome.logs
    registry = Registry(str(ray_cluster.home / "registry"))
    meta = registry.get("digits-elastic", registry.latest("digits-elastic")).metadata.to_json()
    assert (meta["params"]["min_workers"], meta["params"]["num_workers"]) == (1, 2)
    assert meta["training"]["num_workers"] == 1 and len(meta["ray"]["worker_nodes"]) == 1
