"""Where things live on disk by default, in one place.

Everything defaults under ``$MAAS_HOME`` (``~/.maas``): absolute paths, so a job started with
``ray job submit --working-dir .`` (whose current directory is a temporary copy) finds the same
registry as the shell that submitted it.
"""

from __future__ import annotations

import os
from pathlib import Path

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
GRPC_PORT = 9000  # the Serve config's grpc_options.port (maas/serving/serve_config.py)


def maas_home() -> Path:
    return Path(os.environ.get("MAAS_HOME", "~/.maas")).expanduser().resolve()


def default_registry_uri() -> str:
    return os.environ.get("MAAS_REGISTRY") or str(maas_home() / "registry")


def default_runs_uri() -> str:
    return os.environ.get("MAAS_RUNS") or str(maas_home() / "runs")


def default_data_dir() -> str:
    return os.environ.get("MAAS_DATA") or str(maas_home() / "data")


def dashboard_url() -> str:
    return os.environ.get("RAY_DASHBOARD_ADDRESS") or f"http://{DASHBOARD_HOST}:{DASHBOARD_PORT}"


def serve_url() -> str:
    return os.environ.get("MAAS_SERVE_URL") or f"http://{SERVE_HOST}:{SERVE_PORT}"


def grpc_target() -> str:
    """``host:port`` where Serve's ingress takes the service's gRPC (TF Serving's and KServe V2's services)."""
    return os.environ.get("MAAS_GRPC_TARGET") or f"{SERVE_HOST}:{GRPC_PORT}"


API_KEY_ENV = "MAAS_API_KEY"


def api_key_path() -> Path:
    """Where ``maas keys create --save`` (and ``make demo``) keep this machine's key, readable by its owner only."""
    return maas_home() / "api_key"


def api_key() -> str | None:
    """The API key clients send: ``$MAAS_API_KEY``, else the saved one, else none."""
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    try:
        return api_key_path().read_text().strip() or None
    except OSError:
        return None


def save_api_key(key: str) -> Path:
    """Keep ``key`` as this machine's key (:func:`api_key_path`), readable by its owner only."""
    path = api_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, key + "\n")
    return path


def write_private(path: Path, text: str) -> None:
    """Write a secret to ``path``, readable by its owner only, also when the file existed before with a
    looser mode (``os.open``'s mode applies only to a new file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # before the secret is written into it
    with os.fdopen(fd, "w") as f:
        f.write(text)
