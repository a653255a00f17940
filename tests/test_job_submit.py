"""Training through the Ray Jobs API: the way users start it (`ray job submit`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maas import jobclient
from maas.registry import Registry

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


def test_training_job_submitted_through_the_job_client(ray_cluster) -> None:
    outcome = jobclient.submit(
        "jobs.train",
        # 2 workers x 2 CPUs: each fills a whole 2-CPU node of the shared cluster.
        ["--epochs", "2", "--cpus-per-worker", "2", "--model-name", "digits-job"],
        dashboard=ray_cluster.dashboard_url,
        follow=False,
        timeout_s=600,
    )
    assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    assert "[maas] epoch 2/2" in outcome.logs
    registry = Registry(str(ray_cluster.home / "registry"))
    version = registry.get("digits-job", registry.latest("digits-job"))
    assert version.metadata["ray"]["submission_id"] == outcome.submission_id
    assert version.metadata["params"]["cpus_per_worker"] == 2


def _ray_job_submit(ray_cluster, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAY_AUTH_MODE="token")
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url,
           "--working-dir", str(ROOT), "--", *entrypoint]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ray_job_submit_cli_runs_the_module_with_token_auth(ray_cluster) -> None:
    proc = _ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--help")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "usage: python -m jobs.train" in proc.stdout
    assert "--num-workers" in proc.stdout


def test_bad_job_option_fails_with_one_clear_line(ray_cluster) -> None:
    proc = _ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--epochs", "0")
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
