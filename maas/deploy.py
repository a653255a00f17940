"""Apply the Serve config to the running cluster, as ``serve deploy`` does, and wait until ready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from maas import settings
from maas.errors import ConfigError

if TYPE_CHECKING:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient


def load_serve_config(path: str | Path | None = None, *, registry: str | None = None,
                      port: int | None = None, host: str | None = None,
                      grpc_port: int | None = None) -> dict[str, Any]:
    """A Serve config YAML, or without ``path`` the project's own (built from the typed settings,
    as ``deployments/serve_config.yaml`` is), with overrides applied; validated against Serve's own
    schema."""
    from ray.serve.schema import ServeDeploySchema

    # Here, not at the top: the settings import the registry (pyarrow), which `maas cluster status`,
    # a user of this module too, need not load.
    from maas.serving.serve_config import APP_NAME, serve_config

    source = path or "the project's Serve config"
    if path is None:
        config = serve_config()
    else:
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read Serve config {path}: {exc}") from None
    for app in config.get("applications", []):
        if app.get("name") == APP_NAME:
            app.setdefault("args", {})["registry"] = registry or app["args"].get("registry") or \
                settings.default_registry_uri()
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    if host is not None:
        config.setdefault("http_options", {})["host"] = host
    if grpc_port is not None:
        config.setdefault("grpc_options", {})["port"] = grpc_port
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as exc:  # noqa: BLE001 (whatever Serve's schema raises is an invalid config)
        raise ConfigError(f"Invalid Serve config {source}: {exc}") from None
    _check_app_args(config, source)
    return config


def _check_app_args(config: dict[str, Any], path: str | Path) -> None:
    """The ``args`` of the model service, checked here (one line) rather than in a failing replica."""
    from pydantic import ValidationError

    from maas.serving.config import AppArgs
    from maas.serving.serve_config import IMPORT_PATH

    for app in config.get("applications", []):
        if app.get("import_path") == IMPORT_PATH:
            try:
                AppArgs.model_validate(app.get("args") or {})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigError(f"Invalid args in {path}: {where}: {first['msg']} "
                                  f"(received {first.get('input')!r})") from None


def serve_client(dashboard: str | None = None) -> ServeSubmissionClient:
    """Serve's REST client for the cluster's dashboard (what ``serve deploy`` / ``serve status`` use)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from maas.local_cluster import use_client_auth

    use_client_auth()
    return ServeSubmissionClient(dashboard or settings.dashboard_url())


def deploy(config: dict[str, Any], *, dashboard: str | None = None, timeout_s: float = 300) -> dict[str, Any]:
    """Submit ``config`` through the dashboard (``serve deploy``) and wait for every app to run."""
    client = serve_client(dashboard)
    submitted_at = time.time() - 1.0
    client.deploy_applications(config)
    names = [app["name"] for app in config["applications"]]
    deadline = time.monotonic() + timeout_s
    while True:
        details: dict[str, Any] = client.get_serve_details()
        # Only the status of this submission counts, not that of an earlier deploy of the same app.
        apps = {
            name: app for name, app in details.get("applications", {}).items()
            if (app.get("last_deployed_time_s") or 0) >= submitted_at
        }
        statuses = {n: apps.get(n, {}).get("status") for n in names}
        failed = {n: apps[n].get("message", "") for n, s in statuses.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"Serve deployment failed: {failed}")
        if all(s == "RUNNING" for s in statuses.values()):
            return details
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve applications not running after {timeout_s:.0f}s: {statuses}")
        time.sleep(1.0)


def running_replicas(deployment: str = "ModelServer", *, app: str = "maas",
                     dashboard: str | None = None) -> list[dict[str, Any]]:
    """The RUNNING replicas of one deployment of a Serve app, as Serve details them (``node_id``, ...)."""
    replicas = serve_client(dashboard).get_serve_details()["applications"][app]["deployments"][deployment]["replicas"]
    return [r for r in replicas if r["state"] == "RUNNING"]


def undeploy(*, dashboard: str | None = None) -> None:
    serve_client(dashboard).delete_applications()
