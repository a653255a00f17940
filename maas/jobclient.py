"""Submit this project's job entry points to a running cluster, exactly as ``ray job submit`` does."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maas import settings

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout, with an editable install
# Settings that a job on this machine should see the same way as the shell that submitted it.
_FORWARDED_ENV = ("MAAS_HOME", "MAAS_REGISTRY", "MAAS_RUNS", "MAAS_DATA", "MAAS_VERBOSE")


@dataclass(frozen=True)
class JobOutcome:
    submission_id: str
    status: str
    logs: str


def submit(
    module: str,
    args: list[str],
    *,
    dashboard: str | None = None,
    follow: bool = True,
    show: Callable[[str], bool] | None = None,
    timeout_s: float = 3600,
) -> JobOutcome:
    """Run ``python -m <module> <args>`` as a Ray job with this project as its working_dir.

    With ``follow``, the job's log lines are echoed as they come (only those ``show`` accepts).
    """
    from maas.local_cluster import use_client_auth

    use_client_auth()
    from ray.job_submission import JobStatus, JobSubmissionClient

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    client = JobSubmissionClient(dashboard or settings.dashboard_url())
    runtime_env: dict[str, object] = {"env_vars": {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}}
    if (PROJECT_ROOT / "pyproject.toml").is_file():  # a checkout: ship it, as `--working-dir .` does
        runtime_env["working_dir"] = str(PROJECT_ROOT)
    elif module.startswith("jobs."):  # an installed wheel has no jobs/ folder: the same entry point in maas
        module = f"maas.{module}"
    submission_id = _submit_when_ready(
        client, entrypoint=shlex.join(["python", "-m", module, *args]), runtime_env=runtime_env
    )
    if follow:
        asyncio.run(_follow(client, submission_id, show))
    deadline = time.monotonic() + timeout_s
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(submission_id)
    while status not in terminal and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(submission_id)
    return JobOutcome(submission_id=submission_id, status=str(status.value), logs=client.get_job_logs(submission_id))


def _submit_when_ready(client: JobSubmissionClient, *, entrypoint: str, runtime_env: dict[str, object],
                       ready_timeout_s: float = 60) -> str:
    """Submit; right after a cluster starts its job agent may not be up yet, so retry that case."""
    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


async def _follow(client: JobSubmissionClient, submission_id: str, show: Callable[[str], bool] | None) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        for line in chunk.splitlines(keepends=True):
            if show is None or show(line):
                sys.stdout.write(line)
        sys.stdout.flush()
